//! `platform.numerics.v1.NumericsService` over the engine: requests are
//! decoded and checked on the async runtime, computed on the bounded CPU
//! pool, encoded back. Engine errors become statuses in one place,
//! [`status`]. Scoring goes through the dynamic batcher (`serving`), with the
//! caller's `grpc-timeout` as its deadline.

use std::collections::HashMap;

use contracts::numerics::v1::{
    self as pb,
    numerics_service_server::{NumericsService, NumericsServiceServer},
};
use numerics_engine::{
    EngineError, Tensor,
    linalg::{self, Decomposition},
    ops::{Binary, Reduce, Unary},
    program::{self, Limits, Op, Step},
    shape::Range,
    stats::{self, WindowRequest},
};
use tonic::{Request, Response, Status};

use crate::{error::status, pool::CpuPool, serving::ModelServer, wire};

/// The caller's deadline, from the `grpc-timeout` header (`<n><unit>`).
fn deadline<T>(request: &Request<T>) -> Option<std::time::Instant> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => std::time::Duration::from_secs(n * 3600),
        "M" => std::time::Duration::from_secs(n * 60),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    Some(std::time::Instant::now() + timeout)
}

fn stamp(at: std::time::SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// The gRPC handler.
#[derive(Debug, Clone)]
pub(crate) struct NumericsApi {
    pool: CpuPool,
    model: ModelServer,
    limits: Limits,
}

pub(crate) fn server(
    pool: CpuPool,
    model: ModelServer,
    limits: Limits,
    max_message_bytes: usize,
) -> NumericsServiceServer<NumericsApi> {
    NumericsServiceServer::new(NumericsApi {
        pool,
        model,
        limits,
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes)
}

/// The contract's op and attributes as an engine operation.
fn operation(
    field: &str,
    op: i32,
    attributes: Option<&pb::OpAttributes>,
) -> Result<Op, EngineError> {
    let default = pb::OpAttributes::default();
    let a = attributes.unwrap_or(&default);
    let reduce = |op| Op::Reduce {
        op,
        axes: a.axes.clone(),
        keep_dims: a.keep_dims,
    };
    Ok(match pb::Op::try_from(op) {
        Ok(pb::Op::Add) => Op::Binary(Binary::Add),
        Ok(pb::Op::Sub) => Op::Binary(Binary::Sub),
        Ok(pb::Op::Mul) => Op::Binary(Binary::Mul),
        Ok(pb::Op::Div) => Op::Binary(Binary::Div),
        Ok(pb::Op::Pow) => Op::Binary(Binary::Pow),
        Ok(pb::Op::Maximum) => Op::Binary(Binary::Maximum),
        Ok(pb::Op::Minimum) => Op::Binary(Binary::Minimum),
        Ok(pb::Op::Neg) => Op::Unary(Unary::Neg),
        Ok(pb::Op::Abs) => Op::Unary(Unary::Abs),
        Ok(pb::Op::Exp) => Op::Unary(Unary::Exp),
        Ok(pb::Op::Log) => Op::Unary(Unary::Log),
        Ok(pb::Op::Sqrt) => Op::Unary(Unary::Sqrt),
        Ok(pb::Op::Tanh) => Op::Unary(Unary::Tanh),
        Ok(pb::Op::Sigmoid) => Op::Unary(Unary::Sigmoid),
        Ok(pb::Op::Relu) => Op::Unary(Unary::Relu),
        Ok(pb::Op::Clamp) => {
            if a.clamp_min.is_none() && a.clamp_max.is_none() {
                return Err(EngineError::invalid(
                    "attributes.clamp_min",
                    "clamp needs clamp_min or clamp_max",
                ));
            }
            Op::Unary(Unary::Clamp(a.clamp_min, a.clamp_max))
        }
        Ok(pb::Op::Matmul) => Op::Matmul,
        Ok(pb::Op::Transpose) => Op::Transpose(a.axes.clone()),
        Ok(pb::Op::Reshape) => Op::Reshape(a.shape.clone()),
        Ok(pb::Op::Slice) => Op::Slice(
            a.slices
                .iter()
                .map(|s| Range {
                    start: s.start,
                    stop: s.stop,
                    step: if s.step == 0 { 1 } else { s.step },
                })
                .collect(),
        ),
        Ok(pb::Op::Concat) => Op::Concat(a.axis),
        Ok(pb::Op::Sum) => reduce(Reduce::Sum),
        Ok(pb::Op::Mean) => reduce(Reduce::Mean),
        Ok(pb::Op::Min) => reduce(Reduce::Min),
        Ok(pb::Op::Max) => reduce(Reduce::Max),
        Ok(pb::Op::Argmax) => reduce(Reduce::Argmax),
        Ok(pb::Op::Variance) => reduce(Reduce::Variance(a.ddof)),
        Ok(pb::Op::Unspecified) => return Err(EngineError::invalid(field, "is required")),
        Err(_) => {
            return Err(EngineError::invalid(
                field,
                format!("{op} is not a known operation"),
            ));
        }
    })
}

/// Elementwise work on at most this many elements runs in place: it takes
/// microseconds, less than handing it to a blocking thread.
const INLINE_ELEMENTS: usize = 4_096;

impl NumericsApi {
    async fn compute<T: Send + 'static>(
        &self,
        small: bool,
        job: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, Status> {
        self.pool
            .run_sized(small, job)
            .await
            .map_err(status)?
            .map_err(status)
    }
}

#[tonic::async_trait]
impl NumericsService for NumericsApi {
    async fn score_anomalies(
        &self,
        request: Request<pb::ScoreAnomaliesRequest>,
    ) -> Result<Response<pb::ScoreAnomaliesResponse>, Status> {
        let deadline = deadline(&request);
        let features = request
            .into_inner()
            .features
            .ok_or_else(|| status(EngineError::invalid("features", "is required")))?;
        let tensor = wire::decode("features", &features, &self.limits, false).map_err(status)?;
        let width = self.model.current().model.input_width();
        let rows = match tensor.shape() {
            [rows, w] if *w == width => *rows,
            shape => {
                return Err(status(EngineError::invalid(
                    "features.shape",
                    format!("must be [n, {width}], got {shape:?}"),
                )));
            }
        };
        let values: Vec<f32> = tensor.to_f64_vec().iter().map(|&v| v as f32).collect();
        let (scores, model_version) = self
            .model
            .score(values, rows, deadline)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ScoreAnomaliesResponse {
            scores: scores.iter().map(|&s| f64::from(s)).collect(),
            model_version,
        }))
    }

    async fn get_model_info(
        &self,
        _request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::GetModelInfoResponse>, Status> {
        let loaded = self.model.current();
        let config = self.model.config();
        Ok(Response::new(pb::GetModelInfoResponse {
            model_version: loaded.model.version().to_owned(),
            input_width: loaded.model.input_width() as u32,
            loaded_at: Some(stamp(loaded.loaded_at)),
            replicas: config.replicas as u32,
            max_batch_size: config.max_batch_size as u32,
        }))
    }

    async fn reload_model(
        &self,
        request: Request<pb::ReloadModelRequest>,
    ) -> Result<Response<pb::ReloadModelResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let path = request.into_inner().weights_path;
        let target = if path.is_empty() {
            "the configured weights".to_owned()
        } else {
            path.clone()
        };
        let path = (!path.is_empty()).then(|| std::path::PathBuf::from(path));
        let reloaded = self.model.reload(path).await;
        security::audit::record(&security::audit::AuditEvent {
            actor: &actor,
            action: "model.reload",
            target: &target,
            outcome: security::audit::AuditOutcome::of(&reloaded),
        });
        let (previous_version, model_version) = reloaded.map_err(status)?;
        tracing::info!(%previous_version, %model_version, "model reloaded");
        Ok(Response::new(pb::ReloadModelResponse {
            previous_version,
            model_version,
        }))
    }

    async fn compute(
        &self,
        request: Request<pb::ComputeRequest>,
    ) -> Result<Response<pb::ComputeResponse>, Status> {
        let request = request.into_inner();
        let op = operation("op", request.op, request.attributes.as_ref()).map_err(status)?;
        let operands = request
            .operands
            .iter()
            .enumerate()
            .map(|(i, t)| wire::decode(&format!("operands[{i}]"), t, &self.limits, true))
            .collect::<Result<Vec<Tensor>, _>>()
            .map_err(status)?;
        let limits = self.limits;
        let small = !matches!(op, Op::Matmul)
            && operands.iter().map(Tensor::len).sum::<usize>() <= INLINE_ELEMENTS;
        let result = self
            .compute(small, move || {
                let refs: Vec<&Tensor> = operands.iter().collect();
                program::apply(&op, &refs, &limits).map(|t| wire::encode(&t))
            })
            .await?;
        Ok(Response::new(pb::ComputeResponse {
            result: Some(result),
        }))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let request = request.into_inner();
        let mut inputs = HashMap::with_capacity(request.inputs.len());
        for (name, tensor) in &request.inputs {
            inputs.insert(
                name.clone(),
                wire::decode(&format!("inputs[{name:?}]"), tensor, &self.limits, true)
                    .map_err(status)?,
            );
        }
        let steps = request
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(Step {
                    output: s.output.clone(),
                    op: operation(&format!("steps[{i}].op"), s.op, s.attributes.as_ref())?,
                    inputs: s.inputs.clone(),
                })
            })
            .collect::<Result<Vec<Step>, EngineError>>()
            .map_err(status)?;
        let (outputs, limits) = (request.outputs, self.limits);
        let outputs = self
            .compute(false, move || {
                program::evaluate(inputs, &steps, &outputs, &limits).map(|out| {
                    out.into_iter()
                        .map(|(k, v)| (k, wire::encode(&v)))
                        .collect()
                })
            })
            .await?;
        Ok(Response::new(pb::EvaluateResponse { outputs }))
    }

    async fn decompose(
        &self,
        request: Request<pb::DecomposeRequest>,
    ) -> Result<Response<pb::DecomposeResponse>, Status> {
        let request = request.into_inner();
        let kind = match pb::Decomposition::try_from(request.decomposition) {
            Ok(pb::Decomposition::Solve) => Decomposition::Solve,
            Ok(pb::Decomposition::LeastSquares) => Decomposition::LeastSquares,
            Ok(pb::Decomposition::Cholesky) => Decomposition::Cholesky,
            Ok(pb::Decomposition::Qr) => Decomposition::Qr,
            Ok(pb::Decomposition::Svd) => Decomposition::Svd,
            Ok(pb::Decomposition::Eigh) => Decomposition::Eigh,
            _ => return Err(status(EngineError::invalid("decomposition", "is required"))),
        };
        let a = request
            .a
            .as_ref()
            .ok_or_else(|| status(EngineError::invalid("a", "is required")))?;
        let a = wire::decode("a", a, &self.limits, false).map_err(status)?;
        let b = request
            .b
            .as_ref()
            .map(|b| wire::decode("b", b, &self.limits, false))
            .transpose()
            .map_err(status)?;
        let factors = self
            .compute(false, move || {
                linalg::decompose(kind, &a, b.as_ref()).map(|f| {
                    f.into_iter()
                        .map(|(k, v)| (k.to_owned(), wire::encode(&v)))
                        .collect()
                })
            })
            .await?;
        Ok(Response::new(pb::DecomposeResponse { factors }))
    }

    async fn compute_window_statistics(
        &self,
        request: Request<pb::ComputeWindowStatisticsRequest>,
    ) -> Result<Response<pb::ComputeWindowStatisticsResponse>, Status> {
        let request = request.into_inner();
        if request.values.len() > self.limits.max_elements {
            return Err(status(EngineError::invalid(
                "values",
                format!(
                    "{} values are above the limit of {}",
                    request.values.len(),
                    self.limits.max_elements
                ),
            )));
        }
        let small = request.values.len() <= INLINE_ELEMENTS;
        let result = self
            .compute(small, move || {
                let offsets = (!request.offsets_seconds.is_empty())
                    .then_some(request.offsets_seconds.as_slice());
                stats::window_statistics(&WindowRequest {
                    values: &request.values,
                    offsets,
                    quantiles: &request.quantiles,
                    ewma_alpha: if request.ewma_alpha == 0.0 {
                        0.3
                    } else {
                        request.ewma_alpha
                    },
                    z_threshold: if request.z_threshold == 0.0 {
                        3.0
                    } else {
                        request.z_threshold
                    },
                    approximate: request.approximate_quantiles,
                })
            })
            .await?;
        Ok(Response::new(pb::ComputeWindowStatisticsResponse {
            count: result.count,
            mean: result.mean,
            variance: result.variance,
            min: result.min,
            max: result.max,
            quantiles: result
                .quantiles
                .iter()
                .map(|&(q, value)| pb::Quantile { q, value })
                .collect(),
            ewma: result.ewma,
            trend_slope: result.trend_slope,
            trend_intercept: result.trend_intercept,
            trend_r_squared: result.trend_r_squared,
            anomalous_indexes: result.anomalous,
        }))
    }
}
