//! The one HTTP client for outbound calls to addresses chosen by tenants or
//! operators (webhooks), hardened against server-side request forgery.
//!
//! - Destinations: public addresses only ([`forbidden_range`]), unless an
//!   operator allows a network ([`OutboundPolicy::allow`]) for tests or an
//!   on-premises receiver. IP literals are checked here (a resolver never
//!   sees them, and `http://2130706433/` is 127.0.0.1); names are checked
//!   after resolution, on the addresses the client then connects to.
//! - `https` only, unless the policy allows `http` (development).
//! - No redirects (a 3xx is an answer, not a new destination), no proxy
//!   from the environment (a proxy would resolve names past the check),
//!   timeouts on connect and on the whole call, and responses read up to a
//!   bound.

mod ranges;
mod resolver;

use std::{net::IpAddr, sync::Arc, time::Duration};

pub use ranges::{AllowedNet, InvalidNetwork, forbidden_range};

/// What outbound calls may do.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundPolicy {
    /// Allow plain `http://` (development only; production requires TLS).
    pub allow_http: bool,
    /// Networks reachable despite being private, loopback and so on.
    pub allow: Vec<AllowedNet>,
    /// Longest a whole call may take.
    pub timeout: Duration,
    /// Longest a connection may take to open.
    pub connect_timeout: Duration,
    /// Most response bytes read; the rest is dropped.
    pub max_response_bytes: usize,
}

impl OutboundPolicy {
    /// Public `https` destinations only, 10 s per call, 64 KiB answers.
    pub fn strict() -> Self {
        Self {
            allow_http: false,
            allow: Vec::new(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
        }
    }

    /// Why `ip` may not be reached, or `None` if it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let range = forbidden_range(ip)?;
        if self.allow.iter().any(|net| net.contains(ip)) {
            None
        } else {
            Some(range)
        }
    }
}

/// Why an outbound call was refused or failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutboundError {
    /// The URL does not parse.
    #[error("url {url:?} is not a valid URL: {problem}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Not `https` (or `http` where the policy allows it).
    #[error("url {url:?} must use {expected}")]
    Scheme {
        /// The URL as given.
        url: String,
        /// `https` or `http or https`.
        expected: &'static str,
    },
    /// The URL names an address that may not be reached.
    #[error(
        "url {url:?} points at {address}, which is {range}; outbound calls reach public addresses only"
    )]
    Forbidden {
        /// The URL as given.
        url: String,
        /// The address it names.
        address: IpAddr,
        /// The range that address is in.
        range: &'static str,
    },
    /// The client could not be built.
    #[error("outbound HTTP client: {0}")]
    Client(String),
}

/// An HTTP client that reaches only what its [`OutboundPolicy`] allows.
#[derive(Debug, Clone)]
pub struct OutboundClient {
    http: reqwest::Client,
    policy: Arc<OutboundPolicy>,
}

impl OutboundClient {
    /// A client under `policy`, sending `user_agent`.
    pub fn new(policy: OutboundPolicy, user_agent: &str) -> Result<Self, OutboundError> {
        // The process-wide TLS provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(policy);
        #[allow(
            clippy::disallowed_methods,
            reason = "this is the one place that builds an HTTP client"
        )]
        let builder = reqwest::Client::builder();
        let http = builder
            .timeout(policy.timeout)
            .connect_timeout(policy.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(resolver::GuardedResolver {
                policy: policy.clone(),
            }))
            .user_agent(user_agent)
            .build()
            .map_err(|e| OutboundError::Client(e.to_string()))?;
        Ok(Self { http, policy })
    }

    /// The URL parsed and checked: scheme, and the address when the host is
    /// an IP literal (names are checked when they resolve).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, OutboundError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| OutboundError::InvalidUrl {
            url: url.to_owned(),
            problem: e.to_string(),
        })?;
        let scheme_ok = match parsed.scheme() {
            "https" => true,
            "http" => self.policy.allow_http,
            _ => false,
        };
        if !scheme_ok {
            return Err(OutboundError::Scheme {
                url: url.to_owned(),
                expected: if self.policy.allow_http {
                    "http or https"
                } else {
                    "https"
                },
            });
        }
        // The URL parser normalises IP hosts (`2130706433`, `0x7f.1`,
        // `[::ffff:7f00:1]`), so a literal parses here whatever its spelling.
        let Some(host) = parsed.host_str() else {
            return Err(OutboundError::InvalidUrl {
                url: url.to_owned(),
                problem: "it has no host".into(),
            });
        };
        let literal: Option<IpAddr> = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok();
        if let Some(address) = literal
            && let Some(range) = self.policy.refusal(address)
        {
            return Err(OutboundError::Forbidden {
                url: url.to_owned(),
                address,
                range,
            });
        }
        Ok(parsed)
    }

    /// A POST to `url`, once the URL passes [`Self::check_url`].
    pub fn post(&self, url: &str) -> Result<reqwest::RequestBuilder, OutboundError> {
        Ok(self.http.post(self.check_url(url)?))
    }

    /// Reads at most the policy's `max_response_bytes` of a response body;
    /// the rest is not read.
    pub async fn read_bounded(
        &self,
        response: reqwest::Response,
    ) -> Result<Vec<u8>, reqwest::Error> {
        let limit = self.policy.max_response_bytes;
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await? {
            let room = limit.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= limit {
                break;
            }
        }
        Ok(body)
    }
}
