//! The example configurations against the real `sluice check` and the library that backs it.
//!
//! - Every `examples/*.yaml` passes `sluice check` (exit 0, `FILE: ok`), loads with
//!   `Config::from_file`, has the shape its comments describe and compiles into a serving
//!   snapshot; `routing.yaml` routes the way its comments say.
//! - Every `examples/broken/*.yaml` fails `sluice check` with exit 1 and exactly one problem,
//!   reported as `FILE:LINE:COLUMN: ...`; its first line says which:
//!   `# expect: LINE:COLUMN: <substring of the message>`.
//! - Every complete configuration in docs/CONFIG.md (a `yaml` block with top-level
//!   `listeners:` and `backends:`) is valid.
//! - `sluice schema` prints the JSON Schema the library derives from the model.
//!
//! Needs no root: nothing is bound or loaded. Needs the binary: `cargo build -p lb-userspace`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use lb_userspace::{
    config::{
        AffinityMode, AttachMode, BackendProtocol, Balance, Config, Error as ConfigError, HashOn,
        HealthCheckConfig, Limits, OutlierConfig, PathMatch, RetryConfig, Timeouts,
    },
    proxy::{
        route::{RouteAction, RouteTable},
        snapshot::Snapshot,
        upstream::endpoint::EndpointRegistry,
    },
};

#[test]
fn good_examples_pass_sluice_check() {
    let files = yaml_files("examples");
    for required in ["minimal.yaml", "routing.yaml", "backends.yaml", "xdp.yaml"] {
        assert!(
            files.iter().any(|f| f.file_name().is_some_and(|n| n == required)),
            "examples/{required} is missing"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        let output = sluice_check(file);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = format!("{}: ok\n", file.display());
        if !output.status.success() || stdout != expected || !stderr.is_empty() {
            failures.push(format!(
                "{}: {}\nstdout: {stdout}\nstderr: {stderr}",
                file.display(),
                output.status
            ));
        }
    }
    report(failures);
}

/// `# expect: LINE:COLUMN: substring` on the first line of a broken example.
struct Expectation {
    line: usize,
    column: usize,
    substring: String,
}

fn expectation(file: &Path) -> Result<Expectation, String> {
    let text = std::fs::read_to_string(root().join(file)).map_err(|e| format!("cannot read: {e}"))?;
    let first = text.lines().next().unwrap_or("");
    let malformed = || format!("line 1 is not `# expect: LINE:COLUMN: <substring>`: {first:?}");
    let rest = first.strip_prefix("# expect: ").ok_or_else(malformed)?;
    let mut parts = rest.splitn(3, ':');
    let mut number = || parts.next().and_then(|n| n.trim().parse::<usize>().ok()).ok_or_else(malformed);
    let (line, column) = (number()?, number()?);
    let substring = parts.next().map(str::trim).filter(|s| !s.is_empty()).ok_or_else(malformed)?;
    Ok(Expectation { line, column, substring: substring.to_owned() })
}

#[test]
fn broken_examples_fail_with_their_expected_first_error() {
    let files = yaml_files("examples/broken");
    assert!(files.len() >= 15, "only {} broken examples", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let expect = match expectation(file) {
            Ok(expect) => expect,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let output = sluice_check(file);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or("");
        let prefix = format!("{name}:{}:{}: ", expect.line, expect.column);
        let mut wrong = Vec::new();
        if output.status.code() != Some(1) {
            wrong.push(format!("exit status {} instead of 1", output.status));
        }
        if !stdout.is_empty() {
            wrong.push(format!("stdout is not empty: {stdout:?}"));
        }
        if !first.starts_with(&prefix) {
            wrong.push(format!("the first error does not start with {prefix:?}"));
        }
        if !first.contains(&expect.substring) {
            wrong.push(format!("the first error does not contain {:?}", expect.substring));
        }
        // One mistake, one problem. (A message may continue on further lines, as a regex
        // parser's caret diagram does; only lines that start with the file name are problems.)
        let problems = stderr.lines().filter(|l| l.starts_with(&format!("{name}:"))).count();
        if problems != 1 {
            wrong.push(format!("{problems} problems reported instead of exactly 1"));
        }
        // The library reports the same first line (with the absolute path it was given).
        let library = Config::from_file(&root().join(file)).map(|_| ()).map_err(|e| e.to_string());
        let absolute = format!("{}:{}:{}: ", root().join(file).display(), expect.line, expect.column);
        match &library {
            Ok(()) => wrong.push("Config::from_file accepts it".to_owned()),
            Err(e) if !e.starts_with(&absolute) => {
                wrong.push(format!("Config::from_file reports another position: {e}"))
            }
            Err(_) => {}
        }
        if !wrong.is_empty() {
            failures.push(format!("{name}:\n  {}\n  stderr: {stderr}", wrong.join("\n  ")));
        }
    }
    report(failures);
}

/// The counts a good example promises; a new example needs a row here.
struct Shape {
    file: &'static str,
    listeners: usize,
    virtual_hosts: usize,
    routes: usize,
    backends: usize,
}

const SHAPES: &[Shape] = &[
    Shape { file: "minimal.yaml", listeners: 1, virtual_hosts: 1, routes: 1, backends: 1 },
    Shape { file: "routing.yaml", listeners: 1, virtual_hosts: 4, routes: 12, backends: 5 },
    Shape { file: "backends.yaml", listeners: 1, virtual_hosts: 1, routes: 9, backends: 9 },
    Shape { file: "xdp.yaml", listeners: 3, virtual_hosts: 2, routes: 2, backends: 2 },
    Shape { file: "complete.yaml", listeners: 2, virtual_hosts: 2, routes: 4, backends: 2 },
];

#[test]
fn good_examples_load_with_the_shape_they_describe() {
    let files = yaml_files("examples");
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(shape) = SHAPES.iter().find(|s| s.file == name) else {
            failures.push(format!("{}: no row in SHAPES; add one", file.display()));
            continue;
        };
        let config = load(file);
        let routes: usize = config.virtual_hosts.iter().map(|h| h.routes.len()).sum();
        let found = (config.listeners.len(), config.virtual_hosts.len(), routes, config.backends.len());
        let expected = (shape.listeners, shape.virtual_hosts, shape.routes, shape.backends);
        if found != expected {
            failures.push(format!(
                "{}: (listeners, virtual hosts, routes, backends) = {found:?}, expected {expected:?}",
                file.display()
            ));
        }
        // Whatever validation accepts must compile into a serving snapshot.
        if let Err(e) = Snapshot::build(&config, &EndpointRegistry::default(), 1) {
            failures.push(format!("{}: does not compile: {e}", file.display()));
        }
        // Only loopback and 198.18.0.0/15 (benchmarking) addresses in the examples.
        let addresses = config
            .listeners
            .iter()
            .map(|l| l.address)
            .chain(config.backends.iter().flat_map(|b| b.endpoints.iter().map(|e| e.address)));
        for address in addresses {
            let allowed = match address.ip() {
                std::net::IpAddr::V4(ip) => {
                    ip.is_loopback() || (ip.octets()[0] == 198 && (ip.octets()[1] & 0xfe) == 18)
                }
                std::net::IpAddr::V6(ip) => ip.is_loopback(),
            };
            if !allowed {
                failures.push(format!("{}: {address} is not loopback or 198.18.0.0/15", file.display()));
            }
        }
    }
    for shape in SHAPES {
        if !files.iter().any(|f| f.file_name().is_some_and(|n| n == shape.file)) {
            failures.push(format!("examples/{} is listed in SHAPES but missing", shape.file));
        }
    }
    report(failures);
}

#[test]
fn minimal_example_sends_everything_to_its_one_backend() {
    let config = load(Path::new("examples/minimal.yaml"));
    assert_eq!(config.workers, 0);
    assert_eq!(config.busy_poll_us, 0);
    assert!(config.xdp.enabled, "XDP defaults to on");
    assert_eq!(config.limits, Limits::default());
    let table = RouteTable::build(&config).unwrap();
    for (host, path) in [("example.com", "/"), ("anything", "/a/b?c"), ("", "/x")] {
        let route = table.find(0, host, &Method::GET, path, None, &HeaderMap::new()).expect("a route");
        assert!(matches!(route.action, RouteAction::Backend(0)), "{host} {path}");
        assert_eq!(route.name, "default/0");
    }
}

#[test]
fn complete_example_spells_out_the_defaults() {
    let config = load(Path::new("examples/complete.yaml"));
    assert_eq!(config.workers, 0);
    assert_eq!(config.busy_poll_us, 0);
    assert!(!config.worker_id_header);
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.xdp.mode, AttachMode::Auto);
    assert_eq!(config.xdp.worker_port_base, 20000);
    assert_eq!(config.xdp.heartbeat_timeout_ms, 300);
    let app = &config.backends[0];
    assert_eq!(app.protocol, BackendProtocol::Http1);
    assert_eq!(app.balance, Balance::RoundRobin);
    assert_eq!(app.health_check, Some(HealthCheckConfig::default()));
    assert_eq!(app.outlier, OutlierConfig::default());
    assert_eq!(app.timeouts, Timeouts::default());
    assert_eq!(app.retries, RetryConfig::default());
    assert_eq!(app.max_connections_per_endpoint, 1024);
    assert!(app.endpoints.iter().all(|e| e.weight == 1 && e.ready));
    assert_eq!(config.backends[1].hash_on, Some(HashOn::Cookie("session".into())));
    let legacy = &config.virtual_hosts[0].routes[1];
    assert_eq!(legacy.redirect.as_ref().map(|r| r.code), Some(301));
}

#[test]
fn backends_example_covers_every_balance_mode_and_hash_key() {
    let config = load(Path::new("examples/backends.yaml"));
    let backend = |name: &str| {
        config.backends.iter().find(|b| b.name == name).unwrap_or_else(|| panic!("no backend {name}"))
    };
    for balance in [Balance::RoundRobin, Balance::LeastRequest, Balance::Ewma, Balance::Hash] {
        assert!(config.backends.iter().any(|b| b.balance == balance), "no backend with {balance:?}");
    }
    assert_eq!(backend("cart").hash_on, Some(HashOn::Header("x-user-id".into())));
    assert_eq!(backend("session").hash_on, Some(HashOn::Cookie("session".into())));
    assert_eq!(backend("pinned").hash_on, Some(HashOn::ClientIp));
    assert_eq!(backend("catalog").hash_on, Some(HashOn::Template("$uri".into())));
    let affinity = backend("shop").cookie_affinity.as_ref().expect("shop has cookie affinity");
    assert_eq!((affinity.name.as_str(), affinity.mode), ("SHOPID", AffinityMode::Balanced));
    assert!(config.affinity_key.is_some());
    let grpc = backend("inventory-grpc");
    assert_eq!(grpc.protocol, BackendProtocol::H2c);
    assert_eq!(
        grpc.retries,
        RetryConfig { attempts: 1, budget_percent: 10, min_retries_per_second: 5, ..RetryConfig::default() }
    );
    let web = backend("web");
    assert_eq!(web.health_check, Some(HealthCheckConfig::default()), "`health_check: {{}}` is all defaults");
    assert_eq!(
        web.endpoints.iter().map(|e| (e.weight, e.ready)).collect::<Vec<_>>(),
        [(1, true), (3, true), (1, false)]
    );
    assert_eq!(backend("search").outlier.consecutive_failures, 3);
    assert_eq!(backend("reports").outlier.consecutive_failures, 0);
    assert_eq!(backend("reports").timeouts.request_ms, 120_000);
    // Every backend is reachable through a route.
    let table = RouteTable::build(&config).unwrap();
    let mut used: Vec<usize> = table
        .routes()
        .filter_map(|r| match r.action {
            RouteAction::Backend(i) => Some(i),
            RouteAction::Redirect(_) | RouteAction::Respond(_) => None,
        })
        .collect();
    used.sort();
    used.dedup();
    assert_eq!(used, (0..config.backends.len()).collect::<Vec<_>>());
}

#[test]
fn xdp_example_gives_each_listener_its_block_of_worker_ports() {
    let config = load(Path::new("examples/xdp.yaml"));
    assert!(config.xdp.enabled);
    assert_eq!(config.xdp.interfaces, ["eth0", "eth1"]);
    assert_eq!(config.xdp.mode, AttachMode::Driver);
    assert_eq!(config.xdp.heartbeat_timeout_ms, 500);
    assert_eq!(config.worker_count(), 4);
    assert!(config.worker_id_header);
    // As the file's comments say: 30000..30003, 30004..30007, 30008..30011.
    assert_eq!(config.worker_port(0, 0), 30000);
    assert_eq!(config.worker_port(1, 0), 30004);
    assert_eq!(config.worker_port(2, 3), 30011);
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

#[test]
fn routing_example_routes_as_its_comments_say() {
    let config = load(Path::new("examples/routing.yaml"));
    let table = RouteTable::build(&config).unwrap();
    let backend_name = |index: usize| config.backends[index].name.as_str();

    // `METHOD HOST PATH [NAME=VALUE ...] -> ROUTE BACKEND UPSTREAM-PATH`
    let proxied = [
        "GET api.example.com /healthz -> api-health api-v2 /healthz",
        "GET API.EXAMPLE.ORG:8080 /v1/users?id=7 -> api-v1 api-v1 /legacy/users?id=7",
        "GET api.example.com /v1 -> api-v1 api-v1 /legacy",
        "POST api.example.com /v1/users x-canary=1 -> api-v1-canary api-v2 /legacy/users",
        "GET api.example.com /v1/users x-canary=1 -> api-v1 api-v1 /legacy/users",
        "GET api.example.com /v3/users -> api-v2-plus api-v2 /users",
        "POST api.example.com /upload/a content-type=multipart/form-data;b=x authorization=t \
         -> api-upload api-v2 /upload/a",
        "GET www.example.com /.well-known/acme-challenge/t -> acme acme /.well-known/acme-challenge/t",
        "GET a.b.example.com /static/app.js -> default/1 web /app.js",
        "GET other.org /page -> default/2 web /page",
        "GET other.org /page cookie=s=1 -> default/3 web-session /page",
    ];
    for row in proxied {
        let (request, expected) = row.split_once(" -> ").unwrap();
        let request: Vec<&str> = request.split_whitespace().collect();
        let expected: Vec<&str> = expected.split_whitespace().collect();
        let [method, host, path, header_pairs @ ..] = request.as_slice() else { panic!("bad row {row}") };
        let [route_name, backend, upstream] = expected.as_slice() else { panic!("bad row {row}") };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let pairs: Vec<(&str, &str)> = header_pairs.iter().map(|p| p.split_once('=').unwrap()).collect();
        let route_path = path.split('?').next().unwrap();
        let route = table
            .find(0, host, &method, route_path, None, &headers(&pairs))
            .unwrap_or_else(|| panic!("{row}: no route"));
        assert_eq!(route.name, *route_name, "{row}");
        match route.action {
            RouteAction::Backend(index) => assert_eq!(backend_name(index), *backend, "{row}"),
            RouteAction::Redirect(_) | RouteAction::Respond(_) => panic!("{row}: not proxied"),
        }
        assert_eq!(route.rewrite_path_and_query(path), *upstream, "{row}");
    }

    // `HOST PATH -> ROUTE STATUS LOCATION`, for a plain-HTTP GET.
    let redirected = [
        "www.example.com:8080 /cart?x=1 -> to-https 308 https://www.example.com/cart?x=1",
        "old.example.net /any/page -> moved/0 301 http://www.example.net/moved.html",
        "other.org:8080 / -> default/0 302 http://other.org:8080/start",
    ];
    for row in redirected {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let [host, path, "->", route_name, status, location] = fields.as_slice() else {
            panic!("bad row {row}")
        };
        let route =
            table.find(0, host, &Method::GET, path.split('?').next().unwrap(), None, &HeaderMap::new());
        let route = route.unwrap_or_else(|| panic!("{row}: no route"));
        assert_eq!(route.name, *route_name, "{row}");
        let RouteAction::Redirect(redirect) = &route.action else { panic!("{row}: not a redirect") };
        assert_eq!(redirect.status(), StatusCode::from_bytes(status.as_bytes()).unwrap(), "{row}");
        assert_eq!(redirect.location("http", host, &route.rewrite_path_and_query(path)), *location, "{row}");
    }

    // Misses inside a chosen virtual host are 404s, not a fall-through to the default one.
    for (host, method, path) in [
        ("api.example.com", Method::GET, "/v1beta"),
        ("api.example.com", Method::GET, "/healthz/live"),
        ("api.example.com", Method::GET, "/x/v2/users"),
        ("api.example.com", Method::GET, "/upload/a"),
    ] {
        assert!(
            table.find(0, host, &method, path, None, &HeaderMap::new()).is_none(),
            "{method} {host}{path}"
        );
    }

    // The kinds of path match the file demonstrates.
    let paths: Vec<&PathMatch> =
        config.virtual_hosts.iter().flat_map(|h| &h.routes).filter_map(|r| r.matcher.path.as_ref()).collect();
    assert!(paths.iter().any(|p| matches!(p, PathMatch::Exact(_))));
    assert!(paths.iter().any(|p| matches!(p, PathMatch::Prefix(_))));
    assert!(paths.iter().any(|p| matches!(p, PathMatch::Regex(_))));
}

/// `sluice schema` prints the JSON Schema the library derives from the model, for editors.
#[test]
fn sluice_schema_prints_the_models_json_schema() {
    let binary = lb_tests::sluice_binary().unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(&binary).arg("schema").output().expect("sluice schema runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the schema is JSON");
    assert_eq!(printed, Config::json_schema());
    assert_eq!(printed["title"], "Sluice configuration");
}

/// The schema describes what the loader reads: it accepts every good example, rejects every
/// broken one that the loader refuses while reading (unknown field, wrong type, bad variant,
/// missing field), and accepts the ones only validation refuses (it checks shapes, not rules).
#[test]
fn the_schema_accepts_what_the_loader_reads_and_rejects_what_it_refuses() {
    let schema = Config::json_schema();
    let mut failures = Vec::new();
    for file in yaml_files("examples").into_iter().chain(yaml_files("examples/broken")) {
        let text = std::fs::read_to_string(root().join(&file)).expect("readable");
        // Files that are not YAML at all (or repeat a key) say nothing about the schema.
        let Ok(document) = serde_saphyr::from_str::<serde_json::Value>(&text) else { continue };
        let refused_while_reading = matches!(Config::from_yaml(&text, "f"), Err(ConfigError::Parse { .. }));
        let schema_errors = schema_errors(&schema, &schema, &document, "");
        match (refused_while_reading, schema_errors.is_empty()) {
            (true, true) => failures.push(format!("{}: the schema accepts it", file.display())),
            (false, false) => failures.push(format!(
                "{}: the schema refuses it: {}",
                file.display(),
                schema_errors.join("; ")
            )),
            _ => {}
        }
    }
    report(failures);
}

/// The complete configurations in docs/CONFIG.md: fenced `yaml` blocks with top-level
/// `listeners:` and `backends:` (fragments of one section are not checked).
#[test]
fn complete_configurations_in_the_reference_are_valid() {
    let doc = std::fs::read_to_string(root().join("docs/CONFIG.md")).expect("docs/CONFIG.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    let has = |block: &str, key: &str| block.lines().any(|l| l.starts_with(key));
    let complete: Vec<&String> =
        blocks.iter().filter(|b| has(b, "listeners:") && has(b, "backends:")).collect();
    assert!(!complete.is_empty(), "docs/CONFIG.md has no complete example");
    for (i, block) in complete.iter().enumerate() {
        if let Err(e) = Config::from_yaml(block, &format!("CONFIG.md example {i}")) {
            panic!("a complete example in docs/CONFIG.md is invalid:\n{e}\n\n{block}");
        }
    }
}

/// Why `value` (at `at`) does not match `schema`: a validator for the part of JSON Schema
/// draft 7 that the derived schema uses (`$ref`, `allOf`, `anyOf`, `oneOf`, `type`, `enum`,
/// `const`, `properties`, `required`, `additionalProperties: false`, `items`, `minimum`,
/// `maximum`, `pattern`). Any other keyword fails the test, so the validator cannot silently skip one.
fn schema_errors(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
) -> Vec<String> {
    use serde_json::Value;
    let Value::Object(keywords) = schema else { panic!("{at}: schema {schema} is not an object") };
    let mut errors = Vec::new();
    for (keyword, argument) in keywords {
        match keyword.as_str() {
            "$schema" | "title" | "description" | "default" | "format" | "definitions" => {}
            "$ref" => {
                let name =
                    argument.as_str().and_then(|r| r.strip_prefix("#/definitions/")).expect("a local $ref");
                errors.extend(schema_errors(root, &root["definitions"][name], value, at));
            }
            "allOf" => {
                for part in argument.as_array().expect("allOf is a list") {
                    errors.extend(schema_errors(root, part, value, at));
                }
            }
            "anyOf" | "oneOf" => {
                let matching = argument
                    .as_array()
                    .expect("a list of alternatives")
                    .iter()
                    .filter(|alternative| schema_errors(root, alternative, value, at).is_empty())
                    .count();
                let fits = if keyword == "anyOf" { matching >= 1 } else { matching == 1 };
                if !fits {
                    errors.push(format!("{at}: {matching} alternatives of {keyword} match {value}"));
                }
            }
            "type" => {
                let types: Vec<&str> = match argument {
                    Value::String(t) => vec![t.as_str()],
                    other => {
                        other.as_array().expect("a type list").iter().filter_map(Value::as_str).collect()
                    }
                };
                let fits = |t: &&str| match *t {
                    "object" => value.is_object(),
                    "array" => value.is_array(),
                    "string" => value.is_string(),
                    "boolean" => value.is_boolean(),
                    "integer" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    "null" => value.is_null(),
                    other => panic!("{at}: unknown type {other}"),
                };
                if !types.iter().any(fits) {
                    errors.push(format!("{at}: {value} is not {types:?}"));
                }
            }
            "enum" if !argument.as_array().expect("enum is a list").contains(value) => {
                errors.push(format!("{at}: {value} is not one of {argument}"))
            }
            "const" if argument != value => errors.push(format!("{at}: {value} is not {argument}")),
            "enum" | "const" => {}
            "minimum" if value.as_f64().zip(argument.as_f64()).is_some_and(|(v, min)| v < min) => {
                errors.push(format!("{at}: {value} is below {argument}"))
            }
            "maximum" if value.as_f64().zip(argument.as_f64()).is_some_and(|(v, max)| v > max) => {
                errors.push(format!("{at}: {value} is above {argument}"))
            }
            "minimum" | "maximum" => {}
            "pattern" => {
                let pattern =
                    regex::Regex::new(argument.as_str().expect("a pattern")).expect("a valid pattern");
                if value.as_str().is_some_and(|text| !pattern.is_match(text)) {
                    errors.push(format!("{at}: {value} does not match {pattern}"));
                }
            }
            "properties" => {
                for (name, property) in argument.as_object().expect("properties") {
                    if let Some(field) = value.get(name) {
                        errors.extend(schema_errors(root, property, field, &format!("{at}.{name}")));
                    }
                }
            }
            "required" => {
                for name in argument.as_array().expect("required is a list").iter().filter_map(Value::as_str)
                {
                    if value.is_object() && value.get(name).is_none() {
                        errors.push(format!("{at}: missing {name}"));
                    }
                }
            }
            "additionalProperties" => {
                assert_eq!(argument, &Value::Bool(false), "{at}: only `additionalProperties: false` is used");
                let known = keywords.get("properties").and_then(Value::as_object);
                for name in value.as_object().into_iter().flat_map(|fields| fields.keys()) {
                    if !known.is_some_and(|known| known.contains_key(name)) {
                        errors.push(format!("{at}: unknown field {name}"));
                    }
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    errors.extend(schema_errors(root, argument, item, &format!("{at}[{i}]")));
                }
            }
            other => panic!("{at}: the schema uses `{other}`, which this validator does not know"),
        }
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The workspace root: examples and docs paths are relative to it, and `sluice check` runs in
/// it so that its messages name files the way a user would type them.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `.yaml` files directly in `dir` (relative to the root), sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| Path::new(dir).join(path.file_name().expect("a file name")))
        .collect();
    files.sort();
    files
}

fn sluice_check(file: &Path) -> Output {
    let binary = lb_tests::sluice_binary().unwrap_or_else(|e| panic!("{e}"));
    Command::new(&binary)
        .arg("check")
        .arg(file)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()))
}

fn load(file: &Path) -> Config {
    Config::from_file(&root().join(file)).unwrap_or_else(|e| panic!("{} does not load:\n{e}", file.display()))
}

/// Panics with every collected failure at once, so one run shows all broken files.
fn report(failures: Vec<String>) {
    assert!(failures.is_empty(), "{} failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}
