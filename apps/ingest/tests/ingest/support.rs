//! The `ingest` binary as a real process, for tests that kill it or
//! measure its memory.

use std::process::{Child, Command, Stdio};

/// A running `ingest` process; killed when dropped.
pub struct IngestProcess {
    child: Child,
    /// Where its gRPC API listens.
    pub grpc_addr: std::net::SocketAddr,
    /// Where `/readyz` and `/metrics` are served.
    pub admin_addr: std::net::SocketAddr,
}

impl IngestProcess {
    /// Starts `ingest` on `database_url` with free ports and `env` on top.
    pub fn start(database_url: &str, env: Vec<(&'static str, String)>) -> Self {
        let free = || service_runtime::testing::free_local_addr().unwrap();
        let (grpc_addr, admin_addr) = (free(), free());
        let child = Command::new(env!("CARGO_BIN_EXE_ingest"))
            .env_clear()
            .env("INGEST_DATABASE_URL", database_url)
            .env("INGEST_GRPC_ADDR", grpc_addr.to_string())
            .env("INGEST_ADMIN_ADDR", admin_addr.to_string())
            .env("RUST_LOG", "warn")
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            grpc_addr,
            admin_addr,
        }
    }

    /// Waits (up to 30 s) until `/readyz` answers 200.
    pub async fn ready(&self) {
        let admin = self.admin_addr;
        service_runtime::testing::wait_until(
            "ingest /readyz answering 200",
            std::time::Duration::from_secs(30),
            || async move {
                let answer = service_runtime::testing::http_get(admin, "/readyz", &[]).await;
                answer
                    .is_ok_and(|answer| answer.status == 200)
                    .then_some(())
            },
        )
        .await;
    }

    /// The sum of every series of a Prometheus metric on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let metrics = service_runtime::testing::http_get(self.admin_addr, "/metrics", &[])
            .await
            .unwrap();
        metrics
            .body
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL: no drain, no acks for what was in flight.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap()
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
