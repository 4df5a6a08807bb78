//! Name resolution that only ever hands the client addresses it may reach.
//!
//! The client connects to exactly the addresses this returns, so the check
//! and the connection see the same answer: a name that resolves to a public
//! address for the check and to 127.0.0.1 for the connection (DNS
//! rebinding) cannot slip through.

use std::{net::SocketAddr, sync::Arc};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::OutboundPolicy;

/// Resolves with the system resolver and drops refused addresses; a name
/// left with none fails, naming what it resolved to and why each was
/// refused.
#[derive(Debug, Clone)]
pub(super) struct GuardedResolver {
    pub(super) policy: Arc<OutboundPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|address| policy.refusal(address.ip()).is_none());
            if allowed.is_empty() {
                let reasons: Vec<String> = refused
                    .iter()
                    .map(|address| {
                        format!(
                            "{} is {}",
                            address.ip(),
                            policy.refusal(address.ip()).unwrap_or("refused")
                        )
                    })
                    .collect();
                // The addresses stay in this process's log: a tenant who
                // reads the job's error must not learn the internal network.
                tracing::debug!(%host, refused = %reasons.join(", "), "outbound name refused");
                return Err(format!(
                    "host {host:?} is not reachable from here: it resolves to no public address"
                )
                .into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}
