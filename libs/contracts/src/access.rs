//! The per-RPC policy as the contracts declare it: [`RPC_ACCESS`] lists
//! every RPC with the grants of its `platform.policy.v1.access` option.
//! Enforcing it is `libs/security`'s job; this module is data only.

use crate::policy::v1::{Identity, Principal};

/// One allowed (identity, principal) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The caller's certificate names this identity.
    pub identity: Identity,
    /// On whose behalf it acts.
    pub principal: Principal,
}

/// One RPC and who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcAccess {
    /// The gRPC path, `/package.Service/Method`.
    pub path: &'static str,
    /// The grants, or `None` when the RPC has no access option (refused to
    /// everyone).
    pub allow: Option<&'static [Grant]>,
}

include!(concat!(env!("OUT_DIR"), "/rpc_access.rs"));
