//! Cross-app tests: the apps started in-process on port 0, talking to each
//! other over real gRPC on loopback.

mod status;
mod support;
mod trace;
