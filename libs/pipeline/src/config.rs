//! The shape and bounds of a pipeline.

use std::time::Duration;

/// Topology, batching and the bounds that keep memory under a ceiling.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Concurrent processors.
    pub processors: usize,
    /// Concurrent batchers (batch keys are spread over them).
    pub batchers: usize,
    /// Concurrent batch processors.
    pub batch_processors: usize,
    /// A batch is handled when it holds this many messages...
    pub batch_size: usize,
    /// ...or when this long has passed since its first message arrived.
    pub batch_timeout: Duration,
    /// Keep order within a partition end to end (routes by partition).
    pub partitioned: bool,
    /// Most messages pulled from the producer at once.
    pub max_demand: usize,
    /// Most messages inside the pipeline (pulled, not yet acknowledged).
    pub max_in_flight: usize,
    /// Most payload bytes inside the pipeline.
    pub max_in_flight_bytes: usize,
    /// Capacity, in chunks, of each channel between stages.
    pub channel_capacity: usize,
    /// Initial producer rate limit: at most this many messages per interval.
    pub rate_limit: Option<RateLimit>,
}

/// At most `messages` per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages allowed per interval.
    pub messages: u32,
    /// The interval.
    pub interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            processors: 2,
            batchers: 1,
            batch_processors: 2,
            batch_size: 500,
            batch_timeout: Duration::from_millis(50),
            partitioned: false,
            max_demand: 1_000,
            max_in_flight: 20_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            channel_capacity: 8,
            rate_limit: None,
        }
    }
}

/// A setting that cannot work, named so a caller can point at its own
/// source of it (an environment variable, a flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    /// A count that must be positive is zero.
    #[error("{setting} must be at least 1")]
    Zero {
        /// The setting, e.g. `batch_size`.
        setting: &'static str,
    },
    /// `batch_timeout` is zero.
    #[error("batch_timeout must be above zero")]
    ZeroBatchTimeout,
    /// An in-flight bound does not fit the budget's 32-bit counters.
    #[error("{setting} must fit in 32 bits")]
    TooLarge {
        /// `max_in_flight` or `max_in_flight_bytes`.
        setting: &'static str,
    },
    /// A rate limit of no messages or over no time.
    #[error("rate_limit needs at least 1 message per non-zero interval")]
    RateLimit,
}

impl InvalidConfig {
    /// The setting at fault, as named in [`PipelineConfig`].
    pub fn setting(&self) -> &'static str {
        match self {
            Self::Zero { setting } | Self::TooLarge { setting } => setting,
            Self::ZeroBatchTimeout => "batch_timeout",
            Self::RateLimit => "rate_limit",
        }
    }
}

impl PipelineConfig {
    /// Names the first setting that cannot work.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let positive = [
            ("processors", self.processors),
            ("batchers", self.batchers),
            ("batch_processors", self.batch_processors),
            ("batch_size", self.batch_size),
            ("max_demand", self.max_demand),
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_bytes", self.max_in_flight_bytes),
            ("channel_capacity", self.channel_capacity),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(InvalidConfig::Zero { setting });
            }
        }
        if self.batch_timeout.is_zero() {
            return Err(InvalidConfig::ZeroBatchTimeout);
        }
        for (setting, value) in [
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_bytes", self.max_in_flight_bytes),
        ] {
            if value > u32::MAX as usize {
                return Err(InvalidConfig::TooLarge { setting });
            }
        }
        if let Some(limit) = self.rate_limit
            && (limit.messages == 0 || limit.interval.is_zero())
        {
            return Err(InvalidConfig::RateLimit);
        }
        Ok(())
    }
}
