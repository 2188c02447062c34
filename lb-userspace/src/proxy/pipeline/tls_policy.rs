//! Per-host TLS policy on HTTP requests, the pipeline's first phase:
//!
//! - plain HTTP for a host with `tls` and `redirect_http`: `308 Permanent Redirect` to the same
//!   URL over HTTPS (308 keeps the method and body), except ACME HTTP-01 challenges, which must
//!   stay reachable over plain HTTP while a certificate is being issued;
//! - HTTPS for a host that requires client certificates on a connection whose handshake did
//!   not select that host (the SNI named another host, then the Host header switched):
//!   `421 Misdirected Request`, so a client certificate check cannot be bypassed;
//! - HTTPS for a host with an nginx-style `client_verify` ([`client_certificate`]): a missing
//!   certificate (`on`) or one that failed gets `400` (or a `302` to the host's error page), a
//!   subject that does not match `client_match_cn` gets `403`, as ingress-nginx answers;
//! - HTTPS responses for a host with `hsts`: `Strict-Transport-Security` (a backend's own
//!   header is kept).

use std::ops::ControlFlow;

use http::{HeaderValue, Request, Response, StatusCode, header::LOCATION};

use crate::{
    proxy::{
        body::{self, ProxyBody},
        headers::request_host,
        pipeline::error,
    },
    tls::{
        Session, TlsSnapshot,
        client_cert::{ClientCertificate, ClientVerify, Outcome},
        resolver::strip_port,
    },
};

/// Paths that stay plain HTTP (ACME HTTP-01, as cert-manager and ingress-nginx do).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// A response that replaces routing for this request, if the TLS policy decides it.
/// `session` is the connection's TLS session (`None` on plain HTTP); `behind_https`: a trusted
/// proxy says the client reached it over HTTPS (then plain HTTP here is no reason to redirect).
pub fn before_request<B>(
    request: &Request<B>,
    tls: &TlsSnapshot,
    session: Option<&Session>,
    behind_https: bool,
) -> Option<Response<ProxyBody>> {
    let host_header = request_host(request);
    let (_, host) = tls.host(host_header)?;
    match session {
        None if behind_https => None,
        None => {
            let port = tls.https_port()?;
            if !host.redirect_http || request.uri().path().starts_with(ACME_CHALLENGE) {
                return None;
            }
            let name = strip_port(host_header?);
            let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let location = if port == 443 {
                format!("https://{name}{path}")
            } else {
                format!("https://{name}:{port}{path}")
            };
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            match HeaderValue::from_str(&location) {
                Ok(location) => response.headers_mut().insert(LOCATION, location),
                Err(_) => {
                    return Some(error(StatusCode::BAD_REQUEST, "the host cannot be redirected"));
                }
            };
            Some(response)
        }
        // The handshake must have selected this very host and verified the client against its
        // current CA (a reload may have changed either since).
        Some(session)
            if host.client_ca.is_some()
                && (session.host.as_deref() != Some(host.name.as_str())
                    || session.client_ca != host.client_ca) =>
        {
            Some(error(
                StatusCode::MISDIRECTED_REQUEST,
                "this host requires a client certificate; connect with its name as SNI",
            ))
        }
        Some(_) => None,
    }
}

/// The `Strict-Transport-Security` value for an HTTPS request's host, if it has one; the
/// caller adds it to the response unless the backend sent its own.
pub fn hsts_for<B>(
    request: &Request<B>,
    tls: &TlsSnapshot,
    session: Option<&Session>,
) -> Option<HeaderValue> {
    // RFC 6797 7.2: never over plain HTTP.
    session?;
    tls.host(request_host(request))?.1.hsts.clone()
}

/// The client certificate checks of an HTTPS request's host (nginx-style `client_verify`):
/// the answer that ends the request, or the certificate whose fields go upstream.
pub fn client_certificate<'s, B>(
    request: &Request<B>,
    tls: &TlsSnapshot,
    session: Option<&'s Session>,
) -> ControlFlow<Response<ProxyBody>, Option<&'s ClientCertificate>> {
    let Some(session) = session else { return ControlFlow::Continue(None) };
    let Some((_, host)) = tls.host(request_host(request)) else { return ControlFlow::Continue(None) };
    let Some(policy) = &host.client_policy else { return ControlFlow::Continue(None) };
    // Another host's handshake (only possible with `off`, which asks for no certificate).
    let Some(client) = session.client.as_deref().filter(|_| session.host.as_deref() == Some(&host.name))
    else {
        return ControlFlow::Continue(None);
    };
    let refused = match (&client.outcome, policy.mode) {
        (Outcome::None, ClientVerify::On) => Some("No required SSL certificate was sent"),
        (Outcome::Failed { forgiven: false }, _) => Some("The SSL certificate error"),
        _ => None,
    };
    if let Some(why) = refused {
        return ControlFlow::Break(match &policy.error_page {
            // ingress-nginx's `error_page 495 496 = <url>`.
            Some(page) => {
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::FOUND;
                response.headers_mut().insert(LOCATION, page.clone());
                response
            }
            None => error(StatusCode::BAD_REQUEST, why),
        });
    }
    if let Some(pattern) = &policy.match_cn
        && !pattern.is_match(&client.subject_dn)
    {
        return ControlFlow::Break(error(StatusCode::FORBIDDEN, "client certificate unauthorized"));
    }
    ControlFlow::Continue(Some(client))
}
