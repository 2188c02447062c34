//! Ingress annotations: the ingress-nginx set users rely on, read unchanged under
//! `nginx.ingress.kubernetes.io/`, and the same names under `sluice.dev/` (which win when both
//! are set). Every value is parsed into a typed setting; nothing is ever templated.
//!
//! One table ([`ANNOTATIONS`], in `table.rs`) gives every name Sluice knows its class:
//! - **applied**: its parser reads the value into [`Annotations`]; a value that does not parse
//!   is ignored with a warning, and a value that cannot be served (FastCGI) refuses the Ingress;
//! - **refused**: the Ingress is not served at all, because serving it without the annotation
//!   would expose what the user meant to protect (snippets, external auth);
//! - **ignored**, with the reason: unsupported but harmless to leave out (buffering...).
//!
//! Any other name under either prefix is ignored and reported as unknown.

use std::collections::BTreeMap;

use crate::config::{Balance, CookieAffinityConfig, HashOn};

mod proxy_ssl;
mod table;

pub use proxy_ssl::ProxySslSetting;
pub use table::{ANNOTATIONS, parse_next_upstream};

pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
pub const SLUICE_PREFIX: &str = "sluice.dev/";

/// The protocol the Service's pods speak (`backend-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http,
    /// HTTP/1.1 over TLS; the pods' certificates are not verified unless `proxy-ssl-secret`
    /// and `proxy-ssl-verify: on` ask for it (ingress-nginx's default is off).
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
    /// `proxy-ssl-secret` and the `proxy-ssl-*` set.
    pub proxy_ssl: Option<ProxySslSetting>,
    /// `proxy-read-timeout` (and the controller ConfigMap's): the longest gap between reads.
    pub read_timeout_ms: Option<u64>,
    /// `proxy-send-timeout`: the longest gap between writes of the request body.
    pub send_timeout_ms: Option<u64>,
    /// `proxy-next-upstream` conditions (without `off`); `None`: ingress-nginx's
    /// `error timeout`.
    pub next_upstream: Option<Vec<crate::config::RetryOn>>,
    /// `proxy-next-upstream-timeout` (`0`, the default, is no bound).
    pub next_upstream_timeout_ms: Option<u64>,
    /// `proxy-request-buffering` (default on) and `client-body-buffer-size` (default 8k).
    pub request_buffering: Option<bool>,
    pub request_buffer_bytes: Option<u64>,
    /// `proxy-buffering` (default off) and `proxy-buffer-size` (default 4k).
    pub response_buffering: Option<bool>,
    pub response_buffer_bytes: Option<u64>,
}

impl BackendSettings {
    /// The text a group's name suffix hashes: the first release's fields exactly as their
    /// `Debug` printed them, then the later ones only when any is set, so groups that use none
    /// keep their names across upgrades, and with them their clients' affinity cookies (the
    /// cookie is a MAC of the group name and the endpoint).
    pub fn group_key(&self) -> String {
        #[derive(Debug)]
        #[allow(dead_code, reason = "read through Debug only")]
        struct BackendSettings<'a> {
            protocol: &'a UpstreamProtocol,
            connect_timeout_ms: &'a Option<u64>,
            no_retries: &'a bool,
            tries: &'a Option<u32>,
            balance: &'a Option<BalanceSetting>,
            cookie_affinity: &'a Option<CookieAffinityConfig>,
        }
        let mut key = format!(
            "{:?}",
            BackendSettings {
                protocol: &self.protocol,
                connect_timeout_ms: &self.connect_timeout_ms,
                no_retries: &self.no_retries,
                tries: &self.tries,
                balance: &self.balance,
                cookie_affinity: &self.cookie_affinity,
            }
        );
        let later = (
            &self.proxy_ssl,
            (self.read_timeout_ms, self.send_timeout_ms, &self.next_upstream, self.next_upstream_timeout_ms),
            (
                self.request_buffering,
                self.request_buffer_bytes,
                self.response_buffering,
                self.response_buffer_bytes,
            ),
        );
        let unset = (&None, (None, None, &None, None), (None, None, None, None));
        if later != unset {
            key.push_str(&format!("{later:?}"));
        }
        key
    }
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
    /// `force-ssl-redirect`, `use-port-in-redirects`, `preserve-trailing-slash` (`None`: the
    /// controller ConfigMap's default).
    pub force_ssl_redirect: Option<bool>,
    pub use_port_in_redirects: Option<bool>,
    pub preserve_trailing_slash: Option<bool>,
    /// `proxy-read-timeout`, as the route's request timeout.
    pub read_timeout_ms: Option<u64>,
    pub body_size: Option<u64>,
    pub canary: Option<Canary>,
    pub app_root: Option<String>,
    pub redirect: Option<WholeRedirect>,
    pub ssl_passthrough: bool,
    /// `allowlist-source-range` (or `whitelist-`) and `denylist-source-range`.
    pub source_ranges: Option<crate::config::SourceRangesConfig>,
    /// `upstream-vhost` and `x-forwarded-prefix`.
    pub request_headers: Option<crate::config::HeaderOpsConfig>,
    pub response_headers: Option<crate::config::HeaderOpsConfig>,
    /// `enable-cors` and the `cors-*` set.
    pub cors: Option<crate::config::CorsConfig>,
    /// `custom-headers`: the ConfigMap (`NAMESPACE/NAME`, or `NAME` in the Ingress's namespace)
    /// whose entries are set on responses; the translation reads it.
    pub custom_headers: Option<String>,
    /// `limit-rps`, `limit-rpm`, `limit-connections`, `limit-rate` and what refines them.
    pub rate_limit: Option<crate::config::RateLimitConfig>,
    /// `auth-type: basic` and its `auth-secret`, `auth-secret-type`, `auth-realm`.
    pub basic_auth: Option<BasicAuthSetting>,
    /// `auth-url` and the `auth-*` settings of external authentication.
    pub external_auth: Option<crate::config::ExternalAuthConfig>,
    /// `auth-tls-secret` and the `auth-tls-*` set refining it.
    pub client_tls: Option<ClientTlsSetting>,
    /// `custom-http-errors`: the statuses its error backend answers (`Some(empty)` turns the
    /// controller ConfigMap's list off).
    pub custom_http_errors: Option<Vec<u16>>,
    /// `default-backend`: a Service of the Ingress's namespace, for error pages and for paths
    /// whose Service has no ready endpoint.
    pub default_backend: Option<String>,
    /// `from-to-www-redirect`: the www (or bare) twin of each rule host redirects to it.
    pub from_to_www: bool,
    /// `server-alias`: more names for the Ingress's hosts.
    pub server_alias: Vec<String>,
    /// `mirror-target`, `mirror-host` and `mirror-request-body`.
    pub mirror: Option<MirrorSetting>,
}

/// Request mirroring from `mirror-target` (`scheme://host[:port]$request_uri`): copies of every
/// request of the Ingress go to `host`, which the translation resolves (a Service's DNS name
/// or an IP address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSetting {
    pub https: bool,
    /// The target's host name or IP address, as written (brackets removed).
    pub host: String,
    /// The target's port (the scheme's when absent).
    pub port: u16,
    /// The copies' `Host`: `mirror-host`, else the target's host name.
    pub host_header: String,
    /// `mirror-request-body` (default on).
    pub body: bool,
}

/// Client certificates from an Ingress's annotations; the CA Secret is read by the translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsSetting {
    /// `auth-tls-secret`: `NAMESPACE/NAME` or `NAME`, with `ca.crt` (and optionally `ca.crl`).
    pub secret: String,
    pub verify: crate::config::ClientVerify,
    pub depth: u8,
    pub error_page: Option<String>,
    pub pass_certificate: bool,
    pub match_cn: Option<String>,
}

/// Basic authentication from an Ingress's annotations; the Secret is read by the translation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasicAuthSetting {
    /// `auth-secret`: `NAME` or `NAMESPACE/NAME`.
    pub secret: Option<String>,
    /// `auth-secret-type: auth-map` (user → hash keys) instead of `auth-file` (key `auth`).
    pub map: bool,
    pub realm: String,
    /// Why the location is denied (503), as ingress-nginx denies it for this value.
    pub denied: Option<String>,
}

/// The outcome of reading one Ingress's annotations.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub annotations: Annotations,
    /// Why the Ingress must not be served, if it must not.
    pub refused: Option<String>,
    pub warnings: Vec<String>,
    /// The warnings (also in `warnings`) that are about a bad value rather than an ignored
    /// name: the admission webhook denies those.
    pub invalid: Vec<String>,
}

/// One annotation name (after the prefix) and what Sluice does with it.
#[derive(Debug)]
pub struct Annotation {
    pub name: &'static str,
    pub class: Class,
}

/// What Sluice does with an annotation.
#[derive(Debug)]
pub enum Class {
    /// Read into the Ingress's settings by the parser.
    Applied(Parse),
    /// The Ingress is not served, for this reason.
    Refused(&'static str),
    /// The Ingress is served without it, for this reason.
    Ignored(&'static str),
}

/// Reads one annotation's value (trimmed) into the settings. `others` holds every annotation
/// of the Ingress, for the few whose meaning depends on another's; an annotation that only
/// refines another (a session cookie's name) is parsed after it, in table order, and does
/// nothing when the other is not set.
pub type Parse = fn(value: &str, into: &mut Annotations, others: &Values<'_>) -> Result<(), Problem>;

/// Why a parser did not apply a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The value does not parse: it is ignored with a warning saying what was expected.
    Expected(&'static str),
    /// The value asks for what cannot be served: the Ingress is refused for this reason.
    Refuse(&'static str),
}

/// The annotations of one Ingress by name, the prefix removed; `sluice.dev/` wins.
#[derive(Debug, Default)]
pub struct Values<'a>(BTreeMap<&'a str, &'a str>);

impl<'a> Values<'a> {
    pub fn new(raw: &'a BTreeMap<String, String>) -> Values<'a> {
        let mut values = BTreeMap::new();
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
        Values(values)
    }

    /// The value of `name`, trimmed.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).map(|v| v.trim())
    }
}

/// The table entry for `name`.
pub fn lookup(name: &str) -> Option<&'static Annotation> {
    ANNOTATIONS.iter().find(|a| a.name == name)
}

/// Reads the annotations of one Ingress: first every name is classified (in name order, so
/// the refusal reported is the same whatever else is set), then the applied ones are parsed
/// in table order.
pub fn read(raw: &BTreeMap<String, String>) -> Reading {
    let values = Values::new(raw);
    let mut reading = Reading::default();
    for &name in values.0.keys() {
        match lookup(name).map(|a| &a.class) {
            Some(Class::Applied(_)) => {}
            Some(Class::Refused(why)) => {
                reading.refused.get_or_insert_with(|| format!("annotation {name}: {why}"));
            }
            Some(Class::Ignored(why)) => {
                reading.warnings.push(format!("annotation {name} is ignored: {why}"))
            }
            None => reading.warnings.push(format!("annotation {name} is unknown; ignored")),
        }
    }
    for annotation in ANNOTATIONS {
        let (Class::Applied(parse), Some(value)) = (&annotation.class, values.get(annotation.name)) else {
            continue;
        };
        let name = annotation.name;
        match parse(value, &mut reading.annotations, &values) {
            Ok(()) => {}
            Err(Problem::Expected(expected)) => {
                let warning = format!("annotation {name}: {value:?} is not {expected}; ignored");
                reading.invalid.push(warning.clone());
                reading.warnings.push(warning);
            }
            Err(Problem::Refuse(why)) => {
                reading.refused.get_or_insert_with(|| format!("annotation {name}: {why}"));
            }
        }
    }
    reading
}

/// `true` or `false`, in any case.
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
    (seconds > 0 && seconds <= 86_400).then(|| seconds * 1000)
}

/// `custom-http-errors`: comma-separated statuses from 400 to 599, blanks around them and
/// empty entries allowed (ingress-nginx's rule); sorted, without repeats.
pub fn parse_error_codes(v: &str) -> Option<Vec<u16>> {
    let mut codes = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let code: u16 = item.parse().ok().filter(|c| (400..=599).contains(c))?;
        codes.push(code);
    }
    codes.sort_unstable();
    codes.dedup();
    Some(codes)
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
    use crate::config::{AffinityMode, SameSite};

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
    fn mirror_targets_are_read_as_ingress_nginx_writes_them() {
        let mirror = |pairs: &[(&str, &str)]| annotations(pairs).annotations.mirror;
        let read =
            mirror(&[("mirror-target", "https://1.2.3.4$request_uri"), ("mirror-host", "test.env.com")]);
        let expected = MirrorSetting {
            https: true,
            host: "1.2.3.4".into(),
            port: 443,
            host_header: "test.env.com".into(),
            body: true,
        };
        assert_eq!(read, Some(expected));
        let read = mirror(&[
            ("mirror-target", "http://Shadow.test.svc.cluster.local:8080/"),
            ("mirror-request-body", "off"),
        ])
        .unwrap();
        assert_eq!(
            (read.host.as_str(), read.port, read.body),
            ("shadow.test.svc.cluster.local", 8080, false)
        );
        assert_eq!(read.host_header, "Shadow.test.svc.cluster.local", "the target's host as written");
        let six = mirror(&[("mirror-target", "http://[2001:db8::1]:81$request_uri")]).unwrap();
        assert_eq!(
            (six.host.as_str(), six.port, six.host_header.as_str()),
            ("2001:db8::1", 81, "[2001:db8::1]")
        );
        // mirror-host alone mirrors nothing, as in ingress-nginx.
        assert_eq!(mirror(&[("mirror-host", "x.test")]), None);
        for bad in [
            "https://x.test/shadow$request_uri",
            "http://x.test$uri",
            "ftp://x.test",
            "x.test",
            "http://u@x.test",
        ] {
            let r = annotations(&[("mirror-target", bad)]);
            assert_eq!(r.annotations.mirror, None, "{bad}");
            assert!(r.invalid.iter().any(|w| w.contains("mirror-target")), "{bad}: {r:?}");
        }
    }

    #[test]
    fn next_upstream_and_timeouts_are_read_as_nginx_means_them() {
        use crate::config::RetryOn;
        let r = annotations(&[
            ("proxy-next-upstream", "error timeout http_502 http_503 http_429 non_idempotent"),
            ("proxy-next-upstream-timeout", "10"),
            ("proxy-send-timeout", "30"),
            ("proxy-read-timeout", "120"),
        ]);
        assert!(r.refused.is_none() && r.warnings.is_empty(), "{r:?}");
        let b = &r.annotations.backend;
        assert_eq!(
            b.next_upstream.as_deref(),
            Some(
                &[
                    RetryOn::Error,
                    RetryOn::Timeout,
                    RetryOn::Http502,
                    RetryOn::Http503,
                    RetryOn::Http429,
                    RetryOn::NonIdempotent
                ][..]
            )
        );
        assert_eq!((b.next_upstream_timeout_ms, b.send_timeout_ms), (Some(10_000), Some(30_000)));
        assert_eq!(r.annotations.read_timeout_ms, Some(120_000));
        let off = annotations(&[("proxy-next-upstream", "off")]).annotations.backend;
        assert!(off.no_retries && off.next_upstream == Some(Vec::new()));
        // 0 is nginx's "no bound", kept so that it wins over the controller ConfigMap's.
        assert_eq!(
            annotations(&[("proxy-next-upstream-timeout", "0")]).annotations.backend.next_upstream_timeout_ms,
            Some(0)
        );
        let bad = annotations(&[("proxy-next-upstream", "error http_418"), ("proxy-send-timeout", "5s")]);
        assert_eq!(bad.warnings.len(), 2, "{bad:?}");
        assert_eq!(bad.annotations.backend, BackendSettings::default());
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
    fn source_ranges_are_read_and_a_bad_one_refuses_the_ingress() {
        let ranges = |pairs: &[(&str, &str)]| {
            let r = annotations(pairs);
            assert_eq!(r.refused, None, "{pairs:?}");
            let ranges = r.annotations.source_ranges.expect("source ranges");
            let show =
                |list: &[crate::config::Cidr]| list.iter().map(|c| String::from(*c)).collect::<Vec<_>>();
            (show(&ranges.allow), show(&ranges.deny))
        };
        // The cert-manager HTTP-01 solver's shape: everyone.
        assert_eq!(ranges(&[("whitelist-source-range", "0.0.0.0/0,::/0")]).0, ["0.0.0.0/0", "::/0"]);
        assert_eq!(
            ranges(&[("allowlist-source-range", " 10.0.0.0/8 , 192.0.2.7,2001:db8::/32,")]).0,
            ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
        );
        // allowlist- is the current name of whitelist-: it wins.
        let both = [("whitelist-source-range", "10.0.0.0/8"), ("allowlist-source-range", "192.0.2.0/24")];
        assert_eq!(ranges(&both).0, ["192.0.2.0/24"]);
        let (allow, deny) = ranges(&[("denylist-source-range", "198.51.100.0/24")]);
        assert!(allow.is_empty());
        assert_eq!(deny, ["198.51.100.0/24"]);
        for bad in ["10.0.0.0/33", "10.0.0.0/8,nope", "", "::/129", "10.0.0.0/-1", "10.0.0/8"] {
            let r = annotations(&[("whitelist-source-range", bad)]);
            assert!(r.refused.as_deref().is_some_and(|why| why.contains("source range")), "{bad:?}: {r:?}");
        }
    }

    #[test]
    fn cors_is_read_with_ingress_nginx_defaults_and_fallbacks() {
        let r = annotations(&[("enable-cors", "true")]);
        assert!(r.warnings.is_empty(), "{r:?}");
        assert_eq!(r.annotations.cors, Some(crate::config::CorsConfig::default()));
        // The cors-* set means nothing without enable-cors.
        assert_eq!(annotations(&[("cors-allow-origin", "https://a.test")]).annotations.cors, None);
        let r = annotations(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.test, http://*.b.test:8080 ,, null"),
            ("cors-allow-methods", "PUT, GET"),
            ("cors-allow-headers", "X-Forwarded-For, X-app123-XPTO"),
            ("cors-expose-headers", "*, X-CustomResponseHeader"),
            ("cors-allow-credentials", "false"),
            ("cors-max-age", "600"),
        ]);
        assert!(r.warnings.is_empty(), "{r:?}");
        let cors = r.annotations.cors.unwrap();
        assert_eq!(cors.allow_origins, ["https://a.test", "http://*.b.test:8080", "null"]);
        assert_eq!(cors.allow_methods, ["PUT", "GET"]);
        assert_eq!(cors.allow_headers, ["X-Forwarded-For", "X-app123-XPTO"]);
        assert_eq!(cors.expose_headers, ["*", "X-CustomResponseHeader"]);
        assert!(!cors.allow_credentials);
        assert_eq!(cors.max_age_seconds, 600);
        // Bad values keep the defaults (bad origins are left out), with a warning each.
        let r = annotations(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.test, not-an-origin"),
            ("cors-allow-methods", "GET;DROP"),
            ("cors-max-age", "soon"),
        ]);
        assert_eq!(r.warnings.len(), 3, "{r:?}");
        let cors = r.annotations.cors.unwrap();
        assert_eq!(cors.allow_origins, ["https://a.test"]);
        assert_eq!(cors.allow_methods, crate::config::default_cors_methods());
        assert_eq!(cors.max_age_seconds, 1_728_000);
        // `*` anywhere in the list allows every origin.
        let r = annotations(&[("enable-cors", "true"), ("cors-allow-origin", "https://a.test,*")]);
        assert_eq!(r.annotations.cors.unwrap().allow_origins, ["*"]);
    }

    #[test]
    fn upstream_vhost_and_forwarded_prefix_set_request_fields() {
        let r = annotations(&[
            ("upstream-vhost", "internal.svc.cluster.local:8080"),
            ("x-forwarded-prefix", "/api"),
        ]);
        assert!(r.warnings.is_empty(), "{r:?}");
        let set = r.annotations.request_headers.unwrap().set;
        let set: Vec<_> = set.iter().map(|f| (f.name.as_str(), f.value.as_str())).collect();
        assert_eq!(set, [("host", "internal.svc.cluster.local:8080"), ("x-forwarded-prefix", "/api")]);
        for (name, bad) in
            [("upstream-vhost", "$host"), ("upstream-vhost", "a b"), ("x-forwarded-prefix", "$x")]
        {
            let r = annotations(&[(name, bad)]);
            assert_eq!(r.annotations.request_headers, None, "{bad}");
            assert_eq!(r.warnings.len(), 1, "{r:?}");
        }
    }

    #[test]
    fn basic_auth_is_read_digest_refused_and_bad_values_deny() {
        let r = annotations(&[
            ("auth-type", "basic"),
            ("auth-secret", "team/users"),
            ("auth-secret-type", "auth-map"),
            ("auth-realm", "Team \"A\""),
        ]);
        assert!(r.refused.is_none() && r.warnings.is_empty(), "{r:?}");
        let expected = BasicAuthSetting {
            secret: Some("team/users".into()),
            map: true,
            realm: "Team A".into(),
            denied: None,
        };
        assert_eq!(r.annotations.basic_auth, Some(expected));
        // Without auth-type the others do nothing.
        assert_eq!(annotations(&[("auth-secret", "users")]).annotations.basic_auth, None);
        let digest = annotations(&[("auth-type", "digest"), ("auth-secret", "users")]);
        assert!(digest.refused.unwrap().contains("digest authentication is not supported"));
        let odd = annotations(&[("auth-type", "magic"), ("auth-secret", "users")]);
        assert!(odd.annotations.basic_auth.unwrap().denied.unwrap().contains("invalid auth-type"));
        let bad_type = annotations(&[("auth-type", "basic"), ("auth-secret-type", "auth-list")]);
        assert!(bad_type.annotations.basic_auth.unwrap().denied.unwrap().contains("auth-secret-type"));
    }

    #[test]
    fn external_auth_is_read_and_a_bad_url_refuses_the_ingress() {
        let r = annotations(&[
            ("proxy-read-timeout", "3"),
            ("auth-url", "https://auth.test/oauth2/auth"),
            ("auth-signin", "https://$host/oauth2/start?rd=$escaped_request_uri"),
            ("auth-signin-redirect-param", "orig"),
            ("auth-response-headers", "X-Auth-Request-User, X-Auth-Request-Email"),
            ("auth-method", "GET"),
            ("auth-request-redirect", "https://app.test/back"),
            ("auth-cache-key", "$remote_user$http_authorization"),
            ("auth-cache-duration", "200 202 10m, 401 1m"),
            ("auth-always-set-cookie", "true"),
            ("auth-keepalive-timeout", "30"),
            ("auth-keepalive", "10"),
        ]);
        assert!(r.refused.is_none(), "{r:?}");
        assert_eq!(r.warnings.len(), 1, "auth-keepalive is ignored with its reason: {r:?}");
        let auth = r.annotations.external_auth.expect("external auth");
        assert_eq!(auth.url, "https://auth.test/oauth2/auth");
        assert_eq!(auth.signin.as_deref(), Some("https://$host/oauth2/start?rd=$escaped_request_uri"));
        assert_eq!(auth.signin_redirect_param, "orig");
        assert_eq!(auth.response_headers, ["X-Auth-Request-User", "X-Auth-Request-Email"]);
        assert_eq!(auth.method.as_deref(), Some("GET"));
        assert_eq!(auth.cache_key.as_deref(), Some("$remote_user$http_authorization"));
        assert_eq!(auth.cache_duration, "200 202 10m, 401 1m");
        assert!(auth.always_set_cookie);
        assert_eq!((auth.timeout_ms, auth.keepalive_timeout_ms), (3_000, 30_000));
        // Refinements that do not parse are ignored with a warning; the auth stays.
        let r = annotations(&[("auth-url", "http://auth.test/"), ("auth-cache-key", "$upstream_addr")]);
        assert!(r.refused.is_none() && r.warnings.len() == 1, "{r:?}");
        assert_eq!(r.annotations.external_auth.unwrap().cache_key, None);
        for bad in ["auth.test/check", "http://$host/check", "ftp://auth.test/"] {
            let r = annotations(&[("auth-url", bad)]);
            assert!(r.refused.as_deref().is_some_and(|why| why.contains("auth-url")), "{bad}: {r:?}");
        }
        assert!(annotations(&[("auth-snippet", "x")]).refused.is_some());
    }

    /// Every annotation name ingress-nginx defines (its documentation's and its parsers' names,
    /// kept in `ingress_nginx_names.txt`) has a class: none is reported as unknown.
    #[test]
    fn every_ingress_nginx_annotation_name_has_a_class() {
        let names: Vec<&str> = include_str!("annotations/ingress_nginx_names.txt").lines().collect();
        assert!(names.len() > 130, "the whole list: {}", names.len());
        let missing: Vec<&&str> = names.iter().filter(|name| lookup(name).is_none()).collect();
        assert!(missing.is_empty(), "no class for {missing:?}");
    }

    #[test]
    fn snippets_refuse_the_ingress() {
        let r = annotations(&[("configuration-snippet", "more_set_headers 'X: y';")]);
        assert!(r.refused.unwrap().contains("snippets are refused"));
        let r = annotations(&[("backend-protocol", "FCGI")]);
        assert!(r.refused.is_some());
    }

    #[test]
    fn unsupported_and_bad_values_warn() {
        let r = annotations(&[("proxy-buffers-number", "4"), ("proxy-body-size", "huge"), ("made-up", "1")]);
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
        assert_eq!(parse_seconds("86400"), Some(86_400_000));
        // Past the bound, and large enough that the milliseconds would overflow: refused, not a
        // panic (found by the annotations fuzz target).
        assert_eq!(parse_seconds("18446744073709551615"), None);
        assert_eq!(parse_seconds("86401"), None);
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
    fn every_name_has_one_entry() {
        let mut names: Vec<&str> = ANNOTATIONS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a name is in the table twice");
    }

    #[test]
    fn each_name_is_read_as_its_class_says() {
        for annotation in ANNOTATIONS {
            let r = annotations(&[(annotation.name, "x")]);
            let name = annotation.name;
            match annotation.class {
                // A bad value is ignored with a warning, except where serving the Ingress
                // without it would be less safe: a source range refuses it, naming itself.
                Class::Applied(_) => assert!(
                    match &r.refused {
                        None => r.warnings.iter().all(|w| w.contains("is not ")),
                        Some(why) =>
                            refuses_when_bad(name) && why.starts_with(&format!("annotation {name}:")),
                    },
                    "{name}: {r:?}"
                ),
                Class::Refused(why) => {
                    assert_eq!(r.refused, Some(format!("annotation {name}: {why}")));
                }
                Class::Ignored(why) => {
                    assert!(r.refused.is_none(), "{name}");
                    assert_eq!(r.warnings, [format!("annotation {name} is ignored: {why}")]);
                }
            }
        }
    }

    /// Applied names whose bad value refuses the Ingress, as serving it without them would be
    /// less safe: source ranges, request and connection limits and their allow list, a WAF.
    fn refuses_when_bad(name: &str) -> bool {
        name.ends_with("-source-range")
            || ["limit-rps", "limit-rpm", "limit-connections", "limit-whitelist", "limit-allowlist"]
                .contains(&name)
            || ["enable-modsecurity", "enable-owasp-core-rules"].contains(&name)
            || name == "auth-url"
            || ["auth-tls-error-page", "auth-tls-pass-certificate-to-upstream", "auth-tls-match-cn"]
                .contains(&name)
    }

    #[test]
    fn rate_limits_are_read_as_ingress_nginx_does() {
        let read = |pairs: &[(&str, &str)]| {
            let r = annotations(pairs);
            assert!(r.refused.is_none() && r.warnings.is_empty(), "{pairs:?}: {r:?}");
            r.annotations.rate_limit
        };
        let limit = read(&[
            ("limit-rps", "20"),
            ("limit-rpm", "600"),
            ("limit-connections", "8"),
            ("limit-burst-multiplier", "3"),
            ("limit-rate", "100"),
            ("limit-rate-after", "64"),
            ("limit-whitelist", "10.0.0.0/8"),
            ("limit-allowlist", "192.0.2.0/24, 2001:db8::/32"),
        ])
        .unwrap();
        assert_eq!((limit.rps, limit.rpm, limit.connections, limit.burst_multiplier), (20, 600, 8, 3));
        assert_eq!(
            (limit.response_bytes_per_second, limit.response_rate_after_bytes),
            (100 * 1024, 64 * 1024)
        );
        let allow: Vec<String> = limit.allowlist.iter().map(|c| String::from(*c)).collect();
        assert_eq!(allow, ["192.0.2.0/24", "2001:db8::/32"], "limit-allowlist wins over its old name");
        // The multiplier defaults to 5; the old allowlist name alone is read.
        let limit = read(&[("limit-rps", "5"), ("limit-whitelist", "10.0.0.0/8")]).unwrap();
        assert_eq!((limit.burst_multiplier, limit.allowlist.len()), (5, 1));
        // 0 is no limit; refinements without a limit set nothing.
        assert_eq!(
            read(&[("limit-rps", "0"), ("limit-rate-after", "10"), ("limit-burst-multiplier", "2")]),
            None
        );
        assert_eq!(read(&[("limit-rate", "8")]).unwrap().response_bytes_per_second, 8192);
        // A limit that does not parse refuses the Ingress; a bandwidth or multiplier is ignored.
        for (name, bad) in [
            ("limit-rps", "ten"),
            ("limit-rpm", "-1"),
            ("limit-connections", "1.5"),
            ("limit-rps", "1000001"),
            ("limit-allowlist", "10.0.0.0/33"),
        ] {
            let r = annotations(&[(name, bad), ("limit-rate", "10")]);
            assert!(
                r.refused.as_deref().is_some_and(|why| why.starts_with(&format!("annotation {name}:"))),
                "{name}={bad}: {r:?}"
            );
        }
        let r = annotations(&[("limit-rps", "10"), ("limit-burst-multiplier", "x"), ("limit-rate", "fast")]);
        assert!(r.refused.is_none() && r.warnings.len() == 2, "{r:?}");
        assert_eq!(r.annotations.rate_limit.unwrap().burst_multiplier, 5);
    }

    #[test]
    fn auth_tls_annotations_are_read_as_ingress_nginx_does() {
        use crate::config::ClientVerify;
        let r = annotations(&[
            ("auth-tls-secret", "default/client-ca"),
            ("auth-tls-verify-client", "optional_no_ca"),
            ("auth-tls-verify-depth", "2"),
            ("auth-tls-error-page", "https://errors.example.com/cert"),
            ("auth-tls-pass-certificate-to-upstream", "true"),
            ("auth-tls-match-cn", "CN=(alice|bob)"),
        ]);
        assert!(r.refused.is_none() && r.warnings.is_empty(), "{r:?}");
        let tls = r.annotations.client_tls.unwrap();
        assert_eq!(
            (tls.secret.as_str(), tls.verify, tls.depth),
            ("default/client-ca", ClientVerify::OptionalNoCa, 2)
        );
        assert_eq!(tls.error_page.as_deref(), Some("https://errors.example.com/cert"));
        assert!(tls.pass_certificate);
        assert_eq!(tls.match_cn.as_deref(), Some("CN=(alice|bob)"));
        // Defaults: on, depth 1; a bad mode or depth keeps them, with a warning.
        let r = annotations(&[
            ("auth-tls-secret", "ca"),
            ("auth-tls-verify-client", "maybe"),
            ("auth-tls-verify-depth", "0"),
        ]);
        let tls = r.annotations.client_tls.unwrap();
        assert_eq!((tls.verify, tls.depth, r.warnings.len()), (ClientVerify::On, 1, 2));
        // Refinements alone set nothing.
        assert_eq!(annotations(&[("auth-tls-verify-client", "off")]).annotations.client_tls, None);
        for (name, bad) in [
            ("auth-tls-secret", "a/b/c"),
            ("auth-tls-match-cn", "alice"),
            ("auth-tls-match-cn", "CN=(unclosed"),
            ("auth-tls-error-page", "javascript:alert(1)"),
            ("auth-tls-pass-certificate-to-upstream", "yes"),
        ] {
            let r = annotations(&[("auth-tls-secret", "ca"), (name, bad)]);
            assert!(
                r.refused.as_deref().is_some_and(|why| why.starts_with(&format!("annotation {name}:"))),
                "{name}={bad}: {r:?}"
            );
        }
    }

    #[test]
    fn modsecurity_refuses_unless_false() {
        for name in ["enable-modsecurity", "enable-owasp-core-rules"] {
            let r = annotations(&[(name, "true")]);
            assert!(r.refused.unwrap().contains("ModSecurity is not supported"), "{name}");
            let r = annotations(&[(name, "false")]);
            assert!(r.refused.is_none() && r.warnings.is_empty(), "{name}: {r:?}");
        }
        assert!(annotations(&[("modsecurity-snippet", "SecRuleEngine On")]).refused.is_some());
        let r = annotations(&[("modsecurity-transaction-id", "$request_id")]);
        assert!(r.refused.is_none() && r.warnings.len() == 1, "{r:?}");
    }

    #[test]
    fn refinements_do_nothing_without_what_they_refine() {
        let r = annotations(&[
            ("session-cookie-name", "a;b"),
            ("canary-weight", "many"),
            ("permanent-redirect-code", "999"),
            ("temporal-redirect-code", "999"),
        ]);
        assert!(r.refused.is_none() && r.warnings.is_empty(), "{r:?}");
        assert_eq!(r.annotations, Annotations::default());
    }

    #[test]
    fn redirect_codes_follow_the_redirect_that_won() {
        let r = annotations(&[
            ("permanent-redirect", "https://p.test/"),
            ("permanent-redirect-code", "308"),
            ("temporal-redirect", "https://t.test/"),
            ("temporal-redirect-code", "307"),
        ]);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.annotations.redirect, Some(WholeRedirect { url: "https://p.test/".into(), code: 308 }));
        // The losing redirect's code is still checked.
        let r = annotations(&[
            ("permanent-redirect", "https://p.test/"),
            ("temporal-redirect", "https://t.test/"),
            ("temporal-redirect-code", "301"),
        ]);
        assert_eq!(
            r.warnings,
            ["annotation temporal-redirect-code: \"301\" is not a redirect code of this kind; ignored"]
        );
        assert_eq!(r.annotations.redirect.unwrap().code, 301);
        let r = annotations(&[("temporal-redirect", "https://t.test/"), ("temporal-redirect-code", "303")]);
        assert_eq!(r.annotations.redirect.unwrap().code, 303);
    }

    #[test]
    fn the_first_refusal_by_name_is_reported() {
        let r = annotations(&[("backend-protocol", "FCGI"), ("server-snippet", "x"), ("auth-snippet", "x")]);
        assert_eq!(
            r.refused.as_deref(),
            Some("annotation auth-snippet: snippets are refused: configuration is typed, never templated")
        );
        let r = annotations(&[("backend-protocol", "fcgi")]);
        assert_eq!(
            r.refused.as_deref(),
            Some("annotation backend-protocol: FCGI is not supported; the pods would not understand HTTP")
        );
    }

    #[test]
    fn numbered_groups_are_braced() {
        assert_eq!(replacement("/$2"), "/${2}");
        assert_eq!(replacement("/x/$1abc$12"), "/x/${1}abc${12}");
        assert_eq!(replacement("/plain/$"), "/plain/$");
        assert_eq!(replacement("/ü$1"), "/ü${1}");
    }
}
