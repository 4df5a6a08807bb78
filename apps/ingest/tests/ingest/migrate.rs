//! `ingest migrate`, what a deployment's migrations Job runs: with the
//! migrator credential it applies every migration and grants the login
//! its role. The app started with `INGEST_MIGRATE_AT_START=false` as the
//! login alone is not ready until then, and serves once the Job has run.

use std::process::Command;

use service_runtime::testing::{AppProcess, http_get};
use sqlx::{Connection as _, PgConnection, postgres::PgConnectOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_waits_unready_for_the_migrations_job_then_serves_as_the_login() {
    let Some(scratch) = jobs::testing::ScratchPostgres::create("ingest_migrate").await else {
        return;
    };
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&scratch.pool)
        .await
        .unwrap();
    let login = format!("{database}_ingest_login");
    sqlx::query(&format!("CREATE ROLE \"{login}\" LOGIN"))
        .execute(&scratch.pool)
        .await
        .unwrap();
    let options: PgConnectOptions = scratch.url.parse().unwrap();
    let login_url = format!(
        "postgres://{login}@{}:{}/{database}",
        options.get_host(),
        options.get_port()
    );
    let binary = env!("CARGO_BIN_EXE_ingest");
    let migrate = |with_migrator: bool| {
        let mut command = Command::new(binary);
        command
            .arg("migrate")
            .env_clear()
            .env("INGEST_DATABASE_URL", &login_url)
            .env("INGEST_GRPC_PLAINTEXT", "true");
        if with_migrator {
            command.env("INGEST_MIGRATE_DATABASE_URL", &scratch.url);
        }
        command.output().unwrap()
    };

    // The app as a Deployment runs it: the login only, migrations off.
    let log = std::env::temp_dir().join(format!("ingest-migrate-{database}.log"));
    let app = AppProcess::start_with_stderr(
        binary,
        "INGEST_",
        vec![
            ("INGEST_DATABASE_URL".to_owned(), login_url.clone()),
            ("INGEST_MIGRATE_AT_START".to_owned(), "false".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ],
        std::fs::File::create(&log).unwrap(),
    );

    // The login alone cannot create the schema, and says so.
    let refused = migrate(false);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ingest migrate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Without its schema the app is not ready (its admin port answers
    // only once the schema is there).
    let readyz = http_get(app.admin_addr, "/readyz", &[]).await;
    assert!(
        readyz.as_ref().map_or(true, |answer| answer.status != 200),
        "{readyz:?}"
    );

    let applied = migrate(true);
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(applied.status.success(), "{stderr}");
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success AND version BETWEEN 200000 AND 299999 \
         ORDER BY version",
    )
    .fetch_all(&scratch.pool)
    .await
    .unwrap();
    assert_eq!(versions, [200_001, 200_002, 200_003]);

    // The app notices the schema and serves, as the login.
    app.ready().await;
    drop(app);
    let stderr = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(stderr.contains("waiting for migrations"), "{stderr}");
    let mut as_login = PgConnection::connect(&login_url).await.unwrap();
    let readings: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.reading")
        .fetch_one(&mut as_login)
        .await
        .unwrap();
    assert_eq!(readings, 0, "the login reads its tables");
    as_login.close().await.unwrap();

    // Every release's Job runs it again: nothing to do.
    let again = migrate(true);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    scratch.drop_database().await;
}
