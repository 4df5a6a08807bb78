//! The gateway's settings, read from `GATEWAY_*` environment variables.

use std::{net::SocketAddr, time::Duration};

use service_runtime::{CommonConfig, DatabaseUrl, EnvReader, PublicHttp, ServiceUrl};

use crate::{
    keys::Pepper,
    limits::{LimitSettings, Quota},
    tenancy::Peppers,
};

/// Everything the gateway can be told at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `GATEWAY_HTTP_*`: the public HTTP API's address, connection limits
    /// and optional TLS.
    pub http: PublicHttp,
    /// `GATEWAY_INGEST_URL`: the ingest app's gRPC address.
    pub ingest_url: ServiceUrl,
    /// `GATEWAY_WORKER_URL`: the worker app's gRPC address.
    pub worker_url: ServiceUrl,
    /// `GATEWAY_NUMERICS_URL`: the numerics app's gRPC address.
    pub numerics_url: ServiceUrl,
    /// `GATEWAY_STATUS_TIMEOUT`: how long `/v1/status` waits for each app.
    pub status_timeout: Duration,
    /// `GATEWAY_DATABASE_URL`: tenants and API keys; `postgres://...` in
    /// production, or the shared embedded SQLite file.
    pub database_url: DatabaseUrl,
    /// `GATEWAY_MIGRATE_DATABASE_URL`: the migrator credential (see
    /// `EnvReader::migrate_database_url`).
    pub migrate_database_url: Option<DatabaseUrl>,
    /// `GATEWAY_MIGRATE_AT_START` (default true): false when a migrations
    /// Job migrates (see `EnvReader::migrate_at_start`); the app then waits
    /// for its schema instead.
    pub migrate_at_start: bool,
    /// `GATEWAY_DATABASE_POOL`: connections to the database.
    pub database_pool: u32,
    /// `GATEWAY_KEY_PEPPER` with `GATEWAY_KEY_PEPPER_ID`, and the previous
    /// pair (`GATEWAY_KEY_PEPPER_PREVIOUS`, `..._PREVIOUS_ID`) while keys
    /// made under it still work.
    pub peppers: Peppers,
    /// `GATEWAY_RATE_LIMIT_PER_CLIENT`, `GATEWAY_RATE_LIMIT_PER_KEY` and
    /// `GATEWAY_AUTH_FAILURES_PER_CLIENT` (per minute),
    /// `GATEWAY_MAX_IN_FLIGHT`, `GATEWAY_REQUEST_TIMEOUT` and
    /// `GATEWAY_TRUSTED_PROXIES`.
    pub limits: LimitSettings,
    /// `GATEWAY_KEY_CACHE_TTL`: how long a stored key read for one request
    /// is reused for the next (revocation and suspension take effect
    /// within it); `0s` reads the store on every request.
    pub key_cache_ttl: Duration,
    /// `GATEWAY_READINGS_PER_DAY`: readings a tenant may publish per UTC
    /// day unless it has its own quota (`gateway tenants quota`).
    pub readings_per_day: u64,
    /// `GATEWAY_SERIES_PER_TENANT`: distinct (device, metric) series a
    /// tenant may have unless it has its own quota; 0 for no limit.
    pub series_per_tenant: u64,
    /// `GATEWAY_RETENTION_SWEEP_EVERY`: how often tenants' own retention
    /// (`gateway tenants quota --retention-days`) is applied; 0s never.
    pub retention_sweep_every: Duration,
    /// `GATEWAY_CORS_ORIGINS`: origins (`https://app.example`, comma
    /// separated) whose browser pages may call the API; none by default.
    pub cors_origins: Vec<String>,
    /// `GATEWAY_CONSOLE_IDLE_TIMEOUT` (30m) and
    /// `GATEWAY_CONSOLE_SESSION_LIFETIME` (12h): when console sessions end.
    pub console: crate::console::ConsoleSettings,
    /// Admin port, shutdown and logging settings.
    pub common: CommonConfig,
}

impl Config {
    /// Prefix of every variable the gateway reads.
    pub const ENV_PREFIX: &'static str = "GATEWAY_";

    /// Reads the settings, recording every problem in `env`.
    pub fn from_env(env: &mut EnvReader) -> Self {
        let status_timeout = env.get_or("STATUS_TIMEOUT", Duration::from_secs(1));
        if status_timeout.is_zero() || status_timeout > Duration::from_secs(30) {
            env.reject("STATUS_TIMEOUT", "must be between 1ms and 30s");
        }
        let database_url = env.get_or("DATABASE_URL", DatabaseUrl::embedded_default());
        Self {
            http: PublicHttp::from_env(env, 8080),
            limits: limits(env),
            cors_origins: cors_origins(env),
            console: console(env),
            readings_per_day: env.get_or("READINGS_PER_DAY", 10_000_000),
            series_per_tenant: env.get_or("SERIES_PER_TENANT", 10_000),
            retention_sweep_every: env.get_or("RETENTION_SWEEP_EVERY", Duration::from_secs(3_600)),
            key_cache_ttl: key_cache_ttl(env),
            migrate_database_url: env.migrate_database_url(&database_url),
            migrate_at_start: env.migrate_at_start(&database_url),
            database_url,
            database_pool: env.get_or("DATABASE_POOL", 10),
            peppers: peppers(env),
            ingest_url: env.get_or("INGEST_URL", ServiceUrl::local(50051)),
            worker_url: env.get_or("WORKER_URL", ServiceUrl::local(50052)),
            numerics_url: env.get_or("NUMERICS_URL", ServiceUrl::local(50053)),
            status_timeout,
            common: CommonConfig::from_env(env, 9181),
        }
    }
}

impl Config {
    /// Port 0, the given backends, plaintext to them and a database of the
    /// caller's, for in-process tests.
    pub fn for_tests(
        database_url: &str,
        ingest_url: ServiceUrl,
        worker_url: ServiceUrl,
        numerics_url: ServiceUrl,
    ) -> Self {
        let mut env = EnvReader::from_vars("GATEWAY_", [("GATEWAY_DATABASE_URL", database_url)]);
        let mut config = Self::from_env(&mut env);
        config.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.ingest_url = ingest_url;
        config.worker_url = worker_url;
        config.numerics_url = numerics_url;
        config.common = CommonConfig::for_tests();
        // Tests change keys and tenants and expect the next request to see
        // it; the cache has its own tests.
        config.key_cache_ttl = Duration::ZERO;
        config
    }
}

/// The console's session lifetimes (each at least a minute; the idle
/// timeout no longer than the lifetime).
fn console(env: &mut EnvReader) -> crate::console::ConsoleSettings {
    let defaults = crate::console::ConsoleSettings::default();
    let idle_timeout = env.get_or("CONSOLE_IDLE_TIMEOUT", defaults.idle_timeout);
    let session_lifetime = env.get_or("CONSOLE_SESSION_LIFETIME", defaults.session_lifetime);
    if idle_timeout < Duration::from_secs(60) {
        env.reject("CONSOLE_IDLE_TIMEOUT", "must be at least 1m");
    }
    if session_lifetime < idle_timeout {
        env.reject(
            "CONSOLE_SESSION_LIFETIME",
            "must be at least GATEWAY_CONSOLE_IDLE_TIMEOUT",
        );
    }
    crate::console::ConsoleSettings {
        idle_timeout,
        session_lifetime,
    }
}

/// The current pepper, and the previous one during a rotation.
fn peppers(env: &mut EnvReader) -> Peppers {
    let current = Pepper {
        id: env.get_or("KEY_PEPPER_ID", "p1".to_owned()),
        key: env.secret("KEY_PEPPER", security::secret::DEVELOPMENT_KEY_PEPPER),
    };
    let previous_key = env.get::<security::Secret>("KEY_PEPPER_PREVIOUS");
    let previous_id = env.get::<String>("KEY_PEPPER_PREVIOUS_ID");
    let previous = match (previous_key, previous_id) {
        (Some(key), Some(id)) if id != current.id => Some(Pepper { id, key }),
        (Some(_), Some(_)) => {
            env.reject(
                "KEY_PEPPER_PREVIOUS_ID",
                "must differ from GATEWAY_KEY_PEPPER_ID",
            );
            None
        }
        (None, None) => None,
        _ => {
            env.reject(
                "KEY_PEPPER_PREVIOUS",
                "set both GATEWAY_KEY_PEPPER_PREVIOUS and GATEWAY_KEY_PEPPER_PREVIOUS_ID, or neither",
            );
            None
        }
    };
    Peppers { current, previous }
}

/// The rate limits, load shedding and trusted proxies.
fn limits(env: &mut EnvReader) -> LimitSettings {
    let mut per_minute = |name: &str, default: u32| {
        let quota = env.get_or(name, default);
        if quota == 0 {
            env.reject(name, "must be at least 1 (requests per minute)");
        }
        Quota::per_minute(quota.max(1))
    };
    let per_client = per_minute("RATE_LIMIT_PER_CLIENT", 6_000);
    let per_key = per_minute("RATE_LIMIT_PER_KEY", 6_000);
    let failed_auth = per_minute("AUTH_FAILURES_PER_CLIENT", 30);
    let max_in_flight = env.get_or("MAX_IN_FLIGHT", 1_024_usize);
    if max_in_flight == 0 {
        env.reject("MAX_IN_FLIGHT", "must be at least 1");
    }
    let request_timeout = env.get_or("REQUEST_TIMEOUT", Duration::from_secs(30));
    if request_timeout.is_zero() || request_timeout > Duration::from_secs(300) {
        env.reject("REQUEST_TIMEOUT", "must be between 1ms and 300s");
    }
    let mut trusted_proxies = Vec::new();
    for entry in env
        .get::<String>("TRUSTED_PROXIES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        match security::AllowedNet::parse(entry) {
            Ok(net) => trusted_proxies.push(net),
            Err(error) => env.reject("TRUSTED_PROXIES", error.to_string()),
        }
    }
    LimitSettings {
        per_client,
        per_key,
        failed_auth,
        max_in_flight: max_in_flight.max(1),
        request_timeout,
        trusted_proxies,
    }
}

/// `scheme://host[:port]` origins, each checked.
fn cors_origins(env: &mut EnvReader) -> Vec<String> {
    let raw = env.get::<String>("CORS_ORIGINS").unwrap_or_default();
    let mut origins = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        match host {
            Some(host)
                if !host.is_empty()
                    && !host.contains(['/', '?', '#', '*', ' '])
                    && origin.is_ascii() =>
            {
                origins.push(origin.to_owned());
            }
            _ => env.reject(
                "CORS_ORIGINS",
                format!(
                    "{origin:?} is not an origin like https://app.example (no path, no wildcard)"
                ),
            ),
        }
    }
    origins
}

/// At most a minute: revocation must not wait longer.
fn key_cache_ttl(env: &mut EnvReader) -> Duration {
    let ttl = env.get_or("KEY_CACHE_TTL", Duration::from_secs(1));
    if ttl > Duration::from_secs(60) {
        env.reject(
            "KEY_CACHE_TTL",
            "must be at most 60s (0s turns the cache off)",
        );
    }
    ttl
}
