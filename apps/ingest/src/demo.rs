//! `ingest publish`: synthetic readings for trying the platform locally,
//! published over gRPC to a running ingest like any client would.

use std::time::Duration;

use chrono::Utc;
use clap::Args;
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use service_runtime::{EnvValue as _, ServiceUrl, Transport};

/// What to publish where.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Ingest's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub url: String,
    /// Where `platform certs` wrote the certificates: the command connects
    /// as the operator (`operator.pem`, `operator.key`, `ca.pem`).
    #[arg(long, default_value = service_runtime::DEFAULT_CERT_DIR)]
    pub tls_dir: std::path::PathBuf,
    /// Connect without TLS (only to a loopback ingest started with
    /// `INGEST_GRPC_PLAINTEXT=true`).
    #[arg(long)]
    pub plaintext: bool,
    /// Tenant of the readings.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// Devices publishing.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Minutes of readings per device (one every 2 s), ending now.
    #[arg(long, default_value_t = 10)]
    pub minutes: i64,
    /// Put one spike in each device's middle minute (an anomalous window).
    #[arg(long)]
    pub spike: bool,
}

/// Publishes the readings in batches and prints each acknowledgement.
#[allow(clippy::print_stdout, reason = "the command's output")]
pub async fn publish(args: &PublishArgs) -> Result<(), String> {
    let url = ServiceUrl::parse_env(&args.url).map_err(|e| format!("--url: {e}"))?;
    let transport = if args.plaintext {
        Transport::Plaintext
    } else {
        Transport::mutual_tls_in(&args.tls_dir, "operator")
    };
    let channel = service_runtime::traced_channel(
        &url,
        &transport,
        "ingest",
        service_runtime::CONNECT_TIMEOUT,
        Duration::from_secs(60),
    )
    .map_err(|e| format!("--url: {e}"))?;
    let mut client = IngestServiceClient::new(channel);
    let now = Utc::now();
    let per_device = args.minutes.max(1) * 30;
    for device in 0..args.devices {
        let readings: Vec<pb::Reading> = (0..per_device)
            .map(|i| {
                let at = now - chrono::Duration::seconds(2 * (per_device - i));
                let spike = args.spike && i == per_device / 2;
                pb::Reading {
                    event_id: format!("{}-{device}-{}", args.tenant, at.timestamp()),
                    tenant_id: args.tenant.clone(),
                    device_id: format!("device-{device}"),
                    metric: "temperature_c".into(),
                    value: if spike {
                        95.0
                    } else {
                        20.0 + ((i * 7 + device as i64) % 10) as f64 * 0.05
                    },
                    observed_at: Some(prost_types::Timestamp {
                        seconds: at.timestamp(),
                        nanos: 0,
                    }),
                    attributes: Default::default(),
                }
            })
            .collect();
        let ack = client
            .publish_readings(pb::PublishReadingsRequest {
                readings,
                ..Default::default()
            })
            .await
            .map_err(|status| format!("publish: {} ({:?})", status.message(), status.code()))?
            .into_inner()
            .ack
            .unwrap_or_default();
        println!(
            "device-{device}: {} accepted, {} duplicates, {} rejected",
            ack.accepted,
            ack.duplicates,
            ack.rejected.len()
        );
        for rejected in ack.rejected.iter().take(5) {
            println!(
                "  reading {}: {}: {}",
                rejected.index, rejected.field, rejected.reason
            );
        }
    }
    Ok(())
}
