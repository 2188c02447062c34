//! Configured header changes (`request_headers`, `response_headers`; ingress-nginx's
//! `custom-headers`, `upstream-vhost`, `x-forwarded-prefix`), compiled once per route.
//!
//! The virtual host's changes and the route's are layers applied in order, each as remove,
//! then set, then add. Their composition is kept in one flat form, so a request pays one
//! pass whatever the number of layers: `dropped` names lose every earlier field (the client's,
//! the backend's, or the proxy's own forwarding fields), and `appended` fields follow, in order.

use http::{HeaderMap, HeaderName, HeaderValue};

pub use crate::config::policy::HeaderDirection as Direction;
use crate::config::{
    HeaderOpsConfig,
    policy::{changeable_header, header_value},
};

/// The compiled changes of one route in one direction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderOps {
    /// Names whose earlier fields are removed.
    dropped: Vec<HeaderName>,
    /// Fields added after the kept ones, in order.
    appended: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Composes the layers (the virtual host's, then the route's) into one; `None` when
    /// nothing changes. `at` names each layer's position for errors.
    pub fn compile(
        layers: &[(Option<&HeaderOpsConfig>, String)],
        direction: Direction,
    ) -> Result<Option<HeaderOps>, String> {
        let mut ops = HeaderOps::default();
        for (layer, at) in layers {
            let Some(layer) = layer else { continue };
            for (i, name) in layer.remove.iter().enumerate() {
                let name = field_name(name, direction, &format!("{at}.remove[{i}]"))?;
                ops.drop_name(name);
            }
            for (i, field) in layer.set.iter().enumerate() {
                let at = format!("{at}.set[{i}]");
                let (name, value) = compile_field(&field.name, &field.value, direction, &at)?;
                ops.drop_name(name.clone());
                ops.appended.push((name, value));
            }
            for (i, field) in layer.add.iter().enumerate() {
                let at = format!("{at}.add[{i}]");
                ops.appended.push(compile_field(&field.name, &field.value, direction, &at)?);
            }
        }
        Ok((!ops.dropped.is_empty() || !ops.appended.is_empty()).then_some(ops))
    }

    /// Changes that set each of `fields` (replacing earlier fields of its name), built by the
    /// proxy itself (an error page's request fields), so not checked as configured ones are.
    pub fn setting(fields: Vec<(HeaderName, HeaderValue)>) -> HeaderOps {
        let mut ops = HeaderOps::default();
        for (name, _) in &fields {
            ops.drop_name(name.clone());
        }
        ops.appended = fields;
        ops
    }

    fn drop_name(&mut self, name: HeaderName) {
        self.appended.retain(|(appended, _)| *appended != name);
        if !self.dropped.contains(&name) {
            self.dropped.push(name);
        }
    }

    /// Whether an earlier field named `name` is removed.
    pub fn drops(&self, name: &HeaderName) -> bool {
        self.dropped.contains(name)
    }

    /// The fields to add after the kept ones.
    pub fn appended(&self) -> &[(HeaderName, HeaderValue)] {
        &self.appended
    }

    /// Applies the changes to a message's fields (a response's).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.dropped {
            headers.remove(name);
        }
        for (name, value) in &self.appended {
            headers.append(name.clone(), value.clone());
        }
    }
}

fn field_name(name: &str, direction: Direction, at: &str) -> Result<HeaderName, String> {
    changeable_header(name, direction).map_err(|e| format!("{at}: {e}"))
}

fn compile_field(
    name: &str,
    value: &str,
    direction: Direction,
    at: &str,
) -> Result<(HeaderName, HeaderValue), String> {
    let name = field_name(name, direction, &format!("{at}.name"))?;
    let value = header_value(value).map_err(|e| format!("{at}.value: {e}"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderField;

    fn field(name: &str, value: &str) -> HeaderField {
        HeaderField { name: name.into(), value: value.into() }
    }

    fn layer(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOpsConfig {
        HeaderOpsConfig {
            set: set.iter().map(|(n, v)| field(n, v)).collect(),
            add: add.iter().map(|(n, v)| field(n, v)).collect(),
            remove: remove.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn compile(layers: &[&HeaderOpsConfig], direction: Direction) -> Result<Option<HeaderOps>, String> {
        let layers: Vec<_> =
            layers.iter().enumerate().map(|(i, l)| (Some(*l), format!("layer{i}"))).collect();
        HeaderOps::compile(&layers, direction)
    }

    fn applied(ops: &HeaderOps, fields: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut map = HeaderMap::new();
        for (n, v) in fields {
            map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        ops.apply(&mut map);
        map.iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned())).collect()
    }

    #[test]
    fn one_layer_removes_then_sets_then_adds() {
        let ops = compile(&[&layer(&[("x-a", "set")], &[("x-b", "added")], &["x-c"])], Direction::Response)
            .unwrap()
            .unwrap();
        let out =
            applied(&ops, &[("x-a", "old"), ("x-a", "old2"), ("x-b", "kept"), ("x-c", "gone"), ("x-d", "d")]);
        let pairs =
            |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        // HeaderMap groups by name; compare as sets of pairs.
        let mut out = out;
        out.sort();
        let mut want = pairs(&[("x-a", "set"), ("x-b", "kept"), ("x-b", "added"), ("x-d", "d")]);
        want.sort();
        assert_eq!(out, want);
    }

    #[test]
    fn a_later_layer_wins_and_its_remove_undoes_an_earlier_set() {
        let host = layer(&[("x-env", "host"), ("x-team", "a")], &[("x-trace", "1")], &[]);
        let route = layer(&[("x-env", "route")], &[], &["x-team", "x-trace"]);
        let ops = compile(&[&host, &route], Direction::Request).unwrap().unwrap();
        let appended: Vec<_> =
            ops.appended().iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(appended, vec![("x-env", "route")]);
        for name in ["x-env", "x-team", "x-trace"] {
            assert!(ops.drops(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!ops.drops(&HeaderName::from_static("x-other")));
    }

    #[test]
    fn names_are_case_insensitive_and_empty_layers_compile_to_nothing() {
        let ops = compile(&[&layer(&[("X-Frame-Options", "DENY")], &[], &[])], Direction::Response)
            .unwrap()
            .unwrap();
        assert!(ops.drops(&HeaderName::from_static("x-frame-options")));
        assert_eq!(compile(&[&HeaderOpsConfig::default()], Direction::Request).unwrap(), None);
        assert_eq!(HeaderOps::compile(&[(None, "x".into())], Direction::Request).unwrap(), None);
    }

    #[test]
    fn proxy_owned_and_invalid_fields_are_refused_with_their_position() {
        for (bad, direction, wanted) in [
            (layer(&[("Transfer-Encoding", "chunked")], &[], &[]), Direction::Request, "layer0.set[0].name"),
            (layer(&[], &[("content-length", "1")], &[]), Direction::Response, "layer0.add[0].name"),
            (layer(&[], &[], &["Connection"]), Direction::Request, "layer0.remove[0]"),
            (layer(&[("bad name", "x")], &[], &[]), Direction::Request, "valid header name"),
            (layer(&[("x-a", "line\nbreak")], &[], &[]), Direction::Request, "layer0.set[0].value"),
            (layer(&[("host", "b.test")], &[], &[]), Direction::Response, "request field"),
        ] {
            let e = compile(&[&bad], direction).unwrap_err();
            assert!(e.contains(wanted), "{e}");
        }
        // Host may be set on requests (ingress-nginx's upstream-vhost).
        assert!(compile(&[&layer(&[("host", "b.test")], &[], &[])], Direction::Request).unwrap().is_some());
    }
}
