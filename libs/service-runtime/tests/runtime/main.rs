//! The shared runtime, started in-process on port 0: admin endpoints,
//! gRPC health and info, and the shutdown sequence.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

mod admin;
mod balance;
mod limits;
mod public_http;
mod shutdown;
mod transport;

use std::{net::SocketAddr, time::Duration};

use service_runtime::{ServiceUrl, TracedChannel, traced_channel};

/// A gRPC channel (one connection) to a server on loopback.
fn channel_to(addr: SocketAddr) -> TracedChannel {
    let timeout = Duration::from_secs(5);
    traced_channel(
        &ServiceUrl::local(addr.port()),
        &service_runtime::Transport::Plaintext,
        "numerics",
        timeout,
        timeout,
    )
    .unwrap()
}
