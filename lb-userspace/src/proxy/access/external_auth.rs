//! External authentication (ingress-nginx `auth-url`, nginx's `auth_request`): a subrequest
//! to the auth service with the request's method and header fields (no body) plus
//! `X-Original-URL`, `X-Original-Method`, `X-Auth-Request-Redirect` and `X-Sent-From`, as
//! ingress-nginx's template sends them. It goes over the worker's pooled connections
//! ([`pool::send`]), as any backend's requests do; answers may be cached per node
//! (`cache_key`), bounded, for the time `cache_duration` gives their status.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::LazyLock,
    time::Duration,
};

use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode,
    header::{CONTENT_LENGTH, HOST, LOCATION, SET_COOKIE, TRANSFER_ENCODING, WWW_AUTHENTICATE},
};
use http_body_util::BodyExt;
use hyper::body::SizeHint;

use super::cache::{DecisionCache, key_of};
use crate::{
    config::{
        BackendConfig, Balance, EndpointConfig, ExternalAuthConfig,
        external_auth::{AuthUrl, CacheDurations, KeyPart, parse_durations, parse_key},
    },
    now_ms,
    proxy::{
        headers::{Forwarded, UpstreamHeaders},
        http1::client::{Outgoing, RequestFraming},
        upstream::{BackendGroup, endpoint::EndpointRegistry, pool, request_body::RequestBody},
    },
};

/// Answers remembered by the node (all routes together).
const CACHE_CAPACITY: usize = 4096;
/// The auth service's answer body is read (for the connection's reuse) up to this much.
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// A route's compiled external auth.
pub struct ExternalAuth {
    url: String,
    /// The auth service as a backend group of the addresses its host resolved to.
    group: BackendGroup,
    target: String,
    host: HeaderValue,
    method: Option<Method>,
    signin: Option<String>,
    redirect_param: String,
    response_headers: Vec<HeaderName>,
    request_redirect: Option<HeaderValue>,
    cache: Option<CachePolicy>,
    always_set_cookie: bool,
    timeout: Duration,
}

impl std::fmt::Debug for ExternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAuth").field("url", &self.url).finish_non_exhaustive()
    }
}

/// What `cache_key` and `cache_duration` say.
#[derive(Debug)]
struct CachePolicy {
    key: Vec<KeyPart>,
    /// (statuses, empty for any; how long).
    durations: CacheDurations,
    /// The route's rules, so two routes never share answers.
    fingerprint: [u8; 32],
}

/// What the auth service said, as cached.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    /// The listed response fields (2xx), or `WWW-Authenticate` (401).
    fields: Vec<(HeaderName, HeaderValue)>,
    cookies: Vec<HeaderValue>,
}

static ANSWERS: LazyLock<DecisionCache<Answer>> = LazyLock::new(|| DecisionCache::new(CACHE_CAPACITY));

/// The request as the auth check sees it.
pub struct Context<'a> {
    pub scheme: &'static str,
    pub host: &'a str,
    pub client: SocketAddr,
    pub forwarded: &'a Forwarded,
    pub generation: u64,
}

/// What the check decided.
pub enum Verdict {
    /// 2xx: copy these fields to the upstream request; these cookies go on the response.
    Allowed { fields: Vec<(HeaderName, HeaderValue)>, cookies: Vec<HeaderValue>, always_set_cookie: bool },
    /// The client's answer: 401 (with `WWW-Authenticate`), 302 to sign in, or 403.
    Denied { status: StatusCode, fields: Vec<(HeaderName, HeaderValue)> },
    /// The service failed or did not answer: 500, logged with this reason.
    Failed(String),
}

impl ExternalAuth {
    /// Compiles the configuration; the URL's host is resolved here (again by a rebuild 30 s
    /// later or more). A host that does not resolve leaves the route failing closed (500).
    pub fn compile(config: &ExternalAuthConfig, at: &str) -> Result<ExternalAuth, String> {
        let url = AuthUrl::parse(&config.url).map_err(|e| format!("{at}.url: {e}"))?;
        let addresses = resolve(&url.host, url.port, &config.url);
        let group = auth_group(config, &url, &addresses, at)?;
        let method = match &config.method {
            Some(m) => Some(
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("{at}.method: {m:?} is not a method"))?,
            ),
            None => None,
        };
        let response_headers = config
            .response_headers
            .iter()
            .map(|name| HeaderName::from_bytes(name.trim().as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{at}.response_headers: not a list of header names"))?;
        let header = |value: &str, field: &str| {
            HeaderValue::from_str(value).map_err(|_| format!("{at}.{field}: not a valid header value"))
        };
        let host = if url.port == if url.https { 443 } else { 80 } {
            url.host.clone()
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let cache = match &config.cache_key {
            Some(key) => Some(CachePolicy {
                key: parse_key(key).map_err(|e| format!("{at}.cache_key: {e}"))?,
                durations: parse_durations(&config.cache_duration)
                    .map_err(|e| format!("{at}.cache_duration: {e}"))?,
                fingerprint: key_of(&[format!("{config:?}").as_bytes()]),
            }),
            None => None,
        };
        Ok(ExternalAuth {
            url: config.url.clone(),
            group,
            target: url.target,
            host: header(&host, "url")?,
            method,
            signin: config.signin.clone(),
            redirect_param: config.signin_redirect_param.clone(),
            response_headers,
            request_redirect: config
                .request_redirect
                .as_deref()
                .map(|v| header(v, "request_redirect"))
                .transpose()?,
            cache,
            always_set_cookie: config.always_set_cookie,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// Asks the auth service (or the cache) about `request`.
    pub async fn check<B>(&self, request: &Request<B>, context: &Context<'_>) -> Verdict {
        let cache_key = self.cache.as_ref().map(|cache| {
            let key = evaluate(&cache.key, request, context);
            (cache, key_of(&[&cache.fingerprint, key.as_bytes()]))
        });
        let cached = cache_key.as_ref().and_then(|(_, key)| ANSWERS.get(key, now_ms()));
        let answer = match cached {
            Some(answer) => answer,
            None => match tokio::time::timeout(self.timeout, self.ask(request, context)).await {
                Ok(Ok(answer)) => {
                    if let Some((cache, key)) = cache_key
                        && let Some(ttl) = cache.ttl(answer.status.as_u16())
                    {
                        ANSWERS.insert(key, answer.clone(), now_ms().saturating_add(ttl.as_millis() as u64));
                    }
                    answer
                }
                Ok(Err(why)) => return Verdict::Failed(format!("{}: {why}", self.url)),
                Err(_) => {
                    return Verdict::Failed(format!("{}: no answer within {:?}", self.url, self.timeout));
                }
            },
        };
        self.verdict(answer, request, context)
    }

    fn verdict<B>(&self, answer: Answer, request: &Request<B>, context: &Context<'_>) -> Verdict {
        match answer.status.as_u16() {
            200..=299 => Verdict::Allowed {
                fields: answer.fields,
                cookies: answer.cookies,
                always_set_cookie: self.always_set_cookie,
            },
            401 => match &self.signin {
                Some(signin) => {
                    let location =
                        signin_location(signin, &self.redirect_param, context, request_uri(request));
                    match HeaderValue::from_str(&location) {
                        Ok(location) => {
                            Verdict::Denied { status: StatusCode::FOUND, fields: vec![(LOCATION, location)] }
                        }
                        Err(_) => {
                            Verdict::Failed(format!("{}: the sign-in URL is not a valid header", self.url))
                        }
                    }
                }
                None => Verdict::Denied { status: StatusCode::UNAUTHORIZED, fields: answer.fields },
            },
            403 => Verdict::Denied { status: StatusCode::FORBIDDEN, fields: Vec::new() },
            status => Verdict::Failed(format!("{}: answered {status}", self.url)),
        }
    }

    /// One subrequest over the worker's pool.
    async fn ask<B>(&self, request: &Request<B>, context: &Context<'_>) -> Result<Answer, String> {
        let uri = request_uri(request);
        let mut fields = request.headers().clone();
        for name in [CONTENT_LENGTH, TRANSFER_ENCODING] {
            fields.remove(name);
        }
        fields.insert(HOST, self.host.clone());
        let original_url = format!("{}://{}{uri}", context.scheme, context.host);
        let value =
            |text: &str| HeaderValue::from_str(text).map_err(|_| "the request URI is not a valid header");
        fields.insert(HeaderName::from_static("x-original-url"), value(&original_url)?);
        fields.insert(HeaderName::from_static("x-original-method"), value(request.method().as_str())?);
        fields.insert(
            HeaderName::from_static("x-sent-from"),
            HeaderValue::from_static("nginx-ingress-controller"),
        );
        let redirect = match &self.request_redirect {
            Some(redirect) => redirect.clone(),
            None => value(uri)?,
        };
        fields.insert(HeaderName::from_static("x-auth-request-redirect"), redirect);
        if self.method.is_some() {
            fields.insert(HeaderName::from_static("x-original-uri"), value(uri)?);
            fields.insert(HeaderName::from_static("x-scheme"), HeaderValue::from_static(context.scheme));
        }
        let upstream = UpstreamHeaders::new(&fields, context.forwarded, context.host, None);
        let outgoing = Outgoing {
            method: self.method.as_ref().unwrap_or(request.method()),
            target: &self.target,
            headers: &upstream,
            framing: RequestFraming::of(true, SizeHint::with_exact(0)),
        };
        let group = &self.group;
        let Some(index) = group.balancer.pick(&group.endpoints, None, now_ms(), &[]) else {
            return Err("no address for the auth service".into());
        };
        let endpoint = group.endpoints[index].address;
        let response = pool::send(group, endpoint, context.generation, &outgoing, &RequestBody::empty())
            .await
            .map_err(|e| e.to_string())?;
        let (head, body) = response.into_parts();
        // Read to the end so the connection goes back to the pool.
        let _ = http_body_util::Limited::new(body, MAX_ANSWER_BODY).collect().await;
        let copied: &[HeaderName] = match head.status.as_u16() {
            200..=299 => &self.response_headers,
            401 => std::slice::from_ref(&WWW_AUTHENTICATE),
            _ => &[],
        };
        let fields = copied
            .iter()
            .filter_map(|name| head.headers.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        let cookies = head.headers.get_all(SET_COOKIE).iter().cloned().collect();
        Ok(Answer { status: head.status, fields, cookies })
    }
}

impl CachePolicy {
    fn ttl(&self, status: u16) -> Option<Duration> {
        self.durations
            .iter()
            .find(|(codes, _)| codes.is_empty() || codes.contains(&status))
            .map(|&(_, ttl)| ttl)
    }
}

/// The auth service as a backend group: round robin over its addresses, HTTP/1.1, pooled
/// connections kept `keepalive_timeout_ms`.
fn auth_group(
    config: &ExternalAuthConfig,
    url: &AuthUrl,
    addresses: &[SocketAddr],
    at: &str,
) -> Result<BackendGroup, String> {
    let mut backend: BackendConfig =
        serde_saphyr::from_str("name: auth\nendpoints: []\n").expect("the template parses");
    backend.name = format!("external-auth {}", config.url);
    backend.balance = Balance::RoundRobin;
    backend.endpoints =
        addresses.iter().map(|&address| EndpointConfig { address, weight: 1, ready: true }).collect();
    backend.timeouts.connect_ms = config.timeout_ms;
    backend.timeouts.idle_ms = config.keepalive_timeout_ms;
    if url.https {
        let mut tls = config.tls.clone().unwrap_or_else(|| {
            serde_saphyr::from_str("insecure_skip_verify: true\n").expect("the template parses")
        });
        tls.server_name.get_or_insert_with(|| url.host.clone());
        backend.tls = Some(Box::new(tls));
    }
    let tls = crate::tls::upstream::UpstreamTls::build(&backend).map_err(|e| format!("{at}.tls: {e}"))?;
    Ok(BackendGroup::build(&std::sync::Arc::new(backend), tls, &EndpointRegistry::default(), b""))
}

/// How long a resolution is reused across snapshot builds (an EndpointSlice change rebuilds
/// the snapshot; the auth host need not be looked up again each time).
const RESOLVED_FOR: Duration = Duration::from_secs(30);

/// The addresses of the auth service's host, from a short-lived cache (off the request path: a
/// snapshot build's). A host that does not resolve gives none, logged once per lookup.
fn resolve(host: &str, port: u16, url: &str) -> Vec<SocketAddr> {
    type Resolved = std::collections::HashMap<(String, u16), (Vec<SocketAddr>, std::time::Instant)>;
    static RESOLVED: LazyLock<parking_lot::Mutex<Resolved>> = LazyLock::new(Default::default);
    let key = (host.to_owned(), port);
    if let Some((addresses, at)) = RESOLVED.lock().get(&key)
        && at.elapsed() < RESOLVED_FOR
    {
        return addresses.clone();
    }
    let addresses = match (host, port).to_socket_addrs() {
        Ok(addresses) => addresses.collect(),
        Err(e) => {
            tracing::warn!(url, error = %e, "external auth host does not resolve; its routes answer 500");
            Vec::new()
        }
    };
    RESOLVED.lock().insert(key, (addresses.clone(), std::time::Instant::now()));
    addresses
}

fn request_uri<B>(request: &Request<B>) -> &str {
    request.uri().path_and_query().map_or("/", |p| p.as_str())
}

/// ingress-nginx's `buildAuthSignURL`: `?rd=` (or `&rd=`) and the original URL with its URI
/// escaped, unless the sign-in URL already carries the parameter.
/// nginx variables in the sign-in URL (`https://$host/oauth2/start?rd=$escaped_request_uri`,
/// the oauth2-proxy pattern) are expanded.
fn signin_location(signin: &str, param: &str, context: &Context<'_>, uri: &str) -> String {
    let signin = &expand(signin, context, uri);
    let query = signin.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|pair| pair.split_once('=').is_some_and(|(k, v)| k == param && !v.is_empty())) {
        return signin.to_owned();
    }
    let separator = if query.is_empty() { '?' } else { '&' };
    format!("{signin}{separator}{param}={}://{}{}", context.scheme, context.host, escape_uri(uri))
}

fn expand(text: &str, context: &Context<'_>, uri: &str) -> String {
    if !text.contains('$') {
        return text.to_owned();
    }
    // Longest names first: `$request_uri` is not `$request` + `_uri`.
    text.replace("$escaped_request_uri", &escape_uri(uri))
        .replace("$request_uri", uri)
        .replace("$pass_access_scheme", context.scheme)
        .replace("$scheme", context.scheme)
        .replace("$http_host", context.host)
        .replace("$host", context.host)
}

/// ngx.escape_uri: everything but unreserved characters percent-encoded.
fn escape_uri(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn evaluate<B>(parts: &[KeyPart], request: &Request<B>, context: &Context<'_>) -> String {
    let headers = request.headers();
    let mut key = String::new();
    for part in parts {
        match part {
            KeyPart::Text(text) => key.push_str(text),
            KeyPart::Header(name) => {
                for value in headers.get_all(name) {
                    key.push_str(&String::from_utf8_lossy(value.as_bytes()));
                }
            }
            KeyPart::Cookie(name) => key.push_str(cookie(headers, name).unwrap_or("")),
            KeyPart::RemoteAddr => key.push_str(&context.client.ip().to_canonical().to_string()),
            KeyPart::RemoteUser => key.push_str(&remote_user(headers).unwrap_or_default()),
            KeyPart::Host => key.push_str(context.host),
            KeyPart::RequestUri => key.push_str(request_uri(request)),
            KeyPart::Uri => key.push_str(request.uri().path()),
            KeyPart::Method => key.push_str(request.method().as_str()),
            KeyPart::Scheme => key.push_str(context.scheme),
        }
        // Parts are delimited so `ab`+`c` and `a`+`bc` never share a key.
        key.push('\0');
    }
    key
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

/// The user of a basic `Authorization`, as nginx's `$remote_user`.
fn remote_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let encoded = value.strip_prefix(b"Basic ").or_else(|| value.strip_prefix(b"basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(user, _)| user.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(forwarded: &Forwarded) -> Context<'_> {
        Context {
            scheme: "http",
            host: "app.test",
            client: "192.0.2.9:4000".parse().unwrap(),
            forwarded,
            generation: 1,
        }
    }

    #[test]
    fn the_signin_url_carries_the_original_url_as_ingress_nginx_builds_it() {
        let forwarded = Forwarded::new("192.0.2.9:4000".parse().unwrap(), "http", 80);
        let context = context(&forwarded);
        // test/e2e/annotations/auth.go: rd=http://HOST + url.QueryEscape("/?a=b&c=d")
        assert_eq!(
            signin_location("http://app.test/auth/start", "rd", &context, "/?a=b&c=d"),
            "http://app.test/auth/start?rd=http://app.test%2F%3Fa%3Db%26c%3Dd"
        );
        assert_eq!(
            signin_location("https://sso.test/start?x=1", "orig", &context, "/p"),
            "https://sso.test/start?x=1&orig=http://app.test%2Fp"
        );
        assert_eq!(
            signin_location("https://sso.test/?rd=fixed", "rd", &context, "/p"),
            "https://sso.test/?rd=fixed"
        );
        assert_eq!(
            signin_location("https://$host/oauth2/start?rd=$escaped_request_uri", "rd", &context, "/a b"),
            "https://app.test/oauth2/start?rd=%2Fa%20b"
        );
    }

    #[test]
    fn cache_keys_and_durations_read_nginx_forms() {
        let forwarded = Forwarded::new("192.0.2.9:4000".parse().unwrap(), "http", 80);
        let context = context(&forwarded);
        let key = parse_key("$remote_user$http_authorization:$cookie_session").unwrap();
        let request = Request::builder()
            .uri("/a?b")
            .header("authorization", "Basic YWxpY2U6cA==")
            .header("cookie", "x=1; session=abc")
            .body(())
            .unwrap();
        assert_eq!(evaluate(&key, &request, &context), "alice\0Basic YWxpY2U6cA==\0:\0abc\0");
        assert!(parse_key("$upstream_addr").is_err());
        let durations = parse_durations("200 202 10m, 401 30s, 1h").unwrap();
        let policy = CachePolicy { key, durations, fingerprint: [0; 32] };
        assert_eq!(policy.ttl(202), Some(Duration::from_secs(600)));
        assert_eq!(policy.ttl(401), Some(Duration::from_secs(30)));
        assert_eq!(policy.ttl(302), Some(Duration::from_secs(3600)));
        assert_eq!(policy.ttl(500), None);
        assert!(parse_durations("200 5x").is_err());
        assert_eq!(parse_durations("any 1m").unwrap(), [(vec![], Duration::from_secs(60))]);
    }

    #[test]
    fn urls_are_split_and_bad_ones_refused() {
        let url = AuthUrl::parse("https://auth.test:8443/oauth2/auth?x=1").unwrap();
        assert_eq!(
            (url.https, url.host.as_str(), url.port, url.target.as_str()),
            (true, "auth.test", 8443, "/oauth2/auth?x=1")
        );
        let url = AuthUrl::parse("http://10.0.0.1").unwrap();
        assert_eq!((url.port, url.target.as_str()), (80, "/"));
        let url = AuthUrl::parse("http://[::1]:9000/a").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 9000));
        for bad in ["ftp://x/", "http://", "http://a b/", "http://u@h/", "http://h:port/", "/relative"] {
            assert!(AuthUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
