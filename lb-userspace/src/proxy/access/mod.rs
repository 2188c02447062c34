//! Who may use a route, decided before anything goes upstream: HTTP basic authentication
//! ([`basic_auth`]), then external authentication ([`external_auth`]), with their per-node
//! caches ([`cache`]). The pipeline's authenticate phase asks [`Access::check`] and answers a
//! [`Refusal`] itself; this room only decides.

pub mod basic_auth;
mod cache;
pub mod external_auth;

use http::{HeaderName, HeaderValue, Request, StatusCode, header::WWW_AUTHENTICATE};

use self::{
    basic_auth::BasicAuth,
    external_auth::{Context, ExternalAuth},
};
use crate::{
    config::{RouteConfig, VirtualHostConfig},
    metrics::Denial,
};

/// A route's compiled access rules (beyond its source ranges, which the admit phase checks).
#[derive(Debug)]
pub struct Access {
    basic: Option<BasicAuth>,
    external: Option<ExternalAuth>,
}

/// Why a request may not pass, and how to answer it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
    /// Fields of the answer: `WWW-Authenticate` with a 401, `Location` with a sign-in 302.
    pub fields: Vec<(HeaderName, HeaderValue)>,
    pub denial: Denial,
}

/// What a request that passed brings along.
#[derive(Debug, Default)]
pub struct Granted {
    /// Set on the upstream request (the external auth service's listed response fields).
    pub request_fields: Vec<(HeaderName, HeaderValue)>,
    /// The auth service's `Set-Cookie` values for the response, and whether they go on every
    /// response or only on 2xx and 3xx ones.
    pub cookies: Vec<HeaderValue>,
    pub always_set_cookie: bool,
}

impl Access {
    /// The route's access rules, its own replacing its virtual host's; `None` when it has none.
    pub fn compile(
        route: &RouteConfig,
        host: &VirtualHostConfig,
        at: &str,
    ) -> Result<Option<Access>, String> {
        let host_at = at.rsplit_once(".routes[").map_or(at, |(host_at, _)| host_at);
        let basic = match (&route.basic_auth, &host.basic_auth) {
            (Some(own), _) => Some(BasicAuth::compile(own, &format!("{at}.basic_auth"))?),
            (None, Some(host)) => Some(BasicAuth::compile(host, &format!("{host_at}.basic_auth"))?),
            (None, None) => None,
        };
        let external = match (&route.external_auth, &host.external_auth) {
            (Some(own), _) => Some(ExternalAuth::compile(own, &format!("{at}.external_auth"))?),
            (None, Some(host)) => Some(ExternalAuth::compile(host, &format!("{host_at}.external_auth"))?),
            (None, None) => None,
        };
        Ok((basic.is_some() || external.is_some()).then_some(Access { basic, external }))
    }

    /// Basic auth's `Authorization` is for this hop only: the route does not pass it upstream.
    pub fn has_basic_auth(&self) -> bool {
        self.basic.is_some()
    }

    /// Whether `request` may pass: basic auth first, then the external service (nginx's
    /// `satisfy all`, access phase order).
    pub async fn check<B>(&self, request: &Request<B>, context: &Context<'_>) -> Result<Granted, Refusal> {
        if let Some(basic) = &self.basic {
            match basic.check(request.headers()).await {
                basic_auth::Verdict::Allowed => {}
                basic_auth::Verdict::Challenge(challenge) => {
                    return Err(Refusal {
                        status: StatusCode::UNAUTHORIZED,
                        message: "valid credentials are needed for this route",
                        fields: vec![(WWW_AUTHENTICATE, challenge)],
                        denial: Denial::BasicAuth,
                    });
                }
                basic_auth::Verdict::Unavailable => {
                    return Err(Refusal {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: "this route's credentials could not be read",
                        fields: Vec::new(),
                        denial: Denial::BasicAuth,
                    });
                }
            }
        }
        let Some(external) = &self.external else { return Ok(Granted::default()) };
        match external.check(request, context).await {
            external_auth::Verdict::Allowed { fields, cookies, always_set_cookie } => {
                Ok(Granted { request_fields: fields, cookies, always_set_cookie })
            }
            external_auth::Verdict::Denied { status, fields } => Err(Refusal {
                status,
                message: if status == StatusCode::FOUND {
                    "sign in first"
                } else {
                    "the authentication service refused this request"
                },
                fields,
                denial: Denial::ExternalAuth,
            }),
            external_auth::Verdict::Failed(why) => {
                tracing::warn!(reason = %why, "external authentication failed; answered 500");
                Err(Refusal {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: "the authentication service failed",
                    fields: Vec::new(),
                    denial: Denial::ExternalAuth,
                })
            }
        }
    }
}
