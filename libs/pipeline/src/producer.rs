//! Where messages come from: a broker consumer, a gRPC stream, a test.

use std::future::Future;

use crate::Incoming;

/// A source the pipeline pulls from, so demand, not the source, sets the
/// pace: a producer never has more than the pipeline asked for in flight.
pub trait Producer: Send + 'static {
    /// The payload type.
    type Item: Send + 'static;

    /// Up to `demand` messages. Waits until at least one is available;
    /// `None` means the source is finished and the pipeline should drain.
    fn pull(
        &mut self,
        demand: usize,
    ) -> impl Future<Output = Option<Vec<Incoming<Self::Item>>>> + Send;
}
