//! Ingress annotations: the ingress-nginx set users rely on, read unchanged under
//! `nginx.ingress.kubernetes.io/`, and the same names under `sluice.dev/` (which win when both
//! are set). Every value is parsed into a typed setting; nothing is ever templated.
//!
//! Three outcomes for an annotation that is not simply applied:
//! - **refused**: the Ingress is not served at all, because serving it without the annotation
//!   would expose what the user meant to protect (snippets, source ranges, external auth) or
//!   break the backend (FastCGI);
//! - **ignored with a warning**: unsupported but harmless to leave out (session affinity,
//!   CORS, rate limits...), or a value that does not parse;
//! - applied.

use std::collections::BTreeMap;

use crate::config::{AffinityMode, Balance, CookieAffinityConfig, HashOn, SameSite};

pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
pub const SLUICE_PREFIX: &str = "sluice.dev/";

/// The protocol the Service's pods speak (`backend-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http,
    /// HTTP/1.1 over TLS; the pods' certificates are not verified (as ingress-nginx's default
    /// `proxy-ssl-verify off`).
    Https,
    /// HTTP/2 cleartext (gRPC).
    Grpc,
    /// HTTP/2 over TLS, not verified.
    Grpcs,
}

/// Canary settings of a canary Ingress (`canary: "true"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Canary {
    pub weight: u32,
    pub weight_total: u32,
    pub header: Option<String>,
    pub header_value: Option<String>,
    pub header_pattern: Option<String>,
    pub cookie: Option<String>,
}

/// A redirect of every request of the Ingress (`permanent-redirect`, `temporal-redirect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeRedirect {
    pub url: String,
    pub code: u16,
}

/// Settings that shape a backend group; Ingresses with equal settings share groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendSettings {
    pub protocol: UpstreamProtocol,
    pub connect_timeout_ms: Option<u64>,
    /// `proxy-next-upstream: off`.
    pub no_retries: bool,
    /// `proxy-next-upstream-tries` (attempts in all, first included).
    pub tries: Option<u32>,
    pub balance: Option<BalanceSetting>,
    /// `affinity: cookie` and the `session-cookie-*` set.
    pub cookie_affinity: Option<CookieAffinityConfig>,
}

/// `load-balance` or `upstream-hash-by`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BalanceSetting {
    RoundRobin,
    Ewma,
    LeastRequest,
    HashHeader(String),
    HashCookie(String),
    HashClientIp,
}

impl BalanceSetting {
    pub fn to_model(&self) -> (Balance, Option<HashOn>) {
        match self {
            BalanceSetting::RoundRobin => (Balance::RoundRobin, None),
            BalanceSetting::Ewma => (Balance::Ewma, None),
            BalanceSetting::LeastRequest => (Balance::LeastRequest, None),
            BalanceSetting::HashHeader(h) => (Balance::Hash, Some(HashOn::Header(h.clone()))),
            BalanceSetting::HashCookie(c) => (Balance::Hash, Some(HashOn::Cookie(c.clone()))),
            BalanceSetting::HashClientIp => (Balance::Hash, Some(HashOn::ClientIp)),
        }
    }
}

/// Everything the annotations of one Ingress ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    pub backend: BackendSettings,
    pub rewrite_target: Option<String>,
    pub use_regex: bool,
    /// `ssl-redirect` (default true for hosts with TLS).
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: bool,
    /// `proxy-read-timeout`, as the route's request timeout.
    pub read_timeout_ms: Option<u64>,
    pub body_size: Option<u64>,
    pub canary: Option<Canary>,
    pub app_root: Option<String>,
    pub redirect: Option<WholeRedirect>,
    pub ssl_passthrough: bool,
}

/// The outcome of reading one Ingress's annotations.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub annotations: Annotations,
    /// Why the Ingress must not be served, if it must not.
    pub refused: Option<String>,
    pub warnings: Vec<String>,
}

/// Annotations that refuse the whole Ingress: leaving them out would serve it less protected
/// than asked, and configuration is typed, never templated.
const REFUSED: &[(&str, &str)] = &[
    ("configuration-snippet", "snippets are refused: configuration is typed, never templated"),
    ("server-snippet", "snippets are refused: configuration is typed, never templated"),
    ("location-snippet", "snippets are refused: configuration is typed, never templated"),
    ("stream-snippet", "snippets are refused: configuration is typed, never templated"),
    ("auth-snippet", "snippets are refused: configuration is typed, never templated"),
    ("modsecurity-snippet", "snippets are refused: configuration is typed, never templated"),
    (
        "whitelist-source-range",
        "source-range allow lists are not supported; serving without it would expose the Ingress",
    ),
    (
        "allowlist-source-range",
        "source-range allow lists are not supported; serving without it would expose the Ingress",
    ),
    (
        "denylist-source-range",
        "source-range deny lists are not supported; serving without it would expose the Ingress",
    ),
    ("auth-url", "external authentication is not supported; serving without it would expose the Ingress"),
    (
        "auth-type",
        "basic/digest authentication is not supported; serving without it would expose the Ingress",
    ),
    (
        "auth-tls-secret",
        "client-certificate authentication by annotation is not supported; serving without it would expose the Ingress",
    ),
];

/// Recognised but not supported; the Ingress is served without them.
const IGNORED: &[&str] = &[
    "affinity-canary-behavior",
    "proxy-send-timeout",
    "proxy-next-upstream-timeout",
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-allow-credentials",
    "cors-max-age",
    "limit-rps",
    "limit-rpm",
    "limit-connections",
    "proxy-buffering",
    "proxy-buffer-size",
    "proxy-request-buffering",
    "upstream-vhost",
    "x-forwarded-prefix",
    "custom-http-errors",
    "default-backend",
    "service-upstream",
    "enable-access-log",
    "proxy-ssl-verify",
    "proxy-ssl-secret",
    "proxy-ssl-name",
];

/// The names (after the prefix) this module applies.
const APPLIED: &[&str] = &[
    "rewrite-target",
    "use-regex",
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-next-upstream",
    "proxy-next-upstream-tries",
    "proxy-body-size",
    "load-balance",
    "upstream-hash-by",
    "canary",
    "canary-weight",
    "canary-weight-total",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "app-root",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "temporal-redirect-code",
    "ssl-passthrough",
    "affinity",
    "affinity-mode",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-domain",
    "session-cookie-samesite",
    "session-cookie-conditional-samesite-none",
    "session-cookie-expires",
    "session-cookie-max-age",
    "session-cookie-secure",
    "session-cookie-change-on-failure",
];

/// Reads the annotations of one Ingress.
pub fn read(raw: &BTreeMap<String, String>) -> Reading {
    let mut reading = Reading::default();
    // The names set under either prefix; sluice.dev/ wins.
    let mut values: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in raw {
        if let Some(name) = key.strip_prefix(NGINX_PREFIX) {
            values.entry(name).or_insert(value.as_str());
        }
    }
    for (key, value) in raw {
        if let Some(name) = key.strip_prefix(SLUICE_PREFIX) {
            values.insert(name, value.as_str());
        }
    }
    for (&name, _) in values.iter() {
        if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
            reading.refused.get_or_insert_with(|| format!("annotation {name}: {why}"));
        } else if IGNORED.contains(&name) {
            reading.warnings.push(format!("annotation {name} is not supported; ignored"));
        } else if !APPLIED.contains(&name) {
            reading.warnings.push(format!("annotation {name} is unknown; ignored"));
        }
    }
    let a = &mut reading.annotations;
    let warnings = &mut reading.warnings;
    let mut bad = |name: &str, value: &str, expected: &str| {
        warnings.push(format!("annotation {name}: {value:?} is not {expected}; ignored"));
    };
    let get = |name: &str| values.get(name).map(|v| v.trim());

    a.rewrite_target = get("rewrite-target").filter(|v| !v.is_empty()).map(str::to_owned);
    if let Some(v) = get("use-regex") {
        match parse_bool(v) {
            Some(b) => a.use_regex = b,
            None => bad("use-regex", v, "true or false"),
        }
    }
    if let Some(v) = get("ssl-redirect") {
        match parse_bool(v) {
            Some(b) => a.ssl_redirect = Some(b),
            None => bad("ssl-redirect", v, "true or false"),
        }
    }
    if let Some(v) = get("force-ssl-redirect") {
        match parse_bool(v) {
            Some(b) => a.force_ssl_redirect = b,
            None => bad("force-ssl-redirect", v, "true or false"),
        }
    }
    if let Some(v) = get("ssl-passthrough") {
        match parse_bool(v) {
            Some(b) => a.ssl_passthrough = b,
            None => bad("ssl-passthrough", v, "true or false"),
        }
    }
    if let Some(v) = get("backend-protocol") {
        match v.to_ascii_uppercase().as_str() {
            "HTTP" | "AUTO_HTTP" => a.backend.protocol = UpstreamProtocol::Http,
            "HTTPS" => a.backend.protocol = UpstreamProtocol::Https,
            "GRPC" => a.backend.protocol = UpstreamProtocol::Grpc,
            "GRPCS" => a.backend.protocol = UpstreamProtocol::Grpcs,
            "FCGI" => {
                reading.refused.get_or_insert_with(|| {
                    "annotation backend-protocol: FCGI is not supported; the pods would not understand HTTP".into()
                });
            }
            _ => bad("backend-protocol", v, "HTTP, HTTPS, AUTO_HTTP, GRPC or GRPCS"),
        }
    }
    for (name, field) in [
        ("proxy-connect-timeout", &mut a.backend.connect_timeout_ms),
        ("proxy-read-timeout", &mut a.read_timeout_ms),
    ] {
        if let Some(v) = get(name) {
            match parse_seconds(v) {
                Some(ms) => *field = Some(ms),
                None => bad(name, v, "a positive number of seconds"),
            }
        }
    }
    if let Some(v) = get("proxy-next-upstream") {
        let words: Vec<&str> = v.split_whitespace().collect();
        if words == ["off"] {
            a.backend.no_retries = true;
        } else if words.is_empty() {
            bad("proxy-next-upstream", v, "a list of conditions or off");
        }
    }
    if let Some(v) = get("proxy-next-upstream-tries") {
        match v.parse::<u32>() {
            // 0 means unlimited in nginx: keep the default retries.
            Ok(0) => {}
            Ok(tries) => a.backend.tries = Some(tries.min(10)),
            Err(_) => bad("proxy-next-upstream-tries", v, "a number"),
        }
    }
    if let Some(v) = get("proxy-body-size") {
        match parse_size(v) {
            Some(bytes) => a.body_size = Some(bytes),
            None => bad("proxy-body-size", v, "a size such as 8m, 512k or 0"),
        }
    }
    if let Some(v) = get("load-balance") {
        match v {
            "round_robin" => a.backend.balance = Some(BalanceSetting::RoundRobin),
            "ewma" => a.backend.balance = Some(BalanceSetting::Ewma),
            "least_conn" => a.backend.balance = Some(BalanceSetting::LeastRequest),
            _ => bad("load-balance", v, "round_robin or ewma"),
        }
    }
    if let Some(v) = get("upstream-hash-by") {
        // Consistent hashing wins over load-balance, as in ingress-nginx.
        match parse_hash_by(v) {
            Some(setting) => a.backend.balance = Some(setting),
            None => {
                bad("upstream-hash-by", v, "$remote_addr, $binary_remote_addr, $http_NAME or $cookie_NAME")
            }
        }
    }
    if let Some(v) = get("app-root") {
        if v.starts_with('/') && !v.contains(char::is_whitespace) {
            a.app_root = Some(v.to_owned());
        } else {
            bad("app-root", v, "a path starting with /");
        }
    }
    for (name, code_name, default_code, codes) in [
        ("permanent-redirect", "permanent-redirect-code", 301, &[301, 308][..]),
        ("temporal-redirect", "temporal-redirect-code", 302, &[302, 303, 307][..]),
    ] {
        let Some(url) = get(name).filter(|v| !v.is_empty()) else { continue };
        let code = match get(code_name) {
            Some(c) => match c.parse::<u16>() {
                Ok(c) if codes.contains(&c) => c,
                _ => {
                    bad(code_name, c, "a redirect code of this kind");
                    default_code
                }
            },
            None => default_code,
        };
        // permanent-redirect wins when both are set, as in ingress-nginx.
        if a.redirect.is_none() {
            a.redirect = Some(WholeRedirect { url: url.to_owned(), code });
        }
    }
    match get("affinity") {
        Some("cookie") => {
            let mut affinity = CookieAffinityConfig::default();
            if let Some(v) = get("affinity-mode") {
                match v {
                    "balanced" => affinity.mode = AffinityMode::Balanced,
                    "persistent" => affinity.mode = AffinityMode::Persistent,
                    _ => bad("affinity-mode", v, "balanced or persistent"),
                }
            }
            let token =
                |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && !b";,=\"".contains(&b));
            if let Some(v) = get("session-cookie-name") {
                if token(v) {
                    affinity.name = v.to_owned()
                } else {
                    bad("session-cookie-name", v, "a cookie name")
                }
            }
            if let Some(v) = get("session-cookie-path") {
                if v.starts_with('/') && token(v) {
                    affinity.path = v.to_owned()
                } else {
                    bad("session-cookie-path", v, "a path")
                }
            }
            if let Some(v) = get("session-cookie-domain") {
                if token(v) {
                    affinity.domain = Some(v.to_owned())
                } else {
                    bad("session-cookie-domain", v, "a domain")
                }
            }
            for (name, field) in [
                ("session-cookie-max-age", &mut affinity.max_age_seconds),
                ("session-cookie-expires", &mut affinity.expires_seconds),
            ] {
                if let Some(v) = get(name) {
                    match v.parse::<u64>() {
                        Ok(seconds) => *field = Some(seconds),
                        Err(_) => bad(name, v, "a number of seconds"),
                    }
                }
            }
            if let Some(v) = get("session-cookie-samesite") {
                match v.to_ascii_lowercase().as_str() {
                    "lax" => affinity.samesite = Some(SameSite::Lax),
                    "strict" => affinity.samesite = Some(SameSite::Strict),
                    "none" => affinity.samesite = Some(SameSite::None),
                    _ => bad("session-cookie-samesite", v, "None, Lax or Strict"),
                }
            }
            for (name, field) in [
                ("session-cookie-conditional-samesite-none", &mut affinity.conditional_samesite_none),
                ("session-cookie-secure", &mut affinity.secure),
                ("session-cookie-change-on-failure", &mut affinity.change_on_failure),
            ] {
                if let Some(v) = get(name) {
                    match parse_bool(v) {
                        Some(b) => *field = b,
                        None => bad(name, v, "true or false"),
                    }
                }
            }
            a.backend.cookie_affinity = Some(affinity);
        }
        Some(v) => bad("affinity", v, "cookie"),
        None => {}
    }
    if get("canary").and_then(parse_bool) == Some(true) {
        let mut canary = Canary { weight_total: 100, ..Canary::default() };
        if let Some(v) = get("canary-weight-total") {
            match v.parse::<u32>() {
                Ok(total) if total > 0 => canary.weight_total = total,
                _ => bad("canary-weight-total", v, "a positive number"),
            }
        }
        if let Some(v) = get("canary-weight") {
            match v.parse::<u32>() {
                Ok(weight) => canary.weight = weight.min(canary.weight_total),
                Err(_) => bad("canary-weight", v, "a number"),
            }
        }
        let header_name = |v: &str| http::HeaderName::from_bytes(v.as_bytes()).is_ok();
        if let Some(v) = get("canary-by-header") {
            if header_name(v) {
                canary.header = Some(v.to_ascii_lowercase());
            } else {
                bad("canary-by-header", v, "a header name");
            }
        }
        canary.header_value = get("canary-by-header-value").filter(|v| !v.is_empty()).map(str::to_owned);
        if let Some(v) = get("canary-by-header-pattern").filter(|v| !v.is_empty()) {
            match regex::Regex::new(v) {
                Ok(_) => canary.header_pattern = Some(v.to_owned()),
                Err(_) => bad("canary-by-header-pattern", v, "a regular expression"),
            }
        }
        if let Some(v) = get("canary-by-cookie") {
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                canary.cookie = Some(v.to_owned());
            } else {
                bad("canary-by-cookie", v, "a cookie name");
            }
        }
        a.canary = Some(canary);
    }
    reading
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Unitless seconds, as ingress-nginx reads its timeouts; positive.
fn parse_seconds(v: &str) -> Option<u64> {
    let seconds: u64 = v.parse().ok()?;
    (seconds > 0 && seconds <= 86_400).then_some(seconds * 1000)
}

/// An nginx size: bytes, or a number with k, m or g (either case). `0` is unlimited.
pub fn parse_size(v: &str) -> Option<u64> {
    let (digits, unit) = match v.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&v[..i], Some(c.to_ascii_lowercase())),
        _ => (v, None),
    };
    let number: u64 = digits.parse().ok()?;
    let factor = match unit {
        None => 1,
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some(_) => return None,
    };
    number.checked_mul(factor)
}

fn parse_hash_by(v: &str) -> Option<BalanceSetting> {
    let variable = v.strip_prefix('$')?;
    if variable == "remote_addr" || variable == "binary_remote_addr" {
        return Some(BalanceSetting::HashClientIp);
    }
    let valid = |name: &str| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if let Some(header) = variable.strip_prefix("http_").filter(|h| valid(h)) {
        return Some(BalanceSetting::HashHeader(header.replace('_', "-")));
    }
    if let Some(cookie) = variable.strip_prefix("cookie_").filter(|c| valid(c)) {
        return Some(BalanceSetting::HashCookie(cookie.to_owned()));
    }
    None
}

/// ingress-nginx's rewrite targets use `$1`; the regex crate reads `$1a` as a group named
/// `1a`, so numbered groups are written `${1}`.
pub fn replacement(target: &str) -> String {
    let bytes = target.as_bytes();
    let mut out = String::with_capacity(target.len() + 4);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() && bytes[i + 1].is_ascii_digit() {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            out.push_str("${");
            out.push_str(&target[start..end]);
            out.push('}');
            i = end;
        } else {
            let c = target[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Reading {
        let raw = pairs.iter().map(|(k, v)| (format!("{NGINX_PREFIX}{k}"), v.to_string())).collect();
        read(&raw)
    }

    #[test]
    fn ingress_nginx_names_are_read_unchanged() {
        let r = annotations(&[
            ("rewrite-target", "/$2"),
            ("use-regex", "true"),
            ("backend-protocol", "GRPC"),
            ("proxy-connect-timeout", "3"),
            ("proxy-read-timeout", "120"),
            ("proxy-body-size", "8m"),
            ("load-balance", "ewma"),
            ("proxy-next-upstream-tries", "4"),
            ("ssl-redirect", "false"),
        ]);
        assert!(r.refused.is_none() && r.warnings.is_empty(), "{r:?}");
        let a = r.annotations;
        assert_eq!(a.rewrite_target.as_deref(), Some("/$2"));
        assert!(a.use_regex);
        assert_eq!(a.backend.protocol, UpstreamProtocol::Grpc);
        assert_eq!(a.backend.connect_timeout_ms, Some(3000));
        assert_eq!(a.read_timeout_ms, Some(120_000));
        assert_eq!(a.body_size, Some(8 << 20));
        assert_eq!(a.backend.balance, Some(BalanceSetting::Ewma));
        assert_eq!(a.backend.tries, Some(4));
        assert_eq!(a.ssl_redirect, Some(false));
    }

    #[test]
    fn sluice_prefix_wins_over_nginx() {
        let raw = [
            (format!("{NGINX_PREFIX}proxy-body-size"), "1m".to_owned()),
            (format!("{SLUICE_PREFIX}proxy-body-size"), "2m".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(read(&raw).annotations.body_size, Some(2 << 20));
    }

    #[test]
    fn snippets_and_source_ranges_refuse_the_ingress() {
        let r = annotations(&[("configuration-snippet", "more_set_headers 'X: y';")]);
        assert!(r.refused.unwrap().contains("snippets are refused"));
        let r = annotations(&[("whitelist-source-range", "10.0.0.0/8")]);
        assert!(r.refused.unwrap().contains("source-range"));
        let r = annotations(&[("backend-protocol", "FCGI")]);
        assert!(r.refused.is_some());
    }

    #[test]
    fn unsupported_and_bad_values_warn() {
        let r = annotations(&[("enable-cors", "true"), ("proxy-body-size", "huge"), ("made-up", "1")]);
        assert!(r.refused.is_none());
        assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
        assert_eq!(r.annotations.body_size, None);
    }

    #[test]
    fn cookie_affinity() {
        let r = annotations(&[
            ("affinity", "cookie"),
            ("affinity-mode", "persistent"),
            ("session-cookie-name", "route"),
            ("session-cookie-max-age", "3600"),
            ("session-cookie-samesite", "Strict"),
            ("session-cookie-secure", "true"),
        ]);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let affinity = r.annotations.backend.cookie_affinity.unwrap();
        assert_eq!(affinity.name, "route");
        assert_eq!(affinity.mode, AffinityMode::Persistent);
        assert_eq!(affinity.max_age_seconds, Some(3600));
        assert_eq!(affinity.samesite, Some(SameSite::Strict));
        assert!(affinity.secure);
        assert_eq!(affinity.path, "/");
        let r = annotations(&[("affinity", "ip")]);
        assert!(r.annotations.backend.cookie_affinity.is_none() && r.warnings.len() == 1);
    }

    #[test]
    fn sizes_timeouts_and_hash_keys() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1t"), None);
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_seconds("0"), None);
        assert_eq!(parse_seconds("5s"), None, "unitless seconds only");
        assert_eq!(parse_hash_by("$http_x_user"), Some(BalanceSetting::HashHeader("x-user".into())));
        assert_eq!(parse_hash_by("$cookie_session"), Some(BalanceSetting::HashCookie("session".into())));
        assert_eq!(parse_hash_by("$binary_remote_addr"), Some(BalanceSetting::HashClientIp));
        assert_eq!(parse_hash_by("$request_uri"), None);
    }

    #[test]
    fn canary_settings() {
        let r = annotations(&[
            ("canary", "true"),
            ("canary-weight", "30"),
            ("canary-by-header", "X-Canary"),
            ("canary-by-cookie", "canary"),
        ]);
        let canary = r.annotations.canary.unwrap();
        assert_eq!((canary.weight, canary.weight_total), (30, 100));
        assert_eq!(canary.header.as_deref(), Some("x-canary"));
        assert_eq!(canary.cookie.as_deref(), Some("canary"));
        assert!(annotations(&[("canary-weight", "30")]).annotations.canary.is_none(), "needs canary: true");
    }

    #[test]
    fn redirects() {
        let r =
            annotations(&[("permanent-redirect", "https://x.test/y"), ("permanent-redirect-code", "308")]);
        assert_eq!(r.annotations.redirect, Some(WholeRedirect { url: "https://x.test/y".into(), code: 308 }));
        let r = annotations(&[("temporal-redirect", "https://x.test/")]);
        assert_eq!(r.annotations.redirect.unwrap().code, 302);
    }

    #[test]
    fn numbered_groups_are_braced() {
        assert_eq!(replacement("/$2"), "/${2}");
        assert_eq!(replacement("/x/$1abc$12"), "/x/${1}abc${12}");
        assert_eq!(replacement("/plain/$"), "/plain/$");
        assert_eq!(replacement("/ü$1"), "/ü${1}");
    }
}
