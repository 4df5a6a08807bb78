//! A small stage kit in the manner of Broadway: a producer pulled by demand,
//! N concurrent processors, batchers that group by key and close a batch at
//! `batch_size` or `batch_timeout` after its first message, and M batch
//! processors that write batches. Every queue is bounded and in-flight work
//! is bounded by count and by bytes, so memory stays under a ceiling. A
//! message is acknowledged to its source only after the batch holding it
//! was handled (durably written); failures reach the source as failures,
//! invalid messages pass `handle_failed` (the dead-letter hook) first.
//! Draining stops the producer, flushes partial batches and completes
//! acknowledgements within a budget; what is left is never acknowledged, so
//! its source redelivers it.
//!
//! Architecture invariant: the kit knows nothing of readings, gRPC or NATS;
//! sources are [`Producer`]s with [`Acknowledger`]s, sinks are [`Handler`]s.

pub mod bench;
mod config;
mod handler;
mod message;
mod producer;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;
mod topology;

pub use config::{InvalidConfig, PipelineConfig, RateLimit};
pub use handler::{Handler, ItemFailure, Processed};
pub use message::{AckRef, Acknowledger, Failure, FailureKind, Incoming, TraceCarrier};
pub use producer::Producer;
pub use stats::{PipelineStats, StageSnapshot};
pub use topology::{DrainReport, PipelineError, PipelineHandle, PipelineMonitor, start};
