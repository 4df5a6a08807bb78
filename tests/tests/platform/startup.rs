//! Starting the apps the way a process manager does: all at once, on an
//! embedded database file that does not exist yet.

use crate::support::ScratchDb;

/// Ingest and the worker both apply the jobs migrations to the shared
/// SQLite file; started at the same instant, neither may fail because the
/// other is half-way through (they used to: `table jobs_job already
/// exists`). Repeated, since the race is a matter of timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_worker_started_together_on_a_fresh_file_both_become_ready() {
    for round in 0..20 {
        let db = ScratchDb::new();
        let (ingest, worker) = tokio::join!(
            ingest::start(ingest::Config::for_tests(&db.url())),
            worker::start(worker::Config::for_tests(&db.url())),
        );
        let (ingest, worker) = match (ingest, worker) {
            (Ok(ingest), Ok(worker)) => (ingest, worker),
            (ingest, worker) => panic!(
                "round {round}: ingest {:?}, worker {:?}",
                ingest.err().map(|e| e.to_string()),
                worker.err().map(|e| e.to_string())
            ),
        };
        tokio::join!(ingest.shutdown(), worker.shutdown());
    }
}
