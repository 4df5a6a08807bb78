//! The per-RPC policy, enforced: one tower layer in front of every gRPC
//! service reads the method path and the caller's certificate, and lets a
//! call through only when the contracts' `platform.policy.v1.access`
//! option grants that (identity, principal) pair. Everything else is
//! refused with `PERMISSION_DENIED` and written to the audit log: an RPC
//! missing from the policy, a caller whose certificate names no platform
//! identity, principal metadata from anyone but the gateway.
//!
//! A tonic interceptor cannot see the method, hence a layer. The caller it
//! established goes into the request's extensions ([`Caller::of`]), so a
//! tenant-scoped handler can limit itself to the principal's tenant.

use std::{
    collections::BTreeMap,
    sync::Arc,
    task::{Context, Poll},
};

use contracts::{
    access::{Grant, RPC_ACCESS, RpcAccess},
    policy::v1::{Identity, Principal},
};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::audit::{AuditEvent, AuditOutcome};

/// The request metadata in which the gateway names who it acts for:
/// `tenant:<tenant id>` or `operator:<name>`.
pub const PRINCIPAL_METADATA: &str = "x-platform-principal";

/// Every identity a platform certificate can name, from the contracts.
pub const IDENTITIES: [Identity; 5] = [
    Identity::Gateway,
    Identity::Ingest,
    Identity::Worker,
    Identity::Numerics,
    Identity::Operator,
];

/// An identity's name as certificates carry it: `gateway`, `operator`.
pub fn identity_name(identity: Identity) -> &'static str {
    match identity {
        Identity::Unspecified => "unspecified",
        Identity::Gateway => "gateway",
        Identity::Ingest => "ingest",
        Identity::Worker => "worker",
        Identity::Numerics => "numerics",
        Identity::Operator => "operator",
    }
}

/// On whose behalf a caller acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActingFor {
    /// Itself: no principal metadata.
    Itself,
    /// A tenant, named by the gateway.
    Tenant(String),
    /// An operator signed in to the gateway.
    Operator(String),
}

impl ActingFor {
    /// The principal kind the policy grants.
    pub fn kind(&self) -> Principal {
        match self {
            Self::Itself => Principal::Service,
            Self::Tenant(_) => Principal::Tenant,
            Self::Operator(_) => Principal::Operator,
        }
    }

    fn parse(metadata: &str) -> Option<Self> {
        let (kind, name) = metadata.split_once(':')?;
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
        match kind {
            "tenant" if valid => Some(Self::Tenant(name.to_owned())),
            "operator" if valid => Some(Self::Operator(name.to_owned())),
            _ => None,
        }
    }
}

/// Who is calling, as the policy layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity its certificate names.
    pub identity: Identity,
    /// On whose behalf.
    pub acting_for: ActingFor,
}

impl Caller {
    /// The caller of a request that passed the policy layer; `None` when
    /// the server runs plaintext (no identity, no policy).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Self> {
        request.extensions().get()
    }

    /// The tenant this call is limited to, when it acts for a tenant.
    pub fn tenant(&self) -> Option<&str> {
        match &self.acting_for {
            ActingFor::Tenant(tenant) => Some(tenant),
            _ => None,
        }
    }

    /// `gateway`, or `gateway for tenant:acme`, for logs and the audit log.
    pub fn describe(&self) -> String {
        let identity = identity_name(self.identity);
        match &self.acting_for {
            ActingFor::Itself => identity.to_owned(),
            ActingFor::Tenant(tenant) => format!("{identity} for tenant:{tenant}"),
            ActingFor::Operator(name) => format!("{identity} for operator:{name}"),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The certificate chain was valid but names no single platform identity.
    #[error("the caller's certificate names no platform identity")]
    NoIdentity,
    /// The RPC is not in the contracts, or has no access option.
    #[error("{0} has no entry in the platform policy")]
    NotInPolicy(String),
    /// Principal metadata came from an identity other than the gateway.
    #[error("only the gateway may act for a principal ({0} sent {PRINCIPAL_METADATA})")]
    PrincipalFromNonGateway(&'static str),
    /// The principal metadata does not parse.
    #[error("{PRINCIPAL_METADATA} must be tenant:<id> or operator:<name>")]
    MalformedPrincipal,
    /// The policy does not grant this pair.
    #[error("{caller} may not call {path}")]
    NotGranted {
        /// Who asked.
        caller: String,
        /// What.
        path: String,
    },
}

/// RPCs every server has that are not in the contracts: gRPC health for
/// every platform identity, reflection for the operator only.
const ANY_SERVICE: &[Grant] = &[
    Grant {
        identity: Identity::Gateway,
        principal: Principal::Service,
    },
    Grant {
        identity: Identity::Ingest,
        principal: Principal::Service,
    },
    Grant {
        identity: Identity::Worker,
        principal: Principal::Service,
    },
    Grant {
        identity: Identity::Numerics,
        principal: Principal::Service,
    },
    Grant {
        identity: Identity::Operator,
        principal: Principal::Service,
    },
];
const OPERATOR_ONLY: &[Grant] = &[Grant {
    identity: Identity::Operator,
    principal: Principal::Service,
}];
/// The health and reflection RPCs the runtime serves next to the apps'.
pub const RUNTIME_ACCESS: &[RpcAccess] = &[
    RpcAccess {
        path: "/grpc.health.v1.Health/Check",
        allow: Some(ANY_SERVICE),
    },
    RpcAccess {
        path: "/grpc.health.v1.Health/Watch",
        allow: Some(ANY_SERVICE),
    },
    RpcAccess {
        path: "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        allow: Some(OPERATOR_ONLY),
    },
];

/// Which (identity, principal) pairs may call which RPC.
#[derive(Debug, Clone)]
pub struct Policy {
    rpcs: BTreeMap<&'static str, Option<&'static [Grant]>>,
}

impl Policy {
    /// The contracts' policy plus the runtime's health and reflection.
    pub fn from_contracts() -> Self {
        Self::new(RPC_ACCESS.iter().chain(RUNTIME_ACCESS))
    }

    /// A policy from explicit entries (tests plant RPCs with it).
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a RpcAccess>) -> Self {
        Self {
            rpcs: entries.into_iter().map(|e| (e.path, e.allow)).collect(),
        }
    }

    /// Every RPC the policy knows, with its grants (`None`: no entry).
    pub fn rpcs(&self) -> impl Iterator<Item = (&'static str, Option<&'static [Grant]>)> + '_ {
        self.rpcs.iter().map(|(path, allow)| (*path, *allow))
    }

    /// RPCs in the contracts without an access option: refused to everyone
    /// until someone decides who may call them.
    pub fn missing_entries(&self) -> Vec<&'static str> {
        self.rpcs()
            .filter(|(_, allow)| allow.is_none())
            .map(|(path, _)| path)
            .collect()
    }

    /// Whether `identity` acting for `principal` may call `path`.
    pub fn grants(&self, path: &str, identity: Identity, principal: Principal) -> bool {
        self.rpcs.get(path).copied().flatten().is_some_and(|allow| {
            allow
                .iter()
                .any(|g| g.identity == identity && g.principal == principal)
        })
    }

    /// Decides one call: the caller when allowed, otherwise why not.
    pub fn decide(
        &self,
        path: &str,
        identity: Option<Identity>,
        principal: Option<&str>,
    ) -> Result<Caller, Denial> {
        let identity = identity.ok_or(Denial::NoIdentity)?;
        let acting_for = match principal {
            None => ActingFor::Itself,
            Some(_) if identity != Identity::Gateway => {
                return Err(Denial::PrincipalFromNonGateway(identity_name(identity)));
            }
            Some(metadata) => ActingFor::parse(metadata).ok_or(Denial::MalformedPrincipal)?,
        };
        let caller = Caller {
            identity,
            acting_for,
        };
        if !matches!(self.rpcs.get(path), Some(Some(_))) {
            return Err(Denial::NotInPolicy(path.to_owned()));
        }
        if self.grants(path, identity, caller.acting_for.kind()) {
            Ok(caller)
        } else {
            Err(Denial::NotGranted {
                caller: caller.describe(),
                path: path.to_owned(),
            })
        }
    }
}

/// The text every policy denial's status message starts with.
pub const DENIED: &str = "denied by the platform policy";

/// Enforces a [`Policy`] on every request (see the module docs). A layer
/// built with [`PolicyLayer::not_enforced`] lets everything through, for
/// plaintext servers that have no caller identity to check.
#[derive(Debug, Clone)]
pub struct PolicyLayer {
    policy: Option<Arc<Policy>>,
}

impl PolicyLayer {
    /// Enforces `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: Some(Arc::new(policy)),
        }
    }

    /// Enforces nothing (plaintext on loopback).
    pub fn not_enforced() -> Self {
        Self { policy: None }
    }
}

impl<S> tower::Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service [`PolicyLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct PolicyService<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
}

impl<S, B> tower::Service<http::Request<B>> for PolicyService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(policy) = &self.policy else {
            return futures_util::future::Either::Left(self.inner.call(request));
        };
        let connection = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let identity = connection
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|chain| {
                let names = IDENTITIES.map(identity_name);
                let named = crate::tls::peer_identity(chain.first()?, &names)?;
                IDENTITIES.into_iter().find(|i| identity_name(*i) == named)
            });
        let principal = request
            .headers()
            .get(PRINCIPAL_METADATA)
            .map(|value| value.to_str().unwrap_or("\u{fffd}"));
        let path = request.uri().path();
        match policy.decide(path, identity, principal) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures_util::future::Either::Left(self.inner.call(request))
            }
            Err(denial) => {
                let actor = match identity {
                    Some(identity) => identity_name(identity).to_owned(),
                    None => connection
                        .and_then(|c| c.get_ref().remote_addr())
                        .map_or_else(|| "unknown peer".to_owned(), |a| format!("peer {a}")),
                };
                crate::audit::record(&AuditEvent {
                    actor: &actor,
                    action: "rpc.call",
                    target: path,
                    outcome: AuditOutcome::Denied,
                });
                tracing::debug!(%denial, "policy denied a call");
                let status = tonic::Status::permission_denied(format!("{DENIED}: {denial}"));
                futures_util::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_come_only_from_the_gateway_and_must_parse() {
        let policy = Policy::from_contracts();
        let list = "/platform.ingest.v1.IngestService/ListWindowResults";
        let caller = policy
            .decide(list, Some(Identity::Gateway), Some("tenant:acme"))
            .unwrap_or_else(|denial| panic!("{denial}"));
        assert_eq!(caller.tenant(), Some("acme"));
        assert_eq!(
            policy.decide(list, Some(Identity::Worker), Some("tenant:acme")),
            Err(Denial::PrincipalFromNonGateway("worker"))
        );
        for malformed in ["tenant:", "acme", "user:x", "tenant:a b", "tenant:\u{fffd}"] {
            assert_eq!(
                policy.decide(list, Some(Identity::Gateway), Some(malformed)),
                Err(Denial::MalformedPrincipal),
                "{malformed}"
            );
        }
        assert_eq!(policy.decide(list, None, None), Err(Denial::NoIdentity));
    }

    #[test]
    fn an_rpc_without_an_entry_is_refused_to_everyone() {
        let planted = RpcAccess {
            path: "/platform.ingest.v1.IngestService/Planted",
            allow: None,
        };
        let policy = Policy::new(RPC_ACCESS.iter().chain([&planted]));
        assert_eq!(policy.missing_entries(), vec![planted.path]);
        for identity in IDENTITIES {
            assert_eq!(
                policy.decide(planted.path, Some(identity), None),
                Err(Denial::NotInPolicy(planted.path.into()))
            );
        }
        assert_eq!(
            policy.decide("/platform.nowhere.v1.S/M", Some(Identity::Operator), None),
            Err(Denial::NotInPolicy("/platform.nowhere.v1.S/M".into()))
        );
    }
}
