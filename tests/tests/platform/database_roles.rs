//! Least privilege on PostgreSQL: ingest and the worker each run as a role
//! of their own, created and granted by a separate migrator credential.
//! The whole story still works (ingest stores readings and enqueues the
//! aggregation job through `jobs.enqueue`; the worker runs it), while the
//! statements outside each app's contract fail with `42501`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use service_runtime::{DatabaseUrl, EnvValue as _, Transport, traced_channel};
use sqlx::{Connection as _, PgConnection, postgres::PgConnectOptions};

use crate::{
    readings::{first_window_result, readings},
    support::url_of,
};

/// `url` logging in as `user` instead.
fn as_user(url: &str, user: &str) -> String {
    let options: PgConnectOptions = url.parse().unwrap();
    format!(
        "postgres://{user}@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap()
    )
}

/// Runs `sql` as the user of `url` and returns the SQLSTATE it failed with.
async fn refused(url: &str, sql: &str) -> String {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let error = sqlx::query(sql).execute(&mut conn).await.expect_err(sql);
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned())
        .unwrap_or_else(|| panic!("{sql}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_runs_as_its_own_role_and_nothing_more() {
    let Some(scratch) = jobs::testing::ScratchPostgres::create("roles").await else {
        return;
    };
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&scratch.pool)
        .await
        .unwrap();
    // The logins the apps connect with; the migrator is the scratch URL's
    // (superuser) credential. Named after the database, so they are
    // dropped with it.
    let (ingest_login, worker_login) = (
        format!("{database}_ingest_login"),
        format!("{database}_worker_login"),
    );
    for login in [&ingest_login, &worker_login] {
        sqlx::query(&format!("CREATE ROLE \"{login}\" LOGIN"))
            .execute(&scratch.pool)
            .await
            .unwrap();
    }
    let (ingest_url, worker_url) = (
        as_user(&scratch.url, &ingest_login),
        as_user(&scratch.url, &worker_login),
    );
    let migrator = DatabaseUrl::parse_env(&scratch.url).unwrap();

    let mut ingest_config = ingest::Config::for_tests(&ingest_url);
    ingest_config.migrate_database_url = Some(migrator.clone());
    let ingest = ingest::start(ingest_config).await.unwrap();
    let numerics = numerics::start(numerics::Config::for_tests())
        .await
        .unwrap();
    let mut worker_config = worker::Config::for_tests(&worker_url);
    worker_config.migrate_database_url = Some(migrator);
    worker_config.ingest_url = url_of(&ingest);
    worker_config.numerics_url = url_of(&numerics);
    let worker = worker::start(worker_config).await.unwrap();

    // The story under least privilege: readings stored, the window's job
    // enqueued by ingest's role, run by the worker's, the result back.
    let timeout = Duration::from_secs(20);
    let mut client = IngestServiceClient::new(
        traced_channel(
            &url_of(&ingest),
            &Transport::Plaintext,
            "ingest",
            timeout,
            timeout,
        )
        .unwrap(),
    );
    let now = Utc::now() - chrono::Duration::minutes(10);
    let window =
        DateTime::from_timestamp(now.timestamp() - now.timestamp().rem_euclid(60), 0).unwrap();
    let ack = client
        .publish_readings(pb::PublishReadingsRequest {
            readings: readings(window),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ack
        .unwrap();
    assert_eq!(ack.accepted, 31);
    first_window_result(&mut client, Instant::now()).await;

    // The worker's role cannot read ingest's data.
    assert_eq!(
        refused(&worker_url, "SELECT count(*) FROM ingest.reading").await,
        "42501"
    );
    // Ingest's role can neither read nor write the jobs tables (it
    // enqueues through the function only), nor change any schema.
    for sql in [
        "SELECT count(*) FROM jobs.job",
        "INSERT INTO jobs.job (kind, queue) VALUES ('readings.prune', 'default')",
        "UPDATE jobs.queue SET paused = true",
        "CREATE TABLE ingest.planted (x int)",
        "DROP TABLE ingest.reading",
        "SELECT count(*) FROM worker.job_runs",
    ] {
        assert_eq!(refused(&ingest_url, sql).await, "42501", "{sql}");
    }
    // Neither login may create roles or schemas: that is the migrator's.
    assert_eq!(refused(&worker_url, "CREATE SCHEMA planted").await, "42501");
    assert_eq!(refused(&worker_url, "CREATE ROLE planted").await, "42501");

    tokio::join!(worker.shutdown(), ingest.shutdown(), numerics.shutdown());
    scratch.drop_database().await;
}
