//! The security audit log: one structured event stream, under the log
//! target `audit` and the metric `security.audit.events{action,outcome}`,
//! for what a security review asks about later: operator actions, policy
//! denials, authentication failures, key and tenant changes. Each event
//! says who, what, on what, and how it ended; never a secret (the fields
//! are names and ids, and [`crate::Secret`] prints as `***`).

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// Done.
    Allowed,
    /// Refused by policy or authentication.
    Denied,
    /// Allowed but failed (not found, invalid, the store failed).
    Failed,
}

impl AuditOutcome {
    /// `Allowed` for `Ok`, `Failed` for `Err`: an action the caller was
    /// allowed to try.
    pub fn of<T, E>(result: &Result<T, E>) -> Self {
        if result.is_ok() {
            Self::Allowed
        } else {
            Self::Failed
        }
    }

    /// `allowed`, `denied` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent<'a> {
    /// Who: a service identity and the principal it acts for, or the peer
    /// address where no identity is known (plaintext, a failed handshake).
    pub actor: &'a str,
    /// What, dotted: `queue.pause`, `job.cancel`, `readings.prune`.
    pub action: &'a str,
    /// On what: a queue name, a job id, a tenant.
    pub target: &'a str,
    /// How it ended.
    pub outcome: AuditOutcome,
}

/// Writes `event` to the audit stream and counts it.
pub fn record(event: &AuditEvent<'_>) {
    tracing::info!(
        target: "audit",
        actor = event.actor,
        action = event.action,
        object = event.target,
        outcome = event.outcome.as_str(),
        "audit"
    );
    opentelemetry::global::meter("platform.security")
        .u64_counter("security.audit.events")
        .with_description("Audited actions by action and outcome")
        .build()
        .add(
            1,
            &[
                opentelemetry::KeyValue::new("action", event.action.to_owned()),
                opentelemetry::KeyValue::new("outcome", event.outcome.as_str()),
            ],
        );
}

/// The actor of a gRPC request: the caller the policy layer established
/// (`operator`, `gateway for operator:alice`), or on a plaintext server,
/// which knows no identities, its peer address.
pub fn peer_actor<T>(request: &tonic::Request<T>) -> String {
    if let Some(caller) = crate::policy::Caller::of(request) {
        return caller.describe();
    }
    request
        .remote_addr()
        .map_or_else(|| "unknown peer".to_owned(), |addr| format!("peer {addr}"))
}
