//! The shared PostgreSQL connect: TLS when the URL asks for it, and every
//! connection named after its app.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_use_tls_when_the_url_asks_and_carry_the_app_name() {
    let Some(scratch) = jobs::testing::ScratchPostgres::create("jobs_connect").await else {
        return;
    };
    let separator = if scratch.url.contains('?') { '&' } else { '?' };
    for (mode, encrypted) in [("require", true), ("disable", false)] {
        let url = format!("{}{separator}sslmode={mode}", scratch.url);
        let pool =
            jobs::postgres::connect(&url, "tls-probe", 2, std::time::Duration::from_secs(10))
                .await
                .unwrap();
        let (ssl, name): (bool, String) = sqlx::query_as(
            "SELECT s.ssl, a.application_name FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid) WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (ssl, name.as_str()),
            (encrypted, "tls-probe"),
            "sslmode={mode}"
        );
        pool.close().await;
    }
    scratch.drop_database().await;
}
