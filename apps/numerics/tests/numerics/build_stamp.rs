//! Which build is running, everywhere an operator looks: `--version`, the
//! first log line and the `build_info` metric all name the same version,
//! git revision and build time (the release command sets them).

use std::process::Command;

use service_runtime::testing::{AppProcess, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_first_log_line_and_build_info_name_the_same_build() {
    let binary = env!("CARGO_BIN_EXE_numerics");
    let version = Command::new(binary).arg("--version").output().unwrap();
    assert!(version.status.success());
    let version = String::from_utf8(version.stdout).unwrap();
    // "numerics 0.1.0 (revision 0123abcd, built 2026-11-29T12:00:00Z)"
    let (revision, built) = version
        .trim()
        .strip_suffix(')')
        .and_then(|v| v.split_once("(revision "))
        .and_then(|(_, rest)| rest.split_once(", built "))
        .unwrap_or_else(|| panic!("unexpected --version output: {version}"));
    assert!(!revision.is_empty() && built.ends_with('Z'), "{version}");

    let log = std::env::temp_dir().join(format!("build-stamp-{}.log", std::process::id()));
    let numerics = AppProcess::start_with_stderr(
        binary,
        "NUMERICS_",
        vec![
            ("RUST_LOG".to_owned(), "info".to_owned()),
            ("NUMERICS_LOG_FORMAT".to_owned(), "json".to_owned()),
        ],
        std::fs::File::create(&log).unwrap(),
    );
    numerics.ready().await;
    let metrics = http_get(numerics.admin_addr, "/metrics", &[])
        .await
        .unwrap();
    drop(numerics);
    let stderr = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);

    let first: serde_json::Value =
        serde_json::from_str(stderr.lines().next().unwrap_or_default()).unwrap();
    assert_eq!(first["message"], "numerics starting", "{stderr}");
    assert_eq!(first["revision"], revision, "{stderr}");
    assert_eq!(first["build_time"], built, "{stderr}");
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"), "{stderr}");

    let build_info = metrics
        .body
        .lines()
        .find(|line| line.starts_with("build_info{"))
        .unwrap_or_else(|| panic!("no build_info series:\n{}", metrics.body));
    assert!(build_info.ends_with(" 1"), "{build_info}");
    for label in [
        format!("revision=\"{revision}\""),
        format!("build_time=\"{built}\""),
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(build_info.contains(&label), "{build_info} lacks {label}");
    }
}

/// `numerics health-check` (the image's health check) with the server's
/// environment: 0 while it is ready, 1 naming the address once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_command_reports_the_running_servers_readiness() {
    let binary = env!("CARGO_BIN_EXE_numerics");
    let numerics = AppProcess::start(binary, "NUMERICS_", Vec::new());
    numerics.ready().await;
    let (grpc, admin) = (numerics.grpc_addr, numerics.admin_addr);
    let check = || {
        Command::new(binary)
            .arg("health-check")
            .env_clear()
            .env("NUMERICS_GRPC_PLAINTEXT", "true")
            .env("NUMERICS_GRPC_ADDR", grpc.to_string())
            .env("NUMERICS_ADMIN_ADDR", admin.to_string())
            .output()
            .unwrap()
    };
    let ready = check();
    let stderr = String::from_utf8_lossy(&ready.stderr);
    assert!(ready.status.success(), "{stderr}");

    drop(numerics);
    let gone = check();
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(gone.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("http://{admin}/readyz")),
        "{stderr}"
    );
}
