//! ingress-nginx's controller ConfigMap (`--nginx-configmap NAMESPACE/NAME`): the cluster-wide
//! keys users set, read into typed settings with ingress-nginx's defaults where a key is absent
//! (HSTS on for TLS hosts, one year, subdomains included; redirects to HTTPS; nothing a client
//! forwards believed). Every key ingress-nginx documents that Sluice knows has a class here,
//! as the annotations do: applied, or ignored with the reason; others are reported as unknown.

use std::collections::BTreeMap;

use crate::config::{Cidr, ForwardedConfig, HeaderField, HeaderOpsConfig, HstsConfig};

use super::annotations::parse_size;

/// What the controller ConfigMap asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// `hsts` and its `hsts-*` refinements: sent on HTTPS responses of Ingress TLS hosts.
    pub hsts: Option<HstsConfig>,
    /// `ssl-redirect`: the default of the annotation.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`, `use-port-in-redirects`, `preserve-trailing-slash`: the defaults
    /// of the annotations.
    pub force_ssl_redirect: bool,
    pub use_port_in_redirects: bool,
    pub preserve_trailing_slash: bool,
    /// `use-forwarded-headers`, `enable-real-ip`, `proxy-real-ip-cidr`, `forwarded-for-header`,
    /// `compute-full-forwarded-for`; `None` when the ConfigMap sets none of them (then the base
    /// configuration's `forwarded` stands).
    pub forwarded: Option<ForwardedConfig>,
    /// `use-proxy-protocol`: every listener reads a PROXY protocol header (`None`: the base
    /// configuration's listeners stand).
    pub proxy_protocol: Option<bool>,
    /// Defaults of the annotations of the same names.
    pub body_size: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    /// `limit-req-status-code`, `limit-conn-status-code`.
    pub limit_req_status: Option<u16>,
    pub limit_conn_status: Option<u16>,
    /// `add-headers` and `proxy-set-headers`: `NAMESPACE/NAME` of ConfigMaps of headers.
    pub add_headers: Option<String>,
    pub proxy_set_headers: Option<String>,
    /// `global-allowed-response-headers`: the names a `custom-headers` ConfigMap may set,
    /// lower-cased.
    pub allowed_response_headers: Vec<String>,
    /// `custom-http-errors`: the statuses the default backend answers, for every Ingress
    /// without the annotation.
    pub custom_http_errors: Vec<u16>,
    /// Defaults of the upstream annotations of the same names (`proxy-send-timeout`,
    /// `proxy-next-upstream*`, the buffering keys).
    pub upstream: UpstreamDefaults,
    /// `proxy-stream-timeout`: the idle timeout of the `tcp-services` / `udp-services` entries
    /// (`None`: not set; ingress-nginx's default, 600 s, then applies to TCP entries).
    pub stream_timeout_ms: Option<u64>,
}

/// The controller ConfigMap's defaults for the upstream annotations of the same names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamDefaults {
    pub send_timeout_ms: Option<u64>,
    /// `proxy-next-upstream` (empty for `off`).
    pub next_upstream: Option<Vec<crate::config::RetryOn>>,
    /// `proxy-next-upstream-timeout` (`Some(0)`: no bound).
    pub next_upstream_timeout_ms: Option<u64>,
    pub next_upstream_tries: Option<u32>,
    /// `proxy-request-buffering`, `client-body-buffer-size`, `proxy-buffering`,
    /// `proxy-buffer-size`.
    pub request_buffering: Option<bool>,
    pub request_buffer_bytes: Option<u64>,
    pub response_buffering: Option<bool>,
    pub response_buffer_bytes: Option<u64>,
}

impl Default for ControllerConfig {
    fn default() -> ControllerConfig {
        ControllerConfig {
            hsts: Some(HstsConfig { max_age_seconds: 31_536_000, include_subdomains: true, preload: false }),
            ssl_redirect: true,
            force_ssl_redirect: false,
            use_port_in_redirects: false,
            preserve_trailing_slash: false,
            forwarded: None,
            proxy_protocol: None,
            body_size: None,
            connect_timeout_ms: None,
            read_timeout_ms: None,
            limit_req_status: None,
            limit_conn_status: None,
            add_headers: None,
            proxy_set_headers: None,
            allowed_response_headers: Vec::new(),
            custom_http_errors: Vec::new(),
            upstream: UpstreamDefaults::default(),
            stream_timeout_ms: None,
        }
    }
}

/// Reads one key's value into the settings; `Err` says what was expected.
type Apply = fn(&str, &mut ControllerConfig) -> Result<(), &'static str>;

enum Key {
    Applied(Apply),
    Ignored(&'static str),
}

const KEEPALIVE: &str =
    "client and upstream keep-alive follow limits.idle_timeout_ms and the pools' own settings";

/// Every key Sluice knows, in the order they are applied (refinements after what they refine).
const KEYS: &[(&str, Key)] = &[
    ("hsts", Key::Applied(hsts)),
    ("hsts-max-age", Key::Applied(hsts_max_age)),
    ("hsts-include-subdomains", Key::Applied(hsts_include_subdomains)),
    ("hsts-preload", Key::Applied(hsts_preload)),
    ("ssl-redirect", Key::Applied(ssl_redirect)),
    ("force-ssl-redirect", Key::Applied(force_ssl_redirect)),
    ("use-port-in-redirects", Key::Applied(use_port_in_redirects)),
    ("preserve-trailing-slash", Key::Applied(preserve_trailing_slash)),
    ("use-forwarded-headers", Key::Applied(use_forwarded_headers)),
    ("enable-real-ip", Key::Applied(enable_real_ip)),
    ("forwarded-for-header", Key::Applied(forwarded_for_header)),
    ("compute-full-forwarded-for", Key::Applied(compute_full_forwarded_for)),
    ("proxy-real-ip-cidr", Key::Applied(proxy_real_ip_cidr)),
    ("use-proxy-protocol", Key::Applied(use_proxy_protocol)),
    ("proxy-body-size", Key::Applied(proxy_body_size)),
    ("proxy-connect-timeout", Key::Applied(proxy_connect_timeout)),
    ("proxy-read-timeout", Key::Applied(proxy_read_timeout)),
    ("proxy-send-timeout", Key::Applied(proxy_send_timeout)),
    ("proxy-next-upstream", Key::Applied(proxy_next_upstream)),
    ("proxy-next-upstream-timeout", Key::Applied(proxy_next_upstream_timeout)),
    ("proxy-next-upstream-tries", Key::Applied(proxy_next_upstream_tries)),
    ("proxy-request-buffering", Key::Applied(proxy_request_buffering)),
    ("client-body-buffer-size", Key::Applied(client_body_buffer_size)),
    ("proxy-buffering", Key::Applied(proxy_buffering)),
    ("proxy-buffer-size", Key::Applied(proxy_buffer_size)),
    ("limit-req-status-code", Key::Applied(limit_req_status_code)),
    ("limit-conn-status-code", Key::Applied(limit_conn_status_code)),
    ("add-headers", Key::Applied(add_headers)),
    ("proxy-set-headers", Key::Applied(proxy_set_headers)),
    ("global-allowed-response-headers", Key::Applied(global_allowed_response_headers)),
    ("proxy-stream-timeout", Key::Applied(proxy_stream_timeout)),
    ("keep-alive", Key::Ignored(KEEPALIVE)),
    ("keep-alive-requests", Key::Ignored(KEEPALIVE)),
    ("upstream-keepalive-connections", Key::Ignored(KEEPALIVE)),
    ("upstream-keepalive-timeout", Key::Ignored(KEEPALIVE)),
    ("upstream-keepalive-requests", Key::Ignored(KEEPALIVE)),
    ("server-tokens", Key::Ignored("Sluice adds no Server header of its own")),
    ("ssl-protocols", Key::Ignored("TLS 1.2 and 1.3 are served, never older versions")),
    ("ssl-ciphers", Key::Ignored("rustls' cipher suites are served (no CBC, no RSA key exchange)")),
    ("use-http2", Key::Ignored("HTTP/2 is always offered over TLS (ALPN)")),
    ("allow-snippet-annotations", Key::Ignored("snippets are always refused: configuration is typed")),
    ("annotations-risk-level", Key::Ignored("annotations are typed; none is templated")),
    ("worker-processes", Key::Ignored("the worker count is `workers` in the base configuration")),
    ("custom-http-errors", Key::Applied(custom_http_errors)),
    ("log-format-upstream", Key::Ignored("access logs have Sluice's own JSON or text format")),
    ("enable-opentelemetry", Key::Ignored("tracing is not implemented")),
];

/// Reads the ConfigMap's data; returns the settings and a warning per key not applied.
pub fn read(data: &BTreeMap<String, String>) -> (ControllerConfig, Vec<String>) {
    let mut config = ControllerConfig::default();
    let mut warnings = Vec::new();
    for key in data.keys() {
        match KEYS.iter().find(|(name, _)| name == key) {
            Some((_, Key::Applied(_))) => {}
            Some((_, Key::Ignored(why))) => warnings.push(format!("key {key} is ignored: {why}")),
            None => warnings.push(format!("key {key} is unknown; ignored")),
        }
    }
    for (name, key) in KEYS {
        let (Key::Applied(apply), Some(value)) = (key, data.get(*name)) else { continue };
        if let Err(expected) = apply(value.trim(), &mut config) {
            warnings.push(format!("key {name}: {value:?} is not {expected}; the default stays"));
        }
    }
    // ingress-nginx's proxy-real-ip-cidr defaults to 0.0.0.0/0: when forwarded headers are
    // believed at all, every peer is trusted unless the key narrows it.
    if let Some(forwarded) = &mut config.forwarded
        && (forwarded.use_forwarded_headers || forwarded.real_ip_from_header)
        && forwarded.trusted_proxies.is_empty()
    {
        forwarded.trusted_proxies = ["0.0.0.0/0", "::/0"].map(|c| c.parse().expect("a CIDR")).to_vec();
    }
    (config, warnings)
}

/// A ConfigMap's data as header fields to set (`add-headers`, `proxy-set-headers`,
/// `custom-headers`), in name order; a name or value that is not a header refuses the whole.
pub fn header_fields(data: &BTreeMap<String, String>) -> Result<HeaderOpsConfig, String> {
    let mut set = Vec::with_capacity(data.len());
    for (name, value) in data {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{name:?} is not a header name"));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(format!("the value of {name} is not a header value"));
        }
        set.push(HeaderField { name: name.clone(), value: value.clone() });
    }
    Ok(HeaderOpsConfig { set, ..Default::default() })
}

fn boolean(v: &str) -> Result<bool, &'static str> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("true or false"),
    }
}

fn seconds(v: &str) -> Result<u64, &'static str> {
    match v.parse::<u64>() {
        Ok(s) if (1..=86_400).contains(&s) => Ok(s * 1000),
        _ => Err("a number of seconds from 1 to 86400"),
    }
}

/// An nginx time (`600s`, `10m`, `1h30m`, `600`: seconds without a unit), in milliseconds.
fn nginx_time_ms(v: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number: u64 = rest.get(..digits)?.parse().ok()?;
        rest = &rest[digits..];
        let units: [(&str, u64); 6] =
            [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("", 1_000)];
        let (unit, factor) = units.into_iter().find(|(unit, _)| rest.starts_with(unit))?;
        if unit.is_empty() && !rest.is_empty() {
            return None;
        }
        total = total.checked_add(number.checked_mul(factor)?)?;
        rest = &rest[unit.len()..];
    }
    (total > 0).then_some(total)
}

fn proxy_stream_timeout(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    const EXPECTED: &str = "an nginx time from 1s to 7d (600s, 10m, 1h)";
    let ms = nginx_time_ms(v).ok_or(EXPECTED)?;
    c.stream_timeout_ms = Some((1_000..=604_800_000).contains(&ms).then_some(ms).ok_or(EXPECTED)?);
    Ok(())
}

fn status(v: &str) -> Result<u16, &'static str> {
    match v.parse::<u16>() {
        Ok(code) if (400..=599).contains(&code) => Ok(code),
        _ => Err("an HTTP error status (400-599)"),
    }
}

fn reference(v: &str) -> Result<String, &'static str> {
    match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(v.to_owned()),
        _ => Err("NAMESPACE/NAME of a ConfigMap"),
    }
}

fn hsts(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    if !boolean(v)? {
        c.hsts = None;
    }
    Ok(())
}

fn hsts_max_age(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    let Some(h) = &mut c.hsts else { return Ok(()) };
    h.max_age_seconds = v.parse().map_err(|_| "a number of seconds")?;
    Ok(())
}

fn hsts_include_subdomains(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    let Some(h) = &mut c.hsts else { return Ok(()) };
    h.include_subdomains = boolean(v)?;
    Ok(())
}

fn hsts_preload(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    let Some(h) = &mut c.hsts else { return Ok(()) };
    h.preload = boolean(v)?;
    Ok(())
}

fn ssl_redirect(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.ssl_redirect = boolean(v)?;
    Ok(())
}

fn force_ssl_redirect(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.force_ssl_redirect = boolean(v)?;
    Ok(())
}

fn use_port_in_redirects(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.use_port_in_redirects = boolean(v)?;
    Ok(())
}

fn preserve_trailing_slash(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.preserve_trailing_slash = boolean(v)?;
    Ok(())
}

/// The forwarding settings, created with Sluice's defaults by the first key that sets one.
fn forwarded(c: &mut ControllerConfig) -> &mut ForwardedConfig {
    c.forwarded.get_or_insert_with(ForwardedConfig::default)
}

fn use_forwarded_headers(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    forwarded(c).use_forwarded_headers = boolean(v)?;
    Ok(())
}

fn enable_real_ip(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    forwarded(c).real_ip_from_header = boolean(v)?;
    Ok(())
}

fn forwarded_for_header(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    http::HeaderName::from_bytes(v.as_bytes()).map_err(|_| "a header name")?;
    forwarded(c).forwarded_for_header = v.to_owned();
    Ok(())
}

fn compute_full_forwarded_for(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    forwarded(c).compute_full_forwarded_for = boolean(v)?;
    Ok(())
}

fn proxy_real_ip_cidr(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    let list: Result<Vec<Cidr>, _> =
        v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect();
    match list {
        Ok(list) if !list.is_empty() => {
            forwarded(c).trusted_proxies = list;
            Ok(())
        }
        _ => Err("a comma-separated list of CIDR networks"),
    }
}

fn use_proxy_protocol(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.proxy_protocol = Some(boolean(v)?);
    Ok(())
}

fn proxy_body_size(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.body_size = Some(parse_size(v).ok_or("a size such as 8m, 512k or 0")?);
    Ok(())
}

fn proxy_connect_timeout(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.connect_timeout_ms = Some(seconds(v)?);
    Ok(())
}

fn proxy_read_timeout(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.read_timeout_ms = Some(seconds(v)?);
    Ok(())
}

fn custom_http_errors(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.custom_http_errors =
        super::annotations::parse_error_codes(v).ok_or("comma-separated HTTP error statuses (400-599)")?;
    Ok(())
}

fn proxy_send_timeout(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.upstream.send_timeout_ms = Some(seconds(v)?);
    Ok(())
}

fn proxy_next_upstream(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.upstream.next_upstream = Some(
        super::annotations::parse_next_upstream(v)
            .ok_or("nginx's proxy_next_upstream conditions (error timeout http_502 ...) or off")?,
    );
    Ok(())
}

fn proxy_next_upstream_timeout(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.upstream.next_upstream_timeout_ms = Some(if v == "0" { 0 } else { seconds(v)? });
    Ok(())
}

fn proxy_next_upstream_tries(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.upstream.next_upstream_tries = Some(v.parse::<u32>().map_err(|_| "a number")?);
    Ok(())
}

fn on_off(v: &str) -> Result<bool, &'static str> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("on or off"),
    }
}

fn buffer_size(v: &str) -> Result<u64, &'static str> {
    parse_size(v).filter(|n| (1..=1 << 30).contains(n)).ok_or("a size such as 8k or 1m")
}

fn proxy_request_buffering(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.upstream.request_buffering = Some(on_off(v)?);
    Ok(())
}

fn client_body_buffer_size(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.upstream.request_buffer_bytes = Some(buffer_size(v)?);
    Ok(())
}

fn proxy_buffering(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.upstream.response_buffering = Some(on_off(v)?);
    Ok(())
}

fn proxy_buffer_size(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.upstream.response_buffer_bytes = Some(buffer_size(v)?);
    Ok(())
}

fn limit_req_status_code(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.limit_req_status = Some(status(v)?);
    Ok(())
}

fn limit_conn_status_code(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.limit_conn_status = Some(status(v)?);
    Ok(())
}

fn add_headers(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.add_headers = Some(reference(v)?);
    Ok(())
}

fn proxy_set_headers(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.proxy_set_headers = Some(reference(v)?);
    Ok(())
}

fn global_allowed_response_headers(v: &str, c: &mut ControllerConfig) -> Result<(), &'static str> {
    c.allowed_response_headers =
        v.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_pairs(pairs: &[(&str, &str)]) -> (ControllerConfig, Vec<String>) {
        read(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn upstream_keys_are_defaults_of_the_annotations() {
        use crate::config::RetryOn;
        let (c, warnings) = read_pairs(&[
            ("proxy-send-timeout", "30"),
            ("proxy-next-upstream", "error timeout http_503"),
            ("proxy-next-upstream-timeout", "0"),
            ("proxy-next-upstream-tries", "5"),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let u = c.upstream;
        assert_eq!(u.send_timeout_ms, Some(30_000));
        assert_eq!(u.next_upstream, Some(vec![RetryOn::Error, RetryOn::Timeout, RetryOn::Http503]));
        assert_eq!((u.next_upstream_timeout_ms, u.next_upstream_tries), (Some(0), Some(5)));
        let (_, warnings) = read_pairs(&[("proxy-next-upstream", "sometimes")]);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn proxy_stream_timeout_is_an_nginx_time() {
        let timeout = |v: &str| read_pairs(&[("proxy-stream-timeout", v)]);
        for (value, ms) in
            [("600s", 600_000), ("10m", 600_000), ("600", 600_000), ("1h30m", 5_400_000), ("7d", 604_800_000)]
        {
            let (c, warnings) = timeout(value);
            assert!(warnings.is_empty(), "{value}: {warnings:?}");
            assert_eq!(c.stream_timeout_ms, Some(ms), "{value}");
        }
        for value in ["", "s", "10x", "-5s", "500ms", "8d", "0", "99999999999999999999s"] {
            let (c, warnings) = timeout(value);
            assert_eq!((c.stream_timeout_ms, warnings.len()), (None, 1), "{value}: {warnings:?}");
        }
    }

    #[test]
    fn an_empty_configmap_gives_ingress_nginx_defaults() {
        let (config, warnings) = read_pairs(&[]);
        assert!(warnings.is_empty());
        let hsts = config.hsts.as_ref().unwrap();
        assert_eq!((hsts.max_age_seconds, hsts.include_subdomains, hsts.preload), (31_536_000, true, false));
        assert!(config.ssl_redirect);
        assert_eq!((config.forwarded, config.proxy_protocol), (None, None));
    }

    #[test]
    fn keys_are_read_and_refinements_follow_what_they_refine() {
        let (config, warnings) = read_pairs(&[
            ("hsts-max-age", "600"),
            ("hsts-preload", "true"),
            ("hsts-include-subdomains", "false"),
            ("ssl-redirect", "false"),
            ("use-forwarded-headers", "true"),
            ("compute-full-forwarded-for", "true"),
            ("forwarded-for-header", "X-Original-Forwarded-For"),
            ("use-proxy-protocol", "true"),
            ("proxy-body-size", "20m"),
            ("proxy-connect-timeout", "3"),
            ("proxy-read-timeout", "120"),
            ("limit-req-status-code", "429"),
            ("add-headers", "ingress-nginx/response-headers"),
            ("proxy-set-headers", "ingress-nginx/request-headers"),
            ("global-allowed-response-headers", "X-Frame-Options, Content-Security-Policy"),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let hsts = config.hsts.unwrap();
        assert_eq!((hsts.max_age_seconds, hsts.include_subdomains, hsts.preload), (600, false, true));
        assert!(!config.ssl_redirect);
        let f = config.forwarded.as_ref().unwrap();
        assert!(f.use_forwarded_headers && f.compute_full_forwarded_for);
        assert_eq!(f.forwarded_for_header, "X-Original-Forwarded-For");
        // proxy-real-ip-cidr's default: every peer.
        assert!(f.trusts("203.0.113.7".parse().unwrap()) && f.trusts("2001:db8::1".parse().unwrap()));
        assert_eq!(config.proxy_protocol, Some(true));
        assert_eq!(config.body_size, Some(20 << 20));
        assert_eq!((config.connect_timeout_ms, config.read_timeout_ms), (Some(3000), Some(120_000)));
        assert_eq!(config.limit_req_status, Some(429));
        assert_eq!(config.add_headers.as_deref(), Some("ingress-nginx/response-headers"));
        assert_eq!(config.allowed_response_headers, ["x-frame-options", "content-security-policy"]);
        // A narrower trust list.
        let (config, _) =
            read_pairs(&[("use-forwarded-headers", "true"), ("proxy-real-ip-cidr", "10.0.0.0/8")]);
        let f = config.forwarded.unwrap();
        assert!(f.trusts("10.1.1.1".parse().unwrap()) && !f.trusts("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn hsts_off_and_bad_or_unknown_keys_warn_and_keep_defaults() {
        let (config, warnings) = read_pairs(&[("hsts", "false"), ("hsts-max-age", "5")]);
        assert!(config.hsts.is_none() && warnings.is_empty());
        let (config, warnings) = read_pairs(&[
            ("ssl-redirect", "yes"),
            ("proxy-real-ip-cidr", "10.0.0.0/33"),
            ("limit-req-status-code", "200"),
            ("add-headers", "no-namespace"),
            ("keep-alive", "75"),
            ("made-up", "1"),
        ]);
        assert!(config.ssl_redirect && config.add_headers.is_none() && config.limit_req_status.is_none());
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("keep-alive is ignored")));
        assert!(warnings.iter().any(|w| w.contains("made-up is unknown")));
    }

    #[test]
    fn header_configmaps_become_set_fields_or_a_reason() {
        let data: BTreeMap<String, String> = [("X-Frame-Options", "DENY"), ("X-Using-Sluice", "true")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let ops = header_fields(&data).unwrap();
        let names: Vec<_> = ops.set.iter().map(|f| (f.name.as_str(), f.value.as_str())).collect();
        assert_eq!(names, [("X-Frame-Options", "DENY"), ("X-Using-Sluice", "true")]);
        let bad: BTreeMap<String, String> = [("bad name".into(), "x".into())].into();
        assert!(header_fields(&bad).unwrap_err().contains("not a header name"));
        let bad: BTreeMap<String, String> = [("x-a".into(), "line\nbreak".into())].into();
        assert!(header_fields(&bad).is_err());
    }
}
