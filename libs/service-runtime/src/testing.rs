//! Helpers for tests that start apps: a plain HTTP/1.1 GET with no client
//! library, enough for `/readyz`, `/metrics` and JSON endpoints;
//! [`wait_until`], the one way a test waits for something to happen; and
//! [`AppProcess`], an app's shipped binary run as a process with its
//! default telemetry (for tests that kill it, read its metrics or measure
//! its memory).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// A response as a test sees it.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

/// `GET path` on `addr` with extra request headers; reads to end of stream.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<TestResponse> {
    http_request(addr, "GET", path, headers, "").await
}

/// `method path` on `addr` with extra request headers and `body` (sent
/// with its `Content-Length`); reads to end of stream.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<TestResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(TestResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A local address on a port that was free a moment ago, for tests that
/// must pass an address to a child process instead of binding port 0.
///
/// The port is drawn below Linux's ephemeral range (32768 and up), where
/// the port-0 binds and outgoing connections of every other test land, so
/// the child does not find it taken between our check and its bind; only
/// two callers of this function drawing the same port could still clash.
pub fn free_local_addr() -> std::io::Result<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // A per-process start spreads parallel test binaries over the range.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..256 {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
        let port = 20_000 + (n % 12_000) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Polls `condition` every 10 ms until it yields a value, for up to
/// `patience`; panics naming `what` when it never does. A test waits for a
/// state it can observe, never for a fixed time; `patience` is a hang
/// guard, not a timing claim.
#[allow(clippy::panic, reason = "test support: the panic is the report")]
pub async fn wait_until<T, F, Fut>(what: &str, patience: std::time::Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not seen within {patience:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// An app's binary running as a child process on free local ports, with
/// `RUST_LOG=warn` and an otherwise empty environment (plaintext gRPC on
/// loopback unless the test sets `<prefix>TLS_DIR`); killed when dropped.
#[derive(Debug)]
pub struct AppProcess {
    child: std::process::Child,
    name: String,
    /// Where its gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_addr: SocketAddr,
}

impl AppProcess {
    /// Starts `binary` (an app's, e.g. `env!("CARGO_BIN_EXE_ingest")`),
    /// whose settings are read from `<env_prefix>*`, with `env` on top.
    pub fn start(binary: &str, env_prefix: &str, env: Vec<(String, String)>) -> Self {
        Self::start_with_stderr(binary, env_prefix, env, std::process::Stdio::inherit())
    }

    /// [`Self::start`] with the app's log (stderr) going to `stderr`, e.g.
    /// a file a test reads afterwards.
    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    pub fn start_with_stderr(
        binary: &str,
        env_prefix: &str,
        env: Vec<(String, String)>,
        stderr: impl Into<std::process::Stdio>,
    ) -> Self {
        Self::start_command(binary, &[], env_prefix, env, stderr.into())
    }

    /// [`Self::start`] with arguments: an app served by another binary,
    /// e.g. `platform serve numerics`.
    pub fn start_with_args(
        binary: &str,
        args: &[&str],
        env_prefix: &str,
        env: Vec<(String, String)>,
    ) -> Self {
        Self::start_command(
            binary,
            args,
            env_prefix,
            env,
            std::process::Stdio::inherit(),
        )
    }

    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    fn start_command(
        binary: &str,
        args: &[&str],
        env_prefix: &str,
        env: Vec<(String, String)>,
        stderr: std::process::Stdio,
    ) -> Self {
        let free = || free_local_addr().expect("a free local port");
        let (grpc_addr, admin_addr) = (free(), free());
        let tls_dir = format!("{env_prefix}TLS_DIR");
        let plaintext = if env.iter().any(|(name, _)| *name == tls_dir) {
            None
        } else {
            Some((format!("{env_prefix}GRPC_PLAINTEXT"), "true"))
        };
        let child = std::process::Command::new(binary)
            .args(args)
            .env_clear()
            .envs(plaintext)
            .env(format!("{env_prefix}GRPC_ADDR"), grpc_addr.to_string())
            .env(format!("{env_prefix}ADMIN_ADDR"), admin_addr.to_string())
            .env("RUST_LOG", "warn")
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the app binary");
        Self {
            child,
            name: binary.rsplit('/').next().unwrap_or(binary).to_owned(),
            grpc_addr,
            admin_addr,
        }
    }

    /// Waits (up to 30 s) until `/readyz` answers 200.
    pub async fn ready(&self) {
        let admin = self.admin_addr;
        wait_until(
            &format!("{} /readyz answering 200", self.name),
            std::time::Duration::from_secs(30),
            || async move {
                let answer = http_get(admin, "/readyz", &[]).await;
                answer
                    .is_ok_and(|answer| answer.status == 200)
                    .then_some(())
            },
        )
        .await;
    }

    /// The sum of every series on `/metrics` whose name starts with `name`
    /// (so a counter's `_total` counts; 0 when there is none yet).
    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    pub async fn metric(&self, name: &str) -> f64 {
        let metrics = http_get(self.admin_addr, "/metrics", &[])
            .await
            .expect("GET /metrics");
        metrics
            .body
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits for the app to exit by itself (e.g. refusing its
    /// configuration at start), failing the test after `patience`.
    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    pub async fn wait_for_exit(
        mut self,
        patience: std::time::Duration,
    ) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the app") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not exit within {patience:?}",
                self.name
            );
            // A process exit has no readiness signal to wait on here.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no drain, no acks for what was in flight.
    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    pub fn kill_9(mut self) {
        self.child.kill().expect("kill the app");
        self.child.wait().expect("reap the app");
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the app's /proc status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .expect("a memory figure in kB")
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes every balanced channel in this process resolve `host` to
/// `addresses` instead of asking DNS (see [`crate::balance`]): several
/// replicas on 127.0.0.2, 127.0.0.3, ... behind the one name an app's
/// configuration names. Other names still go to DNS.
pub fn resolve_name_to(host: &str, addresses: Vec<std::net::SocketAddr>) {
    crate::balance::TEST_NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(host.to_owned(), addresses);
}
