//! The `gateway` binary's operator commands: tenants and their API keys,
//! against `GATEWAY_DATABASE_URL`. Every change is written to the audit log.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use security::audit::{AuditEvent, AuditOutcome};
use service_runtime::{EnvValue as _, StandardArgs, load_config};

use crate::{
    Config, app,
    keys::{KeyId, TenantId, parse_scopes},
    storage::{
        GatewayStore, StoreError, TenantLimit, TenantState, postgres::PgGatewayStore,
        sqlite::SqliteGatewayStore,
    },
    tenancy::{self, Peppers, TenancyError},
};

/// Command line of the `gateway` binary.
#[derive(Debug, Parser)]
#[command(name = "gateway", about = "The platform's public HTTP API")]
pub struct Cli {
    /// `--version`, `--check-config`.
    #[command(flatten)]
    pub standard: StandardArgs,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-shot operator commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the gateway's migrations, then exit.
    Migrate,
    /// Ask this app's admin port whether it is ready (`/readyz`), with the
    /// server's configuration: exit 0 when it is. The container image's
    /// health check (distroless images have no curl).
    HealthCheck,

    /// Create, suspend, resume or list tenants.
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Create, list, revoke or rotate a tenant's API keys.
    #[command(subcommand)]
    Keys(KeyCommand),
    /// Create or list the ops console's operators (the first admin).
    #[command(subcommand)]
    Operators(OperatorCommand),
    /// Benchmark halves that need the gateway's code (see bench/run.sh).
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Print the API's OpenAPI 3.1 document (what `/openapi.json`
    /// serves), without configuration or a database: for client
    /// generators.
    Openapi,
}

/// `gateway operators ...`
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// A new operator; the password is read from standard input (one
    /// line), so it appears in no process list or shell history.
    Create {
        /// 1 to 64 of a-z, 0-9, '.', '_' and '-'.
        username: String,
        /// viewer, operator or admin (admins enrol a second factor at
        /// their first login).
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// Every operator with its role and state.
    List,
}

/// `gateway tenants ...`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// A new, active tenant.
    Create {
        /// Lowercase letters, digits and '-'.
        tenant: String,
        /// A display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Refuse every key of the tenant at once (data is kept).
    Suspend {
        /// The tenant.
        tenant: String,
    },
    /// Accept the tenant's keys again.
    Resume {
        /// The tenant.
        tenant: String,
    },
    /// Every tenant: id, state, created, its limits, name.
    List,
    /// Set a tenant's limits: a number, or `default` for the gateway's
    /// (`GATEWAY_READINGS_PER_DAY`, `GATEWAY_SERIES_PER_TENANT`, the
    /// platform's retention). Limits not named stay as they are.
    Quota {
        /// The tenant.
        tenant: String,
        /// Readings per UTC day.
        #[arg(long, value_parser = limit_value)]
        readings_per_day: Option<LimitValue>,
        /// Distinct (device, metric) series.
        #[arg(long, value_parser = limit_value)]
        series: Option<LimitValue>,
        /// Days readings and window results are kept (at least 1).
        #[arg(long, value_parser = limit_value)]
        retention_days: Option<LimitValue>,
    },
    /// Delete the tenant and all its data in every app. Irreversible; the
    /// id is never given to another tenant. Resumes an interrupted run.
    Delete {
        /// The tenant.
        tenant: String,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
        /// How long to wait for the tenant's requests in flight before
        /// deleting (default: the key cache's time to live plus the request
        /// timeout).
        #[arg(long, value_parser = duration)]
        drain: Option<Duration>,
    },
    /// Write everything the tenant has, in every app, as JSON lines.
    Export {
        /// The tenant.
        tenant: String,
        /// The file to write (created, mode 0600); standard output without.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
}

/// A limit as given on the command line: a number, or `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitValue(pub Option<u64>);

fn limit_value(raw: &str) -> Result<LimitValue, String> {
    if raw == "default" {
        return Ok(LimitValue(None));
    }
    raw.parse()
        .map(|n| LimitValue(Some(n)))
        .map_err(|_| format!("{raw:?} is neither a whole number nor `default`"))
}

/// `gateway keys ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// A new key, printed once: it is stored only as a digest.
    Create {
        /// The tenant.
        tenant: String,
        /// What the key may do (repeat): readings:write, results:read,
        /// webhooks:manage, keys:manage.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A label for people.
        #[arg(long, default_value = "")]
        name: String,
        /// Stop working after this long (e.g. 90d); never by default.
        #[arg(long, value_parser = duration)]
        expires_in: Option<Duration>,
    },
    /// The tenant's keys, without secrets.
    List {
        /// The tenant.
        tenant: String,
    },
    /// Refuse a key from now on.
    Revoke {
        /// The tenant.
        tenant: String,
        /// The key's id (16 hex digits).
        key: String,
    },
    /// A new key with the same scopes; the old one expires after the overlap.
    Rotate {
        /// The tenant.
        tenant: String,
        /// The key's id.
        key: String,
        /// How long both keys work.
        #[arg(long, default_value = "24h", value_parser = duration)]
        overlap: Duration,
    },
}

fn duration(raw: &str) -> Result<Duration, String> {
    Duration::parse_env(raw).map_err(|e| e.to_string())
}

/// Why a command failed, printed as `gateway: <reason>`.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tenancy(#[from] TenancyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
    #[error(transparent)]
    Operator(#[from] crate::console::CreateOperatorError),
}

/// Runs a one-shot command; exit code 0 on success, 78 on a bad
/// configuration, 1 otherwise.
#[allow(clippy::print_stderr, reason = "command-line output")]
pub fn run(command: Command) -> ExitCode {
    if matches!(command, Command::Openapi) {
        return print_openapi();
    }
    if matches!(command, Command::HealthCheck) {
        return service_runtime::run_health_check(&app());
    }
    let config = match load_config(&app()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(78);
        }
    };
    let _telemetry = match service_runtime::command_telemetry(&app(), &config) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(78);
        }
    };
    if let Command::Bench(bench) = command {
        return run_bench(bench);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if config.database_url.is_postgres() {
            let store = match &config.migrate_database_url {
                Some(migrator) => {
                    crate::storage::postgres::provision(
                        migrator.as_str(),
                        config.database_url.as_str(),
                        config.database_pool,
                    )
                    .await?
                }
                None => {
                    let store =
                        PgGatewayStore::connect(config.database_url.as_str(), config.database_pool)
                            .await?;
                    // Under a migrations Job the login may not migrate:
                    // operator commands use the schema the Job applied.
                    if config.migrate_at_start || matches!(command, Command::Migrate) {
                        store.migrate().await?;
                    }
                    store
                }
            };
            execute(&store, &config, command).await
        } else {
            let store = SqliteGatewayStore::connect(config.database_url.as_str()).await?;
            store.migrate().await?;
            execute(&store, &config, command).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error}");
            ExitCode::FAILURE
        }
    }
}

fn tenant(raw: &str) -> Result<TenantId, CommandError> {
    TenantId::parse(raw).map_err(|e| CommandError::Invalid(format!("tenant {raw:?} {e}")))
}

fn key(raw: &str) -> Result<KeyId, CommandError> {
    KeyId::parse(raw).map_err(|e| CommandError::Invalid(format!("key {raw:?} {e}")))
}

/// Benchmarks run on all cores, with the telemetry the server has.
fn run_bench(command: crate::bench::BenchCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::bench::run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway bench: {error}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout, reason = "command-line output")]
fn print_openapi() -> ExitCode {
    match crate::openapi::document().to_pretty_json() {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("gateway: the OpenAPI document does not serialise: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The operator at this terminal, for the audit log.
fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

fn audit<T, E>(action: &str, target: &str, result: &Result<T, E>) {
    security::audit::record(&AuditEvent {
        actor: &actor(),
        action,
        target,
        outcome: AuditOutcome::of(result),
    });
}

#[allow(clippy::print_stdout, reason = "command-line output")]
async fn execute(
    store: &impl GatewayStore,
    config: &Config,
    command: Command,
) -> Result<(), CommandError> {
    match command {
        Command::Migrate | Command::HealthCheck | Command::Openapi | Command::Bench(_) => Ok(()),
        Command::Tenants(TenantCommand::Delete {
            tenant: id,
            yes,
            drain,
        }) => {
            let drain = drain.unwrap_or(config.key_cache_ttl + config.limits.request_timeout);
            delete(store, config, &tenant(&id)?, yes, drain).await
        }
        Command::Tenants(TenantCommand::Export { tenant: id, output }) => {
            export(store, config, &tenant(&id)?, output).await
        }
        Command::Tenants(command) => tenants(store, command).await,
        Command::Keys(command) => keys(store, &config.peppers, command).await,
        Command::Operators(command) => operators(store, command).await,
    }
}

#[allow(clippy::print_stdout, reason = "command-line output")]
async fn operators(
    store: &impl GatewayStore,
    command: OperatorCommand,
) -> Result<(), CommandError> {
    match command {
        OperatorCommand::Create { username, role } => {
            let role = role
                .parse()
                .map_err(|e| CommandError::Invalid(format!("--role: {e}")))?;
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).map_err(|e| {
                CommandError::Invalid(format!("password: cannot read standard input: {e}"))
            })?;
            let password = zeroize::Zeroizing::new(password);
            let password = password.trim_end_matches(['\r', '\n']);
            let result =
                crate::console::create_operator(store, &username, password, role, &actor()).await;
            audit("operator.create", &username, &result);
            let operator = result?;
            println!("created operator {} ({})", operator.username, operator.role);
            Ok(())
        }
        OperatorCommand::List => {
            println!(
                "{:<24} {:<9} {:<13} {:<9}",
                "username", "role", "second factor", "state"
            );
            for o in store.operators().await? {
                println!(
                    "{:<24} {:<9} {:<13} {:<9}",
                    o.username,
                    o.role,
                    if o.totp_secret.is_some() {
                        "enrolled"
                    } else {
                        "none"
                    },
                    if o.disabled_at.is_some() {
                        "disabled"
                    } else {
                        "active"
                    }
                );
            }
            Ok(())
        }
    }
}

#[allow(clippy::print_stdout, reason = "command-line output")]
async fn tenants(store: &impl GatewayStore, command: TenantCommand) -> Result<(), CommandError> {
    match command {
        TenantCommand::Create { tenant: id, name } => {
            let id = tenant(&id)?;
            let result = store.create_tenant(&id, &name).await;
            audit("tenant.create", id.as_str(), &result);
            result?;
            println!("created tenant {id}");
        }
        TenantCommand::Suspend { tenant: id } => {
            set_state(store, &id, TenantState::Suspended).await?
        }
        TenantCommand::Resume { tenant: id } => set_state(store, &id, TenantState::Active).await?,
        TenantCommand::List => {
            let limit = |value: Option<u64>, unit: &str| {
                value.map_or_else(|| "default".to_owned(), |q| format!("{q}{unit}"))
            };
            for tenant in store.list_tenants().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    tenant.id,
                    tenant.state.as_str(),
                    tenant.created_at.to_rfc3339(),
                    limit(tenant.readings_per_day, "/day"),
                    limit(tenant.max_series, " series"),
                    limit(tenant.retention_days, " days kept"),
                    tenant.name
                );
            }
        }
        TenantCommand::Quota {
            tenant: id,
            readings_per_day,
            series,
            retention_days,
        } => {
            let id = tenant(&id)?;
            let changes = [
                (
                    TenantLimit::ReadingsPerDay,
                    readings_per_day,
                    "readings a day",
                ),
                (TenantLimit::Series, series, "series"),
                (
                    TenantLimit::RetentionDays,
                    retention_days,
                    "days of retention",
                ),
            ];
            if changes.iter().all(|(_, value, _)| value.is_none()) {
                return Err(CommandError::Invalid(
                    "name a limit: --readings-per-day, --series or --retention-days".into(),
                ));
            }
            if retention_days == Some(LimitValue(Some(0))) {
                return Err(CommandError::Invalid(
                    "--retention-days: must be at least 1 (or `default`)".into(),
                ));
            }
            for (limit, value, what) in changes {
                let Some(LimitValue(value)) = value else {
                    continue;
                };
                let result = store.set_limit(&id, limit, value).await;
                audit("tenant.quota", id.as_str(), &result);
                result?;
                match value {
                    Some(value) => println!("tenant {id}: {value} {what}"),
                    None => println!("tenant {id}: the default {what}"),
                }
            }
        }
        TenantCommand::Delete { .. } | TenantCommand::Export { .. } => {}
    }
    Ok(())
}

/// The operator's name as a principal (`operator:<name>`): the login, in
/// the characters principals allow.
fn operator_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let name: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        .take(64)
        .collect();
    if name.is_empty() {
        "unknown".to_owned()
    } else {
        name
    }
}

/// `gateway tenants delete`.
#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "command-line output"
)]
async fn delete(
    store: &impl GatewayStore,
    config: &Config,
    id: &TenantId,
    yes: bool,
    drain: Duration,
) -> Result<(), CommandError> {
    if !yes {
        return Err(CommandError::Invalid(format!(
            "deleting tenant {id} removes all its data in every app and cannot be undone; \
             add --yes to go ahead"
        )));
    }
    let apps = crate::lifecycle::TenantDataApps::connect(config)
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    eprintln!(
        "deleting tenant {id}: keys refused now; waiting {} ms for requests in flight",
        drain.as_millis()
    );
    let result = crate::lifecycle::delete_tenant(store, &apps, id, drain, &operator_name()).await;
    audit("tenant.delete", id.as_str(), &result);
    let report = result?;
    if report.already_deleted {
        println!("tenant {id} was already deleted");
        return Ok(());
    }
    for (app, counts) in &report.deleted {
        for count in counts {
            println!("{app}\t{}\t{} deleted", count.collection, count.rows);
        }
    }
    println!("tenant {id} is deleted");
    Ok(())
}

/// `gateway tenants export`.
#[allow(clippy::print_stderr, reason = "command-line output")]
async fn export(
    store: &impl GatewayStore,
    config: &Config,
    id: &TenantId,
    output: Option<std::path::PathBuf>,
) -> Result<(), CommandError> {
    let apps = crate::lifecycle::TenantDataApps::connect(config)
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    let operator = operator_name();
    let result = match &output {
        Some(path) => {
            let file = create_private(path)
                .map_err(|e| CommandError::Invalid(format!("{}: {e}", path.display())))?;
            let mut out = std::io::BufWriter::new(file);
            crate::lifecycle::export_tenant(store, &apps, id, &operator, &mut out).await
        }
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            crate::lifecycle::export_tenant(store, &apps, id, &operator, &mut out).await
        }
    };
    audit("tenant.export", id.as_str(), &result);
    for (app, collection, n) in result? {
        eprintln!("{app}\t{collection}\t{n} exported");
    }
    Ok(())
}

/// A new file readable by its owner only: an export is the tenant's data.
fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Suspends or resumes a tenant: its keys are refused (or accepted) from
/// the next request on.
#[allow(clippy::print_stdout, reason = "command-line output")]
async fn set_state(
    store: &impl GatewayStore,
    raw: &str,
    state: TenantState,
) -> Result<(), CommandError> {
    let id = tenant(raw)?;
    let result = store.set_tenant_state(&id, state).await;
    let action = match state {
        TenantState::Active => "tenant.resume",
        _ => "tenant.suspend",
    };
    audit(action, id.as_str(), &result);
    result?;
    println!("tenant {id} is {}", state.as_str());
    Ok(())
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "command-line output"
)]
async fn keys(
    store: &impl GatewayStore,
    peppers: &Peppers,
    command: KeyCommand,
) -> Result<(), CommandError> {
    match command {
        KeyCommand::Create {
            tenant: id,
            scopes,
            name,
            expires_in,
        } => {
            let id = tenant(&id)?;
            let scopes = parse_scopes(&scopes).map_err(CommandError::Invalid)?;
            let expires_at = expires_in
                .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
                .transpose()
                .map_err(|_| CommandError::Invalid("--expires-in is too long".into()))?;
            let created = tenancy::create_key(store, peppers, &id, scopes, &name, expires_at).await;
            let target = match &created {
                Ok((key, _)) => format!("{id}/{}", key.id),
                Err(_) => id.to_string(),
            };
            audit("key.create", &target, &created);
            let (key, _) = created?;
            eprintln!("key {} of tenant {id}; shown once, store it now:", key.id);
            println!("{}", key.reveal());
        }
        KeyCommand::List { tenant: id } => {
            let id = tenant(&id)?;
            let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
                at.map_or_else(|| "-".to_owned(), |at| at.to_rfc3339())
            };
            println!("key\tscopes\tcreated\texpires\trevoked\tlast used\tname");
            for key in store.list_keys(&id).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.scopes.join(","),
                    key.created_at.to_rfc3339(),
                    time(key.expires_at),
                    time(key.revoked_at),
                    time(key.last_used_at),
                    key.name
                );
            }
        }
        KeyCommand::Revoke {
            tenant: id,
            key: key_id,
        } => {
            let (id, key_id) = (tenant(&id)?, key(&key_id)?);
            let result = store.revoke_key(&id, &key_id, chrono::Utc::now()).await;
            audit("key.revoke", &format!("{id}/{key_id}"), &result);
            result?;
            println!("revoked key {key_id} of tenant {id}");
        }
        KeyCommand::Rotate {
            tenant: id,
            key: key_id,
            overlap,
        } => {
            let (id, key_id) = (tenant(&id)?, key(&key_id)?);
            let overlap = chrono::Duration::from_std(overlap)
                .map_err(|_| CommandError::Invalid("--overlap is too long".into()))?;
            let rotated = tenancy::rotate_key(store, peppers, &id, &key_id, overlap).await;
            audit("key.rotate", &format!("{id}/{key_id}"), &rotated);
            let (key, _) = rotated?;
            eprintln!(
                "key {} replaces {key_id} of tenant {id}, which stops working in {overlap}; shown once:",
                key.id
            );
            println!("{}", key.reveal());
        }
    }
    Ok(())
}
