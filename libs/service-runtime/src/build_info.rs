//! Which build a process is, for `--version`, logs and the ServiceInfo RPC.

use std::{
    sync::OnceLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Version, revision and build time of the running binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// Service name, e.g. "worker".
    pub name: &'static str,
    /// Workspace version (all apps release together).
    pub version: &'static str,
    /// Short git revision, with `-dirty` for uncommitted builds.
    pub git_revision: &'static str,
    /// RFC 3339 build time (SOURCE_DATE_EPOCH when set).
    pub build_time: &'static str,
}

impl BuildInfo {
    /// The build information of this binary under the given service name.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            version: env!("CARGO_PKG_VERSION"),
            git_revision: env!("PLATFORM_GIT_REVISION"),
            build_time: env!("PLATFORM_BUILD_TIME"),
        }
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (revision {}, built {})",
            self.name, self.version, self.git_revision, self.build_time
        )
    }
}

/// Identity of this process, unique per boot: the jobs engine uses it as a
/// node id, telemetry as `service.instance.id`.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
        // Hash-free and collision-safe enough: a pid is unique per host at a
        // given instant, and the boot time separates reused pids.
        format!(
            "{host}-{}-{:x}",
            std::process::id(),
            nanos & 0xffff_ffff_ffff
        )
    })
}

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Marks the moment this process started serving (first call wins).
pub(crate) fn mark_started() {
    STARTED.get_or_init(Instant::now);
}

/// Time since this process started serving.
pub fn uptime() -> Duration {
    STARTED.get_or_init(Instant::now).elapsed()
}
