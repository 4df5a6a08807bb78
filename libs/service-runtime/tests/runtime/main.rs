//! The shared runtime, started in-process on port 0: admin endpoints,
//! gRPC health and info, and the shutdown sequence.

mod admin;
mod shutdown;
