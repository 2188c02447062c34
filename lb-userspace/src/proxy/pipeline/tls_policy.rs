//! Per-host TLS policy on HTTP requests, the pipeline's first phase:
//!
//! - plain HTTP for a host with `tls` and `redirect_http`, or on a route with `https_redirect`
//!   (whatever its host's TLS): `308 Permanent Redirect` to the same URL over HTTPS (308 keeps
//!   the method and body), except ACME HTTP-01 challenges, which must stay reachable over plain
//!   HTTP while a certificate is being issued; behind a trusted proxy its `X-Forwarded-Proto`
//!   says whether the client used plain HTTP, not the connection;
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
    config::{HttpsRedirectConfig, RedirectPort},
    proxy::{
        body::{self, ProxyBody},
        headers::{Forwarded, request_host},
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
/// `session` is the connection's TLS session (`None` on plain HTTP); `forwarded` says which
/// scheme a trusted proxy reports the client used (then that scheme, not this connection's,
/// decides the redirect) and which host it asked for.
pub fn before_request<B>(
    request: &Request<B>,
    tls: &TlsSnapshot,
    session: Option<&Session>,
    forwarded: &Forwarded,
) -> Option<Response<ProxyBody>> {
    let (_, host) = tls.host(request_host(request))?;
    if host.redirect_http && needs_https(request, session, forwarded) {
        let port = tls.https_port()?;
        return Some(to_https(request, &host.redirect, Some(port), forwarded));
    }
    match session {
        None => None,
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

/// The redirect of a plain-HTTP request on a route that asks for HTTPS whatever its host's
/// TLS (ingress-nginx `force-ssl-redirect`, for TLS that ends at an outer balancer).
pub fn route_redirect<B>(
    request: &Request<B>,
    form: Option<&HttpsRedirectConfig>,
    tls: &TlsSnapshot,
    session: Option<&Session>,
    forwarded: &Forwarded,
) -> Option<Response<ProxyBody>> {
    let form = form?;
    if !needs_https(request, session, forwarded) {
        return None;
    }
    Some(to_https(request, form, tls.https_port(), forwarded))
}

/// Whether the request is one to redirect: the client used plain HTTP, by a trusted proxy's
/// `X-Forwarded-Proto` when it sent one (ingress-nginx's `$pass_access_scheme` with
/// use-forwarded-headers: `http` redirects, anything else does not), else by this connection;
/// ACME challenges never. An untrusted client's `X-Forwarded-Proto` is not read.
fn needs_https<B>(request: &Request<B>, session: Option<&Session>, forwarded: &Forwarded) -> bool {
    if request.uri().path().starts_with(ACME_CHALLENGE) {
        return false;
    }
    match forwarded.proxy_scheme(request.headers()) {
        Some(scheme) => scheme.eq_ignore_ascii_case(b"http"),
        None => session.is_none(),
    }
}

/// `308` to the request's URL over HTTPS, written as `form` says (`https_port`: the first TLS
/// listener's).
fn to_https<B>(
    request: &Request<B>,
    form: &HttpsRedirectConfig,
    https_port: Option<u16>,
    forwarded: &Forwarded,
) -> Response<ProxyBody> {
    let Some(host) = forwarded.proxy_host(request.headers()).or_else(|| request_host(request)) else {
        return error(StatusCode::BAD_REQUEST, "the request names no host to redirect to");
    };
    let name = strip_port(host);
    let mut target = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if form.strip_trailing_slash {
        target = target.strip_suffix('/').unwrap_or(target);
    }
    let location = match (form.port, https_port) {
        (RedirectPort::Never, _) | (RedirectPort::Listener, None | Some(443)) => {
            format!("https://{name}{target}")
        }
        (RedirectPort::Listener | RedirectPort::Always, Some(port)) => {
            format!("https://{name}:{port}{target}")
        }
        (RedirectPort::Always, None) => format!("https://{name}:443{target}"),
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error(StatusCode::BAD_REQUEST, "the host cannot be redirected");
    };
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    fn location(
        uri: &str,
        host: &str,
        form: HttpsRedirectConfig,
        port: Option<u16>,
        fwd: &Forwarded,
    ) -> String {
        let request = Request::builder().uri(uri).header(http::header::HOST, host).body(()).unwrap();
        let response = to_https(&request, &form, port, fwd);
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        response.headers()[LOCATION].to_str().unwrap().to_owned()
    }

    /// ingress-nginx's forms (lua_ingress.lua): `https://` + host without port + request URI,
    /// one trailing slash dropped unless preserve-trailing-slash, `:<https port>` with
    /// use-port-in-redirects (443 too); Sluice's own file default names a port other than 443.
    #[test]
    fn locations_are_written_as_the_form_says() {
        let direct = Forwarded::new("192.0.2.1:4000".parse().unwrap(), "http", 80);
        let nginx = HttpsRedirectConfig { port: RedirectPort::Never, strip_trailing_slash: true };
        let cases = [
            ("/", "a.test", nginx, Some(8443), "https://a.test"),
            ("/x/", "a.test:8080", nginx, Some(8443), "https://a.test/x"),
            ("/x/?q=/", "a.test", nginx, None, "https://a.test/x/?q="),
            ("/x/?q=1", "a.test", nginx, None, "https://a.test/x/?q=1"),
            (
                "/x/",
                "a.test",
                HttpsRedirectConfig { strip_trailing_slash: false, ..nginx },
                None,
                "https://a.test/x/",
            ),
            (
                "/x",
                "a.test",
                HttpsRedirectConfig { port: RedirectPort::Always, ..nginx },
                Some(443),
                "https://a.test:443/x",
            ),
            (
                "/x",
                "a.test",
                HttpsRedirectConfig { port: RedirectPort::Always, ..nginx },
                None,
                "https://a.test:443/x",
            ),
            ("/x/", "a.test", HttpsRedirectConfig::default(), Some(8443), "https://a.test:8443/x/"),
            ("/x", "[2001:db8::1]:80", HttpsRedirectConfig::default(), Some(443), "https://[2001:db8::1]/x"),
        ];
        for (uri, host, form, port, want) in cases {
            assert_eq!(location(uri, host, form, port, &direct), want, "{uri} {host} {form:?} {port:?}");
        }
        // A trusted proxy's X-Forwarded-Host (its first entry) names the target; a direct
        // client's does not.
        let request = Request::builder()
            .uri("/p")
            .header(http::header::HOST, "inner.test")
            .header("x-forwarded-host", "edge.test, inner.test")
            .body(())
            .unwrap();
        let trusted = direct.behind_proxy("203.0.113.7".parse().unwrap(), true);
        let target = |fwd: &Forwarded| to_https(&request, &nginx, None, fwd).headers()[LOCATION].clone();
        assert_eq!(target(&trusted), "https://edge.test/p");
        assert_eq!(target(&direct), "https://inner.test/p");
    }
}
