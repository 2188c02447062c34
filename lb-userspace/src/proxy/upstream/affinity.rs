//! Cookie session affinity, compatible with ingress-nginx's cookie affinity: the cookie names
//! the endpoint opaquely (a keyed MAC of the backend and address, never the address itself),
//! so any node holding the same key honours a cookie another node issued, and a tampered or
//! stale cookie simply matches no endpoint.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, header::SET_COOKIE};

use super::endpoint::Endpoint;
use crate::config::{AffinityMode, CookieAffinityConfig, SameSite};

/// Bytes of MAC in a cookie: 128 bits, unguessable.
const TOKEN_BYTES: usize = 16;

/// One backend's cookie affinity, compiled with the snapshot.
pub struct CookieAffinity {
    pub config: CookieAffinityConfig,
    /// The header that carries the token instead of a cookie, if one does.
    header: Option<HeaderName>,
    /// Token -> endpoint index.
    endpoints: HashMap<[u8; TOKEN_BYTES], usize>,
    /// Endpoint index -> cookie value.
    values: Vec<String>,
}

/// What the request's cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// A valid cookie naming this endpoint index.
    Endpoint(usize),
    /// No cookie, or one that names no current endpoint (tampered, from another key, or its
    /// endpoint is gone).
    None,
}

impl CookieAffinity {
    pub fn new(
        config: &CookieAffinityConfig,
        key: &[u8],
        backend: &str,
        endpoints: &[Arc<Endpoint>],
    ) -> Self {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let mut tokens = HashMap::with_capacity(endpoints.len());
        let mut values = Vec::with_capacity(endpoints.len());
        for (index, endpoint) in endpoints.iter().enumerate() {
            let message = format!("sluice-affinity\0{backend}\0{}", endpoint.address);
            let tag = ring::hmac::sign(&key, message.as_bytes());
            let mut token = [0u8; TOKEN_BYTES];
            token.copy_from_slice(&tag.as_ref()[..TOKEN_BYTES]);
            tokens.insert(token, index);
            values.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
        }
        // Validation checked the name.
        let header = config.header.as_deref().and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        CookieAffinity { config: config.clone(), header, endpoints: tokens, values }
    }

    pub fn mode(&self) -> AffinityMode {
        self.config.mode
    }

    /// The endpoint the request's affinity cookie (or header) names, if it is valid.
    pub fn pinned(&self, headers: &HeaderMap) -> Pin {
        let name = self.config.name.as_bytes();
        let value = match &self.header {
            Some(header) => headers.get(header).map(|v| v.as_bytes().trim_ascii()),
            None => headers.get_all(http::header::COOKIE).iter().find_map(|header| {
                header.as_bytes().split(|&b| b == b';').find_map(|pair| {
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
                })
            }),
        };
        let Some(value) = value else { return Pin::None };
        let mut token = [0u8; TOKEN_BYTES];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(value, &mut token) {
            Ok(TOKEN_BYTES) => self.endpoints.get(&token).map_or(Pin::None, |&i| Pin::Endpoint(i)),
            _ => Pin::None,
        }
    }

    /// The response field pinning the client to endpoint `index`: `Set-Cookie`, or the
    /// configured header with the bare token. `user_agent` decides the conditional
    /// `SameSite=None`.
    pub fn pin_field(&self, index: usize, user_agent: Option<&[u8]>) -> Option<(HeaderName, HeaderValue)> {
        match &self.header {
            Some(header) => Some((header.clone(), HeaderValue::from_str(self.values.get(index)?).ok()?)),
            None => Some((SET_COOKIE, self.set_cookie(index, user_agent)?)),
        }
    }

    /// The `Set-Cookie` value pinning the client to endpoint `index`.
    pub fn set_cookie(&self, index: usize, user_agent: Option<&[u8]>) -> Option<HeaderValue> {
        let config = &self.config;
        let mut cookie = format!("{}={}; Path={}", config.name, self.values.get(index)?, config.path);
        if let Some(domain) = &config.domain {
            cookie.push_str(&format!("; Domain={domain}"));
        }
        if let Some(max_age) = config.max_age_seconds {
            cookie.push_str(&format!("; Max-Age={max_age}"));
        }
        if let Some(expires) = config.expires_seconds {
            let at = SystemTime::now() + Duration::from_secs(expires);
            cookie.push_str(&format!("; Expires={}", httpdate::fmt_http_date(at)));
        }
        match config.samesite {
            Some(SameSite::None)
                if config.conditional_samesite_none && !samesite_none_compatible(user_agent) => {}
            Some(samesite) => cookie.push_str(&format!("; SameSite={}", samesite.as_str())),
            None => {}
        }
        if config.secure {
            cookie.push_str("; Secure");
        }
        cookie.push_str("; HttpOnly");
        HeaderValue::from_str(&cookie).ok()
    }
}

/// Browsers that reject or mishandle `SameSite=None` (the list ingress-nginx and Chromium's
/// guidance use): Chrome/Chromium 51-66, UC Browser before 12.13.2, and Safari/WebKit on
/// iOS 12 and macOS 10.14.
pub fn samesite_none_compatible(user_agent: Option<&[u8]>) -> bool {
    let Some(ua) = user_agent.and_then(|ua| std::str::from_utf8(ua).ok()) else { return true };
    let version_after = |marker: &str| -> Option<Vec<u32>> {
        let start = ua.find(marker)? + marker.len();
        let digits: String =
            ua[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '_').collect();
        Some(digits.split(['.', '_']).filter_map(|p| p.parse().ok()).collect())
    };
    if let Some(v) = version_after("Chrome/").or_else(|| version_after("Chromium/"))
        && let Some(&major) = v.first()
        && (51..=66).contains(&major)
    {
        return false;
    }
    if let Some(v) = version_after("UCBrowser/")
        && v.as_slice() < [12, 13, 2].as_slice()
    {
        return false;
    }
    if ua.contains("iPhone OS 12_") || ua.contains("iPad; CPU OS 12_") {
        return false;
    }
    if ua.contains("Macintosh; Intel Mac OS X 10_14") && ua.contains("Safari") && !ua.contains("Chrome") {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CookieAffinityConfig {
        CookieAffinityConfig::default()
    }

    fn endpoints(n: u8) -> Vec<Arc<Endpoint>> {
        (1..=n).map(|i| Endpoint::detached("b", format!("198.18.1.{i}:80").parse().unwrap())).collect()
    }

    fn cookie_header(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn value_of(set_cookie: &HeaderValue) -> String {
        let text = set_cookie.to_str().unwrap();
        text.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
    }

    #[test]
    fn a_cookie_names_its_endpoint_on_every_node_with_the_same_key() {
        let eps = endpoints(3);
        let node_a = CookieAffinity::new(&config(), b"shared key of the cluster", "b", &eps);
        let node_b = CookieAffinity::new(&config(), b"shared key of the cluster", "b", &eps);
        for i in 0..3 {
            let issued = node_a.set_cookie(i, None).unwrap();
            let token = value_of(&issued);
            assert!(!token.contains("198.18"), "the address never appears: {token}");
            let headers = cookie_header(&format!("other=1; INGRESSCOOKIE={token}"));
            assert_eq!(node_b.pinned(&headers), Pin::Endpoint(i));
        }
        let other_key = CookieAffinity::new(&config(), b"another cluster's key", "b", &eps);
        let token = value_of(&node_a.set_cookie(0, None).unwrap());
        assert_eq!(other_key.pinned(&cookie_header(&format!("INGRESSCOOKIE={token}"))), Pin::None);
    }

    /// Header-carried affinity: the response field is the header with the bare token, and the
    /// request's header (not a cookie of the same name) pins.
    #[test]
    fn a_header_carries_the_token_instead_of_a_cookie() {
        let eps = endpoints(2);
        let config = CookieAffinityConfig { header: Some("X-Session".into()), ..config() };
        let affinity = CookieAffinity::new(&config, b"k", "b", &eps);
        let (name, value) = affinity.pin_field(1, None).unwrap();
        assert_eq!(name.as_str(), "x-session");
        let token = value.to_str().unwrap().to_owned();
        assert!(!token.contains(';') && !token.contains('='), "a bare token: {token}");
        let mut headers = HeaderMap::new();
        headers.insert("x-session", value);
        assert_eq!(affinity.pinned(&headers), Pin::Endpoint(1));
        assert_eq!(affinity.pinned(&cookie_header(&format!("INGRESSCOOKIE={token}"))), Pin::None);
        let cookies = CookieAffinity::new(&CookieAffinityConfig::default(), b"k", "b", &eps);
        assert_eq!(cookies.pin_field(1, None).unwrap().0, SET_COOKIE);
    }

    #[test]
    fn tampered_and_stale_cookies_match_nothing() {
        let eps = endpoints(3);
        let affinity = CookieAffinity::new(&config(), b"k", "b", &eps);
        let token = value_of(&affinity.set_cookie(1, None).unwrap());
        let mut tampered = token.clone().into_bytes();
        tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(affinity.pinned(&cookie_header(&format!("INGRESSCOOKIE={tampered}"))), Pin::None);
        assert_eq!(affinity.pinned(&cookie_header("INGRESSCOOKIE=garbage!")), Pin::None);
        // The endpoint went away: a cookie for it matches nothing in the new snapshot.
        let fewer = CookieAffinity::new(&config(), b"k", "b", &eps[..1]);
        assert_eq!(fewer.pinned(&cookie_header(&format!("INGRESSCOOKIE={token}"))), Pin::None);
    }

    #[test]
    fn cookie_attributes_follow_the_settings() {
        let config = CookieAffinityConfig {
            name: "route".into(),
            path: "/app".into(),
            domain: Some("example.com".into()),
            max_age_seconds: Some(3600),
            expires_seconds: Some(7200),
            samesite: Some(SameSite::None),
            conditional_samesite_none: true,
            secure: true,
            ..CookieAffinityConfig::default()
        };
        let affinity = CookieAffinity::new(&config, b"k", "b", &endpoints(1));
        let modern = affinity.set_cookie(0, Some(b"Mozilla/5.0 Chrome/120.0.0.0 Safari/537.36")).unwrap();
        let text = modern.to_str().unwrap();
        for part in [
            "route=",
            "Path=/app",
            "Domain=example.com",
            "Max-Age=3600",
            "Expires=",
            "SameSite=None",
            "Secure",
            "HttpOnly",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        let old = affinity.set_cookie(0, Some(b"Mozilla/5.0 Chrome/60.0.3112.113 Safari/537.36")).unwrap();
        assert!(!old.to_str().unwrap().contains("SameSite"), "Chrome 60 gets no SameSite=None");
    }

    #[test]
    fn incompatible_user_agents_are_recognised() {
        assert!(!samesite_none_compatible(Some(
            b"Mozilla/5.0 (iPhone; CPU iPhone OS 12_4 like Mac OS X) AppleWebKit"
        )));
        assert!(!samesite_none_compatible(Some(b"Mozilla/5.0 UCBrowser/12.13.0.1207 Mobile")));
        assert!(samesite_none_compatible(Some(b"Mozilla/5.0 UCBrowser/12.13.5 Mobile")));
        assert!(samesite_none_compatible(Some(b"curl/8.5.0")));
        assert!(samesite_none_compatible(None));
    }
}
