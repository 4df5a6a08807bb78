//! The `gateway` binary as an operator runs it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

use std::process::Command;

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    // Only this test's variables reach the binary.
    command.env_clear();
    command
}

#[test]
fn a_bad_value_stops_start_up_naming_the_variable_before_binding() {
    // The admin port is taken by us; had the gateway tried to bind, it
    // would report that instead of the config problem.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = gateway()
        .env("GATEWAY_HTTP_ADDR", "nonsense")
        .env("GATEWAY_STATUS_TIMEOUT", "forever")
        .env("GATEWAY_ADMIN_ADDR", held.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("GATEWAY_HTTP_ADDR: expected a socket address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("GATEWAY_STATUS_TIMEOUT: expected a duration"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot listen"), "{stderr}");
}

#[test]
fn an_unknown_prefixed_variable_is_an_error() {
    let output = gateway()
        .env("GATEWAY_HTTP_ADR", "127.0.0.1:1")
        .arg("--check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("GATEWAY_HTTP_ADR: unknown setting"),
        "{stderr}"
    );
}

#[test]
fn missing_certificates_stop_start_up_naming_the_variable_and_the_fix() {
    let output = gateway()
        .env("GATEWAY_TLS_DIR", "/nonexistent/certs")
        .arg("--check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(
            "GATEWAY_TLS_CERT: /nonexistent/certs/gateway.pem does not exist: run `platform certs`"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("GATEWAY_TLS_KEY"), "{stderr}");
}

#[test]
fn check_config_accepts_a_valid_environment() {
    let certs = std::env::temp_dir().join(format!("gateway-check-{}", std::process::id()));
    security::tls::dev_pki::generate(&certs, &["gateway"]).unwrap();
    let output = gateway()
        .env("GATEWAY_HTTP_ADDR", "0.0.0.0:9999")
        .env("GATEWAY_TLS_DIR", &certs)
        .arg("--check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    assert!(stdout.contains("0.0.0.0:9999"), "{stdout}");
    let _ = std::fs::remove_dir_all(certs);
}

#[test]
fn version_names_the_build() {
    let output = gateway().arg("--version").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    let expected = format!("gateway {} (revision ", env!("CARGO_PKG_VERSION"));
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(stdout.contains(", built 20"), "{stdout}");
}

#[test]
fn production_needs_a_strong_pepper_and_a_complete_previous_one() {
    let output = gateway()
        .env("PLATFORM_ENV", "production")
        .env("GATEWAY_TLS_DIR", "/nonexistent")
        .env(
            "GATEWAY_KEY_PEPPER_PREVIOUS",
            "an old pepper that is still configured",
        )
        .arg("--check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("GATEWAY_KEY_PEPPER: is required in production"),
        "{stderr}"
    );
    assert!(
        stderr.contains("GATEWAY_KEY_PEPPER_PREVIOUS: set both"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("an old pepper"),
        "no secret in the output: {stderr}"
    );
    let weak = gateway()
        .env("PLATFORM_ENV", "production")
        .env(
            "GATEWAY_KEY_PEPPER",
            security::secret::DEVELOPMENT_KEY_PEPPER,
        )
        .arg("--check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&weak.stderr);
    assert!(
        stderr.contains("GATEWAY_KEY_PEPPER: is a development default"),
        "{stderr}"
    );
}

mod console;
mod edge;
mod process;
mod storage;
mod tenants_cli;
