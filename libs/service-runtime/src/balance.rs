//! Client-side load balancing over every address a service's DNS name
//! resolves to (a Kubernetes headless Service, several A records): one
//! lazily connected HTTP/2 channel per address, calls spread round-robin,
//! the name resolved again every [`RE_RESOLVE`], and an address whose
//! connection just failed left out for [`COOL_DOWN`] while others answer.
//! Each connection still checks the callee's certificate for its service
//! name, never for the address dialled.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tonic::{body::Body, transport::Channel};
use tower::{Service, ServiceExt as _};
use tracing::Instrument as _;

/// How often a name is resolved again: below the 30 s TTL Kubernetes'
/// DNS gives a headless Service's records, so a new replica takes calls
/// within a TTL and a removed one stops getting them.
pub const RE_RESOLVE: Duration = Duration::from_secs(10);
/// How long an address whose connection failed is skipped while another
/// is available.
pub const COOL_DOWN: Duration = Duration::from_secs(5);

/// Any error a call through a [`PlatformChannel`] can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Turns a service's host and port into the addresses to call.
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host:port` stands for now.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move {
            #[cfg(feature = "testing")]
            if let Some(addrs) = lock(&TEST_NAMES).get(host) {
                return Ok(addrs.clone());
            }
            Ok(tokio::net::lookup_host((host, port)).await?.collect())
        })
    }
}

/// Names the system resolver answers from here instead of DNS, set by
/// `testing::resolve_name_to`: how a test puts several replicas on
/// 127.0.0.x behind one name an app is configured with.
#[cfg(feature = "testing")]
pub(crate) static TEST_NAMES: Mutex<std::collections::BTreeMap<String, Vec<SocketAddr>>> =
    Mutex::new(std::collections::BTreeMap::new());

/// Makes the lazily connected channel to one address.
pub(crate) type ConnectTo = Box<dyn Fn(SocketAddr) -> Result<Channel, BoxError> + Send + Sync>;

/// A gRPC channel to one address, or balanced over a name's addresses.
#[derive(Clone)]
pub enum PlatformChannel {
    /// One address (an IP literal or `localhost` in the URL).
    Single(Channel),
    /// Every address a DNS name resolves to.
    Balanced(Arc<Balancer>),
}

impl std::fmt::Debug for PlatformChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(channel) => f.debug_tuple("Single").field(channel).finish(),
            Self::Balanced(balancer) => f
                .debug_struct("Balanced")
                .field("host", &balancer.host)
                .field("port", &balancer.port)
                .finish_non_exhaustive(),
        }
    }
}

impl Service<http::Request<Body>> for PlatformChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Single(channel) => channel.poll_ready(cx).map_err(Into::into),
            // Readiness is per address, awaited in `call` once one is picked.
            Self::Balanced(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            Self::Single(channel) => {
                let call = channel.call(request);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Self::Balanced(balancer) => {
                let balancer = balancer.clone();
                Box::pin(async move { balancer.call(request).await })
            }
        }
    }
}

/// One address and its channel.
struct Backend {
    addr: SocketAddr,
    channel: Channel,
    /// Until when to skip it after its connection failed.
    cooling_until: Mutex<Option<Instant>>,
}

impl Backend {
    fn cooling(&self, now: Instant) -> bool {
        lock(&self.cooling_until).is_some_and(|until| now < until)
    }
}

/// The state behind [`PlatformChannel::Balanced`].
pub struct Balancer {
    host: String,
    port: u16,
    resolver: Arc<dyn Resolve>,
    connect: ConnectTo,
    backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    /// Set once the first resolution succeeded and the re-resolving task
    /// runs.
    started: tokio::sync::OnceCell<()>,
}

impl Balancer {
    pub(crate) fn new(
        host: String,
        port: u16,
        resolver: Arc<dyn Resolve>,
        connect: ConnectTo,
    ) -> Self {
        Self {
            host,
            port,
            resolver,
            connect,
            backends: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            started: tokio::sync::OnceCell::new(),
        }
    }

    /// The addresses calls are spread over now.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        read(&self.backends).iter().map(|b| b.addr).collect()
    }

    async fn call(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        self.start().await?;
        let backend = self.pick().ok_or_else(|| -> BoxError {
            format!("{}:{} resolves to no address", self.host, self.port).into()
        })?;
        let mut channel = backend.channel.clone();
        let outcome = match channel.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            // A transport failure (gRPC errors arrive inside a response):
            // send the next calls elsewhere for a while.
            *lock(&backend.cooling_until) = Some(Instant::now() + COOL_DOWN);
            tracing::debug!(addr = %backend.addr, host = %self.host, "call failed; cooling the address down");
        }
        outcome.map_err(Into::into)
    }

    /// Resolves the name the first time a call needs it, then keeps it
    /// fresh from a task that ends when the channel is dropped.
    async fn start(self: &Arc<Self>) -> Result<(), BoxError> {
        self.started
            .get_or_try_init(|| async {
                self.refresh().await?;
                let weak = Arc::downgrade(self);
                let span = tracing::info_span!("re-resolve", host = %self.host);
                tokio::spawn(re_resolve(weak).instrument(span));
                Ok::<(), BoxError>(())
            })
            .await
            .map(|_| ())
    }

    /// Resolves again and replaces the address list, keeping the channels
    /// (and their connections) of addresses still present. A failed or
    /// empty answer keeps the list as it was.
    async fn refresh(&self) -> Result<(), BoxError> {
        let mut resolved = self.resolver.resolve(&self.host, self.port).await?;
        resolved.sort_unstable();
        resolved.dedup();
        if resolved.is_empty() {
            return Err(format!("{}:{} resolves to no address", self.host, self.port).into());
        }
        let current: HashMap<SocketAddr, Arc<Backend>> = read(&self.backends)
            .iter()
            .map(|b| (b.addr, b.clone()))
            .collect();
        let mut next = Vec::with_capacity(resolved.len());
        for addr in resolved {
            match current.get(&addr) {
                Some(backend) => next.push(backend.clone()),
                None => next.push(Arc::new(Backend {
                    addr,
                    channel: (self.connect)(addr)?,
                    cooling_until: Mutex::new(None),
                })),
            }
        }
        if next.len() != current.len() || next.iter().any(|b| !current.contains_key(&b.addr)) {
            tracing::info!(host = %self.host, addresses = ?next.iter().map(|b| b.addr).collect::<Vec<_>>(), "addresses changed");
        }
        *write(&self.backends) = next;
        Ok(())
    }

    /// The next address round-robin, skipping those cooling down unless
    /// all are.
    fn pick(&self) -> Option<Arc<Backend>> {
        let backends = read(&self.backends);
        let now = Instant::now();
        let warm: Vec<&Arc<Backend>> = backends.iter().filter(|b| !b.cooling(now)).collect();
        let choices: Vec<&Arc<Backend>> = if warm.is_empty() {
            backends.iter().collect()
        } else {
            warm
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        choices.get(n % choices.len().max(1)).map(|b| Arc::clone(b))
    }
}

/// Resolves `balancer`'s name every [`RE_RESOLVE`] while the channel lives.
async fn re_resolve(balancer: Weak<Balancer>) {
    loop {
        tokio::time::sleep(RE_RESOLVE).await;
        let Some(balancer) = balancer.upgrade() else {
            return;
        };
        if let Err(error) = balancer.refresh().await {
            tracing::warn!(%error, host = %balancer.host, "resolving again failed; keeping the addresses");
        }
    }
}

// Poisoning: each lock guards a plain value swapped whole, never left
// half-written, so the value is usable after a panic elsewhere.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
