//! The rules of a route's response policy fields (header changes, CORS), shared by validation
//! (which reports each with its field path) and the proxy's compilers (which build the serving
//! form from values these rules accepted).

use http::{HeaderName, HeaderValue};

use super::{CorsConfig, HeaderOpsConfig};

/// Which message header changes are for: the fields each may not touch differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDirection {
    Request,
    Response,
}

/// Fields the proxy owns on each hop: framing and connection management. Changing them would
/// desynchronise the message from its framing, or the connection from its pool.
const PROXY_OWNED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
];

/// A field name header changes may use in `direction`.
pub fn changeable_header(name: &str, direction: HeaderDirection) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if PROXY_OWNED.contains(&parsed.as_str()) {
        return Err(format!(
            "{name:?} cannot be changed: the proxy sets the connection and framing fields of each hop"
        ));
    }
    if direction == HeaderDirection::Response && parsed == http::header::HOST {
        return Err("\"host\" is a request field".to_owned());
    }
    Ok(parsed)
}

pub fn header_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value)
        .map_err(|_| format!("{value:?} is not a valid header value (control characters?)"))
}

impl HeaderOpsConfig {
    /// Every problem, as (field path under `at`, message).
    pub fn problems(&self, direction: HeaderDirection, at: &str) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (i, name) in self.remove.iter().enumerate() {
            if let Err(e) = changeable_header(name, direction) {
                found.push((format!("{at}.remove[{i}]"), e));
            }
        }
        for (list, fields) in [("set", &self.set), ("add", &self.add)] {
            for (i, field) in fields.iter().enumerate() {
                if let Err(e) = changeable_header(&field.name, direction) {
                    found.push((format!("{at}.{list}[{i}].name"), e));
                }
                if let Err(e) = header_value(&field.value) {
                    found.push((format!("{at}.{list}[{i}].value"), e));
                }
            }
        }
        found
    }
}

/// Why an allowed CORS origin is not one: `*`, `null`, or `scheme://host[:port]` with a
/// lower-case scheme, where the host may start with `*.` (ingress-nginx's rule).
pub fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" || origin == "null" {
        return Ok(());
    }
    let wrong = || format!("{origin:?} is not an origin (scheme://host[:port], scheme://*.host, null or *)");
    let (scheme, rest) = origin.split_once("://").ok_or_else(wrong)?;
    let host_and_port = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match host_and_port.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host_and_port, None),
    };
    let valid = !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_lowercase())
        && !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if valid { Ok(()) } else { Err(wrong()) }
}

/// A CORS list as one header value, each entry checked by `valid`.
pub fn cors_list(items: &[String], valid: impl Fn(u8) -> bool) -> Result<HeaderValue, String> {
    for item in items {
        if item.is_empty() || !item.bytes().all(&valid) {
            return Err(format!("{item:?} is not a valid entry"));
        }
    }
    HeaderValue::from_str(&items.join(", ")).map_err(|_| "not a valid header value".to_owned())
}

/// Which bytes an entry of a CORS list may hold.
pub type ByteRule = fn(u8) -> bool;

pub fn is_method_byte(b: u8) -> bool {
    b.is_ascii_alphabetic()
}

pub fn is_header_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

pub fn is_exposed_header_byte(b: u8) -> bool {
    is_header_token_byte(b) || b == b'*'
}

impl CorsConfig {
    /// Every problem, as (field path under `at`, message).
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (i, origin) in self.allow_origins.iter().enumerate() {
            if let Err(e) = check_origin(origin.trim()) {
                found.push((format!("{at}.allow_origins[{i}]"), e));
            }
        }
        let lists: [(&str, &[String], ByteRule); 3] = [
            ("allow_methods", &self.allow_methods, is_method_byte),
            ("allow_headers", &self.allow_headers, is_header_token_byte),
            ("expose_headers", &self.expose_headers, is_exposed_header_byte),
        ];
        for (field, items, valid) in lists {
            if let Err(e) = cors_list(items, valid) {
                found.push((format!("{at}.{field}"), e));
            }
        }
        found
    }
}
