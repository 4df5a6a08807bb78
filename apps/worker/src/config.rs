//! The worker's settings, read from `WORKER_*` environment variables.

use std::{net::SocketAddr, time::Duration};

use jobs::QueueConfig;
use service_runtime::{CommonConfig, DatabaseUrl, EnvReader, EnvValue, InvalidValue, ServiceUrl};

/// Everything the worker can be told at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `WORKER_GRPC_ADDR`: where the jobs gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `WORKER_DATABASE_URL`: `postgres://...` in production, or
    /// `sqlite://path` (the embedded default, `sqlite://data/platform.db`).
    pub database_url: DatabaseUrl,
    /// `WORKER_MIGRATE_DATABASE_URL`: on PostgreSQL, the migrator credential
    /// that runs migrations and creates and grants this app's role; the
    /// app itself then connects with `WORKER_DATABASE_URL`, as a member of
    /// that role only. Unset: one credential does both (development).
    pub migrate_database_url: Option<DatabaseUrl>,
    /// `WORKER_MIGRATE_AT_START` (default true): false when a migrations
    /// Job migrates (see `EnvReader::migrate_at_start`); the app then waits
    /// for its schema instead.
    pub migrate_at_start: bool,
    /// `WORKER_DATABASE_POOL`: connections to the database.
    pub database_pool: u32,
    /// `WORKER_QUEUES`: `name=local[/global],...`, e.g. `default=10,webhooks=20/50`.
    pub queues: Queues,
    /// `WORKER_RUN_JOBS`: run jobs on this node (false: API only).
    pub run_jobs: bool,
    /// `WORKER_POLL_INTERVAL`: longest wait for jobs without a wake-up.
    pub poll_interval: Duration,
    /// `WORKER_LEASE`: silence after which a node's jobs are rescued.
    pub lease: Duration,
    /// `WORKER_PRUNE_AGE`: finished jobs older than this are deleted.
    pub prune_age: Duration,
    /// `WORKER_WEBHOOK_SECRET`: key for signing webhook bodies.
    pub webhook_secret: security::Secret,
    /// `WORKER_WEBHOOK_TIMEOUT`: longest one webhook request may take.
    pub webhook_timeout: Duration,
    /// `WORKER_WEBHOOK_BACKOFF`: first retry delay of a failed delivery;
    /// doubles per attempt (with jitter), capped at one hour.
    pub webhook_backoff: Duration,
    /// `WORKER_WEBHOOK_ALLOW`: networks webhooks may reach although they
    /// are private, loopback and so on (`10.1.0.0/16,::1`); none by default.
    pub webhook_allow: WebhookNetworks,
    /// `WORKER_WEBHOOK_ALLOW_HTTP`: allow plain `http://` receivers
    /// (development); `https` only by default.
    pub webhook_allow_http: bool,
    /// `WORKER_INGEST_URL`: ingest's gRPC API (windows, results, pruning).
    pub ingest_url: ServiceUrl,
    /// `WORKER_INGEST_TIMEOUT`: longest one call to ingest may take.
    pub ingest_timeout: Duration,
    /// `WORKER_NUMERICS_URL`: the numerics service (statistics, scores).
    pub numerics_url: ServiceUrl,
    /// `WORKER_NUMERICS_TIMEOUT`: longest one call to numerics may take.
    pub numerics_timeout: Duration,
    /// `WORKER_WEBHOOK_DISABLE_AFTER`: an endpoint whose deliveries have
    /// all failed for this long is disabled.
    pub webhook_disable_after: Duration,
    /// `WORKER_WEBHOOK_LOG_RETENTION`: deliveries older than this leave
    /// the delivery log.
    pub webhook_log_retention: Duration,
    /// `WORKER_READINGS_RETENTION`: readings older than this are pruned.
    pub readings_retention: Duration,
    /// `WORKER_READINGS_PRUNE_CRON`: when to prune (five fields, UTC).
    pub readings_prune_cron: String,
    /// Admin port, shutdown and logging settings.
    pub common: CommonConfig,
}

/// Networks webhooks may reach despite the SSRF guard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookNetworks(pub Vec<security::AllowedNet>);

impl EnvValue for WebhookNetworks {
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        raw.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| security::AllowedNet::parse(part).map_err(|e| InvalidValue(e.to_string())))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// The queues this node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queues(pub Vec<QueueConfig>);

impl EnvValue for Queues {
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        let mut queues = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let problem = || {
                format!(
                    "entry {entry:?}: expected name=local or name=local/global with numbers >= 1"
                )
            };
            let (name, limits) = entry.split_once('=').ok_or_else(problem)?;
            let (local, global) = match limits.split_once('/') {
                Some((local, global)) => (local, Some(global)),
                None => (limits, None),
            };
            let local: u32 = local.trim().parse().map_err(|_| problem())?;
            let global: Option<u32> = global
                .map(|g| g.trim().parse())
                .transpose()
                .map_err(|_| problem())?;
            if name.trim().is_empty() || local == 0 || global == Some(0) {
                return Err(problem().into());
            }
            if queues.iter().any(|q: &QueueConfig| q.name == name.trim()) {
                return Err(format!("queue {:?} is listed twice", name.trim()).into());
            }
            queues.push(QueueConfig {
                name: name.trim().to_owned(),
                local_limit: local,
                global_limit: global,
            });
        }
        if queues.is_empty() {
            return Err("expected at least one queue".to_owned().into());
        }
        Ok(Self(queues))
    }
}

impl Config {
    /// Prefix of every variable the worker reads.
    pub const ENV_PREFIX: &'static str = "WORKER_";

    /// Reads the settings, recording every problem in `env`.
    pub fn from_env(env: &mut EnvReader) -> Self {
        let default_queues = Queues(vec![
            QueueConfig::new("default", 10),
            QueueConfig::new("webhooks", 20),
            QueueConfig::new("aggregation", 10),
            QueueConfig::new("maintenance", 1),
        ]);
        let readings_prune_cron = env.get_or("READINGS_PRUNE_CRON", "17 * * * *".to_owned());
        if let Err(error) = readings_prune_cron.parse::<jobs::CronSchedule>() {
            env.reject("READINGS_PRUNE_CRON", error.to_string());
        }
        let database_url = env.get_or("DATABASE_URL", DatabaseUrl::embedded_default());
        Self {
            grpc_addr: env.get_or("GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50052))),
            migrate_database_url: env.migrate_database_url(&database_url),
            migrate_at_start: env.migrate_at_start(&database_url),
            database_url,
            database_pool: env.get_or("DATABASE_POOL", 10),
            queues: env.get_or("QUEUES", default_queues),
            run_jobs: env.get_or("RUN_JOBS", true),
            poll_interval: env.get_or("POLL_INTERVAL", Duration::from_secs(1)),
            lease: env.get_or("LEASE", Duration::from_secs(30)),
            prune_age: env.get_or("PRUNE_AGE", Duration::from_secs(7 * 86_400)),
            webhook_secret: env.secret("WEBHOOK_SECRET", security::secret::DEVELOPMENT_WEBHOOK_KEY),
            webhook_timeout: env.get_or("WEBHOOK_TIMEOUT", Duration::from_secs(10)),
            webhook_backoff: env.get_or("WEBHOOK_BACKOFF", Duration::from_secs(10)),
            webhook_allow: env.get_or("WEBHOOK_ALLOW", WebhookNetworks::default()),
            webhook_allow_http: {
                let allow = env.get_or("WEBHOOK_ALLOW_HTTP", false);
                if allow && env.environment() == service_runtime::Environment::Production {
                    env.reject(
                        "WEBHOOK_ALLOW_HTTP",
                        "plain http receivers are refused in production",
                    );
                }
                allow
            },
            ingest_url: env.get_or("INGEST_URL", ServiceUrl::local(50051)),
            ingest_timeout: env.get_or("INGEST_TIMEOUT", Duration::from_secs(10)),
            numerics_url: env.get_or("NUMERICS_URL", ServiceUrl::local(50053)),
            numerics_timeout: env.get_or("NUMERICS_TIMEOUT", Duration::from_secs(5)),
            webhook_disable_after: env
                .get_or("WEBHOOK_DISABLE_AFTER", Duration::from_secs(3 * 24 * 3600)),
            webhook_log_retention: env
                .get_or("WEBHOOK_LOG_RETENTION", Duration::from_secs(30 * 24 * 3600)),
            readings_retention: env.get_or("READINGS_RETENTION", Duration::from_secs(7 * 86_400)),
            readings_prune_cron,
            common: CommonConfig::from_env(env, 9183),
        }
    }

    /// What webhook deliveries may reach: public `https` receivers, plus
    /// what `WORKER_WEBHOOK_ALLOW` and `WORKER_WEBHOOK_ALLOW_HTTP` add.
    pub fn webhook_policy(&self) -> security::OutboundPolicy {
        security::OutboundPolicy {
            allow_http: self.webhook_allow_http,
            allow: self.webhook_allow.0.clone(),
            timeout: self.webhook_timeout,
            connect_timeout: self.webhook_timeout.min(service_runtime::CONNECT_TIMEOUT),
            ..security::OutboundPolicy::strict()
        }
    }

    /// Port 0 everywhere and the given database, for in-process tests.
    pub fn for_tests(database_url: &str) -> Self {
        let mut env = EnvReader::from_vars("WORKER_", [("WORKER_DATABASE_URL", database_url)]);
        let mut config = Self::from_env(&mut env);
        config.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.poll_interval = Duration::from_millis(100);
        // The tests' receivers listen on loopback, over plain HTTP.
        config.webhook_allow = WebhookNetworks(
            security::AllowedNet::parse("127.0.0.0/8")
                .into_iter()
                .collect(),
        );
        config.webhook_allow_http = true;
        config.common = CommonConfig::for_tests();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_networks_parse_and_name_a_bad_entry() {
        let networks = WebhookNetworks::parse_env("10.1.0.0/16, ::1").unwrap().0;
        assert_eq!(networks.len(), 2);
        assert!(networks[0].contains("10.1.200.3".parse().unwrap()));
        assert_eq!(
            WebhookNetworks::parse_env("10.0.0.0/8,intranet")
                .unwrap_err()
                .0,
            "\"intranet\" is not an IP address"
        );
        assert_eq!(WebhookNetworks::parse_env("").unwrap().0, Vec::new());
    }

    #[test]
    fn queues_parse_with_optional_global_limits() {
        let queues = Queues::parse_env("default=10, webhooks=20/50").unwrap().0;
        assert_eq!(
            queues[1],
            QueueConfig {
                name: "webhooks".into(),
                local_limit: 20,
                global_limit: Some(50)
            }
        );
        assert!(
            Queues::parse_env("default=0")
                .unwrap_err()
                .0
                .contains("\"default=0\"")
        );
        assert!(
            Queues::parse_env("a=1,a=2")
                .unwrap_err()
                .0
                .contains("listed twice")
        );
    }

    /// A production environment with the worker's certificates in place.
    fn production(vars: &[(&str, &str)]) -> Result<Config, service_runtime::ConfigError> {
        static CERTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let certs = CERTS.get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("worker-config-pki-{}", std::process::id()));
            security::tls::dev_pki::generate(&dir, &["worker"]).unwrap();
            dir.display().to_string()
        });
        let mut env = EnvReader::from_vars(
            "WORKER_",
            vars.iter().copied().chain([
                ("PLATFORM_ENV", "production"),
                ("WORKER_TLS_DIR", certs.as_str()),
            ]),
        );
        let config = Config::from_env(&mut env);
        env.finish().map(|()| config)
    }

    #[test]
    fn production_refuses_the_development_key_and_weak_keys_without_printing_them() {
        let unset = production(&[]).unwrap_err().to_string();
        assert!(
            unset.contains("WORKER_WEBHOOK_SECRET: is required in production"),
            "{unset}"
        );
        let shipped = production(&[(
            "WORKER_WEBHOOK_SECRET",
            security::secret::DEVELOPMENT_WEBHOOK_KEY,
        )])
        .unwrap_err();
        assert!(
            shipped
                .to_string()
                .contains("development default shipped in the repository"),
            "{shipped}"
        );
        assert!(
            !shipped
                .to_string()
                .contains(security::secret::DEVELOPMENT_WEBHOOK_KEY)
        );
        let weak = production(&[("WORKER_WEBHOOK_SECRET", "only-twenty-chars-xx")])
            .unwrap_err()
            .to_string();
        assert!(weak.contains("is 20 bytes"), "{weak}");
        assert!(!weak.contains("only-twenty"), "{weak}");
        let strong = "k7Qd9vX2mP4sL8wZ1nR6tY3uB5cF0hJ2";
        let http = production(&[
            ("WORKER_WEBHOOK_SECRET", strong),
            ("WORKER_WEBHOOK_ALLOW_HTTP", "true"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            http.contains("WORKER_WEBHOOK_ALLOW_HTTP: plain http"),
            "{http}"
        );
        let config = production(&[("WORKER_WEBHOOK_SECRET", strong)]).unwrap();
        assert_eq!(config.webhook_secret.expose(), strong.as_bytes());
        assert_eq!(format!("{:?}", config.webhook_secret), "Secret(***)");
    }

    #[test]
    fn a_secret_can_come_from_a_file_but_not_from_both() {
        let path = std::env::temp_dir().join(format!("worker-secret-{}", std::process::id()));
        std::fs::write(&path, "k7Qd9vX2mP4sL8wZ1nR6tY3uB5cF0hJ2\n").unwrap();
        let file = path.display().to_string();
        let config = production(&[("WORKER_WEBHOOK_SECRET_FILE", file.as_str())]).unwrap();
        assert_eq!(
            config.webhook_secret.expose(),
            b"k7Qd9vX2mP4sL8wZ1nR6tY3uB5cF0hJ2",
            "read and trimmed"
        );
        let both = production(&[
            ("WORKER_WEBHOOK_SECRET_FILE", file.as_str()),
            ("WORKER_WEBHOOK_SECRET", "k7Qd9vX2mP4sL8wZ1nR6tY3uB5cF0hJ2"),
        ])
        .unwrap_err()
        .to_string();
        assert!(both.contains("not both"), "{both}");
        std::fs::remove_file(&path).unwrap();
        let missing = production(&[("WORKER_WEBHOOK_SECRET_FILE", "/nonexistent/secret")])
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("WORKER_WEBHOOK_SECRET_FILE: cannot read"),
            "{missing}"
        );
    }
}
