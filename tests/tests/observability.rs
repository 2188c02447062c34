//! Observability end to end, on a node serving real traffic: `/metrics` parses as OpenMetrics
//! text and its request, worker and (as root, with XDP attached in a namespace topology) XDP
//! counters move by exactly the traffic sent; the probes answer; `/api/v1/config` shows the
//! configuration but never key material; and the `/dashboard` page, loaded by a headless
//! Chromium (Debian's `chromium` package), shows the routes, the backends with their health and
//! a counter that moves after traffic. The screenshots are kept in `target/observability/`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lb_tests::{
    backend::Backend,
    http::{HttpResponse, http_get},
    netns::Netns,
    process::ChildGuard,
    require_root,
    topology::{NODE_CLIENT_IF, Topology},
    wait_for,
};
use lb_tests::{free_port, sluice::Proxy, temp_dir::TempDir};
use lb_userspace::{config::Config, node::Node};

#[test]
fn openmetrics_parser_accepts_good_text_and_refuses_bad() {
    let good = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                a_requests_total{host=\"h\",route=\"r \\\"q\\\"\"} 3\n\
                # TYPE a_up gauge\na_up 1\n\
                # TYPE a_d_seconds histogram\n# UNIT a_d_seconds seconds\n\
                a_d_seconds_bucket{le=\"+Inf\"} 2\na_d_seconds_count 2\na_d_seconds_sum 0.5\n# EOF\n";
    let parsed = Exposition::parse(good).unwrap();
    assert_eq!(parsed.get("a_requests_total", &[("host", "h"), ("route", "r \"q\"")]), Some(3.0));
    assert_eq!(parsed.get("a_up", &[]), Some(1.0));
    assert_eq!(parsed.get("a_d_seconds_bucket", &[("le", "+Inf")]), Some(2.0));
    assert_eq!(parsed.units.get("a_d_seconds").map(String::as_str), Some("seconds"));

    for (bad, why) in [
        ("# TYPE a gauge\na 1\n", "no # EOF"),
        ("# TYPE a gauge\na 1\n# EOF\nb 2\n", "text after # EOF"),
        ("# TYPE a counter\na_total{x=1} 1\n# EOF\n", "unquoted label value"),
        ("# TYPE a counter\na_total{x=\"1} 1\n# EOF\n", "unterminated label value"),
        ("# TYPE a counter\na_total{x=\"1\"} one\n# EOF\n", "non-numeric value"),
        ("# TYPE a counter\nb_total 1\n# EOF\n", "undescribed family"),
        ("# TYPE a counter\na 1\n# EOF\n", "counter sample without _total"),
        ("# TYPE a gauge\n\na 1\n# EOF\n", "empty line"),
        ("# TYPE a gauge\n# TYPE a gauge\na 1\n# EOF\n", "family described twice"),
    ] {
        assert!(Exposition::parse(bad).is_err(), "accepted ({why}): {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A node with an admin server, two backend groups and traffic helpers.

/// A running node: a `storefront` route to two live endpoints, a `legacy-api` route to a group
/// with a dead endpoint (failing its health checks) and one that is not ready.
struct Site {
    proxy: Proxy,
    admin: SocketAddr,
    live: Vec<Backend>,
    not_ready: Backend,
    dead: SocketAddr,
}

const STORE_ROUTE: &str = "storefront";
const LEGACY_ROUTE: &str = "legacy-api";
const VHOST: &str = "shop";

impl Site {
    /// `extra` is appended to the YAML (top-level keys).
    fn start(extra: &str) -> Site {
        let live: Vec<Backend> = (1..=2)
            .map(|i| Backend::start(None, "127.0.0.1:0".parse().unwrap(), &format!("shop-{i}")).unwrap())
            .collect();
        let not_ready = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "legacy-standby").unwrap();
        // Bound then released: nothing listens there, so its health checks fail.
        let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let yaml = format!(
            r#"workers: 2
listeners: [{{name: web, address: "{{listen}}"}}]
xdp: {{enabled: false}}
admin: {{address: "{admin}"}}
virtual_hosts:
  - name: {VHOST}
    domains: ["*"]
    routes:
      - {{name: {STORE_ROUTE}, match: {{path: {{prefix: /store}}}}, backend: shop-pool}}
      - {{name: {LEGACY_ROUTE}, match: {{path: {{prefix: /legacy}}}}, backend: legacy}}
backends:
  - name: shop-pool
    endpoints: [{{address: "{a}"}}, {{address: "{b}"}}]
  - name: legacy
    endpoints: [{{address: "{dead}"}}, {{address: "{standby}", ready: false}}]
    health_check: {{path: /, interval_ms: 200, timeout_ms: 200, healthy_threshold: 1, unhealthy_threshold: 1}}
{extra}"#,
            a = live[0].addr(),
            b = live[1].addr(),
            standby = not_ready.addr(),
        );
        let proxy = Proxy::start(&yaml);
        assert_eq!(proxy.node.admin_addr(), Some(admin), "the admin server runs on the configured address");
        Site { proxy, admin, live, not_ready, dead }
    }

    fn get(&self, path: &str) -> HttpResponse {
        admin_get(self.admin, path)
    }

    fn scrape(&self) -> Exposition {
        parse_scrape(&self.get("/metrics"))
    }

    /// Sends `count` requests on new connections; every one must get `status`.
    fn send(&self, path: &str, count: usize, status: u16) {
        for i in 0..count {
            let response = http_get(self.proxy.addr, &format!("{path}/{i}")).unwrap();
            assert_eq!(response.status, status, "{path}/{i}: {}", response.body);
        }
    }

    /// Waits until no client connection is open and at least `accepted` were accepted, so a
    /// baseline taken after it does not move on its own.
    fn quiescent(&self, accepted: f64) -> Exposition {
        wait_for(Duration::from_secs(10), "the workers to hold no client connection", || {
            let scrape = self.scrape();
            (scrape.sum("sluice_worker_active_connections", &[]) == 0.0
                && scrape.sum("sluice_worker_connections_total", &[]) >= accepted)
                .then_some(scrape)
        })
        .unwrap()
    }
}

fn admin_get(admin: SocketAddr, path: &str) -> HttpResponse {
    assert!(admin.ip().is_loopback(), "the admin server stays on loopback");
    http_get(admin, path).unwrap_or_else(|e| panic!("GET {path} from the admin server at {admin}: {e:#}"))
}

fn parse_scrape(response: &HttpResponse) -> Exposition {
    assert_eq!(response.status, 200, "/metrics: {}", response.body);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "/metrics content type {content_type:?}"
    );
    Exposition::parse(&response.body)
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{}", response.body))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_count_exactly_the_traffic_sent() {
    let site = Site::start("");
    assert_eq!(site.get("/healthz").status, 200);
    let ready = wait_for(Duration::from_secs(10), "/readyz to answer 200", || {
        let response = site.get("/readyz");
        (response.status == 200).then_some(response)
    })
    .unwrap();
    assert_eq!(ready.body, "ready\n");

    // Proxy::start's probe connection is the only one before the traffic.
    let before = site.quiescent(1.0);
    let store_labels = [("host", VHOST), ("route", STORE_ROUTE), ("status_class", "2xx")];
    assert_eq!(before.sum("sluice_requests_total", &[]), 0.0, "no request yet");

    const STORE: usize = 37;
    const MISSING: usize = 5;
    site.send("/store/item", STORE, 200);
    site.send("/no-such-page", MISSING, 404);
    let served: u64 = site.live.iter().map(Backend::requests).sum();
    assert_eq!(served, STORE as u64, "the live endpoints answered every storefront request");

    let after = site.quiescent(before.sum("sluice_worker_connections_total", &[]) + (STORE + MISSING) as f64);
    let text = site.get("/metrics").body;
    assert!(text.ends_with("# EOF\n"), "{text}");
    for (family, kind) in [
        ("sluice_requests", "counter"),
        ("sluice_request_duration_seconds", "histogram"),
        ("sluice_worker_connections", "counter"),
        ("sluice_worker_active_connections", "gauge"),
        ("sluice_endpoint_healthy", "gauge"),
        ("sluice_config_generation", "gauge"),
    ] {
        assert_eq!(after.types.get(family).map(String::as_str), Some(kind), "# TYPE of {family}\n{text}");
    }
    assert_eq!(after.units.get("sluice_request_duration_seconds").map(String::as_str), Some("seconds"));

    // Requests: by route and status class.
    assert_eq!(after.get("sluice_requests_total", &store_labels), Some(STORE as f64), "{text}");
    assert_eq!(after.sum("sluice_requests_total", &[("status_class", "4xx")]), MISSING as f64, "{text}");
    assert_eq!(
        after.get("sluice_requests_total", &[("host", ""), ("route", ""), ("status_class", "4xx")]),
        Some(MISSING as f64),
        "requests that matched no route are counted with empty labels\n{text}"
    );
    assert_eq!(after.sum("sluice_requests_total", &[]), (STORE + MISSING) as f64, "{text}");

    // The duration histogram counts the same requests, its buckets are cumulative, +Inf = count.
    let route = [("host", VHOST), ("route", STORE_ROUTE)];
    let count = after.get("sluice_request_duration_seconds_count", &route);
    assert_eq!(count, Some(STORE as f64), "{text}");
    assert_eq!(after.sum("sluice_request_duration_seconds_count", &[]), (STORE + MISSING) as f64, "{text}");
    let sum = after.get("sluice_request_duration_seconds_sum", &route).expect("a _sum sample");
    assert!(sum > 0.0 && sum < STORE as f64 * 10.0, "duration sum {sum}");
    let mut buckets: Vec<(f64, f64)> = after
        .matching("sluice_request_duration_seconds_bucket", &route)
        .map(|s| {
            let le = s.labels["le"].as_str();
            (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 2, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "buckets are cumulative: {buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, STORE as f64)), "{buckets:?}");

    // Worker connections: every connection opened was accepted once, by some worker.
    let workers = after.matching("sluice_worker_connections_total", &[]).count();
    assert_eq!(workers, 2, "one sample per worker\n{text}");
    let accepted = after.sum("sluice_worker_connections_total", &[])
        - before.sum("sluice_worker_connections_total", &[]);
    assert_eq!(accepted, (STORE + MISSING) as f64, "connections accepted by the workers\n{text}");
    assert_eq!(after.sum("sluice_worker_active_connections", &[]), 0.0);

    // Endpoint health: one gauge per endpoint of every backend.
    for backend in &site.live {
        let endpoint = backend.addr().to_string();
        assert_eq!(
            after.get("sluice_endpoint_healthy", &[("backend", "shop-pool"), ("endpoint", &endpoint)]),
            Some(1.0),
            "{text}"
        );
    }
    let standby = site.not_ready.addr().to_string();
    assert_eq!(
        after.get("sluice_endpoint_healthy", &[("backend", "legacy"), ("endpoint", &standby)]),
        Some(0.0),
        "a not-ready endpoint takes no requests\n{text}"
    );
    // The dead endpoint (nothing listens there) reads 0 once its first health check has failed
    // (unhealthy_threshold 1, every 200 ms).
    let dead = site.dead.to_string();
    assert!(
        after.get("sluice_endpoint_healthy", &[("backend", "legacy"), ("endpoint", &dead)]).is_some(),
        "{text}"
    );
    wait_for(Duration::from_secs(5), "the dead endpoint's health gauge to read 0", || {
        let scrape = parse_scrape(&admin_get(site.admin, "/metrics"));
        (scrape.get("sluice_endpoint_healthy", &[("backend", "legacy"), ("endpoint", &dead)]) == Some(0.0))
            .then_some(())
    })
    .unwrap();
    assert_eq!(after.get("sluice_config_generation", &[]), Some(1.0));

    // Without XDP there are no XDP counters: the kernel path is covered, as root, by
    // `xdp_counters_in_metrics_move_with_steered_traffic`.
    let xdp: Vec<&str> = after
        .names()
        .into_iter()
        .filter(|n| n.starts_with("sluice_xdp_") || n.starts_with("sluice_tc_"))
        .collect();
    assert!(xdp.is_empty(), "XDP metrics without XDP: {xdp:?}");
    eprintln!("note: this node runs without XDP, so the XDP metrics are (correctly) absent");

    // Still ready after the traffic.
    assert_eq!(site.get("/readyz").status, 200);
}

/// The metrics listener serves `/metrics` and nothing else, only with its bearer token; the
/// Grafana dashboard in deploy/monitoring is valid JSON and every series its expressions name
/// is in that scrape after traffic (the XDP ones in `xdp_counters_in_metrics_move_with_steered_traffic`).
#[test]
fn metrics_listener_needs_its_token_and_exports_every_series_the_dashboard_draws() {
    let backend = Backend::start(None, "127.0.0.1:0".parse().unwrap(), "b").unwrap();
    let dir = TempDir::new();
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = format!(
        "workers: 1\nxdp: {{enabled: false}}\nlisteners: [{{name: web, address: \"{{listen}}\"}}]\n\
         metrics: {{address: \"{metrics_addr}\", bearer_token_file: \"{}\"}}\n\
         virtual_hosts: [{{name: site, domains: [\"*\"], routes: [\
         {{match: {{path: {{prefix: /private}}}}, backend: b, source_ranges: {{deny: [127.0.0.0/8]}}}}, \
         {{match: {{path: {{prefix: /down}}}}, backend: gone}}, {{backend: b}}]}}]\n\
         backends: [{{name: b, endpoints: [{{address: \"{}\"}}]}}, \
         {{name: gone, endpoints: [{{address: \"127.0.0.1:{}\"}}]}}]\n",
        token_file.display(),
        backend.addr(),
        free_port()
    );
    let proxy = Proxy::start(&yaml);
    assert_eq!(proxy.node.metrics_addr(), Some(metrics_addr));
    for _ in 0..5 {
        assert_eq!(http_get(proxy.addr, "/page").unwrap().status, 200);
    }
    assert_eq!(http_get(proxy.addr, "/private").unwrap().status, 403);
    // Nothing listens there: a connect error, and the retry it earns.
    assert_eq!(http_get(proxy.addr, "/down").unwrap().status, 502);

    let scrape = |token: Option<&str>, path: &str| {
        let header = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
        lb_tests::http::request(metrics_addr, "GET", "metrics", path, &headers).unwrap()
    };
    let refused = scrape(None, "/metrics");
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(scrape(Some("s3cret-toke"), "/metrics").status, 401);
    assert_eq!(scrape(Some("s3cret-token"), "/api/v1/config").status, 404, "only /metrics here");
    let exposition = parse_scrape(&scrape(Some("s3cret-token"), "/metrics"));
    assert_eq!(exposition.sum("sluice_requests_total", &[]), 7.0);

    let names = dashboard_series();
    assert!(names.len() >= 20, "{names:?}");
    let exported = exposition.names();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !n.starts_with("sluice_xdp_") && !n.starts_with("sluice_tc_"))
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard draws series Sluice does not export: {missing:?}\n{exported:?}"
    );
}

#[test]
fn config_api_shows_the_configuration_but_never_key_material() {
    let leaf = lb_tests::tls::Ca::new("Sluice test CA").leaf(&["shop.test"]);
    let (cert_pem, key_pem) = (leaf.cert, leaf.key);
    let block = |pem: &str| pem.lines().map(|l| format!("      {l}\n")).collect::<String>();
    let site = Site::start(&format!(
        "certificates:\n  - name: shop-cert\n    cert_pem: |\n{}    key_pem: |\n{}",
        block(&cert_pem),
        block(&key_pem)
    ));
    // Every line of the key's base64 body is a secret on its own (JSON escapes the newlines, so
    // the PEM as a whole would never match even when leaked).
    let secret_lines: Vec<&str> =
        key_pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).collect();
    assert!(!secret_lines.is_empty(), "{key_pem}");

    let config = site.get("/api/v1/config");
    assert_eq!(config.status, 200);
    assert_eq!(config.header("content-type"), Some("application/json"));
    for name in [STORE_ROUTE, LEGACY_ROUTE, "shop-pool", "legacy", "shop-cert", VHOST] {
        assert!(
            config.body.contains(&format!("\"{name}\"")),
            "{name} missing from the config:\n{}",
            config.body
        );
    }
    assert!(config.body.contains(r#""key_pem": "<redacted>""#), "{}", config.body);
    // The certificate is public and shown (its first body line, JSON-escaped or not, is there).
    let cert_line = cert_pem.lines().nth(1).unwrap();
    assert!(config.body.contains(cert_line), "the certificate is shown:\n{}", config.body);

    for path in ["/api/v1/config", "/api/v1/status", "/metrics", "/dashboard"] {
        let body = site.get(path).body;
        assert!(!body.contains("PRIVATE KEY"), "{path} shows a private key:\n{body}");
        for line in &secret_lines {
            assert!(!body.contains(line), "{path} leaks key material {line:?}:\n{body}");
        }
    }
}

#[test]
fn dashboard_page_is_self_contained() {
    let site = Site::start("");
    let page = site.get("/dashboard");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "CSP {csp:?}");
    // No external scripts, styles, fonts or images: nothing is loaded by reference at all.
    for reference in ["src=", "href=", "url(", "@import", "http://", "https://"] {
        assert!(!page.body.contains(reference), "the dashboard refers to something outside it: {reference}");
    }
    for id in
        ["total-requests", "total-accepted", "routes", "backends", "workers", "xdp", "generation", "ready"]
    {
        assert!(page.body.contains(&format!("id=\"{id}\"")), "no element #{id}");
    }
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium.

/// Longest a single Chromium run may take before it is killed and the test fails.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Every series name in the expressions of deploy/monitoring/sluice-dashboard.json, after
/// checking the file is a Grafana dashboard: JSON, a uid, panels with PromQL targets.
fn dashboard_series() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/sluice-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "sluice");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut names = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("a panel id")), "panel ids are unique");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {} has targets", panel["title"]));
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "balanced: {expr}");
            let mut rest = expr;
            while let Some(at) = rest.find("sluice_") {
                let name: String =
                    rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

fn chromium() -> PathBuf {
    lb_tests::required_tool("chromium", "chromium")
}

/// Where the screenshots are kept: `target/observability/`, beside the build.
fn artifacts_dir() -> PathBuf {
    // target/<profile>/deps/<test binary> -> target/observability
    let exe = std::env::current_exe().unwrap();
    let target =
        exe.parent().and_then(Path::parent).and_then(Path::parent).expect("test binary under target/");
    let dir = target.join("observability");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills a whole process group on drop (Chromium's renderers, zygotes and helpers included).
struct GroupKiller(i32);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        // SAFETY: signalling a process group this test created; ESRCH when it is gone is fine.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// Processes whose command line mentions `needle` (our fresh profile directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then(|| format!("{}: {cmdline}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Runs headless Chromium on `url` (a loopback admin URL; inside `netns` when given) with
/// `extra` flags and a fresh profile, bounded by [`CHROMIUM_TIMEOUT`].
/// Leaves no Chromium process behind.
fn run_chromium(netns: Option<&Netns>, url: &str, extra: &[String]) -> ChromiumRun {
    let binary = chromium();
    let host: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.parse().ok())
        .unwrap_or_else(|| panic!("{url} is not an http://IP:port/ URL"));
    assert!(host.ip().is_loopback(), "Chromium may only load the loopback admin server, not {url}");

    let scratch = TempDir::new();
    let profile = scratch.0.join("chromium-profile");
    let (stdout_path, stderr_path) = (scratch.0.join("stdout"), scratch.0.join("stderr"));
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--hide-scrollbars",
        "--mute-audio",
    ]
    .map(String::from)
    .to_vec();
    // Nothing resolves but the admin server's loopback address: that is all it can reach.
    args.push(format!("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {}", host.ip()));
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend(extra.iter().cloned());
    args.push(url.to_owned());

    // The shell only redirects Chromium's output to files (so the DOM is not interleaved with
    // its log lines) and execs it: the child's pid is Chromium's, and leads its process group.
    let script = r#"exec "$0" "$@" >"$SLUICE_CHROMIUM_STDOUT" 2>"$SLUICE_CHROMIUM_STDERR""#;
    let mut command = match netns {
        Some(ns) => ns.command("/bin/sh"),
        None => Command::new("/bin/sh"),
    };
    command
        .arg("-c")
        .arg(script)
        .arg(&binary)
        .args(&args)
        .env("SLUICE_CHROMIUM_STDOUT", &stdout_path)
        .env("SLUICE_CHROMIUM_STDERR", &stderr_path)
        .process_group(0);
    let mut child = ChildGuard::spawn(command).unwrap();
    let group = GroupKiller(child.pid() as i32);
    // The end of its log (the start is mostly complaints about the missing D-Bus).
    let stderr = || {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let status = match wait_for(CHROMIUM_TIMEOUT, "Chromium to finish", || child.try_status()) {
        Ok(status) => status,
        Err(e) => {
            drop(group);
            drop(child);
            panic!("{e:#}: Chromium was killed. Its log:\n{}", stderr());
        }
    };
    drop(group);
    drop(child);
    assert!(status.success(), "Chromium failed ({status}) on {url}. Its log:\n{}", stderr());

    let needle = scratch.0.to_string_lossy().into_owned();
    let left = wait_for(Duration::from_secs(10), "every Chromium process to exit", || {
        let left = processes_mentioning(&needle);
        left.is_empty().then_some(())
    });
    assert!(left.is_ok(), "Chromium processes left behind: {:?}", processes_mentioning(&needle));
    ChromiumRun { stdout: std::fs::read_to_string(&stdout_path).unwrap(), log: stderr() }
}

/// What a Chromium run printed: the DOM (with `--dump-dom`) and its log.
struct ChromiumRun {
    stdout: String,
    log: String,
}

/// The page's DOM after its polls ran (`--virtual-time-budget` lets the fetches complete).
fn dump_dom(netns: Option<&Netns>, url: &str) -> String {
    let run = run_chromium(netns, url, &["--virtual-time-budget=3000".into(), "--dump-dom".into()]);
    assert!(
        run.stdout.contains("<title>Sluice dashboard</title>"),
        "not the dashboard:\n{}\nChromium's log:\n{}",
        run.stdout,
        run.log
    );
    run.stdout
}

/// Takes a 1280x900 screenshot of `url` into `path` and checks it is a real PNG of that size.
fn screenshot(netns: Option<&Netns>, url: &str, path: &Path) {
    let _ = std::fs::remove_file(path);
    let run = run_chromium(
        netns,
        url,
        &[
            "--virtual-time-budget=3000".into(),
            "--window-size=1280,900".into(),
            format!("--screenshot={}", path.display()),
        ],
    );
    let png = std::fs::read(path)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\nChromium's log:\n{}", path.display(), run.log));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
    assert!(png.len() > 10 * 1024, "{} is only {} bytes: a blank page?", path.display(), png.len());
    let dimension = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!((dimension(16), dimension(20)), (1280, 900), "screenshot size");
}

/// The opening tag of the first element with `attribute` (e.g. `data-route="x"`).
fn tag<'a>(dom: &'a str, attribute: &str) -> Option<&'a str> {
    let at = dom.find(attribute)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of `name` in an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// The markup from the element with `attribute` to the end of its row.
fn row<'a>(dom: &'a str, attribute: &str) -> Option<&'a str> {
    let start = dom[..dom.find(attribute)?].rfind('<')?;
    let end = start + dom[start..].find("</tr>")?;
    Some(&dom[start..end])
}

/// The number an element with `attribute` shows as text.
fn number_in(dom: &str, attribute: &str) -> Option<u64> {
    let tag = tag(dom, attribute)?;
    let start = dom.find(tag)? + tag.len();
    let text = &dom[start..start + dom[start..].find('<')?];
    text.replace(',', "").trim().parse().ok()
}

/// A numeric data attribute of the first element with `attribute`.
fn number_attr(dom: &str, attribute: &str, name: &str) -> Option<u64> {
    attr(row(dom, attribute)?, name)?.parse().ok()
}

#[test]
fn dashboard_in_headless_chromium_shows_routes_backends_and_live_counters() {
    let site = Site::start("");
    let url = format!("http://{}/dashboard", site.admin);
    let dead = site.dead.to_string();
    // The dead endpoint has failed a health check before the page is loaded.
    wait_for(Duration::from_secs(10), "the dead endpoint to fail its health check", || {
        let scrape = site.scrape();
        (scrape.get("sluice_endpoint_healthy", &[("backend", "legacy"), ("endpoint", &dead)]) == Some(0.0))
            .then_some(())
    })
    .unwrap();
    site.quiescent(1.0);

    let before = dump_dom(None, &url);
    let context = |dom: &str| format!("the dashboard's DOM:\n{dom}");
    assert_eq!(
        tag(&before, "id=\"ready\"").and_then(|t| attr(t, "data-ready")),
        Some("true"),
        "{}",
        context(&before)
    );
    assert!(!before.contains("class=\"shown\""), "the page shows an error: {}", context(&before));
    assert_eq!(number_in(&before, "id=\"generation\""), Some(1), "{}", context(&before));
    for route in [STORE_ROUTE, LEGACY_ROUTE] {
        let row = row(&before, &format!("data-route=\"{route}\""))
            .unwrap_or_else(|| panic!("route {route}: {}", context(&before)));
        assert!(row.contains(&format!("data-host=\"{VHOST}\"")), "{row}");
    }
    assert!(
        row(&before, &format!("data-route=\"{STORE_ROUTE}\"")).unwrap().contains("shop-pool"),
        "route target"
    );
    for backend in ["shop-pool", "legacy"] {
        assert!(
            before.contains(&format!("data-backend=\"{backend}\"")),
            "backend {backend}: {}",
            context(&before)
        );
    }
    let state = |dom: &str, endpoint: String| {
        tag(dom, &format!("data-endpoint=\"{endpoint}\""))
            .and_then(|t| attr(t, "data-state"))
            .map(str::to_owned)
    };
    for backend in &site.live {
        assert_eq!(state(&before, backend.addr().to_string()).as_deref(), Some("up"), "{}", context(&before));
    }
    assert_eq!(state(&before, dead.clone()).as_deref(), Some("failing"), "{}", context(&before));
    assert_eq!(
        state(&before, site.not_ready.addr().to_string()).as_deref(),
        Some("not-ready"),
        "{}",
        context(&before)
    );
    assert!(before.contains("XDP not attached"), "{}", context(&before));
    assert!(
        before.contains("data-worker=\"0\"") && before.contains("data-worker=\"1\""),
        "{}",
        context(&before)
    );
    let listener = site.proxy.addr.to_string();
    assert!(before.contains(&format!("data-listener=\"{listener}\"")), "{}", context(&before));

    let requests_before = number_in(&before, "id=\"total-requests\"").expect("total requests shown");
    let store_before = number_attr(&before, &format!("data-route=\"{STORE_ROUTE}\""), "data-requests");
    let accepted_before = number_in(&before, "id=\"total-accepted\"").expect("accepted connections shown");
    assert_eq!(requests_before, 0, "{}", context(&before));
    assert_eq!(store_before, Some(0), "{}", context(&before));

    const STORE: usize = 20;
    const MISSING: usize = 3;
    site.send("/store/page", STORE, 200);
    site.send("/nowhere", MISSING, 404);
    site.quiescent(accepted_before as f64 + (STORE + MISSING) as f64);

    let after = dump_dom(None, &url);
    assert_eq!(
        number_in(&after, "id=\"total-requests\""),
        Some((STORE + MISSING) as u64),
        "{}",
        context(&after)
    );
    assert_eq!(
        number_attr(&after, &format!("data-route=\"{STORE_ROUTE}\""), "data-requests"),
        Some(STORE as u64),
        "{}",
        context(&after)
    );
    assert_eq!(
        number_attr(&after, "id=\"unrouted\"", "data-requests"),
        Some(MISSING as u64),
        "{}",
        context(&after)
    );
    assert_eq!(
        number_in(&after, "id=\"total-accepted\""),
        Some(accepted_before + (STORE + MISSING) as u64),
        "connections accepted moved by the connections opened: {}",
        context(&after)
    );
    let per_worker: u64 = (0..2)
        .map(|w| number_attr(&after, &format!("data-worker=\"{w}\""), "data-accepted").unwrap_or(0))
        .sum();
    assert_eq!(per_worker, accepted_before + (STORE + MISSING) as u64, "{}", context(&after));

    let path = artifacts_dir().join("dashboard.png");
    screenshot(None, &url, &path);
    eprintln!("dashboard screenshot: {}", path.display());
}

// ---------------------------------------------------------------------------------------------
// XDP counters, as root: a node with XDP attached in the namespace topology.

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn xdp_counters_in_metrics_move_with_steered_traffic() {
    // Without root, metrics_count_exactly_the_traffic_sent asserts the XDP metrics are absent.
    require_root!();
    const PORT: u16 = 8080;
    let topology = Topology::new(0).unwrap();
    let backend = Backend::start(Some(&topology.node), "127.0.0.1:0".parse().unwrap(), "edge-1").unwrap();
    // A fresh namespace: its loopback ports are all free.
    let admin = SocketAddr::from(([127, 0, 0, 1], 9901));
    let yaml = format!(
        r#"workers: 2
listeners: [{{name: web, address: "0.0.0.0:{PORT}"}}]
admin: {{address: "{admin}"}}
xdp: {{interfaces: [{NODE_CLIENT_IF}]}}
virtual_hosts: [{{name: edge, domains: ["*"], routes: [{{name: everything, backend: pool}}]}}]
backends: [{{name: pool, endpoints: [{{address: "{}"}}]}}]
"#,
        backend.addr()
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let node: Node = topology.node.run(move || Node::start(&config)).unwrap().unwrap();
    assert!(node.dataplane().is_some(), "the kernel path is running");
    let get = |path: &'static str| topology.node.run(move || admin_get(admin, path)).unwrap();

    let ready = wait_for(Duration::from_secs(10), "/readyz with XDP attached", || {
        let response = get("/readyz");
        (response.status == 200).then_some(())
    });
    assert!(ready.is_ok(), "not ready: {}", get("/readyz").body);
    let status = get("/api/v1/status").body;
    assert!(status.contains(&format!("\"{NODE_CLIENT_IF}\"")), "XDP attached in the status:\n{status}");

    let before = parse_scrape(&get("/metrics"));
    const CONNECTIONS: usize = 30;
    let target = SocketAddr::from((topology.node_v4(), PORT));
    let failures = topology
        .client
        .run(move || {
            (0..CONNECTIONS)
                .filter_map(|i| match http_get(target, &format!("/xdp/{i}")) {
                    Ok(response) if response.status == 200 => None,
                    Ok(response) => Some(format!("{i}: status {}", response.status)),
                    Err(e) => Some(format!("{i}: {e:#}")),
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");

    let after = wait_for(Duration::from_secs(10), "the connections to close", || {
        let scrape = parse_scrape(&get("/metrics"));
        (scrape.sum("sluice_worker_active_connections", &[]) == 0.0).then_some(scrape)
    })
    .unwrap();
    let delta = |name: &str| after.sum(name, &[]) - before.sum(name, &[]);
    let n = CONNECTIONS as f64;
    let counters: Vec<String> = after
        .samples
        .iter()
        .filter(|s| s.name.starts_with("sluice_xdp_") || s.name.starts_with("sluice_tc_"))
        .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
        .collect();
    assert_eq!(after.types.get("sluice_xdp_new_flows").map(String::as_str), Some("counter"), "{counters:?}");
    assert_eq!(delta("sluice_xdp_new_flows_total"), n, "one new flow per connection: {counters:?}");
    // SYN, the request, and the FIN/ACKs of each connection were all steered.
    assert!(delta("sluice_xdp_steered_total") >= 3.0 * n, "{counters:?}");
    assert!(delta("sluice_xdp_packets_total") >= delta("sluice_xdp_steered_total"), "{counters:?}");
    assert!(delta("sluice_tc_egress_restored_total") >= n, "replies restored by TC egress: {counters:?}");
    assert_eq!(after.sum("sluice_xdp_dropped_total", &[]), 0.0, "{counters:?}");
    assert_eq!(delta("sluice_worker_connections_total"), n, "the steered connections were accepted");
    assert_eq!(
        delta("sluice_requests_total"),
        n,
        "every steered request was answered: {:?}",
        after.matching("sluice_requests_total", &[]).collect::<Vec<_>>()
    );
    assert_eq!(backend.requests(), CONNECTIONS as u64);

    // The dashboard of this node (Chromium runs inside the node's namespace) shows them too.
    let url = format!("http://{admin}/dashboard");
    let dom = dump_dom(Some(&topology.node), &url);
    assert_eq!(tag(&dom, "id=\"xdp\"").and_then(|t| attr(t, "data-attached")), Some("true"), "{dom}");
    let new_flows = number_attr(&dom, "data-counter=\"new_flows\"", "data-value");
    assert!(
        new_flows.is_some_and(|v| v >= CONNECTIONS as u64),
        "new_flows on the dashboard: {new_flows:?}\n{dom}"
    );
    // The Grafana dashboard's XDP series are all exported with the kernel path running.
    let exported = after.names();
    let missing: Vec<String> = dashboard_series()
        .into_iter()
        .filter(|n| n.starts_with("sluice_xdp_") || n.starts_with("sluice_tc_"))
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "dashboard XDP series not exported: {missing:?}\n{exported:?}");

    let path = artifacts_dir().join("dashboard-xdp.png");
    screenshot(Some(&topology.node), &url, &path);
    eprintln!("dashboard screenshot with XDP: {}", path.display());

    node.stop().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// A small OpenMetrics text parser: `# TYPE`/`# UNIT`/`# HELP` lines, samples
// `name{label="value",...} value`, and the final `# EOF`.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// Family name -> type (`counter`, `gauge`, `histogram`, ...).
    types: BTreeMap<String, String>,
    units: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

/// Suffixes a sample may add to its family's name, by family type.
const SUFFIXES: &[(&str, &[&str])] = &[
    ("_total", &["counter"]),
    ("_created", &["counter", "histogram", "summary", "gaugehistogram"]),
    ("_bucket", &["histogram", "gaugehistogram"]),
    ("_count", &["histogram", "summary"]),
    ("_sum", &["histogram", "summary"]),
    ("_gcount", &["gaugehistogram"]),
    ("_gsum", &["gaugehistogram"]),
    ("_info", &["info"]),
];

impl Exposition {
    fn parse(text: &str) -> Result<Exposition, String> {
        let body = text.strip_suffix("# EOF\n").ok_or("the exposition does not end with `# EOF`")?;
        let mut exposition = Exposition::default();
        for (index, line) in body.lines().enumerate() {
            let at = index + 1;
            if line.is_empty() {
                return Err(format!("line {at}: empty line"));
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        const KINDS: [&str; 8] = [
                            "counter",
                            "gauge",
                            "histogram",
                            "gaugehistogram",
                            "summary",
                            "info",
                            "stateset",
                            "unknown",
                        ];
                        if !KINDS.contains(&kind) {
                            return Err(format!("line {at}: unknown metric type {kind:?}"));
                        }
                        if exposition.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                            return Err(format!("line {at}: family {name} described twice"));
                        }
                    }
                    (Some("UNIT"), Some(name), Some(unit)) => {
                        exposition.units.insert(name.to_owned(), unit.to_owned());
                    }
                    (Some("HELP"), Some(_), _) => {}
                    _ => return Err(format!("line {at}: unexpected comment {line:?}")),
                }
                continue;
            }
            let sample = parse_sample(line).map_err(|e| format!("line {at}: {e}: {line:?}"))?;
            exposition.samples.push(sample);
        }
        for sample in &exposition.samples {
            if exposition.family_of(&sample.name).is_none() {
                return Err(format!("sample {} belongs to no described family", sample.name));
            }
        }
        Ok(exposition)
    }

    /// The family a sample name belongs to, with its type.
    fn family_of(&self, name: &str) -> Option<(&str, &str)> {
        for (suffix, kinds) in SUFFIXES {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some((family, kind)) = self.types.get_key_value(base)
                && kinds.contains(&kind.as_str())
            {
                return Some((family, kind));
            }
        }
        match self.types.get_key_value(name) {
            Some((family, kind)) if ["gauge", "unknown", "stateset", "info"].contains(&kind.as_str()) => {
                Some((family, kind))
            }
            _ => None,
        }
    }

    /// The samples named `name` whose labels include every pair of `filter`.
    fn matching<'a>(&'a self, name: &'a str, filter: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The one sample named `name` with exactly the labels `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == wanted).map(|s| s.value)
    }

    /// Sum over the samples named `name` whose labels include `filter` (0 when none).
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.matching(name, filter).map(|s| s.value).sum()
    }

    fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| !is_name_char(c, false)).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || !name.starts_with(|c| is_name_char(c, true)) {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let key_end = inner.find('=').ok_or("label without `=`")?;
            let key = &inner[..key_end];
            if key.is_empty() || !key.chars().enumerate().all(|(i, c)| is_name_char(c, i == 0) && c != ':') {
                return Err(format!("bad label name {key:?}"));
            }
            let mut chars = inner[key_end + 1..].char_indices();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut value = String::new();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(key_end + 1 + i + 1);
                        break;
                    }
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(escaped @ ('\\' | '"')) => value.push(escaped),
                        other => return Err(format!("bad escape {other:?} in label {key}")),
                    },
                    '\n' => return Err("newline in a label value".into()),
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("label {key}: unterminated value"))?;
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} repeated"));
            }
            inner = &inner[end..];
            if let Some(after) = inner.strip_prefix(',') {
                inner = after;
            } else if !inner.starts_with('}') {
                return Err("labels not separated by `,` or closed by `}`".into());
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let (value_text, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        text if text.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            text.parse().map_err(|e| format!("bad value {text:?}: {e}"))?
        }
        text => return Err(format!("bad value {text:?}")),
    };
    // After the value: an optional timestamp, then an optional exemplar (` # {...} value`).
    if !tail.is_empty()
        && !tail.starts_with("# ")
        && tail.split(' ').next().and_then(|t| t.parse::<f64>().ok()).is_none()
    {
        return Err(format!("unexpected {tail:?} after the value"));
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}
