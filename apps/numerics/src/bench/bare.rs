//! The bare tonic server and client the RPC overhead is measured against:
//! the same proto, the same work for `Compute(add)` (decode, add, encode)
//! and the same TLS setting, with none of the platform's layers (no
//! service runtime, per-RPC policy, telemetry, timeouts or compute pool).

use std::{net::SocketAddr, path::Path};

use contracts::numerics::v1::{
    self as pb,
    numerics_service_client::NumericsServiceClient,
    numerics_service_server::{NumericsService, NumericsServiceServer},
};
use numerics_engine::{Tensor, ops::Binary, program};
use tonic::{
    Request, Response, Status,
    transport::{
        Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
        server::TcpIncoming,
    },
};

/// Serves `Compute(add)` only; every other method is unimplemented.
struct BareNumerics {
    limits: program::Limits,
}

/// Methods the benchmark never calls (a request naming one is refused).
fn not_here() -> Status {
    crate::error::status(numerics_engine::EngineError::invalid(
        "method",
        "the bare benchmark server serves Compute(add) only",
    ))
}

#[tonic::async_trait]
impl NumericsService for BareNumerics {
    async fn compute(
        &self,
        request: Request<pb::ComputeRequest>,
    ) -> Result<Response<pb::ComputeResponse>, Status> {
        let request = request.into_inner();
        let operands = request
            .operands
            .iter()
            .enumerate()
            .map(|(i, t)| crate::wire::decode(&format!("operands[{i}]"), t, &self.limits, true))
            .collect::<Result<Vec<Tensor>, _>>()
            .map_err(crate::error::status)?;
        let refs: Vec<&Tensor> = operands.iter().collect();
        let result = program::apply(&program::Op::Binary(Binary::Add), &refs, &self.limits)
            .map_err(crate::error::status)?;
        Ok(Response::new(pb::ComputeResponse {
            result: Some(crate::wire::encode(&result)),
        }))
    }

    async fn evaluate(
        &self,
        _: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        Err(not_here())
    }

    async fn decompose(
        &self,
        _: Request<pb::DecomposeRequest>,
    ) -> Result<Response<pb::DecomposeResponse>, Status> {
        Err(not_here())
    }

    async fn compute_window_statistics(
        &self,
        _: Request<pb::ComputeWindowStatisticsRequest>,
    ) -> Result<Response<pb::ComputeWindowStatisticsResponse>, Status> {
        Err(not_here())
    }

    async fn score_anomalies(
        &self,
        _: Request<pb::ScoreAnomaliesRequest>,
    ) -> Result<Response<pb::ScoreAnomaliesResponse>, Status> {
        Err(not_here())
    }

    async fn get_model_info(
        &self,
        _: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::GetModelInfoResponse>, Status> {
        Err(not_here())
    }

    async fn reload_model(
        &self,
        _: Request<pb::ReloadModelRequest>,
    ) -> Result<Response<pb::ReloadModelResponse>, Status> {
        Err(not_here())
    }
}

fn read(pki: &Path, file: &str) -> Result<Vec<u8>, String> {
    std::fs::read(pki.join(file)).map_err(|e| format!("{}: {e}", pki.join(file).display()))
}

/// Starts a bare server on a free loopback port, with mutual TLS from the
/// development PKI in `pki` when `tls`; returns its address.
pub async fn serve(limits: program::Limits, pki: Option<&Path>) -> Result<SocketAddr, String> {
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| e.to_string())?
        .with_nodelay(Some(true));
    let addr = incoming.local_addr().map_err(|e| e.to_string())?;
    let mut builder = Server::builder();
    if let Some(pki) = pki {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read(pki, "numerics.pem")?,
                read(pki, "numerics.key")?,
            ))
            .client_ca_root(Certificate::from_pem(read(pki, "ca.pem")?));
        builder = builder.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let router = builder.add_service(NumericsServiceServer::new(BareNumerics { limits }));
    tokio::spawn(async move {
        if let Err(error) = router.serve_with_incoming(incoming).await {
            tracing::warn!(%error, "bare benchmark server stopped");
        }
    });
    Ok(addr)
}

/// A bare tonic client for `addr`, with the `operator` identity when `pki`.
pub async fn client(
    addr: SocketAddr,
    pki: Option<&Path>,
) -> Result<NumericsServiceClient<Channel>, String> {
    let scheme = if pki.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true);
    if let Some(pki) = pki {
        endpoint = endpoint
            .tls_config(
                ClientTlsConfig::new()
                    .domain_name("numerics.platform.internal")
                    .ca_certificate(Certificate::from_pem(read(pki, "ca.pem")?))
                    .identity(Identity::from_pem(
                        read(pki, "operator.pem")?,
                        read(pki, "operator.key")?,
                    )),
            )
            .map_err(|e| e.to_string())?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("bare client for {addr}: {e:?}"))?;
    Ok(NumericsServiceClient::new(channel))
}

/// A warmed-up bare client per transport, plaintext then mutual TLS, each
/// to its own bare server (1,000 calls of `request` first).
pub async fn warm_clients(
    pki: &Path,
    request: &pb::ComputeRequest,
) -> Result<Vec<NumericsServiceClient<Channel>>, String> {
    let limits = crate::Config::for_tests().limits;
    let mut clients = Vec::new();
    for tls in [None, Some(pki)] {
        let addr = serve(limits, tls).await?;
        let mut client = client(addr, tls).await?;
        for _ in 0..1_000 {
            client
                .compute(request.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        clients.push(client);
    }
    Ok(clients)
}

/// Prints the bare figures next to the platform's `(p50, p99, ..)` per
/// transport, as ratios.
#[allow(clippy::print_stdout, reason = "the benchmark's report")]
pub fn report(names: &[&str], bare: &mut [Vec<std::time::Duration>], platform: &[(f64, f64, f64)]) {
    for ((name, times), (p50, p99, _)) in names.iter().zip(bare).zip(platform) {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        let (median, tail) = (at(0.5), at(0.99));
        println!(
            "    {name:<10} bare tonic (same proto and work, no platform layers): p50 {median:.0} us, \
             p99 {tail:.0} us; platform/bare {:.2}x at p50, {:.2}x at p99",
            p50 / median,
            p99 / tail
        );
    }
}
