//! How a node is configured.

use std::time::Duration;

/// One queue as a node runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Most jobs of this queue running at once on this node.
    pub local_limit: u32,
    /// Most jobs of this queue running at once across all nodes.
    pub global_limit: Option<u32>,
}

impl QueueConfig {
    /// A queue with a per-node limit and no global limit.
    pub fn new(name: impl Into<String>, local_limit: u32) -> Self {
        Self {
            name: name.into(),
            local_limit: local_limit.max(1),
            global_limit: None,
        }
    }
}

/// How a node behaves; [`NodeConfig::new`] gives production defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Unique per boot (two processes never share one).
    pub node_id: String,
    /// The queues this node runs.
    pub queues: Vec<QueueConfig>,
    /// Longest a node waits before looking for jobs without a wake-up.
    pub poll_interval: Duration,
    /// A node silent this long is presumed dead and its jobs rescued.
    pub lease: Duration,
    /// Most attempt ends recorded in one statement.
    pub completion_batch: usize,
    /// How long the first end in a batch waits for company.
    pub completion_linger: Duration,
    /// Finished jobs older than this are pruned.
    pub prune_age: Duration,
    /// Most jobs deleted per prune statement.
    pub prune_batch: u32,
    /// How often the leader rescues and prunes.
    pub maintenance_interval: Duration,
    /// How long executing jobs may finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Periodic jobs, inserted by whichever node holds the `cron` lease.
    pub cron: Vec<crate::CronJob>,
}

impl NodeConfig {
    /// Defaults: poll every second, 30 s lease, batches of up to 1,000,
    /// prune after 7 days, 15 s grace.
    pub fn new(queues: Vec<QueueConfig>) -> Self {
        Self {
            node_id: new_node_id(),
            queues,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            completion_batch: 1_000,
            completion_linger: Duration::from_millis(1),
            prune_age: Duration::from_secs(7 * 86_400),
            prune_batch: 10_000,
            maintenance_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(15),
            cron: Vec::new(),
        }
    }
}

/// `<host>-<pid>-<boot nanos>`: unique per boot.
pub fn new_node_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}-{}-{:x}", std::process::id(), nanos)
}
