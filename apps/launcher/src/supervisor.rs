//! Starts each app as a child process, restarts crashed ones with
//! exponential backoff, reports readiness, and stops them all in order.

use std::{
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, getppid, kill_process};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::plan::{AppPlan, child_environment, plan};

/// The delay before a restart: 250 ms, doubling per consecutive crash, at
/// most 10 s (one child restarting: no jitter needed).
const RESTART: jobs::Backoff =
    jobs::Backoff::exponential(Duration::from_millis(250), Duration::from_secs(10))
        .without_jitter();
/// A child that stayed up this long resets its backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often a starting child's `/readyz` is polled.
const PROBE_EVERY: Duration = Duration::from_millis(25);
/// Extra time past a child's own grace period before it is killed.
const KILL_MARGIN: Duration = Duration::from_secs(2);
/// Embedded data (SQLite files) lives here.
const DATA_DIR: &str = "data";

/// What the quick start needs before the apps start, each made only when
/// missing and never in production: the data folder, development
/// certificates and the development tenant's API key. Says what it made.
#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the launcher talks to its user"
)]
fn prepare_quick_start(
    env: &[(String, String)],
    runtime: &tokio::runtime::Runtime,
) -> Result<(), ExitCode> {
    if let Err(error) = std::fs::create_dir_all(DATA_DIR) {
        eprintln!("platform: cannot create ./{DATA_DIR}: {error}");
        return Err(ExitCode::FAILURE);
    }
    match crate::ensure_development_certs(env) {
        Ok(Some(dir)) => println!(
            "platform: wrote development certificates to {} (mutual TLS between the apps; `platform certs` renews them)",
            dir.display()
        ),
        Ok(None) => {}
        Err(error) => {
            eprintln!("platform: development certificates: {error}");
            return Err(ExitCode::FAILURE);
        }
    }
    match runtime.block_on(crate::dev_tenant::ensure(env)) {
        Ok(Some(path)) => println!(
            "platform: development tenant `{}`; its API key (every scope) is in {}",
            crate::dev_tenant::DEV_TENANT,
            path.display()
        ),
        Ok(None) => {}
        Err(error) => {
            eprintln!("platform: development tenant: {error}");
            return Err(ExitCode::FAILURE);
        }
    }
    Ok(())
}

/// `platform up`: the whole platform until Ctrl-C or SIGTERM.
#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the launcher talks to its user"
)]
pub fn up() -> ExitCode {
    let env = child_environment();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("platform: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(code) = prepare_quick_start(&env, &runtime) {
        return code;
    }
    let plans = match plan(&env) {
        Ok(plans) => plans,
        Err(problems) => {
            for (app, error) in problems {
                eprintln!("platform: {}: {error}", app.as_str());
            }
            return ExitCode::from(78);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("platform: cannot find its own executable: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "platform: starting {} apps (embedded defaults, data in ./{DATA_DIR})",
        plans.len()
    );
    for plan in &plans {
        println!(
            "  {:<9} {:<28} admin http://{}",
            plan.name.as_str(),
            plan.serving,
            plan.admin_addr
        );
    }
    runtime.block_on(async move {
        let started = Instant::now();
        let stop = CancellationToken::new();
        let (ready_tx, mut ready_rx) = mpsc::channel(plans.len());
        let total = plans.len();
        let gateway = plans.iter().find(|p| p.name.as_str() == "gateway").map(|p| p.serving.clone());
        let mut children = Vec::new();
        for plan in plans {
            let child = Supervised { plan, exe: exe.clone(), env: env.clone() };
            let span = tracing::info_span!("launcher.child", app = %child.plan.name.as_str());
            children.push(tokio::spawn(tracing::Instrument::instrument(
                child.run(stop.clone(), ready_tx.clone()),
                span,
            )));
        }
        drop(ready_tx);
        let mut ready = 0;
        let signal = service_runtime::shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                name = ready_rx.recv(), if ready < total => match name {
                    Some(_) => {
                        ready += 1;
                        if ready == total {
                            let url = gateway.clone().unwrap_or_default();
                            println!(
                                "platform: all {total} apps ready in {} ms; try: curl {url}/v1/status",
                                started.elapsed().as_millis()
                            );
                        }
                    }
                    None => ready = total,
                },
                signal = &mut signal => {
                    println!("platform: {signal} received, stopping every app");
                    break;
                }
            }
        }
        stop.cancel();
        for child in children {
            let _ = child.await;
        }
        println!("platform: stopped");
    });
    ExitCode::SUCCESS
}

/// One app under supervision.
struct Supervised {
    plan: AppPlan,
    exe: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Supervised {
    #[allow(clippy::print_stderr, reason = "the launcher talks to its user")]
    async fn run(self, stop: CancellationToken, ready: mpsc::Sender<&'static str>) {
        let name = self.plan.name.as_str();
        let mut crashes = 0u32;
        let mut reported_ready = false;
        loop {
            let launched = Instant::now();
            let mut child = match self.spawn() {
                Ok(child) => child,
                Err(error) => {
                    eprintln!("platform: cannot start {name}: {error}");
                    crashes += 1;
                    if sleep_or_stop(&stop, RESTART.delay(crashes)).await {
                        return;
                    }
                    continue;
                }
            };
            if !reported_ready {
                let probe = self.wait_ready(&mut child, &stop).await;
                if probe {
                    reported_ready = true;
                    let _ = ready.send(name).await;
                }
            }
            tokio::select! {
                status = child.wait() => {
                    crashes = if launched.elapsed() >= STABLE_AFTER { 1 } else { crashes + 1 };
                    let backoff = RESTART.delay(crashes);
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    eprintln!("platform: {name} exited ({status}); restarting in {} ms", backoff.as_millis());
                    if sleep_or_stop(&stop, backoff).await {
                        return;
                    }
                }
                () = stop.cancelled() => {
                    self.stop(child).await;
                    return;
                }
            }
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut child = Command::new(&self.exe)
            .args(["serve", self.plan.name.as_str()])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let name = self.plan.name.as_str();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(tracing::Instrument::instrument(
                forward_lines(name, out),
                tracing::info_span!("launcher.output", app = name, stream = "stdout"),
            ));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(tracing::Instrument::instrument(
                forward_lines(name, err),
                tracing::info_span!("launcher.output", app = name, stream = "stderr"),
            ));
        }
        Ok(child)
    }

    /// Polls `/readyz` until 200, the child exits, or shutdown begins.
    async fn wait_ready(&self, child: &mut Child, stop: &CancellationToken) -> bool {
        loop {
            if stop.is_cancelled() || matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if crate::probe::is_ready(self.plan.admin_addr, Duration::from_millis(500)).await {
                return true;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// SIGTERM, then SIGKILL if the child outlives its grace period.
    #[allow(clippy::print_stderr, reason = "the launcher talks to its user")]
    async fn stop(&self, mut child: Child) {
        let name = self.plan.name.as_str();
        if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = self.plan.shutdown_grace + KILL_MARGIN;
        match tokio::time::timeout(deadline, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("platform: {name} stopped with {status}"),
            Ok(Err(error)) => eprintln!("platform: waiting for {name}: {error}"),
            Err(_) => {
                eprintln!("platform: {name} did not stop within {deadline:?}; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Sleeps, or returns true at once when shutdown begins.
async fn sleep_or_stop(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Copies a child's output to ours, each line prefixed with the app's name.
#[allow(
    clippy::print_stderr,
    reason = "the launcher relays its children's logs"
)]
async fn forward_lines(name: &'static str, stream: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{name:>9} | {line}");
    }
}

/// In a child: if the launcher dies without stopping us (kill -9), stop too
/// rather than linger as an orphan holding the ports.
pub fn exit_with_parent() {
    let parent = getppid();
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            loop {
                // A dedicated thread, not an async worker: sleeping here blocks nothing.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(500));
                if getppid() != parent {
                    let _ = kill_process(rustix::process::getpid(), Signal::TERM);
                    return;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot watch the launcher; this app will outlive it");
    }
}
