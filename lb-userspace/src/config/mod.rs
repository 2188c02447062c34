//! The one internal configuration model, its YAML form and its validation.
//!
//! `model` holds the types (one-to-one with the YAML file); `validate` checks everything serde
//! cannot, and reports every problem at once with the path of the offending field.

pub mod external_auth;
pub mod htpasswd;
mod locate;
mod model;
pub mod policy;
mod validate;

pub(crate) use validate::valid_domain;

use std::path::Path;

use serde_saphyr::{DefaultMessageFormatter, DuplicateKeyPolicy, MessageFormatter};

pub use model::*;

/// The built-in configuration served when no file is given.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../../config/default.yaml");

/// Upper bound on workers: beyond this, threads only contend.
pub const MAX_WORKERS: usize = 1024;

/// One thing wrong with a configuration: where (a field path such as
/// `virtual_hosts[0].routes[2].backend`, and its line and column in the file when known) and
/// what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{source_name}: cannot read: {source}")]
    Read {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}:{line}:{column}: {message}")]
    Parse { source_name: String, line: usize, column: usize, message: String },
    #[error("{}", render_problems(source_name, problems))]
    Invalid { source_name: String, problems: Vec<Problem> },
}

fn render_problems(source_name: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{source_name}:{}:{}: {}: {}", p.line, p.column, p.path, p.message))
        .collect();
    lines.join("\n")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How configuration files are read: YAML 1.2 booleans only (`yes` is a string, not `true`),
/// and a key given twice in one mapping is an error at the second one.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        duplicate_keys: DuplicateKeyPolicy::Error,
        with_snippet: false,
    }
}

/// Reads the model from `yaml`. An error comes with its 1-based line and column and a message
/// that starts with the field path, as validation problems do (`listeners[0].address: ...`).
fn deserialize(yaml: &str) -> std::result::Result<Config, (usize, usize, String)> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(yaml, yaml_options(), |yaml| {
        serde_path_to_error::deserialize(yaml).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    let error = match result {
        Ok(config) => return Ok(config),
        Err(error) => error,
    };
    // serde_path_to_error spells the top level `.`, and a key not yet read `?`.
    let path = path.trim_end_matches('?').trim_end_matches('.');
    let own = error.location().filter(|l| l.line() > 0).map(|l| (l.line() as usize, l.column() as usize));
    let (line, column) = match (error.without_snippet(), own) {
        // A missing field is a mistake of its mapping: point at the mapping, as validation does
        // for the fields it checks.
        (serde_saphyr::Error::SerdeMissingField { .. }, _) | (_, None) => {
            locate::Positions::of(yaml).locate(path).or(own).unwrap_or((0, 0))
        }
        (_, Some(position)) => position,
    };
    let message = message(&error, yaml);
    let message = if path.is_empty() { message } else { format!("{path}: {message}") };
    // One line, whatever the file holds: control characters (line breaks, escapes) are shown
    // escaped.
    let mut one_line = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            one_line.extend(c.escape_debug());
        } else {
            one_line.push(c);
        }
    }
    Err((line, column, one_line))
}

/// The parser's message, with the offending text where it names only what was expected.
fn message(error: &serde_saphyr::Error, yaml: &str) -> String {
    let found = error.location().and_then(|location| source_at(yaml, location));
    match (error.without_snippet(), found) {
        (serde_saphyr::Error::InvalidScalar { ty, .. }, Some(found)) => {
            format!("invalid value `{found}`, expected {ty}")
        }
        // The parser's own wording names its options.
        (serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. }, _) => {
            format!("duplicate field `{key}`")
        }
        (serde_saphyr::Error::MultipleDocuments { .. }, _) => {
            "a second YAML document; a configuration file holds one".to_owned()
        }
        (serde_saphyr::Error::Unexpected { expected, .. }, Some(found)) => {
            let expected = match *expected {
                "sequence start" => "a list",
                "mapping start" => "a mapping",
                other => other,
            };
            format!("expected {expected}, found `{found}`")
        }
        _ => DefaultMessageFormatter.format_message(error).into_owned(),
    }
}

/// The source text an error points at: its span, or the rest of its line when the span is
/// empty; at most 40 characters.
fn source_at(yaml: &str, location: serde_saphyr::Location) -> Option<&str> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let rest = yaml.get(start..)?;
    let text = if len > 0 { rest.get(..len)? } else { rest.lines().next()? };
    let text = text.trim();
    let end = text.char_indices().nth(40).map_or(text.len(), |(at, _)| at);
    Some(&text[..end]).filter(|t| !t.is_empty())
}

impl Config {
    /// Parses and validates YAML. `source_name` names the input in errors (a path or "built-in").
    pub fn from_yaml(yaml: &str, source_name: &str) -> Result<Config> {
        let config = deserialize(yaml).map_err(|(line, column, message)| Error::Parse {
            source_name: source_name.to_owned(),
            line,
            column,
            message,
        })?;
        let mut problems = validate::problems(&config);
        let positions = locate::Positions::of(yaml);
        for problem in &mut problems {
            (problem.line, problem.column) = positions.locate(&problem.path).unwrap_or((1, 1));
        }
        // In file order, as a reader goes through the file.
        problems.sort_by(|a, b| (a.line, a.column, &a.path).cmp(&(b.line, b.column, &b.path)));
        if !problems.is_empty() {
            return Err(Error::Invalid { source_name: source_name.to_owned(), problems });
        }
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let source_name = path.display().to_string();
        let yaml = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { source_name: source_name.clone(), source })?;
        Config::from_yaml(&yaml, &source_name)
    }

    /// Validates a configuration built or changed in code (command-line overrides, a
    /// provider's translation): the same rules as for a file, without positions.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        self.validate_since(source_name, None)
    }

    /// [`Config::validate`], knowing that `valid` (an earlier configuration) validated: what is
    /// equal to it is checked only against what changed around it, with the same result.
    pub fn validate_since(&self, source_name: &str, valid: Option<&Config>) -> Result<()> {
        let problems = validate::problems_since(self, valid);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid { source_name: source_name.to_owned(), problems })
        }
    }

    /// The JSON Schema of the configuration file, derived from the model (field names as
    /// written, unknown fields refused, defaults and descriptions from the types). Draft 7,
    /// which editors' YAML language servers read (`sluice schema` prints it).
    pub fn json_schema() -> serde_json::Value {
        let mut schema =
            schemars::generate::SchemaSettings::draft07().into_generator().into_root_schema_for::<Config>();
        schema.insert("title".into(), "Sluice configuration".into());
        schema.to_value()
    }

    pub fn builtin() -> Config {
        Config::from_yaml(DEFAULT_CONFIG_YAML, "built-in").expect("the built-in configuration is valid")
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map(usize::from).unwrap_or(1)
        } else {
            self.workers
        }
    }

    /// The own port of `worker` for listener `listener` when XDP steers: listeners take
    /// consecutive blocks of `worker_count` ports from `xdp.worker_port_base`.
    pub fn worker_port(&self, listener: usize, worker: usize) -> u16 {
        self.xdp.worker_port_base + (listener * self.worker_count() + worker) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<Problem> {
        match Config::from_yaml(yaml, "t.yaml") {
            Err(Error::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    /// Validating against an earlier valid configuration finds exactly what a full validation
    /// finds, whatever changed: a backend that unchanged hosts name is gone, a new host claims
    /// their domains first, a host or backend is changed into an invalid one, a name repeats.
    #[test]
    fn validation_since_a_valid_configuration_equals_a_full_one() {
        let valid = Config::from_yaml(
            "listeners: [{name: web, address: \"0.0.0.0:80\"}]
backends:
  - {name: b0, endpoints: [{address: \"10.0.0.1:80\"}]}
  - {name: b1, endpoints: [{address: \"10.0.0.2:80\"}]}
virtual_hosts:
  - {name: a, domains: [a.test], routes: [{backend: b0}]}
  - name: b
    domains: [b.test, \"*.b.test\"]
    error_pages: {statuses: [503], backend: b1}
    routes:
      - {backend: b1, mirrors: [{backend: b0}], error_pages: {statuses: [502], backend: b1}}
      - {backend: b0, match: {path: {prefix: /x}}}
  - {name: c, domains: [\"*\"], routes: [{redirect: {scheme: https, code: 301}}]}
",
            "t.yaml",
        )
        .unwrap();
        type Change = fn(&mut Config);
        let changes: [(&str, Change); 5] = [
            ("a backend named by unchanged hosts is gone", |c| c.backends.retain(|b| b.name != "b1")),
            ("a new first host claims their domains", |c| {
                let mut first = std::sync::Arc::clone(&c.virtual_hosts[1]);
                let first_mut = std::sync::Arc::make_mut(&mut first);
                first_mut.name = "new".into();
                first_mut.domains.push("A.test".into());
                c.virtual_hosts.insert(0, first);
            }),
            ("a host made invalid", |c| {
                let host = std::sync::Arc::make_mut(&mut c.virtual_hosts[0]);
                std::sync::Arc::make_mut(&mut host.routes[0]).matcher.path =
                    Some(PathMatch::Regex("(".into()))
            }),
            ("a backend made invalid", |c| {
                std::sync::Arc::make_mut(&mut c.backends[0]).endpoints[0].weight = 20_000
            }),
            ("a name repeats", |c| {
                let again = c.virtual_hosts[2].clone();
                c.virtual_hosts.push(again);
                let again = c.backends[0].clone();
                c.backends.push(again);
            }),
        ];
        for (what, change) in changes {
            let mut config = valid.clone();
            change(&mut config);
            let full = validate::problems(&config);
            assert!(!full.is_empty(), "{what}");
            assert_eq!(validate::problems_since(&config, Some(&valid)), full, "{what}");
        }
        assert!(validate::problems_since(&valid, Some(&valid)).is_empty());
    }

    #[test]
    fn builtin_config_parses() {
        let config = Config::builtin();
        assert_eq!(config.listeners[0].address.port(), 8080);
        assert!(config.xdp.enabled);
    }

    #[test]
    fn unknown_field_is_an_error_with_position() {
        let err = Config::from_yaml("listeners: []\nlisten_port: 3\n", "t.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("t.yaml:2:"), "{text}");
        assert!(text.contains("listen_port"), "{text}");
    }

    #[test]
    fn a_parse_error_is_one_line_whatever_the_file_holds() {
        let err = Config::from_yaml("listeners: []\n\"a\\nb\\u001b[31m\": 1\n", "t.yaml").unwrap_err();
        let text = err.to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("t.yaml:2:1: ") && text.contains("a\\nb\\u{1b}[31m"), "{text}");
    }

    #[test]
    fn bad_address_is_an_error() {
        let err = Config::from_yaml("listeners: [{name: a, address: nowhere}]\n", "t.yaml").unwrap_err();
        assert!(matches!(err, Error::Parse { line: 1, .. }), "{err}");
    }

    #[test]
    fn worker_port_blocks_follow_listeners() {
        let config = Config::from_yaml(
            "workers: 3\nlisteners: [{name: a, address: '0.0.0.0:80'}, {name: b, address: '0.0.0.0:81'}]\n",
            "t",
        )
        .unwrap();
        assert_eq!(config.worker_port(0, 0), 20000);
        assert_eq!(config.worker_port(1, 2), 20005);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let found = problems(
            "listeners: [{name: a, address: '0.0.0.0:0'}]\nxdp: {interfaces: ['a/b'], heartbeat_timeout_ms: 1}\n",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        // In file order.
        assert_eq!(paths, ["listeners[0].address", "xdp.interfaces[0]", "xdp.heartbeat_timeout_ms"]);
        let positions: Vec<(usize, usize)> = found.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(positions, [(1, 23), (2, 20), (2, 28)]);
    }

    #[test]
    fn rate_limits_are_bounded_and_their_statuses_are_errors() {
        let found = problems(
            "listeners: [{name: a, address: '0.0.0.0:80'}]
limits: {rate_limit_status: 200, connection_limit_status: 600}
backends: [{name: b, endpoints: [{address: '127.0.0.1:1'}]}]
virtual_hosts:
  - name: h
    domains: [h]
    rate_limit: {rps: 1000001, burst_multiplier: 1001}
    routes: [{backend: b, rate_limit: {rpm: 60000001, allowlist: ['10.0.0.0/8']}}]
",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "limits.rate_limit_status",
                "limits.connection_limit_status",
                "virtual_hosts[0].rate_limit.rps",
                "virtual_hosts[0].rate_limit.burst_multiplier",
                "virtual_hosts[0].routes[0].rate_limit.rpm",
            ]
        );
        let err = Config::from_yaml(
            "listeners: []
virtual_hosts: [{name: h, domains: [h], rate_limit: {rps: 1, allowlist: ['10.0.0.0/33']}}]
",
            "t.yaml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("prefix length"), "{err}");
    }

    #[test]
    fn xdp_guard_networks_and_rate_limits_are_checked() {
        let config = Config::from_yaml(
            "listeners: [{name: a, address: '0.0.0.0:80'}]
xdp:
  guard:
    deny: [10.1.2.3/8, '2001:db8::/32']
    allow: [192.0.2.7]
    syn_rate_limit: {per_second: 100, burst: 20}
",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(config.xdp.guard.deny.len(), 2);
        assert_eq!(config.xdp.guard.syn_rate_limit, Some(GuardRateLimit { per_second: 100, burst: 20 }));
        assert!(!config.xdp.differs_at_start(&Config::builtin().xdp), "only the guard differs");
        let err = Config::from_yaml(
            "listeners: [{name: a, address: '0.0.0.0:80'}]\nxdp:\n  guard:\n    deny: [10.0.0.0/8, 10.0.0.0/33]\n",
            "t.yaml",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("t.yaml:4:") && text.contains("10.0.0.0/33") && text.contains("prefix length"),
            "{text}"
        );
        let err = Config::from_yaml(
            "listeners: [{name: a, address: '0.0.0.0:80'}]\nxdp: {guard: {allow: [eviltwin.example]}}\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("`eviltwin.example` is not an IP address or CIDR network"), "{err}");
        let found = problems(
            "listeners: [{name: a, address: '0.0.0.0:80'}]
xdp: {guard: {syn_rate_limit: {per_second: 0, burst: 1}, udp_rate_limit: {per_second: 1, burst: 0}}}
",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["xdp.guard.syn_rate_limit.per_second", "xdp.guard.udp_rate_limit.burst"]);
    }

    #[test]
    fn l4_services_parse_with_defaults_and_bad_values_are_named() {
        let config = Config::from_yaml(
            "listeners: [{name: a, address: '0.0.0.0:80'}]
l4_services:
  - name: db
    address: 198.18.0.2:5432
    endpoints: [198.18.1.2:5432, 198.18.2.2:5432]
  - name: dns
    address: 198.18.0.2:53
    protocol: udp
    endpoints: [198.18.1.2:53]
    health_check: {interval_ms: 200, timeout_ms: 100, udp_send: ping, udp_expect: pong}
    on_endpoint_removal: reset
",
            "t.yaml",
        )
        .unwrap();
        let [db, dns] = &config.l4_services[..] else { panic!("two services") };
        assert_eq!((db.protocol, db.on_endpoint_removal), (L4Protocol::Tcp, L4Removal::Drain));
        assert_eq!(db.idle_timeout(), std::time::Duration::from_secs(3600));
        assert_eq!(db.health_check, L4HealthCheck::default());
        assert_eq!((dns.protocol, dns.on_endpoint_removal), (L4Protocol::Udp, L4Removal::Reset));
        assert_eq!(dns.idle_timeout(), std::time::Duration::from_secs(30));
        assert_eq!(dns.health_check.udp_send.as_deref(), Some("ping"));

        let err = Config::from_yaml(
            "listeners: [{name: a, address: '0.0.0.0:80'}]\nl4_services: [{name: x, address: 1.2.3.4:5, protocol: sctp, endpoints: []}]\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("sctp") && err.to_string().starts_with("t.yaml:2:"), "{err}");
        let found = problems(
            "listeners: [{name: a, address: '0.0.0.0:80'}]
l4_services:
  - {name: a, address: '0.0.0.0:80', endpoints: []}
  - name: b
    address: 198.18.0.2:53
    protocol: udp
    endpoints: ['[2001:db8::1]:53', 198.18.1.2:53, 198.18.1.2:53, 198.18.1.3:0]
    health_check: {interval_ms: 10, timeout_ms: 5, udp_expect: x}
    idle_timeout_ms: 1
    proxy_protocol: v2
  - {name: a, address: 198.18.0.2:53, protocol: udp, endpoints: [198.18.1.2:53], health_check: {udp_send: x}}
",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "l4_services[0].address",
                "l4_services[0].endpoints",
                "l4_services[1].endpoints[0]",
                "l4_services[1].endpoints[2]",
                "l4_services[1].endpoints[3]",
                "l4_services[1].health_check.interval_ms",
                "l4_services[1].health_check.timeout_ms",
                "l4_services[1].health_check.udp_expect",
                "l4_services[1].idle_timeout_ms",
                "l4_services[1].proxy_protocol",
                "l4_services[2].name",
                "l4_services[2].address",
            ],
            "{found:?}"
        );
        assert!(found[0].message.contains("also the address of listener \"a\""), "{found:?}");
        assert!(found[11].message.contains("already used by l4_services[1]"), "{found:?}");
    }

    #[test]
    fn an_l4_service_in_xdp_may_not_use_the_node_ports_xdp_takes_for_its_flows() {
        let yaml = |xdp: &str, service_xdp: &str| {
            format!(
                "listeners: [{{name: a, address: '0.0.0.0:80'}}]\nxdp: {{enabled: {xdp}}}\n\
                 l4_services: [{{name: s, address: '198.18.0.2:61000', endpoints: [198.18.1.2:61000]{service_xdp}}}]\n"
            )
        };
        let found = problems(&yaml("true", ""));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "l4_services[0].address");
        assert!(
            found[0].message.contains("61000..=65535") && found[0].message.contains("xdp: false"),
            "{found:?}"
        );
        assert!(Config::from_yaml(&yaml("true", ", xdp: false"), "t.yaml").is_ok(), "served in user space");
        assert!(Config::from_yaml(&yaml("false", ""), "t.yaml").is_ok(), "no kernel path");
    }

    #[test]
    fn error_pages_need_error_statuses_a_known_backend_and_sendable_fields() {
        let found = problems(
            "listeners: [{name: a, address: '0.0.0.0:80'}]
backends: [{name: b, endpoints: [{address: '127.0.0.1:1'}]}]
virtual_hosts:
  - name: h
    domains: [h]
    error_pages: {statuses: [], backend: b}
    routes:
      - backend: b
        error_pages: {statuses: [503, 302], backend: nope, headers: [{name: Connection, value: x}]}
",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "virtual_hosts[0].error_pages.statuses",
                "virtual_hosts[0].routes[0].error_pages.statuses[1]",
                "virtual_hosts[0].routes[0].error_pages.backend",
                "virtual_hosts[0].routes[0].error_pages.headers[0].name",
            ]
        );
    }
}

#[cfg(test)]
mod schema {
    use serde_json::Value;

    use super::*;

    /// Every mapping in the schema, with where it is.
    fn objects<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(map) => {
                if map.contains_key("properties") {
                    out.push((at.clone(), value));
                }
                for (key, child) in map {
                    objects(child, format!("{at}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    objects(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_schema_names_the_top_level_fields_the_loader_accepts() {
        let schema = Config::json_schema();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        let mut in_schema: Vec<&str> =
            schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let refused = Config::from_yaml("nonsense: 1\n", "t").unwrap_err().to_string();
        let (_, accepted) = refused.split_once("expected one of ").expect(&refused);
        let mut accepted: Vec<&str> = accepted.split(", ").collect();
        in_schema.sort_unstable();
        accepted.sort_unstable();
        assert_eq!(in_schema, accepted);
        assert_eq!(schema["required"], serde_json::json!(["listeners"]));
    }

    #[test]
    fn the_schema_refuses_unknown_fields_everywhere_and_spells_fields_as_yaml_does() {
        let schema = Config::json_schema();
        let mut found = Vec::new();
        objects(&schema, String::new(), &mut found);
        assert!(found.len() > 25, "only {} mappings", found.len());
        for (at, object) in found {
            assert_eq!(object["additionalProperties"], false, "{at} accepts unknown fields");
        }
        let definitions = &schema["definitions"];
        assert!(definitions["RouteConfig"]["properties"].get("match").is_some(), "serde's rename");
        assert_eq!(
            definitions["SameSite"]["enum"],
            serde_json::json!(["Lax", "lax", "Strict", "strict", "None", "none"])
        );
        // One-key choices: a mapping with exactly one of the keys.
        let path_match: Vec<&str> = definitions["PathMatch"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|choice| choice["required"][0].as_str().unwrap())
            .collect();
        assert_eq!(path_match, ["exact", "prefix", "regex"]);
    }
}

#[cfg(test)]
mod rendering {
    use super::*;

    #[test]
    fn invalid_files_render_one_line_per_problem_with_line_and_column() {
        let yaml = "listeners:\n  - name: a\n    address: '0.0.0.0:80'\nvirtual_hosts:\n  - name: v\n    domains: ['*']\n    routes:\n      - backend: missing\n";
        let text = Config::from_yaml(yaml, "f.yaml").unwrap_err().to_string();
        assert_eq!(text, "f.yaml:8:9: virtual_hosts[0].routes[0].backend: no backend named \"missing\"");
    }
}
