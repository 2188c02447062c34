//! The annotation table: every name Sluice knows, its class, and for applied names the parser.
//! Applied names are parsed in table order, so a name that refines another comes after it.

use super::{
    Annotation, Annotations, BalanceSetting, BasicAuthSetting, Canary, Class, Parse,
    Problem::{self, Expected, Refuse},
    UpstreamProtocol, Values, WholeRedirect, parse_bool, parse_hash_by, parse_seconds, parse_size, proxy_ssl,
};
use crate::config::{
    AffinityMode, Cidr, CookieAffinityConfig, CorsConfig, ExternalAuthConfig, HeaderField, RetryOn, SameSite,
    external_auth, policy,
};

const SNIPPET: &str = "snippets are refused: configuration is typed, never templated";
const MODSECURITY: &str =
    "ModSecurity is not supported; serving without the web application firewall would expose the Ingress";
const BUFFERING: &str =
    "bodies are held in memory up to proxy-buffer-size / client-body-buffer-size, never in temporary files";

const AUTH_KEEPALIVE: &str = "connections to the auth service are always pooled per worker; auth-keepalive-timeout sets their idle time";

const TRACING: &str = "tracing is not implemented; no spans are sent";
const FASTCGI: &str = "FastCGI is not served (backend-protocol: FCGI refuses the Ingress)";
const REDIRECT_DETAIL: &str = "Sluice's redirects are absolute URLs";
const REWRITE_RESPONSE: &str = "the backend's Set-Cookie and Location headers are passed unchanged";

type Result = std::result::Result<(), Problem>;

/// Every annotation name Sluice knows.
pub const ANNOTATIONS: &[Annotation] = &[
    applied("rewrite-target", rewrite_target),
    applied("use-regex", use_regex),
    applied("ssl-redirect", ssl_redirect),
    applied("force-ssl-redirect", force_ssl_redirect),
    applied("use-port-in-redirects", use_port_in_redirects),
    applied("preserve-trailing-slash", preserve_trailing_slash),
    applied("ssl-passthrough", ssl_passthrough),
    applied("backend-protocol", backend_protocol),
    applied("proxy-connect-timeout", connect_timeout),
    applied("proxy-read-timeout", read_timeout),
    applied("proxy-next-upstream", next_upstream),
    applied("proxy-next-upstream-tries", next_upstream_tries),
    applied("proxy-next-upstream-timeout", next_upstream_timeout),
    applied("proxy-send-timeout", send_timeout),
    applied("proxy-request-buffering", request_buffering),
    applied("client-body-buffer-size", client_body_buffer_size),
    applied("proxy-buffering", proxy_buffering),
    applied("proxy-buffer-size", proxy_buffer_size),
    applied("proxy-body-size", body_size),
    // The proxy-ssl-* set refines proxy-ssl-secret; the ciphers follow the protocols they
    // depend on.
    applied("proxy-ssl-secret", proxy_ssl::proxy_ssl_secret),
    applied("proxy-ssl-verify", proxy_ssl::proxy_ssl_verify),
    applied("proxy-ssl-verify-depth", proxy_ssl::proxy_ssl_verify_depth),
    applied("proxy-ssl-name", proxy_ssl::proxy_ssl_name),
    applied("proxy-ssl-server-name", proxy_ssl::proxy_ssl_server_name),
    applied("proxy-ssl-protocols", proxy_ssl::proxy_ssl_protocols),
    applied("proxy-ssl-ciphers", proxy_ssl::proxy_ssl_ciphers),
    // whitelist- is the old name of allowlist-, which wins when both are set.
    applied("whitelist-source-range", allow_source_range),
    applied("allowlist-source-range", allow_source_range),
    applied("denylist-source-range", deny_source_range),
    // The limits, then what refines them; limit-whitelist is the old name of limit-allowlist,
    // which wins when both are set.
    applied("limit-connections", limit_connections),
    applied("limit-rps", limit_rps),
    applied("limit-rpm", limit_rpm),
    applied("limit-rate", limit_rate),
    applied("limit-rate-after", limit_rate_after),
    applied("limit-burst-multiplier", limit_burst_multiplier),
    applied("limit-whitelist", limit_allowlist),
    applied("limit-allowlist", limit_allowlist),
    // The auth-tls-* set refines auth-tls-secret.
    applied("auth-tls-secret", auth_tls_secret),
    applied("auth-tls-verify-client", auth_tls_verify_client),
    applied("auth-tls-verify-depth", auth_tls_verify_depth),
    applied("auth-tls-error-page", auth_tls_error_page),
    applied("auth-tls-pass-certificate-to-upstream", auth_tls_pass_certificate),
    applied("auth-tls-match-cn", auth_tls_match_cn),
    // A WAF asked for refuses the Ingress; `"false"` asks for nothing.
    applied("enable-modsecurity", enable_modsecurity),
    applied("enable-owasp-core-rules", enable_modsecurity),
    // The auth-secret set refines auth-type: basic.
    applied("auth-type", auth_type),
    applied("auth-secret", auth_secret),
    applied("auth-secret-type", auth_secret_type),
    applied("auth-realm", auth_realm),
    // The auth-* set of external authentication refines auth-url.
    applied("auth-url", auth_url),
    applied("auth-method", auth_method),
    applied("auth-signin", auth_signin),
    applied("auth-signin-redirect-param", auth_signin_redirect_param),
    applied("auth-response-headers", auth_response_headers),
    applied("auth-request-redirect", auth_request_redirect),
    applied("auth-cache-key", auth_cache_key),
    applied("auth-cache-duration", auth_cache_duration),
    applied("auth-always-set-cookie", auth_always_set_cookie),
    applied("auth-keepalive-timeout", auth_keepalive_timeout),
    ignored("auth-keepalive", AUTH_KEEPALIVE),
    ignored("auth-keepalive-requests", AUTH_KEEPALIVE),
    ignored("auth-keepalive-share-vars", "the auth subrequest always carries the request's X-Request-ID"),
    ignored(
        "auth-proxy-set-headers",
        "not implemented: the auth service gets the request's own fields and the X-Original-* set",
    ),
    ignored("enable-global-auth", "there is no global auth-url; an Ingress's own auth-url applies"),
    applied("load-balance", load_balance),
    // After load-balance: consistent hashing wins over it, as in ingress-nginx.
    applied("upstream-hash-by", upstream_hash_by),
    applied("app-root", app_root),
    // permanent-redirect wins when both are set, as in ingress-nginx.
    applied("permanent-redirect", permanent_redirect),
    applied("permanent-redirect-code", permanent_redirect_code),
    applied("temporal-redirect", temporal_redirect),
    applied("temporal-redirect-code", temporal_redirect_code),
    // The session-cookie-* set refines affinity: cookie.
    applied("affinity", affinity),
    applied("affinity-mode", affinity_mode),
    applied("session-cookie-name", session_cookie_name),
    applied("session-cookie-path", session_cookie_path),
    applied("session-cookie-domain", session_cookie_domain),
    applied("session-cookie-max-age", session_cookie_max_age),
    applied("session-cookie-expires", session_cookie_expires),
    applied("session-cookie-samesite", session_cookie_samesite),
    applied("session-cookie-conditional-samesite-none", session_cookie_conditional_samesite_none),
    applied("session-cookie-secure", session_cookie_secure),
    applied("session-cookie-change-on-failure", session_cookie_change_on_failure),
    // The canary-* set refines canary: "true"; the total comes before the weight it bounds.
    applied("canary", canary),
    applied("canary-weight-total", canary_weight_total),
    applied("canary-weight", canary_weight),
    applied("canary-by-header", canary_by_header),
    applied("canary-by-header-value", canary_by_header_value),
    applied("canary-by-header-pattern", canary_by_header_pattern),
    applied("canary-by-cookie", canary_by_cookie),
    applied("upstream-vhost", upstream_vhost),
    applied("x-forwarded-prefix", x_forwarded_prefix),
    applied("custom-headers", custom_headers),
    // The cors-* set refines enable-cors: "true".
    applied("enable-cors", enable_cors),
    applied("cors-allow-origin", cors_allow_origin),
    applied("cors-allow-methods", cors_allow_methods),
    applied("cors-allow-headers", cors_allow_headers),
    applied("cors-expose-headers", cors_expose_headers),
    applied("cors-allow-credentials", cors_allow_credentials),
    applied("cors-max-age", cors_max_age),
    // Leaving these out would serve the Ingress less protected than asked.
    refused("configuration-snippet", SNIPPET),
    refused("server-snippet", SNIPPET),
    refused("location-snippet", SNIPPET),
    refused("stream-snippet", SNIPPET),
    refused("auth-snippet", SNIPPET),
    refused("modsecurity-snippet", SNIPPET),
    ignored(
        "affinity-canary-behavior",
        "not configurable; a weighted canary keeps the main backend's cookie affinity",
    ),
    ignored(
        "modsecurity-transaction-id",
        "only used by ModSecurity, which enable-modsecurity asks for (and which refuses the Ingress)",
    ),
    ignored(
        "connection-proxy-header",
        "Sluice sets the upstream Connection header itself: pooled keep-alive, upgrades passed through",
    ),
    applied("custom-http-errors", custom_http_errors),
    applied("default-backend", default_backend),
    ignored("service-upstream", "endpoints always come from the Service's EndpointSlices"),
    ignored(
        "enable-access-log",
        "access logs are set for the whole node (access_log in the base configuration)",
    ),
    ignored("proxy-buffers-number", BUFFERING),
    ignored("proxy-busy-buffers-size", BUFFERING),
    ignored("proxy-max-temp-file-size", BUFFERING),
    ignored(
        "disable-proxy-intercept-errors",
        "error pages are intercepted whenever custom-http-errors lists statuses; remove the list to pass them through",
    ),
    ignored("enable-opentelemetry", TRACING),
    ignored("opentelemetry-operation-name", TRACING),
    ignored("opentelemetry-trust-incoming-span", TRACING),
    ignored("enable-rewrite-log", "nginx's rewrite debug log; Sluice's access log is set for the node"),
    ignored("fastcgi-index", FASTCGI),
    ignored("fastcgi-params-configmap", FASTCGI),
    applied("from-to-www-redirect", from_to_www_redirect),
    applied("server-alias", server_alias),
    ignored("relative-redirects", REDIRECT_DETAIL),
    ignored("http2-push-preload", "HTTP/2 server push is not sent (browsers have dropped it)"),
    applied("mirror-target", mirror_target),
    applied("mirror-host", mirror_host),
    applied("mirror-request-body", mirror_request_body),
    ignored("proxy-cookie-domain", REWRITE_RESPONSE),
    ignored("proxy-cookie-path", REWRITE_RESPONSE),
    ignored("proxy-redirect-from", REWRITE_RESPONSE),
    ignored("proxy-redirect-to", REWRITE_RESPONSE),
    ignored("proxy-http-version", "backends are spoken to in HTTP/1.1 (or HTTP/2 for gRPC)"),
    ignored("ssl-ciphers", "rustls' cipher suites are served (no CBC, no RSA key exchange)"),
    ignored("ssl-prefer-server-ciphers", "rustls' cipher suites are served (no CBC, no RSA key exchange)"),
    ignored(
        "satisfy",
        "every access check of the Ingress must pass (nginx's satisfy all); `any` is stricter here, never more open",
    ),
    ignored(
        "upstream-hash-by-subset",
        "subsets are not implemented; upstream-hash-by hashes over all the endpoints",
    ),
    ignored(
        "upstream-hash-by-subset-size",
        "subsets are not implemented; upstream-hash-by hashes over all the endpoints",
    ),
];

const fn applied(name: &'static str, parse: Parse) -> Annotation {
    Annotation { name, class: Class::Applied(parse) }
}

const fn refused(name: &'static str, why: &'static str) -> Annotation {
    Annotation { name, class: Class::Refused(why) }
}

const fn ignored(name: &'static str, why: &'static str) -> Annotation {
    Annotation { name, class: Class::Ignored(why) }
}

fn boolean(v: &str) -> std::result::Result<bool, Problem> {
    parse_bool(v).ok_or(Expected("true or false"))
}

fn seconds(v: &str) -> std::result::Result<u64, Problem> {
    parse_seconds(v).ok_or(Expected("a positive number of seconds"))
}

fn use_regex(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.use_regex = boolean(v)?;
    Ok(())
}

fn ssl_redirect(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.ssl_redirect = Some(boolean(v)?);
    Ok(())
}

fn force_ssl_redirect(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.force_ssl_redirect = Some(boolean(v)?);
    Ok(())
}

fn use_port_in_redirects(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.use_port_in_redirects = Some(boolean(v)?);
    Ok(())
}

fn preserve_trailing_slash(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.preserve_trailing_slash = Some(boolean(v)?);
    Ok(())
}

fn ssl_passthrough(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.ssl_passthrough = boolean(v)?;
    Ok(())
}

fn from_to_www_redirect(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.from_to_www = boolean(v)?;
    Ok(())
}

fn server_alias(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let names: Vec<String> =
        v.split(',').map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()).collect();
    if names.iter().any(|n| n == "*" || !crate::config::valid_domain(n)) {
        return Err(Expected("comma-separated host names"));
    }
    a.server_alias = names;
    Ok(())
}

fn connect_timeout(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.connect_timeout_ms = Some(seconds(v)?);
    Ok(())
}

/// The longest gap between two reads from the backend (and the auth subrequest's timeout).
fn read_timeout(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.read_timeout_ms = Some(seconds(v)?);
    Ok(())
}

/// The longest gap between two writes of the request body to the backend.
fn send_timeout(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.send_timeout_ms = Some(seconds(v)?);
    Ok(())
}

fn on_off(v: &str) -> std::result::Result<bool, Problem> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(Expected("on or off")),
    }
}

fn buffer_size(v: &str) -> std::result::Result<u64, Problem> {
    parse_size(v).filter(|n| (1..=1 << 30).contains(n)).ok_or(Expected("a size such as 8k or 1m"))
}

fn request_buffering(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.request_buffering = Some(on_off(v)?);
    Ok(())
}

fn client_body_buffer_size(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.request_buffer_bytes = Some(buffer_size(v)?);
    Ok(())
}

fn proxy_buffering(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.response_buffering = Some(on_off(v)?);
    Ok(())
}

fn proxy_buffer_size(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.response_buffer_bytes = Some(buffer_size(v)?);
    Ok(())
}

/// `0` (ingress-nginx's default) sets no bound; it is kept, so it wins over the controller
/// ConfigMap's.
fn next_upstream_timeout(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.next_upstream_timeout_ms = Some(if v == "0" { 0 } else { seconds(v)? });
    Ok(())
}

fn rewrite_target(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.rewrite_target = Some(v.to_owned()).filter(|v| !v.is_empty());
    Ok(())
}

fn backend_protocol(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.protocol = match v.to_ascii_uppercase().as_str() {
        "HTTP" | "AUTO_HTTP" => UpstreamProtocol::Http,
        "HTTPS" => UpstreamProtocol::Https,
        "GRPC" => UpstreamProtocol::Grpc,
        "GRPCS" => UpstreamProtocol::Grpcs,
        "FCGI" => return Err(Refuse("FCGI is not supported; the pods would not understand HTTP")),
        _ => return Err(Expected("HTTP, HTTPS, AUTO_HTTP, GRPC or GRPCS")),
    };
    Ok(())
}

/// nginx's `proxy_next_upstream` conditions; `off` disables retries.
fn next_upstream(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.next_upstream = Some(parse_next_upstream(v).ok_or(Expected(
        "error, timeout, invalid_header, http_500, http_502, http_503, http_504, http_403, http_404, http_429, non_idempotent or off",
    ))?);
    if a.backend.next_upstream.as_deref() == Some(&[]) {
        a.backend.no_retries = true;
    }
    Ok(())
}

/// The conditions of a `proxy-next-upstream` value, empty for `off`; `None` for a word that
/// is not one.
pub fn parse_next_upstream(v: &str) -> Option<Vec<RetryOn>> {
    let mut conditions = Vec::new();
    for word in v.split_whitespace() {
        conditions.push(match word {
            "off" => return Some(Vec::new()),
            "error" => RetryOn::Error,
            "timeout" => RetryOn::Timeout,
            "invalid_header" => RetryOn::InvalidHeader,
            "http_500" => RetryOn::Http500,
            "http_502" => RetryOn::Http502,
            "http_503" => RetryOn::Http503,
            "http_504" => RetryOn::Http504,
            "http_403" => RetryOn::Http403,
            "http_404" => RetryOn::Http404,
            "http_429" => RetryOn::Http429,
            "non_idempotent" => RetryOn::NonIdempotent,
            _ => return None,
        });
    }
    conditions.sort_unstable();
    conditions.dedup();
    (!conditions.is_empty()).then_some(conditions)
}

fn next_upstream_tries(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    match v.parse::<u32>() {
        // 0 means unlimited in nginx: keep the default retries.
        Ok(0) => {}
        Ok(tries) => a.backend.tries = Some(tries.min(10)),
        Err(_) => return Err(Expected("a number")),
    }
    Ok(())
}

fn body_size(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.body_size = Some(parse_size(v).ok_or(Expected("a size such as 8m, 512k or 0"))?);
    Ok(())
}

/// A comma-separated list of IPv4 and IPv6 CIDR networks or addresses. One that does not parse
/// refuses the Ingress: serving it with a partial list would open or close it wrongly.
fn cidr_list(v: &str) -> std::result::Result<Vec<Cidr>, Problem> {
    let list: std::result::Result<Vec<Cidr>, _> =
        v.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::parse).collect();
    match list {
        Ok(list) if !list.is_empty() => Ok(list),
        _ => Err(Refuse("a source range is not an IPv4 or IPv6 CIDR network or address")),
    }
}

fn allow_source_range(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.source_ranges.get_or_insert_with(Default::default).allow = cidr_list(v)?;
    Ok(())
}

fn deny_source_range(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.source_ranges.get_or_insert_with(Default::default).deny = cidr_list(v)?;
    Ok(())
}

/// Sets a request field the proxy sends upstream in place of the client's.
fn set_request_field(a: &mut Annotations, name: &str, value: &str) {
    let changes = a.request_headers.get_or_insert_with(Default::default);
    changes.set.retain(|f| !f.name.eq_ignore_ascii_case(name));
    changes.set.push(HeaderField { name: name.to_owned(), value: value.to_owned() });
}

/// The Host the backend gets (nginx `proxy_set_header Host`); the client's host still goes in
/// X-Forwarded-Host. nginx variables are not expanded, so a value with `$` is not a host.
fn upstream_vhost(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let (host, port) = v.rsplit_once(':').unwrap_or((v, ""));
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid_host || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Expected("a host name, optionally with :port (nginx variables are not expanded)"));
    }
    set_request_field(a, "host", v);
    Ok(())
}

fn x_forwarded_prefix(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if v.is_empty() || http::HeaderValue::from_str(v).is_err() || v.contains('$') {
        return Err(Expected("a path prefix such as /api (nginx variables are not expanded)"));
    }
    set_request_field(a, "x-forwarded-prefix", v);
    Ok(())
}

/// `mirror-target`: `http(s)://host[:port]`, optionally followed by `$request_uri` (the copy
/// goes to the same URI either way, as nginx's mirror subrequest keeps it); other nginx
/// variables and a path of its own cannot be honoured.
fn mirror_target(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    const EXPECTED: &str = "http(s)://host[:port] optionally followed by $request_uri (no path of its own, no other nginx variables)";
    let url = v.strip_suffix("$request_uri").unwrap_or(v);
    let uri: http::Uri = url.parse().map_err(|_| Expected(EXPECTED))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(Expected(EXPECTED)),
    };
    let Some(authority) = uri.authority() else { return Err(Expected(EXPECTED)) };
    if url.contains('$')
        || !matches!(uri.path(), "" | "/")
        || uri.query().is_some()
        || authority.as_str().contains('@')
    {
        return Err(Expected(EXPECTED));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let body = a.mirror.as_ref().is_none_or(|m| m.body);
    a.mirror =
        Some(super::MirrorSetting { https, host_header: authority.host().to_owned(), host, port, body });
    Ok(())
}

fn mirror_host(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if v.is_empty() || http::HeaderValue::from_str(v).is_err() || v.contains('$') {
        return Err(Expected("a host name (nginx variables are not expanded)"));
    }
    // Without mirror-target there is nothing to mirror, as in ingress-nginx.
    if let Some(mirror) = &mut a.mirror {
        mirror.host_header = v.to_owned();
    }
    Ok(())
}

fn mirror_request_body(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    // ingress-nginx: anything but "off" is on.
    if let Some(mirror) = &mut a.mirror {
        mirror.body = v != "off";
    }
    Ok(())
}

fn custom_http_errors(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.custom_http_errors =
        Some(super::parse_error_codes(v).ok_or(Expected("comma-separated HTTP error statuses (400-599)"))?);
    Ok(())
}

/// A Service name (of the Ingress's namespace); whether it exists is the translation's to say.
fn default_backend(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let valid = !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(Expected("the name of a Service in the Ingress's namespace"));
    }
    a.default_backend = Some(v.to_owned());
    Ok(())
}

/// A ConfigMap reference; whether it exists and may be used is the translation's to say.
fn custom_headers(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let parts: Vec<&str> = v.split('/').collect();
    if parts.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(Expected("NAMESPACE/NAME or NAME of a ConfigMap"));
    }
    a.custom_headers = Some(v.to_owned());
    Ok(())
}

fn enable_cors(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if boolean(v)? {
        a.cors = Some(CorsConfig::default());
    }
    Ok(())
}

/// Items of a comma-separated list, trimmed, blanks left out.
fn list_items(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|item| !item.is_empty()).map(String::from).collect()
}

/// Origins that are not one are left out, as ingress-nginx does (with a warning here); `*`
/// anywhere allows every origin.
fn cors_allow_origin(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let Some(cors) = &mut a.cors else { return Ok(()) };
    let (valid, invalid): (Vec<String>, Vec<String>) =
        list_items(v).into_iter().partition(|origin| policy::check_origin(origin).is_ok());
    cors.allow_origins = if valid.iter().any(|o| o == "*") { vec!["*".into()] } else { valid };
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(Expected(
            "a list of origins (scheme://host[:port], scheme://*.host, null or *): the others were left out",
        ))
    }
}

fn cors_allow_methods(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let Some(cors) = &mut a.cors else { return Ok(()) };
    let methods = list_items(v);
    if methods.is_empty() || !methods.iter().all(|m| m.bytes().all(policy::is_method_byte)) {
        return Err(Expected("a list of methods (letters only)"));
    }
    cors.allow_methods = methods;
    Ok(())
}

fn cors_allow_headers(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let Some(cors) = &mut a.cors else { return Ok(()) };
    let headers = list_items(v);
    if !headers.iter().all(|h| h.bytes().all(policy::is_header_token_byte)) {
        return Err(Expected("a list of header names (letters, digits, _ and -)"));
    }
    cors.allow_headers = headers;
    Ok(())
}

fn cors_expose_headers(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let Some(cors) = &mut a.cors else { return Ok(()) };
    let headers = list_items(v);
    if !headers.iter().all(|h| h.bytes().all(policy::is_exposed_header_byte)) {
        return Err(Expected("a list of header names or *"));
    }
    cors.expose_headers = headers;
    Ok(())
}

fn cors_allow_credentials(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let Some(cors) = &mut a.cors else { return Ok(()) };
    cors.allow_credentials = boolean(v)?;
    Ok(())
}

fn cors_max_age(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let Some(cors) = &mut a.cors else { return Ok(()) };
    cors.max_age_seconds = v.parse().map_err(|_| Expected("a number of seconds"))?;
    Ok(())
}

/// `basic`; `digest` refuses the Ingress (not implemented, and serving it unauthenticated
/// would expose it); any other value denies its locations (503), as in ingress-nginx.
fn auth_type(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let denied = match v {
        "basic" => None,
        "digest" => {
            return Err(Refuse(
                "digest authentication is not supported; serving without it would expose the Ingress",
            ));
        }
        _ => Some(format!("invalid auth-type {v:?} (basic or digest)")),
    };
    a.basic_auth = Some(BasicAuthSetting { denied, ..Default::default() });
    Ok(())
}

fn auth_secret(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if let Some(basic) = &mut a.basic_auth {
        basic.secret = Some(v.to_owned()).filter(|v| !v.is_empty());
    }
    Ok(())
}

fn auth_secret_type(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if let Some(basic) = &mut a.basic_auth {
        match v {
            "auth-file" => basic.map = false,
            "auth-map" => basic.map = true,
            _ => {
                basic
                    .denied
                    .get_or_insert_with(|| format!("invalid auth-secret-type {v:?} (auth-file or auth-map)"));
            }
        }
    }
    Ok(())
}

fn auth_realm(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if let Some(basic) = &mut a.basic_auth {
        // The realm is quoted in WWW-Authenticate.
        basic.realm = v.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
    }
    Ok(())
}

/// Most requests per second (per minute: 60 times) a limit may name; more would not be a
/// limit the limiter can count in microseconds.
const MOST_PER_SECOND: u32 = 1_000_000;

/// A limit (`limit-rps`, `-rpm`, `-connections`): a whole number, 0 for none. One that does
/// not parse refuses the Ingress, as in ingress-nginx: serving it unlimited would be less
/// safe than asked.
fn limit_number(v: &str, most: u32) -> std::result::Result<u32, Problem> {
    match v.parse::<u32>() {
        Ok(n) if n <= most => Ok(n),
        Ok(_) => Err(Refuse("the limit is larger than Sluice can count")),
        Err(_) => Err(Refuse("a limit must be a whole number of requests")),
    }
}

fn rate_limit(a: &mut Annotations, set: impl FnOnce(&mut crate::config::RateLimitConfig)) -> Result {
    set(a.rate_limit.get_or_insert_with(Default::default));
    Ok(())
}

fn limit_connections(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    match limit_number(v, u32::MAX)? {
        0 => Ok(()),
        n => rate_limit(a, |l| l.connections = n),
    }
}

fn limit_rps(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    match limit_number(v, MOST_PER_SECOND)? {
        0 => Ok(()),
        n => rate_limit(a, |l| l.rps = n),
    }
}

fn limit_rpm(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    match limit_number(v, 60 * MOST_PER_SECOND)? {
        0 => Ok(()),
        n => rate_limit(a, |l| l.rpm = n),
    }
}

/// Kilobytes (KiB, as nginx's `k`) per second; 0 for none.
fn limit_rate(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    match v.parse::<u32>() {
        Ok(0) => Ok(()),
        Ok(kib) => rate_limit(a, |l| l.response_bytes_per_second = u64::from(kib) * 1024),
        Err(_) => Err(Expected("a whole number of kilobytes per second")),
    }
}

fn limit_rate_after(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let kib = v.parse::<u32>().map_err(|_| Expected("a whole number of kilobytes"))?;
    if let Some(limit) = a.rate_limit.as_mut() {
        limit.response_rate_after_bytes = u64::from(kib) * 1024;
    }
    Ok(())
}

fn limit_burst_multiplier(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let multiplier = match v.parse::<u32>() {
        Ok(n) if n <= 1_000 => n,
        _ => return Err(Expected("a whole number up to 1000")),
    };
    if let Some(limit) = a.rate_limit.as_mut() {
        limit.burst_multiplier = multiplier;
    }
    Ok(())
}

/// Clients never limited. A list that does not parse refuses the Ingress (ingress-nginx checks
/// it whether or not a limit is set).
fn limit_allowlist(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let list =
        cidr_list(v).map_err(|_| Refuse("a limit-allowlist entry is not an IPv4 or IPv6 CIDR network"))?;
    if let Some(limit) = a.rate_limit.as_mut() {
        limit.allowlist = list;
    }
    Ok(())
}

/// `NAMESPACE/NAME` or `NAME` (ingress-nginx's basic characters); `on` until told otherwise.
fn auth_tls_secret(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let name = |part: &str| {
        !part.is_empty()
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    let valid = match v.split_once('/') {
        Some((namespace, secret)) => name(namespace) && name(secret),
        None => name(v),
    };
    if !valid {
        return Err(Refuse("auth-tls-secret must be NAMESPACE/NAME or NAME"));
    }
    a.client_tls = Some(super::ClientTlsSetting {
        secret: v.to_owned(),
        verify: crate::config::ClientVerify::On,
        depth: 1,
        error_page: None,
        pass_certificate: false,
        match_cn: None,
    });
    Ok(())
}

/// A value that is not a mode leaves `on`, the strictest, as ingress-nginx does.
fn auth_tls_verify_client(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    use crate::config::ClientVerify;
    let verify = match v {
        "on" => ClientVerify::On,
        "off" => ClientVerify::Off,
        "optional" => ClientVerify::Optional,
        "optional_no_ca" => ClientVerify::OptionalNoCa,
        _ => return Err(Expected("on, off, optional or optional_no_ca (on is kept)")),
    };
    if let Some(client_tls) = &mut a.client_tls {
        client_tls.verify = verify;
    }
    Ok(())
}

fn auth_tls_verify_depth(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let depth = match v.parse::<u8>() {
        Ok(depth) if depth > 0 => depth,
        _ => return Err(Expected("a depth from 1 to 255 (1 is kept)")),
    };
    if let Some(client_tls) = &mut a.client_tls {
        client_tls.depth = depth;
    }
    Ok(())
}

/// An `http(s)` URL or a path, as ingress-nginx's check lets through (no nginx named locations).
fn auth_tls_error_page(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let rest = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://")).unwrap_or(v);
    let valid = !v.is_empty()
        && (rest.len() < v.len() || v.starts_with('/'))
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:/".contains(&b));
    if !valid {
        return Err(Refuse("auth-tls-error-page must be an http(s) URL or a path"));
    }
    if let Some(client_tls) = &mut a.client_tls {
        client_tls.error_page = Some(v.to_owned());
    }
    Ok(())
}

fn auth_tls_pass_certificate(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let pass = parse_bool(v).ok_or(Refuse("auth-tls-pass-certificate-to-upstream must be true or false"))?;
    if let Some(client_tls) = &mut a.client_tls {
        client_tls.pass_certificate = pass;
    }
    Ok(())
}

/// A regular expression on the subject DN, starting `CN=` as ingress-nginx asks.
fn auth_tls_match_cn(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if !v.starts_with("CN=") || regex::Regex::new(v).is_err() {
        return Err(Refuse("auth-tls-match-cn must be a regular expression starting with CN="));
    }
    if let Some(client_tls) = &mut a.client_tls {
        client_tls.match_cn = Some(v.to_owned());
    }
    Ok(())
}

fn enable_modsecurity(v: &str, _: &mut Annotations, _: &Values<'_>) -> Result {
    match parse_bool(v) {
        Some(false) => Ok(()),
        Some(true) | None => Err(Refuse(MODSECURITY)),
    }
}

/// An http(s) URL; one that does not parse (or uses nginx variables, which are not expanded)
/// refuses the Ingress: serving it without its auth would expose it.
fn auth_url(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if v.contains('$') || external_auth::AuthUrl::parse(v).is_err() {
        return Err(Refuse(
            "auth-url is not an http(s) URL without nginx variables; serving without it would expose the Ingress",
        ));
    }
    let mut config = ExternalAuthConfig::for_url(v);
    // The auth location inherits the route's read timeout, as nginx's does.
    if let Some(timeout) = a.read_timeout_ms {
        config.timeout_ms = timeout;
    }
    a.external_auth = Some(config);
    Ok(())
}

/// Applies `change` to the external auth settings (when auth-url is set) and keeps it only if
/// the settings stay valid.
fn refine_external(
    a: &mut Annotations,
    expected: &'static str,
    change: impl FnOnce(&mut ExternalAuthConfig),
) -> Result {
    let Some(current) = &a.external_auth else { return Ok(()) };
    let mut changed = current.clone();
    change(&mut changed);
    external_auth::check(&changed).map_err(|_| Expected(expected))?;
    a.external_auth = Some(changed);
    Ok(())
}

fn auth_method(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine_external(a, "an HTTP method", |c| c.method = Some(v.to_owned()))
}

fn auth_signin(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine_external(a, "an http(s) URL", |c| c.signin = Some(v.to_owned()))
}

fn auth_signin_redirect_param(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(Expected("a query parameter name"));
    }
    refine_external(a, "a query parameter name", |c| c.signin_redirect_param = v.to_owned())
}

fn auth_response_headers(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let names = v.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
    refine_external(a, "a comma-separated list of header names", |c| c.response_headers = names)
}

fn auth_request_redirect(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine_external(a, "a URL", |c| c.request_redirect = Some(v.to_owned()))
}

fn auth_cache_key(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine_external(
        a,
        "text with $http_NAME, $cookie_NAME, $remote_user, $remote_addr, $host, $request_uri",
        |c| c.cache_key = Some(v.to_owned()).filter(|v| !v.is_empty()),
    )
}

fn auth_cache_duration(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    refine_external(a, "a list of [codes] time, such as 200 202 401 5m", |c| c.cache_duration = v.to_owned())
}

fn auth_always_set_cookie(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let always = boolean(v)?;
    refine_external(a, "true or false", |c| c.always_set_cookie = always)
}

fn auth_keepalive_timeout(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let ms = seconds(v)?;
    refine_external(a, "a positive number of seconds", |c| c.keepalive_timeout_ms = ms)
}

fn load_balance(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    a.backend.balance = Some(match v {
        "round_robin" => BalanceSetting::RoundRobin,
        "ewma" => BalanceSetting::Ewma,
        "least_conn" => BalanceSetting::LeastRequest,
        _ => return Err(Expected("round_robin or ewma")),
    });
    Ok(())
}

fn upstream_hash_by(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    let setting =
        parse_hash_by(v).ok_or(Expected("$remote_addr, $binary_remote_addr, $http_NAME or $cookie_NAME"))?;
    a.backend.balance = Some(setting);
    Ok(())
}

fn app_root(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if !v.starts_with('/') || v.contains(char::is_whitespace) {
        return Err(Expected("a path starting with /"));
    }
    a.app_root = Some(v.to_owned());
    Ok(())
}

fn permanent_redirect(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    redirect(a, v, 301)
}

fn temporal_redirect(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    redirect(a, v, 302)
}

/// A redirect of the whole Ingress to `url` with the kind's default code, unless one is set.
fn redirect(a: &mut Annotations, url: &str, code: u16) -> Result {
    if !url.is_empty() && a.redirect.is_none() {
        a.redirect = Some(WholeRedirect { url: url.to_owned(), code });
    }
    Ok(())
}

/// A redirect annotation's URL, when it is set.
fn set(url: Option<&str>) -> bool {
    url.is_some_and(|url| !url.is_empty())
}

fn redirect_code(v: &str, codes: &[u16]) -> std::result::Result<u16, Problem> {
    v.parse::<u16>().ok().filter(|c| codes.contains(c)).ok_or(Expected("a redirect code of this kind"))
}

fn permanent_redirect_code(v: &str, a: &mut Annotations, others: &Values<'_>) -> Result {
    if !set(others.get("permanent-redirect")) {
        return Ok(());
    }
    let code = redirect_code(v, &[301, 308])?;
    // The permanent redirect is set, so it is the one that won.
    if let Some(redirect) = a.redirect.as_mut() {
        redirect.code = code;
    }
    Ok(())
}

fn temporal_redirect_code(v: &str, a: &mut Annotations, others: &Values<'_>) -> Result {
    if !set(others.get("temporal-redirect")) {
        return Ok(());
    }
    let code = redirect_code(v, &[302, 303, 307])?;
    // Checked even when the permanent redirect won, applied only when it did not.
    if !set(others.get("permanent-redirect"))
        && let Some(redirect) = a.redirect.as_mut()
    {
        redirect.code = code;
    }
    Ok(())
}

fn affinity(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if v != "cookie" {
        return Err(Expected("cookie"));
    }
    a.backend.cookie_affinity = Some(CookieAffinityConfig::default());
    Ok(())
}

/// Applies `set` to the cookie affinity; nothing without `affinity: cookie`.
fn cookie_affinity(a: &mut Annotations, set: impl FnOnce(&mut CookieAffinityConfig) -> Result) -> Result {
    match a.backend.cookie_affinity.as_mut() {
        Some(affinity) => set(affinity),
        None => Ok(()),
    }
}

/// A cookie attribute value: printable, without the separators of a Set-Cookie header.
fn cookie_token(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && !b";,=\"".contains(&b))
}

fn affinity_mode(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_affinity(a, |affinity| {
        affinity.mode = match v {
            "balanced" => AffinityMode::Balanced,
            "persistent" => AffinityMode::Persistent,
            _ => return Err(Expected("balanced or persistent")),
        };
        Ok(())
    })
}

fn session_cookie_name(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_affinity(a, |affinity| {
        if !cookie_token(v) {
            return Err(Expected("a cookie name"));
        }
        affinity.name = v.to_owned();
        Ok(())
    })
}

fn session_cookie_path(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_affinity(a, |affinity| {
        if !v.starts_with('/') || !cookie_token(v) {
            return Err(Expected("a path"));
        }
        affinity.path = v.to_owned();
        Ok(())
    })
}

fn session_cookie_domain(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_affinity(a, |affinity| {
        if !cookie_token(v) {
            return Err(Expected("a domain"));
        }
        affinity.domain = Some(v.to_owned());
        Ok(())
    })
}

fn session_cookie_max_age(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_seconds(v, a, |affinity| &mut affinity.max_age_seconds)
}

fn session_cookie_expires(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_seconds(v, a, |affinity| &mut affinity.expires_seconds)
}

fn session_cookie_conditional_samesite_none(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_flag(v, a, |affinity| &mut affinity.conditional_samesite_none)
}

fn session_cookie_secure(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_flag(v, a, |affinity| &mut affinity.secure)
}

fn session_cookie_change_on_failure(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_flag(v, a, |affinity| &mut affinity.change_on_failure)
}

/// A number of seconds of the cookie affinity.
fn cookie_seconds(
    v: &str,
    a: &mut Annotations,
    field: fn(&mut CookieAffinityConfig) -> &mut Option<u64>,
) -> Result {
    cookie_affinity(a, |affinity| {
        *field(affinity) = Some(v.parse::<u64>().map_err(|_| Expected("a number of seconds"))?);
        Ok(())
    })
}

/// A true/false setting of the cookie affinity.
fn cookie_flag(v: &str, a: &mut Annotations, flag: fn(&mut CookieAffinityConfig) -> &mut bool) -> Result {
    cookie_affinity(a, |affinity| {
        *flag(affinity) = boolean(v)?;
        Ok(())
    })
}

fn session_cookie_samesite(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    cookie_affinity(a, |affinity| {
        affinity.samesite = Some(match v.to_ascii_lowercase().as_str() {
            "lax" => SameSite::Lax,
            "strict" => SameSite::Strict,
            "none" => SameSite::None,
            _ => return Err(Expected("None, Lax or Strict")),
        });
        Ok(())
    })
}

/// `canary: "true"` makes the Ingress a canary; any other value leaves it a main Ingress.
fn canary(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    if parse_bool(v) == Some(true) {
        a.canary = Some(Canary { weight_total: 100, ..Canary::default() });
    }
    Ok(())
}

/// Applies `set` to the canary settings; nothing without `canary: "true"`.
fn canary_setting(a: &mut Annotations, set: impl FnOnce(&mut Canary) -> Result) -> Result {
    match a.canary.as_mut() {
        Some(canary) => set(canary),
        None => Ok(()),
    }
}

fn canary_weight_total(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    canary_setting(a, |canary| {
        canary.weight_total =
            v.parse::<u32>().ok().filter(|t| *t > 0).ok_or(Expected("a positive number"))?;
        Ok(())
    })
}

fn canary_weight(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    canary_setting(a, |canary| {
        let weight = v.parse::<u32>().map_err(|_| Expected("a number"))?;
        canary.weight = weight.min(canary.weight_total);
        Ok(())
    })
}

fn canary_by_header(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    canary_setting(a, |canary| {
        http::HeaderName::from_bytes(v.as_bytes()).map_err(|_| Expected("a header name"))?;
        canary.header = Some(v.to_ascii_lowercase());
        Ok(())
    })
}

fn canary_by_header_value(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    canary_setting(a, |canary| {
        canary.header_value = Some(v.to_owned()).filter(|v| !v.is_empty());
        Ok(())
    })
}

fn canary_by_header_pattern(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    canary_setting(a, |canary| {
        if v.is_empty() {
            return Ok(());
        }
        regex::Regex::new(v).map_err(|_| Expected("a regular expression"))?;
        canary.header_pattern = Some(v.to_owned());
        Ok(())
    })
}

fn canary_by_cookie(v: &str, a: &mut Annotations, _: &Values<'_>) -> Result {
    canary_setting(a, |canary| {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(Expected("a cookie name"));
        }
        canary.cookie = Some(v.to_owned());
        Ok(())
    })
}
