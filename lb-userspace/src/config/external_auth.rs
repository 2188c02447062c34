//! External auth's settings that need reading: the service's URL, the cache key's nginx
//! variables and the cache durations. One reader for the YAML's validation, the Kubernetes
//! annotations and the proxy.

use std::time::Duration;

use http::HeaderName;

use super::ExternalAuthConfig;

/// An `http(s)://host[:port]/path` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub target: String,
}

impl AuthUrl {
    pub fn parse(url: &str) -> Result<AuthUrl, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let target = if target.starts_with('?') { format!("/{target}") } else { target };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
                (host, port.parse::<u16>().map_err(|_| format!("{url:?}: the port is not a number"))?)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let valid = !bare.is_empty()
            && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
            && target.bytes().all(|b| b > 0x20 && b != 0x7f);
        if !valid || authority.contains('@') {
            return Err(format!("{url:?}: not a host name or address with a path"));
        }
        Ok(AuthUrl { https, host: bare.to_owned(), port, target })
    }
}

/// One piece of a cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Text(String),
    Header(HeaderName),
    Cookie(String),
    RemoteAddr,
    RemoteUser,
    Host,
    RequestUri,
    Uri,
    Method,
    Scheme,
}

/// A cache key with nginx variables.
pub fn parse_key(text: &str) -> Result<Vec<KeyPart>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some(dollar) = rest.find('$') else {
            parts.push(KeyPart::Text(rest.to_owned()));
            break;
        };
        if dollar > 0 {
            parts.push(KeyPart::Text(rest[..dollar].to_owned()));
        }
        let name_end = rest[dollar + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(rest.len(), |i| dollar + 1 + i);
        let name = &rest[dollar + 1..name_end];
        parts.push(match name {
            "remote_addr" | "binary_remote_addr" => KeyPart::RemoteAddr,
            "remote_user" => KeyPart::RemoteUser,
            "host" | "http_host" => KeyPart::Host,
            "request_uri" => KeyPart::RequestUri,
            "uri" => KeyPart::Uri,
            "request_method" => KeyPart::Method,
            "scheme" => KeyPart::Scheme,
            _ => {
                if let Some(header) = name.strip_prefix("http_") {
                    KeyPart::Header(
                        HeaderName::from_bytes(header.replace('_', "-").as_bytes())
                            .map_err(|_| format!("${name} is not a header"))?,
                    )
                } else if let Some(cookie) = name.strip_prefix("cookie_").filter(|c| !c.is_empty()) {
                    KeyPart::Cookie(cookie.to_owned())
                } else {
                    return Err(format!("${name} is not a variable Sluice knows"));
                }
            }
        });
        rest = &rest[name_end..];
    }
    Ok(parts)
}

/// The statuses (empty: any) and how long answers with them are cached.
pub type CacheDurations = Vec<(Vec<u16>, Duration)>;

/// nginx `proxy_cache_valid` lines, comma-separated: `[code ...|any] time` (time: `30s`, `5m`,
/// `1h`, `1d`; codes default to 200 301 302).
pub fn parse_durations(text: &str) -> Result<CacheDurations, String> {
    let mut durations = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let words: Vec<&str> = entry.split_whitespace().collect();
        let (time, codes) = words.split_last().ok_or("an empty entry")?;
        let time = parse_time(time).ok_or_else(|| format!("{time:?} is not a time such as 30s, 5m or 1h"))?;
        let codes: Vec<u16> = if codes.is_empty() {
            vec![200, 301, 302]
        } else if codes == ["any"] {
            Vec::new()
        } else {
            codes
                .iter()
                .map(|c| c.parse::<u16>().ok().filter(|c| (100..600).contains(c)))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{entry:?}: the codes must be HTTP statuses or any"))?
        };
        durations.push((codes, time));
    }
    Ok(durations)
}

fn parse_time(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..split].parse().ok()?;
    let seconds = match &text[split..] {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

impl ExternalAuthConfig {
    /// The settings for `url`, every other one at its default.
    pub fn for_url(url: &str) -> ExternalAuthConfig {
        ExternalAuthConfig {
            url: url.to_owned(),
            method: None,
            signin: None,
            signin_redirect_param: super::model::default_signin_redirect_param(),
            response_headers: Vec::new(),
            request_redirect: None,
            cache_key: None,
            cache_duration: super::model::default_auth_cache_duration(),
            always_set_cookie: false,
            timeout_ms: super::model::default_auth_timeout_ms(),
            keepalive_timeout_ms: super::model::default_auth_keepalive_timeout_ms(),
            tls: None,
        }
    }
}

/// Every problem of `config` a compile would meet, as `field: problem`.
pub fn check(config: &ExternalAuthConfig) -> Result<(), String> {
    AuthUrl::parse(&config.url).map_err(|e| format!("url: {e}"))?;
    if let Some(method) = &config.method
        && http::Method::from_bytes(method.as_bytes()).is_err()
    {
        return Err(format!("method: {method:?} is not a method"));
    }
    if let Some(bad) =
        config.response_headers.iter().find(|n| HeaderName::from_bytes(n.trim().as_bytes()).is_err())
    {
        return Err(format!("response_headers: {bad:?} is not a header name"));
    }
    if let Some(key) = &config.cache_key {
        parse_key(key).map_err(|e| format!("cache_key: {e}"))?;
    }
    parse_durations(&config.cache_duration).map_err(|e| format!("cache_duration: {e}"))?;
    let valid_value = |v: &str| http::HeaderValue::from_str(v).is_ok();
    if config.request_redirect.as_deref().is_some_and(|v| !valid_value(v)) {
        return Err("request_redirect: not a valid header value".into());
    }
    if config.signin.as_deref().is_some_and(|v| {
        !valid_value(v) || !(v.starts_with("http://") || v.starts_with("https://") || v.starts_with('/'))
    }) {
        return Err("signin: not an http(s) URL or a path".into());
    }
    Ok(())
}
