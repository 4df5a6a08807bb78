//! The operator commands as an operator runs them: a tenant and a key made
//! with the shipped binary, the key printed once and never listed, and
//! every change in the audit log.

use std::process::Command;

fn gateway(database: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .env_clear()
        .env("GATEWAY_DATABASE_URL", database)
        .env("GATEWAY_GRPC_PLAINTEXT", "true")
        .env("RUST_LOG", "warn")
        .env("GATEWAY_LOG_FORMAT", "json");
    command
}

fn run(database: &str, args: &[&str]) -> (bool, String, String) {
    let output = gateway(database).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tenants_and_keys_from_the_command_line() {
    let sqlite = jobs::testing::ScratchSqlite::create("gateway_cli").await;
    let db = sqlite.url.clone();
    let (ok, out, err) = run(&db, &["tenants", "create", "acme", "--name", "Acme"]);
    assert!(ok, "{err}");
    assert!(out.contains("created tenant acme"), "{out}");
    let (ok, _, err) = run(&db, &["tenants", "create", "Bad_Name"]);
    assert!(!ok);
    assert!(
        err.contains("tenant \"Bad_Name\" must be lowercase"),
        "{err}"
    );

    let (ok, out, err) = run(
        &db,
        &["keys", "create", "acme", "--scope", "readings:write"],
    );
    assert!(ok, "{err}");
    let key = out.trim().to_owned();
    assert!(key.starts_with("plk.acme."), "{out}");
    assert!(err.contains("shown once"), "{err}");
    let (ok, _, err) = run(&db, &["keys", "create", "acme", "--scope", "admin"]);
    assert!(!ok);
    assert!(err.contains("unknown scope \"admin\""), "{err}");

    let (ok, listed, err) = run(&db, &["keys", "list", "acme"]);
    assert!(ok, "{err}");
    let key_id = key.split('.').nth(2).unwrap();
    assert!(listed.contains(key_id), "{listed}");
    let secret = key.rsplit('.').next().unwrap();
    assert!(
        !listed.contains(secret),
        "the secret is never listed: {listed}"
    );

    let (ok, out, err) = run(&db, &["tenants", "suspend", "acme"]);
    assert!(ok, "{err}");
    assert!(out.contains("tenant acme is suspended"), "{out}");
    assert!(
        err.contains("\"action\":\"tenant.suspend\"") && err.contains("\"outcome\":\"allowed\""),
        "the change is audited: {err}"
    );
    assert!(!err.contains(secret));
    let (ok, out, _) = run(&db, &["tenants", "list"]);
    assert!(ok);
    assert!(out.contains("acme\tsuspended"), "{out}");

    let (ok, out, err) = run(&db, &["keys", "revoke", "acme", key_id]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (ok, _, err) = run(&db, &["keys", "revoke", "globex", key_id]);
    assert!(!ok);
    assert!(err.contains("no key"), "{err}");
    sqlite.remove().await;
}

#[tokio::test]
async fn limits_and_deletion_from_the_command_line() {
    let sqlite = jobs::testing::ScratchSqlite::create("gateway_cli_limits").await;
    let db = sqlite.url.clone();
    assert!(run(&db, &["tenants", "create", "acme"]).0);

    let (ok, out, err) = run(
        &db,
        &[
            "tenants",
            "quota",
            "acme",
            "--series",
            "50",
            "--retention-days",
            "7",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("tenant acme: 50 series"), "{out}");
    assert!(out.contains("tenant acme: 7 days of retention"), "{out}");
    let (_, out, _) = run(&db, &["tenants", "list"]);
    assert!(
        out.contains("acme\tactive") && out.contains("\tdefault\t50 series\t7 days kept\t"),
        "limits not named stay as they were: {out}"
    );
    let (ok, out, err) = run(&db, &["tenants", "quota", "acme", "--series", "default"]);
    assert!(ok, "{err}");
    assert!(out.contains("the default series"), "{out}");
    for (args, problem) in [
        (vec![], "name a limit"),
        (
            vec!["--series", "many"],
            "neither a whole number nor `default`",
        ),
        (
            vec!["--retention-days", "0"],
            "--retention-days: must be at least 1",
        ),
    ] {
        let mut command = vec!["tenants", "quota", "acme"];
        command.extend(args);
        let (ok, _, err) = run(&db, &command);
        assert!(!ok);
        assert!(err.contains(problem), "{problem}: {err}");
    }

    // Deleting asks for --yes; with the apps down it stops after refusing
    // the keys, leaves the tenant `deleting`, and says which app failed.
    let (ok, _, err) = run(&db, &["tenants", "delete", "acme"]);
    assert!(!ok);
    assert!(err.contains("add --yes"), "{err}");
    assert!(run(&db, &["tenants", "list"]).1.contains("acme\tactive"));
    let down = |args: &[&str]| {
        let output = gateway(&db)
            .env("GATEWAY_INGEST_URL", "http://127.0.0.1:1")
            .env("GATEWAY_WORKER_URL", "http://127.0.0.1:1")
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, err) = down(&["tenants", "delete", "acme", "--yes", "--drain", "0s"]);
    assert!(!ok);
    assert!(err.contains("gateway: ingest: "), "{err}");
    assert!(
        err.contains("\"action\":\"tenant.delete\"") && err.contains("\"outcome\":\"failed\""),
        "{err}"
    );
    let (_, out, _) = run(&db, &["tenants", "list"]);
    assert!(out.contains("acme\tdeleting"), "{out}");
    let (ok, _, err) = run(&db, &["tenants", "resume", "acme"]);
    assert!(!ok);
    assert!(
        err.contains("tenant acme is deleted or being deleted"),
        "{err}"
    );

    // An export to a file that exists is refused before anything is read.
    let existing = std::env::temp_dir().join(format!("gateway-cli-export-{}", std::process::id()));
    std::fs::write(&existing, "keep").unwrap();
    let (ok, err) = down(&[
        "tenants",
        "export",
        "acme",
        "--output",
        existing.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("File exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep");
    std::fs::remove_file(&existing).unwrap();
    sqlite.remove().await;
}

/// `gateway operators create` with the password on standard input.
fn create_operator(database: &str, args: &[&str], password: &str) -> (bool, String, String) {
    use std::io::Write as _;
    let mut child = gateway(database)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_first_admin_is_created_from_the_command_line() {
    let sqlite = jobs::testing::ScratchSqlite::create("gateway_operators_cli").await;
    let db = sqlite.url.clone();
    let (ok, _, err) = create_operator(
        &db,
        &["operators", "create", "root", "--role", "admin"],
        "qwerty123456",
    );
    assert!(!ok);
    assert!(
        err.contains("password: is one of the 20,000 most common"),
        "{err}"
    );
    let (ok, _, err) = create_operator(
        &db,
        &["operators", "create", "Root"],
        "a long enough passphrase",
    );
    assert!(!ok);
    assert!(err.contains("username: \"Root\" must be"), "{err}");
    let (ok, _, err) = create_operator(
        &db,
        &["operators", "create", "root", "--role", "god"],
        "a long enough passphrase",
    );
    assert!(!ok);
    assert!(err.contains("--role: \"god\" is not a role"), "{err}");
    let (ok, out, err) = create_operator(
        &db,
        &["operators", "create", "root", "--role", "admin"],
        "a long enough passphrase",
    );
    assert!(ok, "{err}");
    assert!(out.contains("created operator root (admin)"), "{out}");
    assert!(
        err.contains("operator.create"),
        "the audit log records it: {err}"
    );
    let (ok, _, err) = create_operator(
        &db,
        &["operators", "create", "root"],
        "another passphrase here",
    );
    assert!(!ok);
    assert!(err.contains("operator root exists already"), "{err}");
    let (ok, listed, err) = run(&db, &["operators", "list"]);
    assert!(ok, "{err}");
    assert!(listed.contains("root"), "{listed}");
    assert!(listed.contains("admin"), "{listed}");
    assert!(!listed.contains("argon2"), "no hash is listed: {listed}");
    sqlite.remove().await;
}
