//! Security controls the apps share, so each is written and reviewed once.
//!
//! - [`outbound`]: the one HTTP client for calls to addresses a tenant or
//!   an operator chose (webhooks). It refuses private, loopback,
//!   link-local, metadata and other non-public destinations (SSRF), checks
//!   the addresses it connects to rather than the name it was given (no DNS
//!   rebinding), follows no redirects, ignores proxy variables, bounds the
//!   response it reads and times out.
//! - [`secret`]: [`Secret`], the one type for secrets in memory (never
//!   printed, zeroised on drop) and what production calls weak.
//! - [`tls`]: mutual TLS between services (server and client
//!   configurations from PEM files that reload when rotated, the caller's
//!   identity from its certificate) and a development PKI.
//! - [`policy`]: the per-RPC policy from the contracts' `access` options,
//!   enforced by one tower layer (default deny), and the [`policy::Caller`]
//!   it hands to handlers.
//! - [`audit`]: the security audit log (target `audit`), one event per
//!   operator action, denial or key change.

pub mod audit;
pub mod outbound;
pub mod policy;
pub mod secret;
pub mod tls;

pub use secret::Secret;

pub use outbound::{AllowedNet, OutboundClient, OutboundError, OutboundPolicy, forbidden_range};
