//! The per-RPC policy end to end: the three backends over mutual TLS with
//! a development PKI, and every RPC of every service called as every
//! identity acting for every kind of principal. A call is allowed exactly
//! where the contracts' `access` options say; everything else is
//! `PERMISSION_DENIED` from the policy layer. Clients without a platform
//! certificate never get as far as an RPC.

use std::{collections::BTreeMap, time::Duration};

use contracts::policy::v1::{Identity, Principal};
use security::policy::{DENIED, IDENTITIES, PRINCIPAL_METADATA, Policy, identity_name};
use service_runtime::{ServiceUrl, TracedChannel, Transport, traced_channel};

use crate::support::{Backends, url_of};

const PRINCIPALS: [(Principal, Option<&str>); 3] = [
    (Principal::Service, None),
    (Principal::Tenant, Some("tenant:acme")),
    (Principal::Operator, Some("operator:alice")),
];

/// What a caller saw: the policy refused it, something else refused it
/// (the handshake, the transport), or the call reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    DeniedByPolicy,
    NotConnected,
    Reached,
}

/// Calls `path` with an empty message (valid for every request type) and
/// reports how far it got. The RPC's own answer (OK, INVALID_ARGUMENT,
/// NOT_FOUND) only shows that the policy let it through.
async fn call(channel: &TracedChannel, path: &'static str, principal: Option<&str>) -> Outcome {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if grpc.ready().await.is_err() {
        return Outcome::NotConnected;
    }
    let mut request = tonic::Request::new(tokio_stream::once(()));
    if let Some(principal) = principal {
        request
            .metadata_mut()
            .insert(PRINCIPAL_METADATA, principal.parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc
        .streaming(request, http::uri::PathAndQuery::from_static(path), codec)
        .await
    {
        Err(status)
            if status.code() == tonic::Code::PermissionDenied
                && status.message().starts_with(DENIED) =>
        {
            Outcome::DeniedByPolicy
        }
        // The connection failed (a refused handshake, TLS bytes read as
        // HTTP/2): the status carries the transport's error.
        Err(status)
            if status.code() == tonic::Code::Unavailable
                || std::error::Error::source(&status)
                    .is_some_and(|source| source.is::<tonic::transport::Error>()) =>
        {
            Outcome::NotConnected
        }
        _ => Outcome::Reached,
    }
}

/// Which backends serve `path`: each contract's package on its app, the
/// runtime's services on all three.
fn served_by(path: &str) -> &'static [&'static str] {
    match path.split('.').nth(1) {
        Some("ingest") => &["ingest"],
        Some("jobs") => &["worker"],
        Some("numerics") => &["numerics"],
        _ => &["ingest", "worker", "numerics"],
    }
}

/// What the policy says for one call: principals only from the gateway,
/// then the grant.
fn expected(policy: &Policy, path: &str, identity: Identity, principal: Principal) -> Outcome {
    let principal_allowed = principal == Principal::Service || identity == Identity::Gateway;
    if principal_allowed && policy.grants(path, identity, principal) {
        Outcome::Reached
    } else {
        Outcome::DeniedByPolicy
    }
}

/// Every disagreement between the policy and what callers saw, plus every
/// RPC without a policy entry (refused to all, but nobody decided that).
fn findings(
    policy: &Policy,
    observed: &BTreeMap<(String, &'static str, &'static str, &'static str), Outcome>,
) -> Vec<String> {
    let mut findings: Vec<String> = policy
        .missing_entries()
        .into_iter()
        .map(|path| {
            format!("{path}: no access option in the contracts; add (platform.policy.v1.access)")
        })
        .collect();
    for ((path, service, identity, principal), outcome) in observed {
        let identity_enum = IDENTITIES
            .into_iter()
            .find(|i| identity_name(*i) == *identity)
            .unwrap();
        let principal_enum = PRINCIPALS
            .iter()
            .find(|(p, _)| p.as_str_name() == *principal)
            .unwrap()
            .0;
        let want = expected(policy, path, identity_enum, principal_enum);
        if *outcome != want {
            findings.push(format!(
                "{path} on {service} as {identity} ({principal}): expected {want:?}, saw {outcome:?}"
            ));
        }
    }
    findings
}

fn channel_to(url: &ServiceUrl, transport: &Transport, callee: &str) -> TracedChannel {
    let timeout = Duration::from_secs(10);
    traced_channel(url, transport, callee, timeout, timeout).unwrap()
}

fn scratch_pki(name: &str, identities: &[&str]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("policy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    security::tls::dev_pki::generate(&dir, identities).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_allowed_exactly_where_the_policy_says() {
    let names = IDENTITIES.map(identity_name);
    let pki = scratch_pki("platform", &names);
    let backends = Backends::start_with(|app| Transport::mutual_tls_in(&pki, app)).await;
    let urls = BTreeMap::from([
        ("ingest", url_of(&backends.ingest)),
        ("worker", url_of(&backends.worker)),
        ("numerics", url_of(&backends.numerics)),
    ]);
    let policy = Policy::from_contracts();

    let mut observed = BTreeMap::new();
    for identity in names {
        let transport = Transport::mutual_tls_in(&pki, identity);
        let channels: BTreeMap<_, _> = urls
            .iter()
            .map(|(app, url)| (*app, channel_to(url, &transport, app)))
            .collect();
        for (path, _) in policy.rpcs() {
            for service in served_by(path) {
                for (principal, metadata) in PRINCIPALS {
                    let outcome = call(&channels[service], path, metadata).await;
                    observed.insert(
                        (path.to_owned(), *service, identity, principal.as_str_name()),
                        outcome,
                    );
                }
            }
        }
    }
    let findings = findings(&policy, &observed);
    assert!(findings.is_empty(), "{}", findings.join("\n"));
    let reached = observed
        .values()
        .filter(|o| **o == Outcome::Reached)
        .count();
    assert!(
        reached > 0 && reached < observed.len(),
        "{reached} of {}",
        observed.len()
    );

    // No certificate (plaintext), or a certificate from another CA: no RPC
    // is reached at all, on any service.
    let intruder = scratch_pki("intruder", &["operator"]);
    for transport in [
        Transport::Plaintext,
        Transport::mutual_tls_in(&intruder, "operator"),
    ] {
        for (app, url) in &urls {
            let channel = channel_to(url, &transport, app);
            for (path, _) in policy.rpcs().filter(|(p, _)| served_by(p).contains(app)) {
                assert_eq!(
                    call(&channel, path, None).await,
                    Outcome::NotConnected,
                    "{path} on {app} with {transport:?}"
                );
            }
        }
    }
    backends.shutdown().await;
    for dir in [pki, intruder] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The walk fails when the contracts gain an RPC without an access option
/// (planted here), even though the server refuses it to everyone.
#[test]
fn a_planted_rpc_without_a_policy_entry_fails_the_walk() {
    let planted = contracts::access::RpcAccess {
        path: "/platform.ingest.v1.IngestService/Planted",
        allow: None,
    };
    let policy = Policy::new(contracts::access::RPC_ACCESS.iter().chain([&planted]));
    let observed: BTreeMap<_, _> = IDENTITIES
        .into_iter()
        .map(|identity| {
            (
                (
                    planted.path.to_owned(),
                    "ingest",
                    identity_name(identity),
                    "PRINCIPAL_SERVICE",
                ),
                Outcome::DeniedByPolicy,
            )
        })
        .collect();
    let findings = findings(&policy, &observed);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(findings[0].starts_with(planted.path), "{findings:?}");
    assert!(Policy::from_contracts().missing_entries().is_empty());
}

/// Tenant-scoped RPCs, called by the gateway for a tenant, see and touch
/// only that tenant: another tenant in the request is refused naming the
/// field, an empty tenant becomes the principal's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_principal_reaches_only_its_own_tenant() {
    use contracts::{
        ingest::v1::{self as pb, ingest_service_client::IngestServiceClient},
        tenancy::v1::{
            DeleteTenantDataRequest, tenant_data_service_client::TenantDataServiceClient,
        },
    };

    let pki = scratch_pki("tenant", &IDENTITIES.map(identity_name));
    let backends = Backends::start_with(|app| Transport::mutual_tls_in(&pki, app)).await;
    let gateway = Transport::mutual_tls_in(&pki, "gateway");
    let mut ingest =
        IngestServiceClient::new(channel_to(&url_of(&backends.ingest), &gateway, "ingest"));
    fn as_acme<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(PRINCIPAL_METADATA, "tenant:acme".parse().unwrap());
        request
    }
    let reading = |tenant: &str, event: &str| pb::Reading {
        event_id: event.into(),
        tenant_id: tenant.into(),
        device_id: "d1".into(),
        metric: "temperature_c".into(),
        value: 21.5,
        observed_at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() - 30,
            nanos: 0,
        }),
        ..Default::default()
    };

    let refused = ingest
        .publish_readings(as_acme(pb::PublishReadingsRequest {
            readings: vec![reading("acme", "e1"), reading("globex", "e2")],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().starts_with("readings[1].tenant_id"),
        "{refused:?}"
    );

    let accepted = ingest
        .publish_readings(as_acme(pb::PublishReadingsRequest {
            readings: vec![reading("", "e3")],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.ack.unwrap().accepted, 1);

    let other = ingest
        .list_window_results(as_acme(pb::ListWindowResultsRequest {
            tenant_id: "globex".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
    assert!(other.message().starts_with("tenant_id"), "{other:?}");
    let own = ingest
        .list_window_results(as_acme(pb::ListWindowResultsRequest::default()))
        .await;
    assert!(own.is_ok(), "an empty tenant is the principal's: {own:?}");

    // A tenant's retention: the gateway prunes acting for the tenant, and
    // only that tenant's data (an empty tenant id is the principal's).
    let older_than = Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() - 86_400,
        nanos: 0,
    });
    let other = ingest
        .prune_readings(as_acme(pb::PruneReadingsRequest {
            older_than,
            tenant_id: "globex".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
    let own = ingest
        .prune_readings(as_acme(pb::PruneReadingsRequest {
            older_than,
            ..Default::default()
        }))
        .await;
    assert!(own.is_ok(), "{own:?}");

    // Only an operator exports or deletes a tenant's data.
    let mut tenant_data =
        TenantDataServiceClient::new(channel_to(&url_of(&backends.ingest), &gateway, "ingest"));
    let refused = tenant_data
        .delete_tenant_data(as_acme(DeleteTenantDataRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    backends.shutdown().await;
    let _ = std::fs::remove_dir_all(pki);
}
