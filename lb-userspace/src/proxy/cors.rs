//! Cross-origin resource sharing as ingress-nginx's `enable-cors` serves it (its template's
//! `CORS` block): an `OPTIONS` request from an allowed origin is a preflight, answered `204`
//! here; every other response to an allowed origin carries the `Access-Control-*` fields,
//! replacing the backend's (nginx's `more_set_headers`).
//!
//! Where Sluice differs, on purpose: origins are matched whole (nginx's generated regex is
//! anchored only at its end, so `https://evil.testhttps://a.test` passes an allow list of
//! `https://a.test` there), and an echoed origin adds `Vary: Origin` so shared caches keep
//! one answer per origin.

use http::{
    HeaderMap, HeaderValue, Method, Response, StatusCode,
    header::{
        ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
        ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, CONTENT_LENGTH,
        CONTENT_TYPE, ORIGIN, VARY,
    },
};

use super::body::{self, ProxyBody};
use crate::config::{
    CorsConfig,
    policy::{
        ByteRule, check_origin, cors_list, is_exposed_header_byte, is_header_token_byte, is_method_byte,
    },
};

/// A route's compiled CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    origins: Origins,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    allow_credentials: bool,
    max_age: HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Origins {
    /// `*`: every request, with or without `Origin`, is answered `Access-Control-Allow-Origin: *`.
    Any,
    List(Vec<OriginPattern>),
}

/// One allowed origin, lower-cased (origins compare case-insensitively, as nginx's `~*`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    Exact(String),
    /// `scheme://*.rest`: exactly one label of letters, digits and `-` in place of the `*`.
    OneLabel {
        scheme: String,
        rest: String,
    },
}

impl OriginPattern {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginPattern::OneLabel { scheme, rest } => {
                origin.len() > scheme.len() + rest.len()
                    && origin.is_char_boundary(scheme.len())
                    && origin.is_char_boundary(origin.len() - rest.len())
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && origin[origin.len() - rest.len()..].eq_ignore_ascii_case(rest)
                    && origin[scheme.len()..origin.len() - rest.len()]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }
        }
    }
}

impl Cors {
    /// Compiles a policy; `at` names its position for errors.
    pub fn compile(config: &CorsConfig, at: &str) -> Result<Cors, String> {
        let mut patterns = Vec::with_capacity(config.allow_origins.len());
        let mut any = config.allow_origins.is_empty();
        for (i, origin) in config.allow_origins.iter().enumerate() {
            let origin = origin.trim();
            check_origin(origin).map_err(|e| format!("{at}.allow_origins[{i}]: {e}"))?;
            if origin == "*" {
                any = true;
            } else if let Some((scheme, rest)) = origin.split_once("://*") {
                patterns.push(OriginPattern::OneLabel {
                    scheme: format!("{scheme}://").to_ascii_lowercase(),
                    rest: rest.to_ascii_lowercase(),
                });
            } else {
                patterns.push(OriginPattern::Exact(origin.to_ascii_lowercase()));
            }
        }
        let list = |items: &[String], field: &str, valid: ByteRule| {
            cors_list(items, valid).map_err(|e| format!("{at}.{field}: {e}"))
        };
        Ok(Cors {
            origins: if any { Origins::Any } else { Origins::List(patterns) },
            allow_methods: list(&config.allow_methods, "allow_methods", is_method_byte)?,
            allow_headers: list(&config.allow_headers, "allow_headers", is_header_token_byte)?,
            expose_headers: match config.expose_headers.is_empty() {
                true => None,
                false => Some(list(&config.expose_headers, "expose_headers", is_exposed_header_byte)?),
            },
            allow_credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age_seconds),
        })
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, when it is allowed.
    pub fn allowed_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(patterns) => {
                let origin = origin?;
                let text = origin.to_str().ok()?;
                patterns.iter().any(|p| p.matches(text)).then(|| origin.clone())
            }
        }
    }

    /// The `204` answer to a preflight: any `OPTIONS` request from an allowed origin.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<ProxyBody>> {
        if method != Method::OPTIONS {
            return None;
        }
        let allowed = self.allowed_origin(headers.get(ORIGIN))?;
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        self.decorate(allowed, response.headers_mut());
        let fields = response.headers_mut();
        fields.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain charset=UTF-8"));
        fields.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        Some(response)
    }

    /// Sets the `Access-Control-*` fields for an allowed origin, replacing the backend's.
    pub fn decorate(&self, allowed_origin: HeaderValue, fields: &mut HeaderMap) {
        let echoed = allowed_origin != "*";
        fields.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed_origin);
        if self.allow_credentials {
            fields.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        fields.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        fields.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        if let Some(expose) = &self.expose_headers {
            fields.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        fields.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        let varies_by_origin = fields
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| matches!(token.trim(), "*") || token.trim().eq_ignore_ascii_case("origin"));
        if echoed && !varies_by_origin {
            fields.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        let config = CorsConfig {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        };
        Cors::compile(&config, "cors").unwrap()
    }

    fn origin(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn a_star_answers_every_request_with_a_star_even_without_origin() {
        let any = cors(&["https://a.test", "*"]);
        assert_eq!(any.allowed_origin(None).unwrap(), "*");
        assert_eq!(any.allowed_origin(Some(&origin("https://x.test"))).unwrap(), "*");
        assert!(any.preflight(&Method::OPTIONS, &HeaderMap::new()).is_some());
        assert!(any.preflight(&Method::GET, &HeaderMap::new()).is_none());
    }

    #[test]
    fn listed_origins_are_echoed_matched_whole_and_case_insensitively() {
        let list = cors(&["https://a.test", "http://a.test:8080", "https://*.b.test", "null"]);
        for allowed in
            ["https://a.test", "HTTPS://A.TEST", "http://a.test:8080", "https://x-1.b.test", "null"]
        {
            assert_eq!(list.allowed_origin(Some(&origin(allowed))).unwrap(), allowed, "{allowed}");
        }
        for refused in [
            "https://evil.testhttps://a.test",
            "https://a.test.evil",
            "http://a.test",
            "https://a.test:8443",
            "https://b.test",
            "https://x.y.b.test",
            "https://.b.test",
            "https://x_y.b.test",
            "ftp://a.test",
        ] {
            assert!(list.allowed_origin(Some(&origin(refused))).is_none(), "{refused}");
        }
        assert!(list.allowed_origin(None).is_none());
    }

    #[test]
    fn a_preflight_is_answered_with_ingress_nginx_defaults() {
        let list = cors(&["https://a.test"]);
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, origin("https://a.test"));
        let answer = list.preflight(&Method::OPTIONS, &headers).unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let h = answer.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT, POST, DELETE, PATCH, OPTIONS");
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS],
            "DNT, Keep-Alive, User-Agent, X-Requested-With, If-Modified-Since, Cache-Control, Content-Type, Range, Authorization"
        );
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "1728000");
        assert!(h.get(ACCESS_CONTROL_EXPOSE_HEADERS).is_none());
        assert_eq!(h[VARY], "Origin");
        assert_eq!(h[CONTENT_LENGTH], "0");
        // An OPTIONS from an origin not on the list goes on to the backend.
        headers.insert(ORIGIN, origin("https://other.test"));
        assert!(list.preflight(&Method::OPTIONS, &headers).is_none());
    }

    #[test]
    fn decorate_replaces_the_backends_fields_and_keeps_its_vary() {
        let config = CorsConfig {
            allow_origins: vec!["https://a.test".into()],
            allow_credentials: false,
            expose_headers: vec!["X-Total".into(), "*".into()],
            ..Default::default()
        };
        let cors = Cors::compile(&config, "cors").unwrap();
        let mut fields = HeaderMap::new();
        fields.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin("*"));
        fields.insert(VARY, origin("Accept-Encoding, origin"));
        cors.decorate(origin("https://a.test"), &mut fields);
        assert_eq!(fields[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test");
        assert!(fields.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        assert_eq!(fields[ACCESS_CONTROL_EXPOSE_HEADERS], "X-Total, *");
        assert_eq!(fields.get_all(VARY).iter().count(), 1);
    }

    #[test]
    fn bad_entries_are_refused_with_their_position() {
        for (config, wanted) in [
            (CorsConfig { allow_origins: vec!["a.test".into()], ..Default::default() }, "allow_origins[0]"),
            (
                CorsConfig { allow_origins: vec!["https://a b".into()], ..Default::default() },
                "allow_origins[0]",
            ),
            (
                CorsConfig { allow_origins: vec!["HTTPS://a.test".into()], ..Default::default() },
                "allow_origins[0]",
            ),
            (
                CorsConfig { allow_origins: vec!["https://a.test:x".into()], ..Default::default() },
                "allow_origins[0]",
            ),
            (CorsConfig { allow_methods: vec!["GET;".into()], ..Default::default() }, "allow_methods"),
            (CorsConfig { allow_headers: vec!["X A".into()], ..Default::default() }, "allow_headers"),
            (CorsConfig { expose_headers: vec!["X\r".into()], ..Default::default() }, "expose_headers"),
        ] {
            let e = Cors::compile(&config, "cors").unwrap_err();
            assert!(e.contains(wanted), "{e}");
        }
    }
}
