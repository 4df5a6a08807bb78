//! The `ingest` binary as a real process, for tests that kill it or
//! measure its memory (the shared `AppProcess` with ingest's settings).

use service_runtime::testing::AppProcess;

/// A running `ingest` process; killed when dropped.
pub type IngestProcess = AppProcess;

/// Starts `ingest` on `database_url` with free ports and `env` on top.
pub fn start_ingest(database_url: &str, env: Vec<(&'static str, String)>) -> IngestProcess {
    let mut all = vec![("INGEST_DATABASE_URL".to_owned(), database_url.to_owned())];
    all.extend(env.into_iter().map(|(k, v)| (k.to_owned(), v)));
    AppProcess::start(env!("CARGO_BIN_EXE_ingest"), "INGEST_", all)
}
