//! The `worker` binary's commands besides serving.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use jobs::{JobStore, NewJob};
use service_runtime::{StandardArgs, load_config};

use crate::{WorkerStore as _, app, bench::BenchArgs, storage};

/// Command line of the `worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "worker",
    about = "Runs background jobs and serves the jobs API"
)]
pub struct Cli {
    /// `--version`, `--check-config`.
    #[command(flatten)]
    pub standard: StandardArgs,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-shot commands against `WORKER_DATABASE_URL`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the jobs engine's and the worker's migrations, then exit.
    Migrate,
    /// Ask this app's admin port whether it is ready (`/readyz`), with the
    /// server's configuration: exit 0 when it is. The container image's
    /// health check (distroless images have no curl).
    HealthCheck,

    /// Insert jobs.
    Enqueue {
        /// Job kind, e.g. noop, record_run, webhook.deliver.
        #[arg(long)]
        kind: String,
        /// Args as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Queue name.
        #[arg(long, default_value = jobs::DEFAULT_QUEUE)]
        queue: String,
        /// 0 (first) to 4 (last).
        #[arg(long, default_value_t = jobs::DEFAULT_PRIORITY)]
        priority: i16,
        /// Attempts allowed.
        #[arg(long, default_value_t = jobs::DEFAULT_MAX_ATTEMPTS)]
        max_attempts: i32,
        /// Run this many seconds from now.
        #[arg(long)]
        run_in: Option<u64>,
        /// How many copies to insert (in batches of 10,000).
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Print job counts per queue and state.
    Stats,
    /// Measure burn-down, insert-to-start latency and bulk insert.
    Bench(BenchArgs),
}

/// Runs a one-shot command; exit code 0 on success.
#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "command-line output"
)]
pub fn run(command: Command) -> ExitCode {
    if matches!(command, Command::HealthCheck) {
        return service_runtime::run_health_check(&app());
    }
    let config = match load_config(&app()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("worker: {error}");
            return ExitCode::from(78);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if let Command::Bench(args) = command {
            return crate::bench::run(&config, args).await;
        }
        let url = config.database_url.as_str();
        if config.database_url.is_postgres() {
            let store = match &config.migrate_database_url {
                Some(migrator) => {
                    storage::postgres::provision(migrator.as_str(), url, config.database_pool)
                        .await?
                }
                None => {
                    let store = storage::postgres::connect(url, config.database_pool).await?;
                    // Under a migrations Job the login may not migrate:
                    // operator commands use the schema the Job applied.
                    if config.migrate_at_start || matches!(command, Command::Migrate) {
                        store.migrate_all().await?;
                    }
                    store
                }
            };
            execute(store, command).await
        } else {
            let store = storage::sqlite::connect(url).await?;
            store.migrate_all().await?;
            execute(store, command).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout, reason = "command-line output")]
async fn execute<S: JobStore>(store: S, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate => println!("migrations applied"),
        // Answered by `run` before any database work.
        Command::HealthCheck => {}
        Command::Enqueue {
            kind,
            args,
            queue,
            priority,
            max_attempts,
            run_in,
            count,
        } => {
            let args: serde_json::Value = serde_json::from_str(&args)
                .map_err(|e| anyhow::anyhow!("--args is not JSON: {e}"))?;
            let mut job = NewJob::new(kind, args)
                .with_queue(queue)
                .with_priority(priority)
                .with_max_attempts(max_attempts);
            if let Some(seconds) = run_in {
                job = job.scheduled_in(Duration::from_secs(seconds));
            }
            job.validate()?;
            let mut inserted = 0usize;
            let mut remaining = count as usize;
            let started = std::time::Instant::now();
            while remaining > 0 {
                let batch = remaining.min(10_000);
                inserted += store.insert_many(&vec![job.clone(); batch]).await?.len();
                remaining -= batch;
            }
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "enqueued {inserted} job(s) in {seconds:.3} s ({:.0} jobs/s)",
                inserted as f64 / seconds.max(f64::EPSILON)
            );
        }
        Command::Stats => {
            println!(
                "{:<16} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "queue",
                "paused",
                "available",
                "scheduled",
                "executing",
                "retryable",
                "completed",
                "discarded",
                "cancelled"
            );
            for q in store.queue_counts().await? {
                println!(
                    "{:<16} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    q.queue,
                    q.paused,
                    q.counts[0],
                    q.counts[1],
                    q.counts[2],
                    q.counts[3],
                    q.counts[4],
                    q.counts[5],
                    q.counts[6]
                );
            }
        }
        Command::Bench(_) => {}
    }
    Ok(())
}
