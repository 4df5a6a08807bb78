//! The quick start's development tenant: on `platform up`, outside
//! production, a tenant `dev` and a key with every scope, written to
//! `data/dev-api-key` (mode 0600) so the README's `curl` commands work on a
//! fresh clone. Made once; delete the file for a new key.

use std::path::{Path, PathBuf};

use gateway::{
    keys::{SCOPES, TenantId},
    storage::{GatewayStore, StoreError, postgres::PgGatewayStore, sqlite::SqliteGatewayStore},
    tenancy,
};
use service_runtime::{Environment, load_config_from};

/// Where the development key is written.
pub const DEV_KEY_FILE: &str = "data/dev-api-key";
/// The development tenant.
pub const DEV_TENANT: &str = "dev";

/// Why the development tenant could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevTenantError {
    /// The gateway's settings do not load.
    #[error("gateway settings: {0}")]
    Config(String),
    /// The gateway's store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key could not be made.
    #[error(transparent)]
    Tenancy(#[from] tenancy::TenancyError),
    /// The key file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Makes the tenant and key when `data/dev-api-key` is missing and the
/// platform runs in development; returns the file when it wrote one.
pub async fn ensure(env: &[(String, String)]) -> Result<Option<PathBuf>, DevTenantError> {
    let path = Path::new(DEV_KEY_FILE);
    if path.exists() {
        return Ok(None);
    }
    // A configuration that does not load is reported by the launcher's
    // plan, with every problem of every app; nothing to make here then.
    let Ok(config) = load_config_from(&gateway::app(), env.iter().cloned()) else {
        return Ok(None);
    };
    if config.common.environment == Environment::Production {
        return Ok(None);
    }
    let url = config.database_url.as_str();
    let key = if config.database_url.is_postgres() {
        let store = PgGatewayStore::connect(url, 2).await?;
        store.migrate().await?;
        make_key(&store, &config).await?
    } else {
        let store = SqliteGatewayStore::connect(url).await?;
        store.migrate().await?;
        make_key(&store, &config).await?
    };
    write_private(path, key.as_bytes())?;
    Ok(Some(path.to_path_buf()))
}

async fn make_key(
    store: &impl GatewayStore,
    config: &gateway::Config,
) -> Result<String, DevTenantError> {
    let tenant = TenantId::parse(DEV_TENANT).map_err(DevTenantError::Config)?;
    match store.create_tenant(&tenant, "Development").await {
        Ok(_) | Err(StoreError::TenantExists(_)) => {}
        Err(error) => return Err(error.into()),
    }
    let scopes = SCOPES.iter().map(|s| (*s).to_owned()).collect();
    let (key, _) =
        tenancy::create_key(store, &config.peppers, &tenant, scopes, "quick start", None).await?;
    Ok(key.reveal())
}

/// Writes `contents` to a new file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevTenantError> {
    use std::io::Write as _;
    let failed = |source| DevTenantError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(failed)?;
    file.write_all(contents).map_err(failed)
}
