//! Typed configuration from environment variables with an app prefix.
//!
//! An app reads every setting through one [`EnvReader`]; each malformed value
//! is recorded rather than returned, so [`EnvReader::finish`] reports every
//! problem at once, each naming its variable, before any port is bound. A
//! variable carrying the app's prefix that no setting reads is an error too:
//! a typo must not silently fall back to a default.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use telemetry::LogFormat;

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Full variable name, e.g. `GATEWAY_HTTP_ADDR`.
    pub variable: String,
    /// What is wrong, e.g. `invalid socket address syntax`.
    pub problem: String,
}

/// Every problem found in the environment, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in variable-name order.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.problems.len())?;
        if self.problems.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.variable, p.problem)?;
        }
        Ok(())
    }
}

/// A value that can be read from one environment variable.
pub trait EnvValue: Sized {
    /// A secret: a malformed value is reported without the value.
    const SECRET: bool = false;

    /// Parses the raw value, or says what is wrong with it.
    fn parse_env(raw: &str) -> Result<Self, InvalidValue>;
}

impl EnvValue for security::Secret {
    const SECRET: bool = true;

    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        Ok(Self::new(raw))
    }
}

/// Where a process runs: development allows the repository's default
/// secrets and plain HTTP receivers; production refuses them at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// A developer's machine, tests, the quick start.
    Development,
    /// `PLATFORM_ENV=production`, and any process under Kubernetes unless
    /// `PLATFORM_ENV=development` says otherwise.
    Production,
}

impl Environment {
    /// From `PLATFORM_ENV` and whether `KUBERNETES_SERVICE_HOST` is set.
    fn detect(platform_env: Option<&str>, under_kubernetes: bool) -> Result<Self, String> {
        match platform_env.map(str::trim) {
            Some("production") => Ok(Self::Production),
            Some("development") => Ok(Self::Development),
            Some("") | None if under_kubernetes => Ok(Self::Production),
            Some("") | None => Ok(Self::Development),
            Some(other) => Err(format!(
                "expected production or development (got {other:?})"
            )),
        }
    }
}

/// Why a raw environment value does not parse, in words an operator can
/// act on ("expected a duration such as 250ms ..."); [`EnvReader`] adds
/// the variable's name and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl From<&str> for InvalidValue {
    fn from(problem: &str) -> Self {
        Self(problem.to_owned())
    }
}

impl From<String> for InvalidValue {
    fn from(problem: String) -> Self {
        Self(problem)
    }
}

/// Reads an app's variables and collects every problem.
#[derive(Debug)]
pub struct EnvReader {
    prefix: String,
    environment: Environment,
    vars: BTreeMap<String, String>,
    read: BTreeSet<String>,
    problems: Vec<ConfigProblem>,
}

impl EnvReader {
    /// Reads the process environment for variables starting with `prefix`
    /// (e.g. `"WORKER_"`).
    pub fn from_process(prefix: &str) -> Self {
        Self::from_vars(prefix, std::env::vars())
    }

    /// Reads the given variables, for tests and for the launcher.
    pub fn from_vars(
        prefix: &str,
        vars: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Self {
        let mut platform_env = None;
        let mut under_kubernetes = false;
        let vars = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .inspect(|(k, v)| match k.as_str() {
                "PLATFORM_ENV" => platform_env = Some(v.clone()),
                "KUBERNETES_SERVICE_HOST" => under_kubernetes = true,
                _ => {}
            })
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        let mut problems = Vec::new();
        let environment = Environment::detect(platform_env.as_deref(), under_kubernetes)
            .unwrap_or_else(|problem| {
                problems.push(ConfigProblem {
                    variable: "PLATFORM_ENV".into(),
                    problem,
                });
                // Unknown: hold the process to production's rules.
                Environment::Production
            });
        Self {
            prefix: prefix.to_owned(),
            environment,
            vars,
            read: BTreeSet::new(),
            problems,
        }
    }

    /// The app's prefix, e.g. `"WORKER_"`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Development or production (see [`Environment`]).
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// A secret from `<PREFIX><name>` or the file `<PREFIX><name>_FILE`
    /// names. In development an unset secret is `development_default`; in
    /// production it is a problem, and so is a weak value (see
    /// `security::Secret::weakness`). No problem ever contains the value.
    pub fn secret(&mut self, name: &str, development_default: &str) -> security::Secret {
        let production = self.environment == Environment::Production;
        match self.get::<security::Secret>(name) {
            Some(secret) => {
                if production && let Some(weakness) = secret.weakness() {
                    self.reject(name, weakness);
                }
                secret
            }
            None => {
                if production {
                    self.reject(
                        name,
                        format!("is required in production (set it or {name}_FILE)"),
                    );
                }
                security::Secret::new(development_default)
            }
        }
    }

    /// The value of `<PREFIX><name>` parsed as `T`, or `default` when unset
    /// or empty. A malformed value is recorded and `default` returned.
    pub fn get_or<T: EnvValue>(&mut self, name: &str, default: T) -> T {
        self.get(name).unwrap_or(default)
    }

    /// The value of `<PREFIX><name>` parsed as `T`, or `None` when unset,
    /// empty or malformed (recorded).
    ///
    /// `<PREFIX><name>_FILE` names a file holding the value instead (how
    /// Kubernetes and Docker mount secrets); setting both is a problem.
    pub fn get<T: EnvValue>(&mut self, name: &str) -> Option<T> {
        let variable = format!("{}{name}", self.prefix);
        let raw = self.raw(&variable)?;
        match T::parse_env(&raw) {
            Ok(value) => Some(value),
            Err(problem) => {
                let problem = if T::SECRET {
                    format!("{problem} (value not shown: it is a secret)")
                } else {
                    format!("{problem} (got {raw:?})")
                };
                self.problems.push(ConfigProblem { variable, problem });
                None
            }
        }
    }

    /// The trimmed value of `variable` or of the file `<variable>_FILE`
    /// names; `None` when neither is set (or on a problem, recorded).
    fn raw(&mut self, variable: &str) -> Option<String> {
        let file_variable = format!("{variable}_FILE");
        self.read.insert(variable.to_owned());
        self.read.insert(file_variable.clone());
        let direct = self
            .vars
            .get(variable)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty());
        let file = self
            .vars
            .get(&file_variable)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty());
        match (direct, file) {
            (Some(_), Some(_)) => {
                self.problems.push(ConfigProblem {
                    variable: variable.to_owned(),
                    problem: format!("set either {variable} or {file_variable}, not both"),
                });
                None
            }
            (Some(value), None) => Some(value.to_owned()),
            (None, Some(path)) => match read_setting_file(path) {
                Ok(contents) => Some(contents.trim().to_owned()).filter(|v| !v.is_empty()),
                Err(problem) => {
                    let problem = format!("cannot read {path:?}: {problem}");
                    self.problems.push(ConfigProblem {
                        variable: file_variable,
                        problem,
                    });
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// `<PREFIX>MIGRATE_DATABASE_URL`: the migrator credential that
    /// migrates and grants the app's PostgreSQL role at start (see
    /// `jobs::roles`); meaningful only when `database` is PostgreSQL too.
    pub fn migrate_database_url(&mut self, database: &DatabaseUrl) -> Option<DatabaseUrl> {
        let url: Option<DatabaseUrl> = self.get("MIGRATE_DATABASE_URL");
        if url
            .as_ref()
            .is_some_and(|url| !url.is_postgres() || !database.is_postgres())
        {
            let problem = format!(
                "needs postgres:// here and in {}DATABASE_URL (SQLite has no roles)",
                self.prefix
            );
            self.reject("MIGRATE_DATABASE_URL", problem);
        }
        url
    }

    /// `<PREFIX>MIGRATE_AT_START` (default `true`): `false` when a
    /// deployment migrates with a separate Job (`<app> migrate` with the
    /// migrator credential): the app then waits, not ready, until the
    /// schema it needs is there, and never holds the migrator credential.
    /// PostgreSQL only: the embedded SQLite default migrates itself.
    pub fn migrate_at_start(&mut self, database: &DatabaseUrl) -> bool {
        let at_start = self.get_or("MIGRATE_AT_START", true);
        if !at_start {
            if !database.is_postgres() {
                let problem = format!(
                    "false needs a postgres:// {}DATABASE_URL (SQLite has no migrations Job)",
                    self.prefix
                );
                self.reject("MIGRATE_AT_START", problem);
            }
            let migrator = format!("{}MIGRATE_DATABASE_URL", self.prefix);
            if self.vars.contains_key(&migrator) {
                let problem = format!(
                    "false with {migrator} set: the migrator credential belongs to the migrations Job, not the app"
                );
                self.reject("MIGRATE_AT_START", problem);
            }
        }
        at_start
    }

    /// Records a problem that spans settings (e.g. two ports that clash).
    pub fn reject(&mut self, name: &str, problem: impl Into<String>) {
        self.problems.push(ConfigProblem {
            variable: format!("{}{name}", self.prefix),
            problem: problem.into(),
        });
    }

    /// Ends reading: every problem, plus every prefixed variable no setting
    /// read, or `Ok` when the environment is clean.
    pub fn finish(mut self) -> Result<(), ConfigError> {
        for variable in self.vars.keys() {
            if !self.read.contains(variable) {
                self.problems.push(ConfigProblem {
                    variable: variable.clone(),
                    problem: "unknown setting (check the spelling against the app's README)".into(),
                });
            }
        }
        self.problems.sort_by(|a, b| a.variable.cmp(&b.variable));
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// The most a `<NAME>_FILE` may hold: settings and secrets are small, and
/// a path such as `/dev/zero` must not hang start-up.
const MAX_SETTING_FILE_BYTES: u64 = 64 * 1024;

/// A setting file's text, at most [`MAX_SETTING_FILE_BYTES`].
fn read_setting_file(path: &str) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_SETTING_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_SETTING_FILE_BYTES {
        return Err(format!("larger than {MAX_SETTING_FILE_BYTES} bytes"));
    }
    Ok(text)
}

impl EnvValue for String {
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        Ok(raw.to_owned())
    }
}

impl EnvValue for PathBuf {
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        Ok(PathBuf::from(raw))
    }
}

impl EnvValue for SocketAddr {
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        raw.parse()
            .map_err(|_| "expected a socket address such as 127.0.0.1:8080".into())
    }
}

impl EnvValue for bool {
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
}

macro_rules! env_integer {
    ($($t:ty),*) => {$(
        impl EnvValue for $t {
            fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
                raw.parse().map_err(|_| format!(
                    "expected a whole number from {} to {}", <$t>::MIN, <$t>::MAX
                ).into())
            }
        }
    )*};
}
env_integer!(u16, u32, u64, usize);

impl EnvValue for Duration {
    /// Accepts `250ms`, `10s`, `5m`, `1h`, `7d`; a bare number means seconds.
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        let problem = || InvalidValue::from("expected a duration such as 250ms, 10s, 5m, 1h or 7d");
        let split = raw
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(raw.len());
        let (number, unit) = raw.split_at(split);
        let number: f64 = number.parse().map_err(|_| problem())?;
        let seconds = match unit.trim() {
            "" | "s" => number,
            "ms" => number / 1_000.0,
            "m" => number * 60.0,
            "h" => number * 3_600.0,
            "d" => number * 86_400.0,
            _ => return Err(problem()),
        };
        Duration::try_from_secs_f64(seconds).map_err(|_| problem())
    }
}

impl EnvValue for LogFormat {
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        raw.parse().map_err(InvalidValue)
    }
}

/// An `http://host:port` or `https://host:port` address of another
/// service. Whether the connection uses TLS is the process's
/// [`crate::Transport`], not the scheme: both schemes reach the same
/// transport, so one URL works in either mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl(String);

impl ServiceUrl {
    /// The URL as text, for tonic's endpoint builder.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part: a name, an IPv4 address or a bracketed IPv6 one.
    pub fn host(&self) -> &str {
        let authority = self.0.split_once("://").map_or(self.0.as_str(), |(_, a)| a);
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl EnvValue for ServiceUrl {
    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        let rest = raw
            .strip_prefix("http://")
            .or_else(|| raw.strip_prefix("https://"))
            .ok_or_else(|| {
                InvalidValue::from("expected a URL starting with http:// or https://")
            })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err("expected a URL of the form http://host:port".into());
        }
        Ok(Self(raw.trim_end_matches('/').to_owned()))
    }
}

impl ServiceUrl {
    /// A URL known to be well-formed, for defaults.
    pub fn local(port: u16) -> Self {
        Self(format!("http://127.0.0.1:{port}"))
    }
}

/// A database URL: `postgres://...` (production) or `sqlite://path`
/// (embedded). Its `Debug` hides any password, so `--check-config` and
/// logs never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The embedded default shared by the apps: `sqlite://data/platform.db`.
    pub fn embedded_default() -> Self {
        Self("sqlite://data/platform.db".to_owned())
    }

    /// The URL as given, password included: for connecting only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `postgres://` and `postgresql://`.
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres://user:secret@host/db -> postgres://user:***@host/db
        // The last `@` ends the credentials: a password may hold one (or an
        // unescaped `/`); an `@` later in the URL only hides more.
        let shown = match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &self.0[scheme + 3..at];
                match credentials.split_once(':') {
                    Some((user, _)) => {
                        format!("{}{user}:***{}", &self.0[..scheme + 3], &self.0[at..])
                    }
                    None => self.0.clone(),
                }
            }
            _ => self.0.clone(),
        };
        write!(f, "DatabaseUrl({shown:?})")
    }
}

impl EnvValue for DatabaseUrl {
    // It may hold a password: a malformed one is reported without it.
    const SECRET: bool = true;

    fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
        if raw.starts_with("postgres://")
            || raw.starts_with("postgresql://")
            || raw.starts_with("sqlite:")
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err("expected a postgres:// or sqlite:// URL".into())
        }
    }
}

/// Settings every app has, read with the app's prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct CommonConfig {
    /// `<P>ADMIN_ADDR`: `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// `<P>SHUTDOWN_GRACE`: how long in-flight work may drain.
    pub shutdown_grace: Duration,
    /// `<P>SHUTDOWN_DELAY`: how long to stay up but not ready before
    /// closing listeners, so load balancers stop routing first.
    pub shutdown_delay: Duration,
    /// `<P>LOG_FORMAT`: `json` or `pretty`.
    pub log_format: LogFormat,
    /// `<P>GRPC_REFLECTION`: serve gRPC reflection (off by default).
    pub grpc_reflection: bool,
    /// `PLATFORM_ENV` (see [`Environment`]).
    pub environment: Environment,
    /// What one gRPC client may hold of the server.
    pub grpc_limits: GrpcLimits,
    /// Mutual TLS (default) or plaintext on loopback, for the gRPC server
    /// and every client of other services.
    pub transport: crate::Transport,
}

/// Bounds that keep one gRPC client from exhausting a server: streams and
/// concurrent requests per connection, a cap on every request's deadline,
/// HTTP/2 header and reset limits, keepalive that drops dead peers.
/// Message sizes are per service (each app sets its own from its contract;
/// tonic's default is 4 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// `<P>GRPC_MAX_STREAMS`: concurrent HTTP/2 streams per connection;
    /// a client asking for more waits (its own streams, nobody else's).
    pub max_streams_per_connection: u32,
    /// `<P>GRPC_MAX_DEADLINE`: the longest a unary request (or a stream's
    /// opening) may run, whatever deadline the client sent.
    pub max_deadline: Duration,
    /// Largest request header block (HTTP/2 `MAX_HEADER_LIST_SIZE`).
    pub max_header_list_bytes: u32,
    /// Streams a client may open and reset before the server answers them
    /// (the HTTP/2 rapid-reset bound).
    pub max_pending_resets: usize,
    /// Keepalive ping interval, and how long an unanswered ping may wait
    /// before the connection is closed.
    pub keepalive: (Duration, Duration),
}

impl GrpcLimits {
    /// Reads the two tunable limits; the rest are fixed.
    fn from_env(env: &mut EnvReader) -> Self {
        let defaults = Self::default();
        let max_streams_per_connection =
            env.get_or("GRPC_MAX_STREAMS", defaults.max_streams_per_connection);
        if max_streams_per_connection == 0 {
            env.reject("GRPC_MAX_STREAMS", "must be at least 1");
        }
        Self {
            max_streams_per_connection: max_streams_per_connection.max(1),
            max_deadline: env.get_or("GRPC_MAX_DEADLINE", defaults.max_deadline),
            ..defaults
        }
    }
}

impl Default for GrpcLimits {
    /// 256 streams per connection, 60 s deadlines, 16 KiB of headers, 64
    /// pending resets, a ping every 30 s answered within 10 s.
    fn default() -> Self {
        Self {
            max_streams_per_connection: 256,
            max_deadline: Duration::from_secs(60),
            max_header_list_bytes: 16 * 1024,
            max_pending_resets: 64,
            keepalive: (Duration::from_secs(30), Duration::from_secs(10)),
        }
    }
}

impl CommonConfig {
    /// Reads the common settings; `admin_port` is the app's default.
    pub fn from_env(env: &mut EnvReader, admin_port: u16) -> Self {
        let shutdown_grace = env.get_or("SHUTDOWN_GRACE", Duration::from_secs(10));
        let shutdown_delay = env.get_or("SHUTDOWN_DELAY", Duration::ZERO);
        if shutdown_delay >= shutdown_grace {
            env.reject("SHUTDOWN_DELAY", "must be shorter than SHUTDOWN_GRACE");
        }
        Self {
            admin_addr: env.get_or("ADMIN_ADDR", SocketAddr::from(([127, 0, 0, 1], admin_port))),
            shutdown_grace,
            shutdown_delay,
            log_format: env.get_or("LOG_FORMAT", default_log_format()),
            grpc_reflection: env.get_or("GRPC_REFLECTION", false),
            environment: env.environment(),
            grpc_limits: GrpcLimits::from_env(env),
            transport: crate::Transport::from_env(env),
        }
    }

    /// Settings for tests: port 0 everywhere, short deadlines, plaintext on
    /// loopback (tests of mutual TLS set [`CommonConfig::transport`]).
    pub fn for_tests() -> Self {
        Self {
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_grace: Duration::from_secs(5),
            shutdown_delay: Duration::ZERO,
            log_format: LogFormat::Pretty,
            grpc_reflection: true,
            environment: Environment::Development,
            grpc_limits: GrpcLimits::default(),
            transport: crate::Transport::Plaintext,
        }
    }
}

/// JSON when not attached to a terminal-ish environment (containers set
/// none of these), readable text otherwise.
fn default_log_format() -> LogFormat {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        LogFormat::Json
    } else {
        LogFormat::Pretty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_is_declared_or_assumed_under_kubernetes() {
        let env = |vars: &[(&str, &str)]| EnvReader::from_vars("APP_", vars.iter().copied());
        assert_eq!(env(&[]).environment(), Environment::Development);
        assert_eq!(
            env(&[("PLATFORM_ENV", "production")]).environment(),
            Environment::Production
        );
        assert_eq!(
            env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]).environment(),
            Environment::Production
        );
        assert_eq!(
            env(&[
                ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
                ("PLATFORM_ENV", "development")
            ])
            .environment(),
            Environment::Development,
            "the manifests may say otherwise"
        );
        let typo = env(&[("PLATFORM_ENV", "prod")]);
        assert_eq!(
            typo.environment(),
            Environment::Production,
            "unknown is strict"
        );
        let problem = typo.finish().unwrap_err().to_string();
        assert!(
            problem.contains("PLATFORM_ENV: expected production or development"),
            "{problem}"
        );
    }

    #[test]
    fn a_malformed_secret_is_reported_without_its_value() {
        struct Pin;
        impl EnvValue for Pin {
            const SECRET: bool = true;
            fn parse_env(raw: &str) -> Result<Self, InvalidValue> {
                if raw.len() == 4 {
                    Ok(Self)
                } else {
                    Err("must be 4 characters".into())
                }
            }
        }
        let mut env = EnvReader::from_vars("APP_", [("APP_PIN", "s3cr3t-value")]);
        assert!(env.get::<Pin>("PIN").is_none());
        let problem = env.finish().unwrap_err().to_string();
        assert!(
            problem.contains("APP_PIN: must be 4 characters (value not shown"),
            "{problem}"
        );
        assert!(!problem.contains("s3cr3t"), "{problem}");
    }

    #[test]
    fn a_migrator_credential_needs_postgres_on_both_sides() {
        let mut env = EnvReader::from_vars(
            "WORKER_",
            [(
                "WORKER_MIGRATE_DATABASE_URL",
                "postgres://migrator@db/platform",
            )],
        );
        let sqlite = DatabaseUrl::embedded_default();
        assert!(env.migrate_database_url(&sqlite).is_some());
        let problem = env.finish().expect_err("sqlite has no roles").to_string();
        assert!(
            problem.contains(
                "WORKER_MIGRATE_DATABASE_URL: needs postgres:// here and in WORKER_DATABASE_URL"
            ),
            "{problem}"
        );
        let mut env = EnvReader::from_vars(
            "WORKER_",
            [(
                "WORKER_MIGRATE_DATABASE_URL",
                "postgres://migrator@db/platform",
            )],
        );
        let postgres = DatabaseUrl::parse_env("postgres://worker@db/platform").unwrap();
        assert!(env.migrate_database_url(&postgres).is_some());
        env.finish().unwrap();
    }

    #[test]
    fn migrations_off_at_start_needs_postgres_and_no_migrator_credential() {
        let postgres = DatabaseUrl::parse_env("postgres://worker@db/platform").unwrap();
        let mut env = EnvReader::from_vars("WORKER_", [("WORKER_MIGRATE_AT_START", "false")]);
        assert!(!env.migrate_at_start(&postgres));
        env.finish().unwrap();

        let mut env = EnvReader::from_vars("WORKER_", [("WORKER_MIGRATE_AT_START", "false")]);
        env.migrate_at_start(&DatabaseUrl::embedded_default());
        let problem = env.finish().expect_err("sqlite has no Job").to_string();
        assert!(
            problem
                .contains("WORKER_MIGRATE_AT_START: false needs a postgres:// WORKER_DATABASE_URL"),
            "{problem}"
        );

        let mut env = EnvReader::from_vars(
            "WORKER_",
            [
                ("WORKER_MIGRATE_AT_START", "false"),
                (
                    "WORKER_MIGRATE_DATABASE_URL",
                    "postgres://migrator@db/platform",
                ),
            ],
        );
        env.migrate_database_url(&postgres);
        env.migrate_at_start(&postgres);
        let problem = env.finish().expect_err("the Job's credential").to_string();
        assert!(
            problem.contains("WORKER_MIGRATE_AT_START: false with WORKER_MIGRATE_DATABASE_URL set"),
            "{problem}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_variable() {
        let mut env = EnvReader::from_vars(
            "GATEWAY_",
            [
                ("GATEWAY_HTTP_ADDR", "nonsense"),
                ("GATEWAY_SHUTDOWN_GRACE", "soon"),
                ("GATEWAY_TYPO", "1"),
                ("GATEWAY_GRPC_PLAINTEXT", "true"),
                ("OTHER_X", "y"),
            ],
        );
        let _: SocketAddr = env.get_or("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)));
        let _ = CommonConfig::from_env(&mut env, 9181);
        let error = env.finish().expect_err("three problems");
        let variables: Vec<_> = error.problems.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(
            variables,
            [
                "GATEWAY_HTTP_ADDR",
                "GATEWAY_SHUTDOWN_GRACE",
                "GATEWAY_TYPO"
            ]
        );
        let text = error.to_string();
        assert!(
            text.contains("GATEWAY_HTTP_ADDR: expected a socket address"),
            "{text}"
        );
        assert!(text.contains("\"nonsense\""), "{text}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Every whole number with every unit parses to that many units.
            #[test]
            fn durations_parse_every_unit(number in 0u64..1_000_000, unit in 0usize..6) {
                let (suffix, seconds_per) = [("", 1.0), ("s", 1.0), ("ms", 0.001), ("m", 60.0), ("h", 3_600.0), ("d", 86_400.0)][unit];
                let parsed = Duration::parse_env(&format!("{number}{suffix}")).unwrap();
                let expected = number as f64 * seconds_per;
                prop_assert!((parsed.as_secs_f64() - expected).abs() <= 1e-9 * expected.max(1.0), "{number}{suffix}: {parsed:?}");
            }

            /// Any text either parses or is a problem naming the variable
            /// and quoting the value; reading never panics, and a value
            /// that does not parse leaves the default.
            #[test]
            fn any_value_parses_or_is_reported_with_its_variable(raw in "\\PC{0,16}") {
                let mut env = EnvReader::from_vars("APP_", [("APP_GRACE", raw.clone())]);
                let grace = env.get_or("GRACE", Duration::from_secs(7));
                let parsed = Duration::parse_env(raw.trim());
                match env.finish() {
                    Ok(()) => prop_assert!(
                        raw.trim().is_empty() && grace == Duration::from_secs(7)
                            || parsed == Ok(grace),
                        "{raw:?} accepted as {grace:?}"
                    ),
                    Err(error) => {
                        prop_assert!(parsed.is_err(), "{raw:?}");
                        prop_assert_eq!(grace, Duration::from_secs(7));
                        prop_assert_eq!(error.problems.len(), 1);
                        prop_assert_eq!(error.problems[0].variable.as_str(), "APP_GRACE");
                        let quoted = format!("{:?}", raw.trim());
                        prop_assert!(error.problems[0].problem.contains(&quoted), "{}", error);
                    }
                }
            }

            /// A variable with the app's prefix that no setting reads is
            /// reported as unknown; one with another prefix is not seen.
            #[test]
            fn unread_prefixed_variables_are_unknown(name in "[A-Z][A-Z_]{0,12}", value in "[a-z0-9]{0,8}") {
                let env = EnvReader::from_vars(
                    "APP_",
                    [(format!("APP_{name}"), value.clone()), (format!("OTHER_{name}"), value)],
                );
                let error = env.finish().unwrap_err();
                prop_assert_eq!(error.problems.len(), 1);
                prop_assert_eq!(&error.problems[0].variable, &format!("APP_{name}"));
                prop_assert!(error.problems[0].problem.starts_with("unknown setting"));
            }
        }
    }

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(Duration::parse_env("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(Duration::parse_env("10"), Ok(Duration::from_secs(10)));
        assert_eq!(Duration::parse_env("2m"), Ok(Duration::from_secs(120)));
        assert!(Duration::parse_env("-1s").is_err());
        assert!(Duration::parse_env("10 parsecs").is_err());
    }

    #[test]
    fn service_urls_need_scheme_and_port() {
        assert!(ServiceUrl::parse_env("http://127.0.0.1:50051").is_ok());
        assert!(ServiceUrl::parse_env("127.0.0.1:50051").is_err());
        assert!(ServiceUrl::parse_env("http://host/path").is_err());
    }

    #[test]
    fn database_passwords_never_print() {
        let url = DatabaseUrl::parse_env("postgres://app:hunter2@db:5432/platform").unwrap();
        assert_eq!(
            format!("{url:?}"),
            "DatabaseUrl(\"postgres://app:***@db:5432/platform\")"
        );
        assert!(DatabaseUrl::parse_env("mysql://x").is_err());
        let at_sign = DatabaseUrl::parse_env("postgres://app:p@ss/w@rd@db/platform").unwrap();
        assert_eq!(
            format!("{at_sign:?}"),
            "DatabaseUrl(\"postgres://app:***@db/platform\")"
        );
        let mut env =
            EnvReader::from_vars("W_", [("W_DATABASE_URL", "postgress://app:hunter2@db/x")]);
        assert!(env.get::<DatabaseUrl>("DATABASE_URL").is_none());
        let problem = env.finish().unwrap_err().to_string();
        assert!(problem.contains("value not shown"), "{problem}");
        assert!(!problem.contains("hunter2"), "{problem}");
    }

    #[test]
    fn delay_must_be_shorter_than_grace() {
        let mut env = EnvReader::from_vars("W_", [("W_SHUTDOWN_DELAY", "20s")]);
        let _ = CommonConfig::from_env(&mut env, 1);
        let error = env.finish().expect_err("delay too long");
        assert_eq!(error.problems[0].variable, "W_SHUTDOWN_DELAY");
    }
}
