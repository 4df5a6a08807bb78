//! The PostgreSQL backup drill of docs/runbooks/backup.md, as an operator
//! runs it: `pg_dump` of the live database while the apps serve, the
//! database wiped, `pg_restore` into an empty one, every table of every
//! app's schema holding the same rows, and the apps serving the restored
//! data again.

use std::{collections::BTreeMap, process::Command, time::Duration};

use chrono::{DateTime, Utc};
use gateway::{
    keys::TenantId,
    storage::{GatewayStore, postgres::PgGatewayStore},
    tenancy,
};
use service_runtime::testing::{http_request, wait_until};
use sqlx::{Connection as _, Executor as _, PgConnection, postgres::PgConnectOptions};

use crate::support::url_of;

/// Hang guard, not a timing claim.
const PATIENCE: Duration = Duration::from_secs(60);

/// Rows per table of the platform's schemas (and which migrations ran).
async fn row_counts(url: &str) -> BTreeMap<String, i64> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let counts = row_counts_on(&mut conn).await;
    conn.close().await.unwrap();
    counts
}

/// [`row_counts`] on `conn`, inside whatever transaction it is in.
async fn row_counts_on(conn: &mut PgConnection) -> BTreeMap<String, i64> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_type = 'BASE TABLE'
           AND (table_schema IN ('gateway', 'ingest', 'worker', 'jobs')
                OR (table_schema = 'public' AND table_name = '_sqlx_migrations'))
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut counts = BTreeMap::new();
    for (schema, table) in tables {
        let count: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".\"{table}\""))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        counts.insert(format!("{schema}.{table}"), count);
    }
    counts
}

/// Ingest, numerics and the worker (pointed at the other two) on `url`.
async fn start_backends(
    url: &str,
) -> (
    service_runtime::Running,
    service_runtime::Running,
    service_runtime::Running,
) {
    let ingest = ingest::start(ingest::Config::for_tests(url)).await.unwrap();
    let numerics = numerics::start(numerics::Config::for_tests())
        .await
        .unwrap();
    let mut config = worker::Config::for_tests(url);
    config.ingest_url = url_of(&ingest);
    config.numerics_url = url_of(&numerics);
    let worker = worker::start(config).await.unwrap();
    (ingest, worker, numerics)
}

/// Runs a PostgreSQL client tool, failing the test with its output.
fn run(tool: &str, args: &[&str]) {
    let output = Command::new(tool).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_of_the_live_database_restores_every_row_and_the_apps_serve_it() {
    let Some(postgres) = jobs::testing::ScratchPostgres::create("platform_backup").await else {
        return;
    };
    let url = postgres.url.clone();
    let (ingest, worker, numerics) = start_backends(&url).await;
    let config =
        gateway::Config::for_tests(&url, url_of(&ingest), url_of(&worker), url_of(&numerics));
    let peppers = config.peppers.clone();
    let gateway = gateway::start(config).await.unwrap();
    let store = PgGatewayStore::new(postgres.pool.clone());
    let acme = TenantId::parse("acme").unwrap();
    store.create_tenant(&acme, "A tenant").await.unwrap();
    let scopes = ["readings:write", "results:read"]
        .map(str::to_owned)
        .to_vec();
    let (key, _) = tenancy::create_key(&store, &peppers, &acme, scopes, "backup drill", None)
        .await
        .unwrap();
    let bearer = format!("Bearer {}", key.reveal());

    // Readings in two closed windows an hour apart, plus one now: the
    // windows close, ingest enqueues their aggregation, the worker stores
    // the results. Every schema then holds rows.
    let hour = Utc::now() - chrono::Duration::hours(3);
    let hour =
        DateTime::from_timestamp(hour.timestamp() - hour.timestamp().rem_euclid(3_600), 0).unwrap();
    let readings: Vec<_> = (0..40)
        .map(|i| {
            serde_json::json!({
                "event_id": format!("r{i}"),
                "device_id": format!("boiler-{}", i % 2),
                "metric": "temperature_c",
                "value": 20.0 + f64::from(i % 5),
                "observed_at": (hour + chrono::Duration::minutes(i64::from(i) * 3)).to_rfc3339(),
            })
        })
        .chain(std::iter::once(serde_json::json!({
            "event_id": "now",
            "device_id": "boiler-0",
            "metric": "temperature_c",
            "value": 21.0,
            "observed_at": Utc::now().to_rfc3339(),
        })))
        .collect();
    let addr = gateway.http_addr.unwrap();
    let published = http_request(
        addr,
        "POST",
        "/v1/readings",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        &serde_json::json!({ "readings": readings }).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(published.status, 200, "{}", published.body);
    let results = || async {
        let answer = http_request(
            addr,
            "GET",
            "/v1/results",
            &[("Authorization", &bearer)],
            "",
        )
        .await
        .ok()?;
        let body: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
        let results = body["results"].as_array()?.len();
        (results >= 2).then_some(results)
    };
    let served_before = wait_until("window results stored", PATIENCE, results).await;
    // Let the aggregation settle, so the counts below are the dump's (the
    // apps keep serving through the dump: a live backup).
    let pool = postgres.pool.clone();
    wait_until("every aggregation job finished", PATIENCE, || {
        let pool = pool.clone();
        async move {
            let unfinished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs.job WHERE state::text NOT IN ('completed', 'discarded', 'cancelled')",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            // The jobs node's maintenance lease is taken a few seconds
            // after start: a row that would otherwise land between the
            // dump and the count.
            let leaders: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs.leader")
                .fetch_one(&pool)
                .await
                .ok()?;
            (unfinished == 0 && leaders > 0).then_some(())
        }
    })
    .await;
    let served_before = results().await.unwrap_or(served_before);

    // The backup, taken live: a consistent snapshot while the apps serve.
    let dump = std::env::temp_dir().join(format!("platform-backup-{}.dump", std::process::id()));
    let dump_path = dump.display().to_string();
    // The counts to compare with come from the dump's own snapshot: the
    // apps keep writing (heartbeats, leases, cron) while it runs.
    let mut snapshot = PgConnection::connect(&url).await.unwrap();
    snapshot
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .unwrap();
    let snapshot_id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut snapshot)
        .await
        .unwrap();
    let before = row_counts_on(&mut snapshot).await;
    run(
        "pg_dump",
        &[
            "--format=custom",
            "--snapshot",
            &snapshot_id,
            "--file",
            &dump_path,
            &url,
        ],
    );
    snapshot.execute("COMMIT").await.unwrap();
    snapshot.close().await.unwrap();
    tokio::join!(
        ingest.shutdown(),
        worker.shutdown(),
        numerics.shutdown(),
        gateway.shutdown()
    );
    for table in [
        "gateway.tenant",
        "gateway.api_key",
        "ingest.reading",
        "ingest.window_result",
        "jobs.job",
    ] {
        assert!(
            before.get(table).copied().unwrap_or(0) > 0,
            "{table} is empty: {before:?}"
        );
    }

    // The disaster: the database is gone. Then the restore into an empty one.
    let options: PgConnectOptions = url.parse().unwrap();
    let database = options.get_database().unwrap().to_owned();
    let admin_url = jobs::postgres::with_database(&url, "postgres");
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    postgres.pool.close().await;
    admin
        .execute(format!("DROP DATABASE \"{database}\" WITH (FORCE)").as_str())
        .await
        .unwrap();
    admin
        .execute(format!("CREATE DATABASE \"{database}\"").as_str())
        .await
        .unwrap();
    assert!(row_counts(&url).await.is_empty(), "the database was wiped");
    run(
        "pg_restore",
        &[
            "--exit-on-error",
            "--no-owner",
            "--dbname",
            &url,
            &dump_path,
        ],
    );
    let _ = std::fs::remove_file(&dump);
    let after = row_counts(&url).await;
    assert_eq!(
        after, before,
        "every table holds the rows it held at the dump"
    );

    // The apps start on the restored database (nothing left to migrate)
    // and serve what it holds.
    let (ingest, worker, numerics) = start_backends(&url).await;
    let config =
        gateway::Config::for_tests(&url, url_of(&ingest), url_of(&worker), url_of(&numerics));
    let gateway = gateway::start(config).await.unwrap();
    let addr = gateway.http_addr.unwrap();
    let answer = http_request(
        addr,
        "GET",
        "/v1/results",
        &[("Authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        answer.status, 200,
        "the key restored with its tenant: {}",
        answer.body
    );
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        body["results"].as_array().unwrap().len(),
        served_before,
        "{body}"
    );
    tokio::join!(
        ingest.shutdown(),
        worker.shutdown(),
        numerics.shutdown(),
        gateway.shutdown()
    );
    admin
        .execute(format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
}
