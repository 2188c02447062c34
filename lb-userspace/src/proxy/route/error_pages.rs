//! A route's error pages, compiled: which statuses go to the error backend, and the fields of
//! the request that asks it (ingress-nginx's `@custom_<upstream>_<code>` locations).

use http::{HeaderName, HeaderValue, StatusCode};

use super::super::header_ops::HeaderOps;
use crate::config::ErrorPagesConfig;

static X_CODE: HeaderName = HeaderName::from_static("x-code");
static X_FORMAT: HeaderName = HeaderName::from_static("x-format");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug)]
pub struct ErrorPages {
    /// Sorted.
    statuses: Vec<u16>,
    /// Index into `Config::backends`.
    pub backend: usize,
    /// The configured fields, set after the per-request ones.
    fields: Vec<(HeaderName, HeaderValue)>,
}

impl ErrorPages {
    pub fn compile(
        config: &ErrorPagesConfig,
        backends: &crate::FastMap<&str, usize>,
        at: &str,
    ) -> Result<ErrorPages, String> {
        let backend = *backends
            .get(config.backend.as_str())
            .ok_or_else(|| format!("{at}.backend: no backend named {:?}", config.backend))?;
        let mut statuses = config.statuses.clone();
        statuses.sort_unstable();
        statuses.dedup();
        let fields = config
            .headers
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| format!("{at}.headers[{i}].name: {:?} is not a header name", field.name))?;
                let value = HeaderValue::from_str(&field.value)
                    .map_err(|_| format!("{at}.headers[{i}].value: not a header value"))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ErrorPages { statuses, backend, fields })
    }

    /// Whether a response with `status` goes to the error backend.
    pub fn intercepts(&self, status: StatusCode) -> bool {
        self.statuses.binary_search(&status.as_u16()).is_ok()
    }

    /// The fields set on the error backend's request, as nginx's error location sets them:
    /// `X-Code`, `X-Format` (the client's `Accept`, left out when it sent none, as nginx leaves
    /// out an empty value), `X-Original-URI`, `X-Request-ID` (the failed request's), then the
    /// configured ones.
    pub fn request_fields(
        &self,
        status: StatusCode,
        accept: Option<&HeaderValue>,
        original_uri: &str,
        request_id: &HeaderValue,
    ) -> HeaderOps {
        let mut fields = Vec::with_capacity(4 + self.fields.len());
        fields.push((X_CODE.clone(), HeaderValue::from(status.as_u16())));
        if let Some(accept) = accept.filter(|a| !a.is_empty()) {
            fields.push((X_FORMAT.clone(), accept.clone()));
        }
        if let Ok(uri) = HeaderValue::from_str(original_uri) {
            fields.push((X_ORIGINAL_URI.clone(), uri));
        }
        fields.push((X_REQUEST_ID.clone(), request_id.clone()));
        fields.extend(self.fields.iter().cloned());
        HeaderOps::setting(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderField;

    fn pages(statuses: &[u16]) -> ErrorPages {
        let config = ErrorPagesConfig {
            statuses: statuses.to_vec(),
            backend: "errors".into(),
            headers: vec![HeaderField { name: "X-Namespace".into(), value: "shop".into() }],
        };
        ErrorPages::compile(&config, &[("errors", 3)].into_iter().collect(), "at").unwrap()
    }

    #[test]
    fn only_listed_statuses_are_intercepted() {
        let pages = pages(&[503, 404, 503]);
        assert_eq!(pages.backend, 3);
        assert!(pages.intercepts(StatusCode::SERVICE_UNAVAILABLE));
        assert!(pages.intercepts(StatusCode::NOT_FOUND));
        assert!(!pages.intercepts(StatusCode::BAD_GATEWAY));
        assert!(!pages.intercepts(StatusCode::OK));
    }

    #[test]
    fn the_error_request_carries_nginx_fields_then_the_configured_ones() {
        let pages = pages(&[503]);
        let id = HeaderValue::from_static("abc");
        let accept = HeaderValue::from_static("application/json");
        let ops = pages.request_fields(StatusCode::SERVICE_UNAVAILABLE, Some(&accept), "/a?b=1", &id);
        let mut fields = http::HeaderMap::new();
        fields.insert("x-code", HeaderValue::from_static("forged"));
        fields.insert("accept", accept.clone());
        ops.apply(&mut fields);
        assert_eq!(fields["x-code"], "503", "a client's own X-Code is replaced");
        assert_eq!(fields["x-format"], "application/json");
        assert_eq!(fields["x-original-uri"], "/a?b=1");
        assert_eq!(fields["x-request-id"], "abc");
        assert_eq!(fields["x-namespace"], "shop");
        let without_accept = pages.request_fields(StatusCode::SERVICE_UNAVAILABLE, None, "/", &id);
        let mut fields = http::HeaderMap::new();
        without_accept.apply(&mut fields);
        assert!(!fields.contains_key("x-format"));
    }

    #[test]
    fn an_unknown_backend_is_an_error_naming_the_field() {
        let config = ErrorPagesConfig { statuses: vec![503], backend: "nope".into(), headers: Vec::new() };
        let error =
            ErrorPages::compile(&config, &Default::default(), "virtual_hosts[0].error_pages").unwrap_err();
        assert!(error.starts_with("virtual_hosts[0].error_pages.backend"), "{error}");
    }
}
