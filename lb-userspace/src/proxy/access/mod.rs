//! Who may use a route, decided before anything goes upstream: HTTP basic authentication
//! ([`basic_auth`]). The pipeline's authenticate phase asks [`Access::check`] and answers a
//! [`Refusal`] itself; this room only decides.

pub mod basic_auth;

use http::{HeaderMap, HeaderValue, StatusCode};

use self::basic_auth::{BasicAuth, Verdict};
use crate::{
    config::{RouteConfig, VirtualHostConfig},
    metrics::Denial,
};

/// A route's compiled access rules (beyond its source ranges, which the admit phase checks).
#[derive(Debug)]
pub struct Access {
    basic: Option<BasicAuth>,
}

/// Why a request may not pass, and how to answer it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
    /// `WWW-Authenticate`, with a 401.
    pub challenge: Option<HeaderValue>,
    pub denial: Denial,
}

impl Access {
    /// The route's access rules, its own replacing its virtual host's; `None` when it has none.
    pub fn compile(
        route: &RouteConfig,
        host: &VirtualHostConfig,
        at: &str,
    ) -> Result<Option<Access>, String> {
        let basic = match (&route.basic_auth, &host.basic_auth) {
            (Some(own), _) => Some(BasicAuth::compile(own, &format!("{at}.basic_auth"))?),
            (None, Some(host)) => {
                let host_at = at.rsplit_once(".routes[").map_or(at, |(host_at, _)| host_at);
                Some(BasicAuth::compile(host, &format!("{host_at}.basic_auth"))?)
            }
            (None, None) => None,
        };
        Ok(basic.is_some().then_some(Access { basic }))
    }

    /// Basic auth's `Authorization` is for this hop only: the route does not pass it upstream.
    pub fn has_basic_auth(&self) -> bool {
        self.basic.is_some()
    }

    /// Whether a request with these headers may pass.
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(basic) = &self.basic {
            match basic.check(headers).await {
                Verdict::Allowed => {}
                Verdict::Challenge(challenge) => {
                    return Err(Refusal {
                        status: StatusCode::UNAUTHORIZED,
                        message: "valid credentials are needed for this route",
                        challenge: Some(challenge),
                        denial: Denial::BasicAuth,
                    });
                }
                Verdict::Unavailable => {
                    return Err(Refusal {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: "this route's credentials could not be read",
                        challenge: None,
                        denial: Denial::BasicAuth,
                    });
                }
            }
        }
        Ok(())
    }
}
