//! Tower layers that carry W3C trace context across every hop and record
//! request metrics. The same [`ServerTraceLayer`] wraps tonic servers and
//! axum routers; [`ClientTraceLayer`] wraps tonic channels and HTTP clients.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Instant,
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::{
    KeyValue, global,
    metrics::Histogram,
    propagation::{Extractor, Injector},
};
use tower::{Layer, Service};
use tracing::{Instrument as _, Span, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Buckets (seconds) fit for both sub-millisecond RPCs and slow requests.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Whether a request is a gRPC call or plain HTTP, and what to call it.
#[derive(Debug, Clone)]
enum Target {
    Grpc { service: String, method: String },
    Http { method: String, route: String },
}

impl Target {
    fn of<B>(request: &Request<B>) -> Self {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if is_grpc {
            let path = request.uri().path().trim_start_matches('/');
            // Bounded label values: an unknown path cannot mint new series.
            if let Some((service, method)) = path.split_once('/')
                && path.len() <= 128
                && !method.contains('/')
            {
                return Self::Grpc {
                    service: service.to_owned(),
                    method: method.to_owned(),
                };
            }
            return Self::Grpc {
                service: "unknown".into(),
                method: "unknown".into(),
            };
        }
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
        Self::Http {
            method: request.method().as_str().to_owned(),
            route,
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Grpc { service, method } => format!("{service}/{method}"),
            Self::Http { method, route } => format!("{method} {route}"),
        }
    }

    fn attributes(&self) -> Vec<KeyValue> {
        match self {
            Self::Grpc { service, method } => vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service.clone()),
                KeyValue::new("rpc.method", method.clone()),
            ],
            Self::Http { method, route } => vec![
                KeyValue::new("http.request.method", method.clone()),
                KeyValue::new("http.route", route.clone()),
            ],
        }
    }
}

/// Requests this process has served, and those that failed on its side.
static SERVED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Requests served since the process started, as the server layers saw
/// them end: what an operator's overview turns into a request rate and an
/// error ratio (two samples apart) without a metrics backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTotals {
    /// Every gRPC call and HTTP request that ended.
    pub served: u64,
    /// Those that failed on the server's side: gRPC `UNKNOWN`,
    /// `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`,
    /// `DATA_LOSS`, HTTP 5xx, or a body that broke. A caller's mistake
    /// (`INVALID_ARGUMENT`, 404) is not a failure of the server.
    pub failed: u64,
}

/// This process's [`RequestTotals`] so far.
pub fn request_totals() -> RequestTotals {
    RequestTotals {
        served: SERVED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

/// Whether a status (gRPC code, HTTP status or `error`) is the server's
/// failure.
fn server_failure(target: &Target, status: &str) -> bool {
    match target {
        Target::Grpc { .. } => matches!(status, "2" | "4" | "12" | "13" | "14" | "15" | "error"),
        Target::Http { .. } => status.starts_with('5') || status == "error",
    }
}

/// Request-duration histograms shared by every clone of a layer.
#[derive(Debug)]
struct Instruments {
    rpc: Histogram<f64>,
    http: Histogram<f64>,
}

impl Instruments {
    fn new() -> Arc<Self> {
        let meter = global::meter("platform.requests");
        Arc::new(Self {
            rpc: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("s")
                .with_description("Duration of gRPC calls served, by service, method and status")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            http: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP requests served, by route, method and status")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
        })
    }
}

/// Server side: extracts `traceparent`, opens a server span under it, and
/// records count, latency and status per RPC or route when the response
/// body ends (gRPC status arrives in trailers).
#[derive(Debug, Clone)]
pub struct ServerTraceLayer {
    instruments: Arc<Instruments>,
    trust: TraceTrust,
}

/// Whose `traceparent` a server continues.
#[derive(Clone)]
enum TraceTrust {
    /// Every caller's (services inside the platform).
    Everyone,
    /// Only callers whose address passes the check (an edge facing the
    /// internet): any other caller's trace is linked, not continued, so it
    /// cannot choose our trace ids or its sampling.
    Peers(Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>),
}

impl std::fmt::Debug for TraceTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Everyone => "Everyone",
            Self::Peers(_) => "Peers",
        })
    }
}

impl ServerTraceLayer {
    /// Creates the layer for an internal server, continuing every caller's
    /// trace; instruments come from the global meter provider, so build it
    /// after [`crate::init`].
    pub fn new() -> Self {
        Self {
            instruments: Instruments::new(),
            trust: TraceTrust::Everyone,
        }
    }

    /// Creates the layer for a public edge: a request starts a new trace
    /// unless its peer (the `ConnectInfo<SocketAddr>` extension) is
    /// `trusted`; an untrusted caller's `traceparent` becomes a span link.
    pub fn at_edge(trusted: impl Fn(std::net::IpAddr) -> bool + Send + Sync + 'static) -> Self {
        Self {
            instruments: Instruments::new(),
            trust: TraceTrust::Peers(Arc::new(trusted)),
        }
    }
}

impl Default for ServerTraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTraceService {
            inner,
            instruments: Arc::clone(&self.instruments),
            trust: self.trust.clone(),
        }
    }
}

/// The service produced by [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTraceService<S> {
    inner: S,
    instruments: Arc<Instruments>,
    trust: TraceTrust,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ServerTraceService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let target = Target::of(&request);
        // Only the name and kind are span fields (what the JSON log shows
        // as a log line's request); the rest go straight to the trace as
        // attributes, so the log layer does not format them on every
        // request (the edge benchmark's profile: a fifth of the stack).
        let span = match &target {
            Target::Grpc { .. } => tracing::info_span!(
                "grpc server",
                otel.name = %target.name(),
                otel.kind = "server",
            ),
            Target::Http { .. } => tracing::info_span!(
                "http server",
                otel.name = %target.name(),
                otel.kind = "server",
            ),
        };
        for attribute in target.attributes() {
            span.set_attribute(attribute.key, attribute.value);
        }
        let parent =
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
        let trusted = match &self.trust {
            TraceTrust::Everyone => true,
            TraceTrust::Peers(trusted) => request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .is_some_and(|peer| trusted(peer.0.ip())),
        };
        if trusted {
            // A missing or malformed traceparent leaves the span as a new root.
            let _ = span.set_parent(parent);
        } else {
            use opentelemetry::trace::TraceContextExt as _;
            let linked = parent.span().span_context().clone();
            if linked.is_valid() {
                span.add_link(linked);
            }
        }
        let observation = Observation {
            started: Instant::now(),
            instruments: Arc::clone(&self.instruments),
            target,
            span: span.clone(),
            recorded: false,
        };
        ServerFuture {
            inner: self.inner.call(request).instrument(span),
            observation: Some(observation),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ServerTraceService`].
    pub struct ServerFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        observation: Option<Observation>,
    }
}

impl<F, ResBody, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<ObservedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut observation) = this.observation.take() else {
            // Polled after completion: a contract violation by the caller.
            return Poll::Pending;
        };
        Poll::Ready(match result {
            Ok(response) => {
                let status = match observation.target {
                    Target::Grpc { .. } => grpc_status(response.headers()),
                    Target::Http { .. } => Some(response.status().as_u16().to_string()),
                };
                let (parts, body) = response.into_parts();
                let ended = body.is_end_stream();
                let mut body = ObservedBody {
                    inner: body,
                    observation: Some(observation),
                    status,
                };
                if ended {
                    body.finish();
                }
                Ok(Response::from_parts(parts, body))
            }
            Err(error) => {
                observation.record("error");
                Err(error)
            }
        })
    }
}

/// Everything needed to record one request once it is over.
struct Observation {
    started: Instant,
    instruments: Arc<Instruments>,
    target: Target,
    span: Span,
    recorded: bool,
}

impl Observation {
    fn record(&mut self, status: &str) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        SERVED.fetch_add(1, Ordering::Relaxed);
        if server_failure(&self.target, status) {
            FAILED.fetch_add(1, Ordering::Relaxed);
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut attributes = self.target.attributes();
        match self.target {
            Target::Grpc { .. } => {
                let code = KeyValue::new("rpc.grpc.status_code", status.to_owned());
                self.span
                    .set_attribute(code.key.clone(), code.value.clone());
                attributes.push(code);
                if status != "0" {
                    self.span
                        .set_status(opentelemetry::trace::Status::error(""));
                }
                self.instruments.rpc.record(elapsed, &attributes);
            }
            Target::Http { .. } => {
                let code = KeyValue::new("http.response.status_code", status.to_owned());
                self.span
                    .set_attribute(code.key.clone(), code.value.clone());
                attributes.push(code);
                if status.starts_with('5') || status == "error" {
                    self.span
                        .set_status(opentelemetry::trace::Status::error(""));
                }
                self.instruments.http.record(elapsed, &attributes);
            }
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        // The client went away before the body ended.
        self.record("cancelled");
    }
}

pin_project_lite::pin_project! {
    /// Response body that records the request when its last frame passes.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        observation: Option<Observation>,
        status: Option<String>,
    }
}

impl<B> ObservedBody<B> {
    fn finish(&mut self) {
        if let Some(mut observation) = self.observation.take() {
            // gRPC with no grpc-status at all is a broken response: UNKNOWN.
            observation.record(self.status.as_deref().unwrap_or("2"));
        }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = grpc_status(trailers)
                {
                    *this.status = Some(status);
                }
            }
            Some(Err(_)) => *this.status = Some("error".into()),
            None => {}
        }
        if (frame.is_none() || this.inner.is_end_stream())
            && let Some(mut observation) = this.observation.take()
        {
            observation.record(this.status.as_deref().unwrap_or("2"));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Client side: opens a client span and injects its context as
/// `traceparent` so the next service continues the same trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer;

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTraceService { inner }
    }
}

/// The service produced by [`ClientTraceLayer`].
#[derive(Debug, Clone)]
pub struct ClientTraceService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ClientTraceService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let name = request.uri().path().trim_start_matches('/').to_owned();
        let span = tracing::info_span!("client call", otel.name = %name, otel.kind = "client");
        let context = span.context();
        global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(request.headers_mut()));
        });
        self.inner.call(request).instrument(span)
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}
