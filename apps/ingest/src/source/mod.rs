//! Where readings come from. Each source is a [`pipeline::Producer`] with
//! its own acknowledger: [`grpc`] answers publishers when their batch is
//! durable (it is also the in-process path of the quick start, with no
//! broker in between), [`nats`] acks JetStream messages after commit.

pub mod grpc;
pub mod nats;
