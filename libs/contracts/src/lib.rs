//! The gRPC contracts between the platform's apps, generated from `proto/`.
//!
//! This crate is generated code and nothing else: it knows no app, holds no
//! logic, and is the only place protobuf code is generated. Apps depend on it
//! to serve or call each other; they never depend on each other.
//!
//! Every RPC in a generated server trait has a default body answering
//! `UNIMPLEMENTED`, so an app registers its service first and fills in RPCs as
//! its issues land.
//!
//! Job kinds one app enqueues for another are contracts too
//! (`proto/platform/jobs/v1/job_kinds.proto`): their argument messages
//! implement [`JobArgs`], generated from the proto's `job` option, so the
//! enqueuing app and the worker take the kind, the queue and the JSON shape
//! from the same place. [`json`] is the one JSON mapping of
//! `google.protobuf.Struct` those arguments need.
//!
//! So is the per-RPC policy: every RPC carries a `platform.policy.v1.access`
//! option saying which (identity, principal) pairs may call it, generated
//! into [`access::RPC_ACCESS`] for the servers' policy layer.

#![allow(missing_docs, clippy::all, clippy::too_many_lines)] // generated code carries the .proto comments

pub mod access;
pub mod json;

/// The arguments of a job kind declared in the contracts: the kind's name
/// and default queue, and (through serde) the JSON the job stores.
pub trait JobArgs: serde::Serialize + serde::de::DeserializeOwned {
    /// The job kind, e.g. `readings.aggregate_window`.
    const KIND: &'static str;
    /// The queue it goes to unless the enqueuer says otherwise.
    const QUEUE: &'static str;
}

include!(concat!(env!("OUT_DIR"), "/job_kinds.rs"));

/// Build and process identity, served by every app through the runtime.
pub mod service {
    pub mod v1 {
        tonic::include_proto!("platform.service.v1");
    }
}

/// Readings, window results and the ingest pipeline.
pub mod ingest {
    pub mod v1 {
        tonic::include_proto!("platform.ingest.v1");
    }
}

/// Durable background jobs and queues.
pub mod jobs {
    pub mod v1 {
        tonic::include_proto!("platform.jobs.v1");
    }
}

/// Tensors, statistics, linear algebra and model scoring.
pub mod numerics {
    pub mod v1 {
        tonic::include_proto!("platform.numerics.v1");
    }
}

/// Tenants' webhook endpoints and deliveries, served by the worker.
pub mod webhooks {
    pub mod v1 {
        tonic::include_proto!("platform.webhooks.v1");
    }
}

/// A tenant's data in every app that holds some: export and deletion.
pub mod tenancy {
    pub mod v1 {
        tonic::include_proto!("platform.tenancy.v1");
    }
}

/// Who may call each RPC: identities, principals and the `access` option.
pub mod policy {
    pub mod v1 {
        tonic::include_proto!("platform.policy.v1");
    }
}

/// Encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/platform_descriptor.bin"));
