//! The ops console in a real browser (`tests/browser/console.mjs`: Debian's
//! headless Chromium driven by playwright-core, every page checked by
//! axe-core), against a gateway and a worker started here: log in with the
//! second factor, the overview, jobs filtered, cancelled, retried and a
//! queue paused, a key created and revoked, a forged cross-site post
//! refused, the session id renewed at login, logout, an idle session
//! expiring, and no CSP violation reported by any page.
//!
//! Needs Node.js, `chromium` and the pinned tools of `tests/browser`
//! installed in the folder `CONSOLE_BROWSER_TOOLS` names (`.ci/run` does
//! both); without them it skips, saying so, unless `REQUIRE_SERVICES=1`.

use std::{path::PathBuf, process::Command, time::Duration};

use contracts::jobs::v1::{self as pb, jobs_service_client::JobsServiceClient};
use gateway::{
    keys::TenantId,
    storage::{
        GatewayStore as _,
        operators::{OperatorStore as _, Role},
        sqlite::SqliteGatewayStore,
    },
};

use crate::support::{Backends, ScratchDb, url_of};

const PASSWORD: &str = "correct horse battery staple";

/// Where the tools are, or why the test cannot run.
fn tools() -> Result<(PathBuf, PathBuf), String> {
    let dir = std::env::var_os("CONSOLE_BROWSER_TOOLS")
        .map(PathBuf::from)
        .ok_or("CONSOLE_BROWSER_TOOLS is not set (a folder where `npm ci` ran on tests/browser/package-lock.json)")?;
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "{} has no node_modules/playwright-core",
            dir.display()
        ));
    }
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!(
            "no browser at {} (apt-get install chromium)",
            chromium.display()
        ));
    }
    Ok((dir, chromium))
}

/// The tools, or `None` after saying why the `test` is skipped; under
/// `REQUIRE_SERVICES=1` a missing tool fails the test instead.
fn tools_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    match tools() {
        Ok(found) => Some(found),
        Err(missing) if std::env::var("REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("the console's {test} test needs its tools: {missing}")
        }
        Err(missing) => {
            eprintln!("skipping the console's {test} test: {missing}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser_accessibly_and_without_csp_violations() {
    let Some((tools, chromium)) = tools_or_skip("browser") else {
        return;
    };
    let backends = Backends::start_connected().await;
    let worker = &backends.worker;
    let gateway_db = ScratchDb::new();
    let gateway_for = |idle: Option<Duration>| {
        let mut config = gateway::Config::for_tests(
            &gateway_db.url(),
            url_of(&backends.ingest),
            url_of(worker),
            url_of(&backends.numerics),
        );
        if let Some(idle) = idle {
            config.console.idle_timeout = idle;
        }
        gateway::start(config)
    };
    let gateway = gateway_for(None).await.unwrap();
    let idle_gateway = gateway_for(Some(Duration::from_secs(1))).await.unwrap();

    let store = SqliteGatewayStore::connect(&gateway_db.url())
        .await
        .unwrap();
    let root = gateway::console::create_operator(&store, "root", PASSWORD, Role::Admin, "test")
        .await
        .unwrap();
    let secret: [u8; 20] = std::array::from_fn(|i| u8::try_from(i * 7 + 3).unwrap());
    store.enrol_totp(root.id, &secret, &[]).await.unwrap();
    store
        .create_tenant(&TenantId::parse("acme").unwrap(), "Acme")
        .await
        .unwrap();
    let patience = Duration::from_secs(20);
    let mut jobs = JobsServiceClient::new(
        service_runtime::traced_channel(
            &url_of(worker),
            &service_runtime::Transport::Plaintext,
            "worker",
            patience,
            patience,
        )
        .unwrap(),
    );
    // A queue no node runs: the job waits for the browser.
    let job = jobs
        .enqueue_job(pb::EnqueueJobRequest {
            job: Some(pb::JobSpec {
                kind: "noop".into(),
                queue: "reports".into(),
                args: Some(contracts::json::json_to_struct(
                    &serde_json::json!({"n": 1}),
                )),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    // An anomalous window of acme's, so the anomalies page has a chart.
    let mut ingest = contracts::ingest::v1::ingest_service_client::IngestServiceClient::new(
        service_runtime::traced_channel(
            &url_of(&backends.ingest),
            &service_runtime::Transport::Plaintext,
            "ingest",
            patience,
            patience,
        )
        .unwrap(),
    );
    let now = chrono::Utc::now() - chrono::Duration::minutes(10);
    let window =
        chrono::DateTime::from_timestamp(now.timestamp() - now.timestamp().rem_euclid(60), 0)
            .unwrap();
    // The anomalous window, and one reading validation refuses (a dead
    // letter for the browser to correct).
    let mut readings = crate::readings::readings(window);
    readings.push(contracts::ingest::v1::Reading {
        event_id: "e2e-bad".into(),
        device_id: "boiler-9".into(),
        value: f64::NAN,
        ..readings[0].clone()
    });
    ingest
        .publish_readings(contracts::ingest::v1::PublishReadingsRequest {
            readings,
            ..Default::default()
        })
        .await
        .unwrap();
    crate::readings::first_window_result(&mut ingest, std::time::Instant::now()).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/console.mjs");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut node = Command::new("node");
    node.arg(&script)
        .env(
            "CONSOLE_URL",
            format!("http://{}", gateway.http_addr.unwrap()),
        )
        .env(
            "CONSOLE_IDLE_URL",
            format!("http://{}", idle_gateway.http_addr.unwrap()),
        )
        .env("CONSOLE_ADMIN", "root")
        .env("CONSOLE_PASSWORD", PASSWORD)
        .env("CONSOLE_TOTP_SECRET_HEX", hex)
        .env("CONSOLE_JOB_ID", job.id.to_string())
        .env("CONSOLE_QUEUE", "reports")
        .env("CONSOLE_TENANT", "acme")
        .env("CONSOLE_BROWSER_TOOLS", &tools)
        .env("CHROMIUM", &chromium);
    let output = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok - an idle session expires"), "{stdout}");

    // No page drew a CSP violation report (the gateways keep them).
    for running in [&gateway, &idle_gateway] {
        let reports =
            service_runtime::testing::http_get(running.admin_addr, "/console/csp-reports", &[])
                .await
                .unwrap();
        assert_eq!(reports.status, 200);
        assert_eq!(reports.body.trim(), "[]", "CSP violations were reported");
    }
    idle_gateway.shutdown().await;
    gateway.shutdown().await;
    backends.shutdown().await;
}

/// The MDN HTTP Observatory's tests on the console's login page, served
/// over TLS as in production (`tests/browser/observatory.mjs`). Nothing
/// listens for plain HTTP beside it, which the redirection test accepts
/// ("not needed: no HTTP").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_page_passes_every_mdn_observatory_test_over_tls() {
    let Some((tools, _)) = tools_or_skip("observatory") else {
        return;
    };
    let pki = std::env::temp_dir().join(format!("console-observatory-{}", std::process::id()));
    security::tls::dev_pki::generate(&pki, &["gateway"]).unwrap();
    let gateway_db = ScratchDb::new();
    let mut config = gateway::Config::for_tests(
        &gateway_db.url(),
        crate::support::nothing_listening(),
        crate::support::nothing_listening(),
        crate::support::nothing_listening(),
    );
    config.http.tls = Some(service_runtime::PublicTlsFiles {
        cert: pki.join("gateway.pem"),
        key: pki.join("gateway.key"),
    });
    let gateway = gateway::start(config).await.unwrap();
    let https_port = gateway.http_addr.unwrap().port();
    let http_port = service_runtime::testing::free_local_addr().unwrap().port();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/observatory.mjs");
    let mut node = Command::new("node");
    node.arg(&script)
        .env("CONSOLE_BROWSER_TOOLS", &tools)
        .env("OBSERVATORY_HOST", "localhost")
        .env("OBSERVATORY_PATH", "/console/login")
        .env("OBSERVATORY_HTTPS_PORT", https_port.to_string())
        .env("OBSERVATORY_HTTP_PORT", http_port.to_string())
        .env("NODE_EXTRA_CA_CERTS", pki.join("ca.pem"));
    let output = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "observatory tests failed:\n{stdout}\n{stderr}"
    );
    // Every test ran, and the ones that matter most say what they found.
    assert_eq!(stdout.lines().count(), 10, "{stdout}");
    for expected in [
        "csp-implemented-with-no-unsafe-default-src-none",
        "hsts-implemented-max-age-at-least-six-months",
        "x-frame-options-implemented-via-csp",
        "referrer-policy-private",
    ] {
        assert!(stdout.contains(expected), "{expected} in {stdout}");
    }
    gateway.shutdown().await;
    std::fs::remove_dir_all(&pki).ok();
}
