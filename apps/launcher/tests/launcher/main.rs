//! `platform up` as a developer runs it: development certificates written,
//! every app ready behind mutual TLS, a crashed app restarted, and
//! everything stopped with exit 0 on SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

mod scale_out;

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process};
use service_runtime::testing::{free_local_addr, http_get};

/// Upper bound for anything to happen; a hang guard, not a timing claim.
const PATIENCE: Duration = Duration::from_secs(60);

struct Platform {
    child: Child,
    lines: mpsc::Receiver<String>,
    gateway: SocketAddr,
    /// The gateway's admin port: the detailed status.
    gateway_admin: SocketAddr,
    ingest: SocketAddr,
    dir: std::path::PathBuf,
}

impl Platform {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("platform-launcher-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gateway = free_local_addr().unwrap();
        let ingest = free_local_addr().unwrap();
        let gateway_admin = free_local_addr().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_platform"));
        command
            .current_dir(&dir)
            .env("GATEWAY_HTTP_ADDR", gateway.to_string())
            .env("INGEST_GRPC_ADDR", ingest.to_string())
            .env("GATEWAY_ADMIN_ADDR", gateway_admin.to_string());
        for var in [
            "INGEST_ADMIN_ADDR",
            "WORKER_GRPC_ADDR",
            "WORKER_ADMIN_ADDR",
            "NUMERICS_GRPC_ADDR",
            "NUMERICS_ADMIN_ADDR",
        ] {
            command.env(var, free_local_addr().unwrap().to_string());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            gateway,
            gateway_admin,
            ingest,
            dir,
        }
    }

    fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("the launcher never printed {needle:?}");
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The detailed status, from the gateway's admin port.
async fn status(gateway_admin: SocketAddr) -> serde_json::Value {
    let response = http_get(gateway_admin, "/status", &[]).await.unwrap();
    serde_json::from_str(&response.body).unwrap()
}

fn instance_of(status: &serde_json::Value, app: &str) -> String {
    let services = status["services"].as_array().unwrap();
    let service = services.iter().find(|s| s["name"] == app).unwrap();
    service["instance_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Asks ingest's gRPC health service for its status as `transport`.
async fn ingest_health(
    platform: &Platform,
    transport: &service_runtime::Transport,
) -> Result<i32, tonic::Status> {
    let url = service_runtime::ServiceUrl::local(platform.ingest.port());
    let timeout = Duration::from_secs(5);
    let channel =
        service_runtime::traced_channel(&url, transport, "ingest", timeout, timeout).unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    Ok(response.into_inner().status)
}

/// Instance ids are `<host>-<pid>-<boot>`.
fn pid_in(instance_id: &str) -> i32 {
    instance_id.rsplit('-').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_restarts_a_crashed_app_and_stops_cleanly_on_sigterm() {
    let mut platform = Platform::start();
    platform.wait_for_line("all 4 apps ready");
    assert!(
        platform.dir.join("data").is_dir(),
        "the embedded data directory exists"
    );

    // The gateway reached every backend over mutual TLS with the
    // certificates the launcher wrote.
    let before = status(platform.gateway_admin).await;
    assert_eq!(before["serving"], true, "{before}");
    let certs = platform.dir.join(service_runtime::DEFAULT_CERT_DIR);
    let operator = service_runtime::Transport::mutual_tls_in(&certs, "operator");
    assert_eq!(
        ingest_health(&platform, &operator).await.unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let plaintext = ingest_health(&platform, &service_runtime::Transport::Plaintext).await;
    assert!(
        plaintext.is_err(),
        "a client without a certificate was answered: {plaintext:?}"
    );

    // The quick start's development key works through the gateway.
    let key_file = platform.dir.join("data/dev-api-key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(key.starts_with("plk.dev."), "{key}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is its owner's only");
    }
    let bearer = format!("Bearer {key}");
    let body = serde_json::json!({"readings": [{
        "event_id": "launcher-1",
        "device_id": "d1",
        "metric": "temperature_c",
        "value": 20.5,
        "observed_at": chrono::Utc::now().to_rfc3339(),
    }]})
    .to_string();
    let published = service_runtime::testing::http_request(
        platform.gateway,
        "POST",
        "/v1/readings",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(published.status, 200, "{}", published.body);
    assert!(
        published.body.contains("\"accepted\":1"),
        "{}",
        published.body
    );
    let results = http_get(
        platform.gateway,
        "/v1/results?anomalous_only=true",
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert_eq!(results.status, 200, "{}", results.body);
    assert!(results.body.contains("\"results\""), "{}", results.body);
    let crashed = instance_of(&before, "ingest");

    // kill -9 one app: the launcher restarts it and the platform serves again.
    kill_process(Pid::from_raw(pid_in(&crashed)).unwrap(), Signal::KILL).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        let now = status(platform.gateway_admin).await;
        let instance = instance_of(&now, "ingest");
        if now["serving"] == true && !instance.is_empty() && instance != crashed {
            break now;
        }
        assert!(Instant::now() < deadline, "ingest was not restarted: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        instance_of(&after, "worker"),
        instance_of(&before, "worker"),
        "other apps kept running"
    );

    kill_process(
        Pid::from_raw(platform.child.id() as i32).unwrap(),
        Signal::TERM,
    )
    .unwrap();
    platform.wait_for_line("platform: stopped");
    let exit = platform.child.wait().unwrap();
    assert!(exit.success(), "launcher exit: {exit}");
    for app in ["ingest", "worker", "numerics", "gateway"] {
        let pid = pid_in(&instance_of(&after, app));
        assert!(
            kill_process(Pid::from_raw(pid).unwrap(), Signal::TERM).is_err(),
            "{app} (pid {pid}) is still running after the launcher stopped"
        );
    }
}
