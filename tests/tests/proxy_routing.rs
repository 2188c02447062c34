//! The L7 proxy end to end over loopback sockets: routing precedence with the Kubernetes Ingress
//! semantics, rewrites and redirects, forwarding headers, balancing, passive and active health,
//! retries, error statuses, and configuration swaps. Each test runs an in-process node
//! (`lb_tests::sluice::Proxy`, no XDP, no root) in front of the harness's programmable
//! backends (`lb_tests::backend`), which name themselves in `x-backend`, echo what they
//! received, and fail, hold or hang on demand.

use std::{
    net::SocketAddr,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::sluice::Proxy;
use lb_tests::{
    backend::{BACKEND_HEADER, Backend, Echoed, HEALTH_PATH, Mode},
    free_port,
    http::{self, Client, HttpResponse},
    wait_for,
};

// ---------------------------------------------------------------------------------------------
// 1. Routing precedence.
// ---------------------------------------------------------------------------------------------

#[test]
fn routing_follows_ingress_precedence() {
    let names = [
        "root",
        "prefix-foo",
        "exact-foo",
        "prefix-foo-bar",
        "trail",
        "exact-dir",
        "prefix-api-v1",
        "regex-items",
        "prefix-long",
        "regex-tie",
        "prefix-tie",
        "stable",
        "canary",
        "reads",
        "writes",
        "wildcard",
        "strict",
        "default",
    ];
    let backends: Vec<Backend> = names.iter().map(|name| Backend::with_mode(name, Mode::Echo)).collect();
    let mut yaml = String::from("backends:\n");
    for backend in &backends {
        yaml.push_str(&group(backend.name(), &[backend.addr()], ""));
    }
    yaml.push_str(ROUTING_HOSTS);
    let proxy = Proxy::start(&config(&yaml));

    let app = "app.example.com";
    let cases: &[Case<'_>] = &[
        // Exact beats Prefix, whatever the declaration order; only the exact string.
        ("GET", app, "/foo", &[], "exact-foo"),
        ("GET", app, "/foo?x=1", &[], "exact-foo"),
        ("GET", app, "/foo/", &[], "prefix-foo"),
        // Paths are case-sensitive.
        ("GET", app, "/FOO", &[], "root"),
        // Longest prefix wins; prefixes match whole path elements.
        ("GET", app, "/foo/bar", &[], "prefix-foo-bar"),
        ("GET", app, "/foo/bar/", &[], "prefix-foo-bar"),
        ("GET", app, "/foo/bar/baz", &[], "prefix-foo-bar"),
        ("GET", app, "/foo/barbaz", &[], "prefix-foo"),
        ("GET", app, "/foo/x", &[], "prefix-foo"),
        ("GET", app, "/foobar", &[], "root"),
        // A trailing slash on a prefix is ignored: `/trail/` matches `/trail` too.
        ("GET", app, "/trail", &[], "trail"),
        ("GET", app, "/trail/", &[], "trail"),
        ("GET", app, "/trail/x", &[], "trail"),
        ("GET", app, "/trailx", &[], "root"),
        // ...but not on an exact path.
        ("GET", app, "/dir/", &[], "exact-dir"),
        ("GET", app, "/dir", &[], "root"),
        // `/` is the catch-all.
        ("GET", app, "/", &[], "root"),
        ("GET", app, "/anything/else", &[], "root"),
        // Regex vs prefix: the longer pattern wins; the regex is anchored at the start only.
        ("GET", app, "/api/v1/items", &[], "regex-items"),
        ("GET", app, "/api/v7/items/3", &[], "regex-items"),
        ("GET", app, "/api/v1/users", &[], "prefix-api-v1"),
        ("GET", app, "/api/v1/items/special/x", &[], "prefix-long"),
        ("GET", app, "/api/v2/users", &[], "root"),
        ("GET", app, "/x/api/v1/items", &[], "root"),
        // Equal length (`/r.g` and `/reg`): the prefix first, although declared after.
        ("GET", app, "/reg/x", &[], "prefix-tie"),
        ("GET", app, "/reg", &[], "prefix-tie"),
        ("GET", app, "/rxg", &[], "regex-tie"),
        ("GET", app, "/regx", &[], "regex-tie"),
        // Header match: the more constrained route first; exact values are case-sensitive.
        ("GET", app, "/h/x", &[("X-Canary", "1")], "canary"),
        ("GET", app, "/h/x", &[("x-canary", "1")], "canary"),
        ("GET", app, "/h/x", &[("X-Canary", "2")], "stable"),
        ("GET", app, "/h/x", &[], "stable"),
        // Method match.
        ("POST", app, "/m/1", &[], "writes"),
        ("PUT", app, "/m", &[], "writes"),
        ("GET", app, "/m/1", &[], "reads"),
        ("DELETE", app, "/m/1", &[], "reads"),
        // Hosts: exact beats wildcard; case and port do not matter.
        ("GET", "APP.Example.COM:8080", "/foo", &[], "exact-foo"),
        ("GET", "app.example.com.", "/foo", &[], "exact-foo"),
        ("GET", "app.example.com.:8080", "/foo", &[], "exact-foo"),
        ("GET", "a.example.com", "/foo", &[], "wildcard"),
        ("GET", "A.EXAMPLE.com:1234", "/", &[], "wildcard"),
        // A wildcard takes exactly one label, and not the bare parent domain.
        ("GET", "a.b.example.com", "/", &[], "default"),
        ("GET", "example.com", "/", &[], "default"),
        ("GET", "other.test", "/foo", &[], "default"),
        // An absolute-form target names the host; the Host header is then ignored (RFC 9112 3.2.2).
        ("GET", "other.test", "http://app.example.com/foo", &[], "exact-foo"),
        // A virtual host that matches but has no route for the path: 404, no fall-through.
        ("GET", "strict.example.com", "/only/x", &[], "strict"),
        ("GET", "strict.example.com", "/other", &[], "status 404"),
        ("GET", "strict.example.com", "/onlyx", &[], "status 404"),
    ];
    let mut failures = Vec::new();
    for &(method, host, path, headers, expected) in cases {
        let response = request(proxy.addr, method, host, path, headers);
        let got = match response.status {
            200 => backend_of(&response).to_owned(),
            status => format!("status {status}"),
        };
        if got != expected {
            failures.push(format!("{method} {host}{path} {headers:?}: expected {expected}, got {got}"));
        }
        if response.status == 404 {
            assert!(response.body.starts_with("404"), "a short 404 text: {:?}", response.body);
        }
    }
    assert!(failures.is_empty(), "routing mismatches:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 2. Rewrites and redirects.
// ---------------------------------------------------------------------------------------------

#[test]
fn rewrites_reach_the_backend_and_redirects_answer_locally() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let yaml = "\
backends:
  - {name: echo, endpoints: [{address: \"@echo\"}]}
virtual_hosts:
  - name: all
    domains: [\"*\"]
    routes:
      - {backend: echo, match: {path: {prefix: /api}}, rewrite: {prefix: /}}
      - {backend: echo, match: {path: {prefix: /old/}}, rewrite: {prefix: /v2}}
      - backend: echo
        match: {path: {regex: \"/something(/|$)(.*)\"}}
        rewrite: {regex: \"/something(/|$)(.*)\", replacement: \"/$2\"}
      - backend: echo
        match: {path: {regex: \"/users/[0-9]+\"}}
        rewrite: {regex: \"/users/(?P<id>[0-9]+)\", replacement: \"/u/${id}/profile\"}
      - {match: {path: {prefix: /secure}}, redirect: {scheme: https, code: 308}}
      - {match: {path: {prefix: /full}}, redirect: {scheme: https, host: new.example.com, port: 8443, path: /landing, code: 301}}
      - {match: {path: {prefix: /same}}, redirect: {}}
      - {match: {path: {prefix: /moved}}, rewrite: {prefix: /new}, redirect: {host: moved.example.com, code: 301}}
      - {backend: echo}
"
    .replace("@echo", &echo.addr().to_string());
    let proxy = Proxy::start(&config(&yaml));

    // The path (and query) the backend received.
    for (path, expected) in [
        ("/api/users?x=1&y=/api", "/users?x=1&y=/api"),
        ("/api", "/"),
        ("/api/", "/"),
        ("/old/a/b?q", "/v2/a/b?q"),
        ("/old", "/v2"),
        ("/something/new?a=1&b=2", "/new?a=1&b=2"),
        ("/something", "/"),
        ("/users/42?tab=x", "/u/42/profile?tab=x"),
        ("/plain/path?k=v&k=w", "/plain/path?k=v&k=w"),
        ("/apix", "/apix"),
    ] {
        let response = get(proxy.addr, "shop.test", path);
        let seen = Echoed::of(&response);
        assert_eq!(seen.target(), expected, "{path} reached the backend as {:?}", seen.line);
        assert!(seen.line.starts_with("GET "), "method kept: {:?}", seen.line);
    }

    let served = echo.requests();
    let listen_host = proxy.addr.to_string();
    for (host, path, code, location) in [
        // A configured scheme sends to its default port, not the request's.
        ("example.com:8080", "/secure/page?a=1", 308, "https://example.com/secure/page?a=1".to_owned()),
        ("example.com:8080", "/full/x?y=1", 301, "https://new.example.com:8443/landing".to_owned()),
        // Defaults: 302, the request's scheme, host, port, path and query.
        ("example.com:8080", "/same/x?q=1", 302, "http://example.com:8080/same/x?q=1".to_owned()),
        ("example.com", "/same", 302, "http://example.com/same".to_owned()),
        (listen_host.as_str(), "/same", 302, format!("http://{listen_host}/same")),
        // The route's rewrite shapes the redirect's path; a configured host keeps the port.
        ("example.com:8080", "/moved/page?x=1", 301, "http://moved.example.com:8080/new/page?x=1".to_owned()),
    ] {
        let response = get(proxy.addr, host, path);
        assert_eq!(response.status, code, "{host}{path}: {response:?}");
        assert_eq!(response.header("location"), Some(location.as_str()), "{host}{path}: {response:?}");
        assert_eq!(backend_of(&response), "<none>", "a redirect is answered by the proxy");
    }
    assert_eq!(echo.requests(), served, "redirects never reach the backend");
}

// ---------------------------------------------------------------------------------------------
// 3. Forwarding headers.
// ---------------------------------------------------------------------------------------------

#[test]
fn forwarding_headers_and_request_ids_reach_the_backend() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let yaml = format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: echo}}]}}\n",
        group("echo", &[echo.addr()], "")
    );
    let proxy = Proxy::start(&config(&yaml));
    let port = proxy.addr.port().to_string();

    let response = request(
        proxy.addr,
        "GET",
        "fwd.example.com",
        "/h?x=1",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Request-ID", "abc-123"),
            ("Connection", "X-Secret, close"),
            ("X-Secret", "hop"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "yes"),
        ],
    );
    let seen = Echoed::of(&response);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "an untrusted client's X-Forwarded-For is replaced, as ingress-nginx does: {:?}",
        seen.headers
    );
    assert_eq!(seen.count("x-forwarded-for"), 1, "one X-Forwarded-For: {:?}", seen.headers);
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("fwd.example.com"));
    assert_eq!(seen.header("x-forwarded-port"), Some(port.as_str()));
    assert_eq!(seen.header("host"), Some("fwd.example.com"), "Host kept");
    assert_eq!(seen.header("x-request-id"), Some("abc-123"), "the client's request id is kept");
    assert_eq!(response.header("x-request-id"), Some("abc-123"), "and returned to the client");
    assert_eq!(seen.header("x-kept"), Some("yes"), "end-to-end headers pass");
    for hop in ["x-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(seen.header(hop), None, "hop-by-hop {hop} must not be forwarded: {:?}", seen.headers);
    }
    assert!(
        seen.header("connection").is_none_or(|v| !v.to_ascii_lowercase().contains("x-secret")),
        "the client's Connection header is not forwarded: {:?}",
        seen.headers
    );

    // Without an incoming one: X-Forwarded-For is the client; a request id is made.
    let response = get(proxy.addr, "fwd.example.com", "/h");
    let seen = Echoed::of(&response);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    let id = seen.header("x-request-id").expect("a request id is generated");
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "32 hex digits: {id:?}");
    assert_eq!(response.header("x-request-id"), Some(id), "the generated id is returned to the client");
    let other =
        Echoed::of(&get(proxy.addr, "fwd.example.com", "/h")).header("x-request-id").map(str::to_owned);
    assert_ne!(other.as_deref(), Some(id), "each request gets its own id");

    // What the proxy sets, a client cannot spoof; a request id that is not sane is replaced.
    let long_id = "x".repeat(200);
    let response = request(
        proxy.addr,
        "GET",
        "fwd.example.com",
        "/h",
        &[
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
            ("X-Forwarded-Port", "443"),
            ("X-Request-ID", &long_id),
        ],
    );
    let seen = Echoed::of(&response);
    assert_eq!((seen.header("x-real-ip"), seen.count("x-real-ip")), (Some("127.0.0.1"), 1));
    assert_eq!((seen.header("x-forwarded-proto"), seen.count("x-forwarded-proto")), (Some("http"), 1));
    assert_eq!(seen.header("x-forwarded-host"), Some("fwd.example.com"));
    assert_eq!(seen.header("x-forwarded-port"), Some(port.as_str()));
    let id = seen.header("x-request-id").unwrap();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a 200-byte id is replaced: {id:?}");
    assert_eq!(response.header("x-request-id"), Some(id));
}

#[test]
fn hop_by_hop_response_headers_stay_on_their_hop() {
    let echo = Backend::with_mode("echo", Mode::EchoHop);
    let yaml = format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: echo}}]}}\n",
        group("echo", &[echo.addr()], "")
    );
    let proxy = Proxy::start(&config(&yaml));
    let mut client = Client::connect(proxy.addr);
    let response = client.get("hop.test", "/");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-end-to-end"), Some("1"), "end-to-end headers pass: {response:?}");
    for hop in ["x-hop", "keep-alive"] {
        assert_eq!(response.header(hop), None, "hop-by-hop {hop} reached the client: {response:?}");
    }
    assert!(
        response.header("connection").is_none_or(|v| !v.to_ascii_lowercase().contains("x-hop")),
        "the backend's Connection header reached the client: {response:?}"
    );
    // The client's connection is still good.
    assert_eq!(client.get("hop.test", "/again").status, 200);
}

/// RFC 9110 5.3: several header lines with the same name are one comma-separated list. A
/// client (or an upstream proxy) may send X-Forwarded-For on two lines; with
/// `compute_full_forwarded_for` every hop must survive.
#[test]
fn forwarded_for_keeps_every_incoming_hop() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let yaml = format!(
        "forwarded: {{compute_full_forwarded_for: true}}\nbackends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: echo}}]}}\n",
        group("echo", &[echo.addr()], "")
    );
    let proxy = Proxy::start(&config(&yaml));
    let response = request(
        proxy.addr,
        "GET",
        "fwd.example.com",
        "/",
        &[("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "198.51.100.7")],
    );
    let seen = Echoed::of(&response);
    let all: Vec<&str> =
        seen.headers.iter().filter(|(k, _)| k == "x-forwarded-for").map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        all.join(", "),
        "203.0.113.9, 198.51.100.7, 127.0.0.1",
        "X-Forwarded-For at the backend (every line, in order)"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Balancing.
// ---------------------------------------------------------------------------------------------

#[test]
fn round_robin_follows_weights() {
    let light = Backend::with_mode("light", Mode::Echo);
    let heavy = Backend::with_mode("heavy", Mode::Echo);
    let yaml = format!(
        "backends:
  - name: pool
    endpoints: [{{address: \"{}\", weight: 1}}, {{address: \"{}\", weight: 3}}]
virtual_hosts:
  - {{name: all, domains: [\"*\"], routes: [{{backend: pool}}]}}
",
        light.addr(),
        heavy.addr()
    );
    let proxy = Proxy::start(&config(&yaml));
    let mut client = Client::connect(proxy.addr);
    let (mut to_light, mut to_heavy) = (0u32, 0u32);
    for i in 0..400 {
        let response = client.get("rr.test", &format!("/r/{i}"));
        assert_eq!(response.status, 200, "{response:?}");
        match backend_of(&response) {
            "light" => to_light += 1,
            "heavy" => to_heavy += 1,
            other => panic!("unexpected backend {other}"),
        }
    }
    // 25% ± 5% of 400: 80..=120.
    assert!((80..=120).contains(&to_light), "weight 1 of 4 got {to_light}/400 (heavy {to_heavy})");
    assert_eq!(to_light + to_heavy, 400);
    assert_eq!((light.requests(), heavy.requests()), (u64::from(to_light), u64::from(to_heavy)));
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let busy = Backend::with_mode("busy", Mode::Hold);
    let fast = Backend::with_mode("fast", Mode::Echo);
    let yaml = format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: pool}}]}}\n",
        group("pool", &[busy.addr(), fast.addr()], ", balance: least_request")
    );
    let proxy = Proxy::start(&config(&yaml));

    // Make the busy endpoint busy: start requests in the background, one at a time, until one
    // is held there (with both idle, the balancer may pick either).
    let mut background: Vec<JoinHandle<HttpResponse>> = Vec::new();
    for _ in 0..30 {
        if busy.holding() > 0 {
            break;
        }
        let addr = proxy.addr;
        let handle = std::thread::spawn(move || get(addr, "lr.test", "/background"));
        wait_for(Duration::from_secs(5), "the background request to finish or be held", || {
            (handle.is_finished() || busy.holding() > 0).then_some(())
        })
        .unwrap();
        background.push(handle);
    }
    assert_eq!(busy.holding(), 1, "one request held at the busy endpoint");
    let busy_before = busy.requests();

    let mut client = Client::connect(proxy.addr);
    for i in 0..30 {
        let response = client.get("lr.test", &format!("/q/{i}"));
        assert_eq!(response.status, 200);
        assert_eq!(backend_of(&response), "fast", "request {i} went to the busy endpoint");
    }
    assert_eq!(busy.requests(), busy_before, "no new request reached the busy endpoint");

    busy.release();
    for handle in background {
        let response = handle.join().unwrap();
        assert_eq!(response.status, 200, "the held request completes: {response:?}");
    }
}

#[test]
fn hash_on_header_is_sticky_and_spreads() {
    let backends: Vec<Backend> =
        ["h0", "h1", "h2"].iter().map(|name| Backend::with_mode(name, Mode::Echo)).collect();
    let addresses: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let yaml = format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: pool}}]}}\n",
        group("pool", &addresses, ", balance: hash, hash_on: {header: x-user}")
    );
    let proxy = Proxy::start(&config(&yaml));
    let mut client = Client::connect(proxy.addr);
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..10 {
            let response =
                client.request("GET", "hash.test", &format!("/{i}"), &[("X-User", user)], false).unwrap();
            assert_eq!(response.status, 200);
            seen.insert(backend_of(&response).to_owned());
        }
        assert_eq!(seen.len(), 1, "user {user} stays on one backend: {seen:?}");
    }
    let mut spread = std::collections::BTreeSet::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        let response = client.request("GET", "hash.test", "/", &[("x-user", &user)], false).unwrap();
        spread.insert(backend_of(&response).to_owned());
    }
    assert!(spread.len() >= 2, "30 different users spread over the backends: {spread:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Health: passive ejection and active checks.
// ---------------------------------------------------------------------------------------------

#[test]
fn consecutive_failures_eject_an_endpoint_for_a_while() {
    const EJECTION: Duration = Duration::from_millis(2_000);
    let good = Backend::with_mode("good", Mode::Echo);
    let flaky = Backend::with_mode("flaky", Mode::Echo);
    let yaml = format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: pool}}]}}\n",
        group(
            "pool",
            &[good.addr(), flaky.addr()],
            &format!(
                ", outlier: {{consecutive_failures: 3, base_ejection_ms: {0}, max_ejection_ms: {0}}}",
                EJECTION.as_millis()
            )
        )
    );
    let proxy = Proxy::start(&config(&yaml));
    let mut client = Client::connect(proxy.addr);
    for i in 0..10 {
        assert_eq!(client.get("h.test", &format!("/warm/{i}")).status, 200);
    }
    assert!(flaky.requests() > 0 && good.requests() > 0, "both endpoints serve while healthy");

    flaky.set_mode(Mode::Status(500));
    let failing_from = flaky.requests();
    let mut errors = 0;
    for _ in 0..20 {
        if flaky.requests() - failing_from >= 3 {
            break;
        }
        let response = client.get("h.test", "/fail");
        match response.status {
            200 => assert_eq!(backend_of(&response), "good"),
            500 => errors += 1,
            other => panic!("unexpected status {other}: {response:?}"),
        }
    }
    let ejected_at = Instant::now();
    assert_eq!(flaky.requests() - failing_from, 3, "three requests reached the failing endpoint");
    // Retries only happen before a response: the failing answers reach the client.
    assert_eq!(errors, 3, "the three 500s reach the client");

    let flaky_count = flaky.requests();
    for i in 0..50 {
        let response = client.get("h.test", &format!("/ejected/{i}"));
        assert_eq!(response.status, 200, "request {i} during the ejection: {response:?}");
        assert_eq!(backend_of(&response), "good");
    }
    let elapsed = ejected_at.elapsed();
    assert_eq!(
        flaky.requests(),
        flaky_count,
        "the ejected endpoint got traffic within {elapsed:?} of its {EJECTION:?} ejection"
    );

    // The ejection ends: the endpoint gets traffic again, and not before its time is up.
    wait_for(Duration::from_secs(10), "the ejected endpoint to get traffic again", || {
        let response = client.get("h.test", "/after");
        (flaky.requests() > flaky_count).then_some(()).or_else(|| {
            assert_eq!(response.status, 200, "{response:?}");
            None
        })
    })
    .unwrap();
    let back_after = ejected_at.elapsed();
    assert!(
        back_after >= EJECTION - Duration::from_millis(100),
        "traffic came back after {back_after:?}, before the {EJECTION:?} ejection ended"
    );
}

#[test]
fn active_checks_take_an_endpoint_out_and_bring_it_back() {
    const UNHEALTHY_THRESHOLD: u64 = 3;
    const HEALTHY_THRESHOLD: u64 = 2;
    let steady = Backend::with_mode("steady", Mode::Echo);
    let checked = Backend::with_mode("checked", Mode::Echo);
    let yaml = format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: pool}}]}}\n",
        group(
            "pool",
            &[steady.addr(), checked.addr()],
            &format!(
                ", health_check: {{path: {HEALTH_PATH}, interval_ms: 50, timeout_ms: 500, \
                 healthy_threshold: {HEALTHY_THRESHOLD}, unhealthy_threshold: {UNHEALTHY_THRESHOLD}}}"
            )
        )
    );
    let proxy = Proxy::start(&config(&yaml));
    let mut client = Client::connect(proxy.addr);
    wait_for(Duration::from_secs(5), "both endpoints to be checked and serve", || {
        assert_eq!(client.get("hc.test", "/").status, 200);
        (checked.requests() > 0 && steady.requests() > 0 && checked.checks_passed() > 0).then_some(())
    })
    .unwrap();

    checked.set_health(500);
    let failed_from = checked.checks_failed();
    wait_for(Duration::from_secs(5), "the failing endpoint to get no traffic", || {
        let before = checked.requests();
        for _ in 0..10 {
            assert_eq!(client.get("hc.test", "/").status, 200);
        }
        (checked.requests() == before).then_some(())
    })
    .unwrap();
    let failed = checked.checks_failed() - failed_from;
    assert!(failed >= UNHEALTHY_THRESHOLD, "out after {failed} failed checks, below the threshold");
    let count = checked.requests();
    for _ in 0..50 {
        let response = client.get("hc.test", "/");
        assert_eq!((response.status, backend_of(&response)), (200, "steady"));
    }
    assert_eq!(checked.requests(), count, "an unhealthy endpoint gets no traffic");

    checked.set_health(200);
    let passed_from = checked.checks_passed();
    wait_for(Duration::from_secs(5), "the recovered endpoint to get traffic again", || {
        assert_eq!(client.get("hc.test", "/").status, 200);
        (checked.requests() > count).then_some(())
    })
    .unwrap();
    let passed = checked.checks_passed() - passed_from;
    assert!(passed >= HEALTHY_THRESHOLD, "back after {passed} passing checks, below the threshold");
}

// ---------------------------------------------------------------------------------------------
// 5b. What a reload carries over (docs/CONFIG.md, "Reloading"): endpoint health, ejections and
// upstream connection pools.
// ---------------------------------------------------------------------------------------------

/// A configuration of backend `pool` with `extra` fields, served on `/`, plus a route for
/// `marker` so that each configuration is a real change.
fn pool_config(addresses: &[SocketAddr], extra: &str, marker: u32) -> String {
    config(&format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [\
         {{match: {{path: {{exact: /marker-{marker}}}}}, backend: pool}}, {{backend: pool}}]}}\n",
        group("pool", addresses, extra)
    ))
}

/// The serving snapshot's state of the endpoint at `addr` in backend `pool`.
fn endpoint_state(proxy: &Proxy, addr: SocketAddr) -> Arc<lb_userspace::proxy::upstream::endpoint::Endpoint> {
    let snapshot = proxy.node.published().load();
    let group = snapshot.backends.iter().find(|g| g.name == "pool").expect("backend pool");
    group.endpoints.iter().find(|e| e.address == addr).expect("the endpoint").clone()
}

#[test]
fn a_reload_keeps_an_endpoint_out_that_failed_its_health_checks() {
    let steady = Backend::with_mode("steady", Mode::Echo);
    let checked = Backend::with_mode("checked", Mode::Echo);
    let addresses = [steady.addr(), checked.addr()];
    let check = |interval_ms: u32| {
        format!(
            ", health_check: {{path: {HEALTH_PATH}, interval_ms: {interval_ms}, timeout_ms: 500, \
             healthy_threshold: 1, unhealthy_threshold: 3}}"
        )
    };
    let proxy = Proxy::start(&pool_config(&addresses, &check(50), 0));
    let mut client = Client::connect(proxy.addr);
    checked.set_health(500);
    wait_for(Duration::from_secs(5), "the failing endpoint to be taken out", || {
        (!endpoint_state(&proxy, checked.addr()).check_healthy()).then_some(())
    })
    .unwrap();

    // Reloaded with checks a minute apart: were the endpoint's health reset to healthy, it
    // would take traffic for three minutes (three failed checks) before going out again.
    let generation = proxy.apply(&pool_config(&addresses, &check(60_000), 1));
    assert_eq!(client.get("h.test", "/marker-1").status, 200, "generation {generation} serves");
    assert!(!endpoint_state(&proxy, checked.addr()).check_healthy(), "health carried over");
    let count = checked.requests();
    for i in 0..50 {
        let response = client.get("h.test", &format!("/after-reload/{i}"));
        assert_eq!((response.status, backend_of(&response)), (200, "steady"), "request {i}");
    }
    assert_eq!(checked.requests(), count, "the unhealthy endpoint got traffic after the reload");
}

#[test]
fn a_reload_keeps_an_ejected_endpoint_ejected() {
    let good = Backend::with_mode("good", Mode::Echo);
    let flaky = Backend::with_mode("flaky", Mode::Status(500));
    let addresses = [good.addr(), flaky.addr()];
    // Ejected for 60 s: far longer than the test.
    let outlier = ", outlier: {consecutive_failures: 3, base_ejection_ms: 60000, max_ejection_ms: 60000}";
    let proxy = Proxy::start(&pool_config(&addresses, outlier, 0));
    let mut client = Client::connect(proxy.addr);
    for i in 0..20 {
        if flaky.requests() >= 3 {
            break;
        }
        let status = client.get("h.test", &format!("/fail/{i}")).status;
        assert!(status == 200 || status == 500, "{status}");
    }
    assert_eq!(flaky.requests(), 3, "three failures eject the endpoint");
    let now = lb_userspace::now_ms();
    assert!(endpoint_state(&proxy, flaky.addr()).is_ejected(now), "ejected");
    // It would answer well now: only the ejection keeps traffic away from it.
    flaky.set_mode(Mode::Echo);

    proxy.apply(&pool_config(&addresses, outlier, 1));
    assert_eq!(client.get("h.test", "/marker-1").status, 200, "the new configuration serves");
    let now = lb_userspace::now_ms();
    assert!(endpoint_state(&proxy, flaky.addr()).is_ejected(now), "the ejection carried over");
    for i in 0..50 {
        let response = client.get("h.test", &format!("/after-reload/{i}"));
        assert_eq!((response.status, backend_of(&response)), (200, "good"), "request {i}");
    }
    assert_eq!(flaky.requests(), 3, "the ejected endpoint got traffic after the reload");
}

#[test]
fn a_reload_keeps_upstream_connections_unless_the_backend_settings_change() {
    let backend = Backend::with_mode("pooled", Mode::Echo);
    let addresses = [backend.addr()];
    // One worker: one upstream pool, so one keep-alive upstream connection serves everything.
    let one_worker = |yaml: String| yaml.replacen("workers: 2", "workers: 1", 1);
    let proxy = Proxy::start(&one_worker(pool_config(&addresses, "", 0)));
    let mut client = Client::connect(proxy.addr);
    for i in 0..10 {
        assert_eq!(client.get("h.test", &format!("/warm/{i}")).status, 200);
    }
    let connections = backend.connections();
    assert_eq!(connections, 1, "one pooled upstream connection");

    // A change elsewhere (a new route): the pool, and its connection, carry over.
    proxy.apply(&one_worker(pool_config(&addresses, "", 1)));
    for i in 0..10 {
        assert_eq!(client.get("h.test", &format!("/marker-1?{i}")).status, 200);
    }
    assert_eq!(backend.connections(), connections, "the reload kept the upstream connection");

    // The backend's timeouts change: a new pool, so a new connection (the counter sees one).
    proxy.apply(&one_worker(pool_config(&addresses, ", timeouts: {request_ms: 7000}", 2)));
    for i in 0..10 {
        assert_eq!(client.get("h.test", &format!("/marker-2?{i}")).status, 200);
    }
    assert_eq!(backend.connections(), connections + 1, "new settings, new pool");
}

// ---------------------------------------------------------------------------------------------
// 6. Retries.
// ---------------------------------------------------------------------------------------------

fn retry_config(good: SocketAddr, dead: SocketAddr, attempts: u32) -> String {
    // Ejection off, so every round-robin turn of the dead endpoint is a connect failure; a
    // budget that allows every retry (the default would run dry after ~30 of 100 requests).
    config(&format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: pool}}]}}\n",
        group(
            "pool",
            &[good, dead],
            &format!(
                ", outlier: {{consecutive_failures: 0}}, \
                 retries: {{attempts: {attempts}, budget_percent: 100, min_retries_per_second: 1000}}"
            )
        )
    ))
}

#[test]
fn retries_hide_connect_failures() {
    let good = Backend::with_mode("good", Mode::Echo);
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::start(&retry_config(good.addr(), dead, 2));
    let mut client = Client::connect(proxy.addr);
    for i in 0..100 {
        let response = client.get("retry.test", &format!("/{i}"));
        assert_eq!(response.status, 200, "request {i}: a connect failure must be retried: {response:?}");
        assert_eq!(backend_of(&response), "good");
    }
    assert_eq!(good.requests(), 100);

    // Without retries the same failures reach the client: the retry is what hid them.
    proxy.apply(&retry_config(good.addr(), dead, 0));
    let (mut ok, mut bad_gateway) = (0, 0);
    for i in 0..100 {
        let response = client.get("retry.test", &format!("/{i}"));
        match response.status {
            200 => ok += 1,
            502 => bad_gateway += 1,
            other => panic!("unexpected status {other}: {response:?}"),
        }
    }
    assert!(bad_gateway > 0, "with attempts: 0, connect failures reach the client ({ok} ok)");
    assert!((40..=60).contains(&bad_gateway), "round robin: about half fail, got {bad_gateway}/100");
}

#[test]
fn retries_repeat_idempotent_requests_only() {
    let good = Backend::with_mode("good", Mode::Echo);
    let reset = Backend::with_mode("reset", Mode::Reset);
    let yaml = config(&format!(
        "backends:\n{}virtual_hosts:\n  - {{name: all, domains: [\"*\"], routes: [{{backend: pool}}]}}\n",
        group(
            "pool",
            &[good.addr(), reset.addr()],
            ", outlier: {consecutive_failures: 0}, \
             retries: {attempts: 2, budget_percent: 100, min_retries_per_second: 1000}"
        )
    ));
    let proxy = Proxy::start(&yaml);
    let mut client = Client::connect(proxy.addr);
    // The backend fails after reading the request: a GET may be repeated on the other endpoint.
    for i in 0..20 {
        let response = client.get("retry.test", &format!("/get/{i}"));
        assert_eq!((response.status, backend_of(&response)), (200, "good"), "GET {i}: {response:?}");
    }
    assert!(reset.requests() >= 5, "the failing endpoint was tried ({})", reset.requests());
    // A POST may already have had its effect: not repeated, the failure reaches the client.
    let (mut ok, mut bad_gateway) = (0, 0);
    for i in 0..20 {
        let response = client.request("POST", "retry.test", &format!("/post/{i}"), &[], false).unwrap();
        match response.status {
            200 => ok += 1,
            502 => bad_gateway += 1,
            other => panic!("unexpected status {other}: {response:?}"),
        }
    }
    assert!(bad_gateway >= 5 && ok >= 5, "POSTs are not retried: {ok} ok, {bad_gateway} 502");
}

// ---------------------------------------------------------------------------------------------
// 7. Errors.
// ---------------------------------------------------------------------------------------------

#[test]
fn upstream_failures_become_clear_errors_for_that_request_only() {
    let good = Backend::with_mode("good", Mode::Echo);
    let unready = Backend::with_mode("unready", Mode::Echo);
    let hang = Backend::with_mode("hang", Mode::Hang);
    let reset = Backend::with_mode("reset", Mode::Reset);
    let garbage = Backend::with_mode("garbage", Mode::Garbage);
    let (dead_a, dead_b) =
        (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let yaml = format!(
        "backends:
{good}{down}  - {{name: unready, endpoints: [{{address: \"{unready}\", ready: false}}]}}
{hang}{hang_long}{reset}{garbage}virtual_hosts:
  - name: err
    domains: [err.test]
    routes:
      - {{backend: good, match: {{path: {{prefix: /ok}}}}}}
      - {{backend: down, match: {{path: {{prefix: /down}}}}}}
      - {{backend: unready, match: {{path: {{prefix: /unready}}}}}}
      - {{backend: hang, match: {{path: {{prefix: /hang}}}}}}
      - {{backend: hang-long, match: {{path: {{prefix: /route-timeout}}}}, timeout_ms: 200}}
      - {{backend: reset, match: {{path: {{prefix: /reset}}}}}}
      - {{backend: garbage, match: {{path: {{prefix: /garbage}}}}}}
",
        good = group("good", &[good.addr()], ""),
        down = group("down", &[dead_a, dead_b], ""),
        unready = unready.addr(),
        hang = group("hang", &[hang.addr()], ", timeouts: {request_ms: 300}"),
        // The backend's own request timeout is the default 60 s: the route's 200 ms must win.
        hang_long = group("hang-long", &[hang.addr()], ""),
        reset = group("reset", &[reset.addr()], ""),
        garbage = group("garbage", &[garbage.addr()], ""),
    );
    let proxy = Proxy::start(&config(&yaml));

    // Every endpoint down: 502 with a short text body.
    let response = get(proxy.addr, "err.test", "/down");
    assert_eq!(response.status, 502, "{response:?}");
    assert!(response.body.starts_with("502 Bad Gateway") && response.body.len() < 200, "{:?}", response.body);
    assert!(response.header("content-type").is_some_and(|v| v.starts_with("text/plain")), "{response:?}");

    // One keep-alive connection: each failure answers its own request, the next one works.
    let mut client = Client::connect(proxy.addr);
    let ok = |client: &mut Client, after: &str| {
        let response = client.get("err.test", "/ok");
        assert_eq!((response.status, backend_of(&response)), (200, "good"), "after {after}: {response:?}");
        assert_ne!(response.header("connection"), Some("close"), "after {after}: {response:?}");
    };
    ok(&mut client, "nothing");
    for (path, status) in [("/down", 502), ("/unready", 503), ("/reset", 502), ("/garbage", 502)] {
        let response = client.get("err.test", path);
        assert_eq!(response.status, status, "{path}: {response:?}");
        assert_eq!(backend_of(&response), "<none>", "{path}: the proxy answers");
        assert!(response.body.starts_with(&status.to_string()), "{path}: short text {:?}", response.body);
        ok(&mut client, path);
    }
    assert_eq!(unready.requests(), 0, "an endpoint that is not ready gets no request");
    assert!(reset.requests() >= 1 && garbage.requests() >= 1, "those backends were reached");

    let started = Instant::now();
    let response = client.get("err.test", "/hang");
    let took = started.elapsed();
    assert_eq!(response.status, 504, "{response:?}");
    // Upper bound with slack: 700 ms past the 300 ms request timeout.
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(1), "504 after {took:?}");
    ok(&mut client, "/hang");

    let started = Instant::now();
    let response = client.get("err.test", "/route-timeout");
    let took = started.elapsed();
    assert_eq!(response.status, 504, "{response:?}");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(1),
        "route timeout after {took:?}"
    );
    ok(&mut client, "/route-timeout");

    let response = client.get("unknown.test", "/ok");
    assert_eq!(response.status, 404, "no virtual host takes this host: {response:?}");
    ok(&mut client, "a 404");
}

// ---------------------------------------------------------------------------------------------
// 8. Configuration swap.
// ---------------------------------------------------------------------------------------------

#[test]
fn configuration_swap_moves_routes_and_spares_requests_in_flight() {
    let old = Backend::with_mode("old", Mode::Echo);
    let new = Backend::with_mode("new", Mode::Echo);
    let slow = Backend::with_mode("slow", Mode::Hold);
    let before = format!(
        "backends:\n{}{}virtual_hosts:
  - name: all
    domains: [\"*\"]
    routes:
      - {{backend: app, match: {{path: {{prefix: /x}}}}}}
      - {{backend: slow, match: {{path: {{prefix: /slow}}}}}}
",
        group("app", &[old.addr()], ""),
        group("slow", &[slow.addr()], "")
    );
    // The new configuration moves /x and drops the slow route and its backend altogether.
    let after = format!(
        "backends:\n{}virtual_hosts:
  - name: all
    domains: [\"*\"]
    routes: [{{backend: app, match: {{path: {{prefix: /x}}}}}}]
",
        group("app", &[new.addr()], "")
    );
    let proxy = Proxy::start(&config(&before));
    assert_eq!(backend_of(&get(proxy.addr, "swap.test", "/x")), "old");
    // A keep-alive connection opened before the swap.
    let mut kept = Client::connect(proxy.addr);
    assert_eq!(backend_of(&kept.get("swap.test", "/x")), "old");

    let addr = proxy.addr;
    let in_flight = std::thread::spawn(move || get(addr, "swap.test", "/slow/request"));
    wait_for(Duration::from_secs(5), "the slow request to reach its backend", || {
        (slow.holding() == 1).then_some(())
    })
    .unwrap();

    let generation = proxy.apply(&config(&after));
    assert_eq!(generation, 2);
    let response = get(proxy.addr, "swap.test", "/x");
    assert_eq!((response.status, backend_of(&response)), (200, "new"), "{response:?}");
    assert_eq!(get(proxy.addr, "swap.test", "/slow/other").status, 404, "the slow route is gone");
    let response = kept.get("swap.test", "/x");
    assert_eq!(backend_of(&response), "new", "a connection from before the swap sees the new routes");
    assert!(!in_flight.is_finished(), "the slow request is still in flight during the swap");

    slow.release();
    let response = in_flight.join().unwrap();
    assert_eq!(response.status, 200, "the request in flight completes: {response:?}");
    assert_eq!(backend_of(&response), "slow");
    assert_eq!(Echoed::of(&response).target(), "/slow/request");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Every configuration starts with this: two workers, no XDP, a short drain on stop.
/// Source ranges (ingress-nginx `allowlist-source-range` / `denylist-source-range`) are decided
/// on the connection's peer over IPv4 and IPv6: a client outside the allow list or inside the
/// deny list gets a 403 that never reaches the backend, and an X-Forwarded-For the client sends
/// opens nothing. A route's ranges replace its virtual host's; a redirect route answers first,
/// as nginx's rewrite phase does.
#[test]
fn source_ranges_admit_by_the_peer_address() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, lb_tests::free_port()));
    let yaml = format!(
        "workers: 2
xdp: {{enabled: false}}
limits: {{shutdown_grace_ms: 500}}
listeners: [{{name: web, address: \"{{listen}}\"}}, {{name: web6, address: \"{v6}\"}}]
backends:\n{}virtual_hosts:
  - name: office
    domains: [office.example]
    source_ranges: {{allow: [\"127.0.0.0/8\"]}}
    routes:
      - {{name: office-all, backend: echo}}
      - {{name: office-open, match: {{path: {{prefix: /open}}}}, backend: echo, source_ranges: {{allow: [\"0.0.0.0/0\", \"::/0\"]}}}}
  - name: remote
    domains: [remote.example]
    routes:
      - {{name: remote-only, backend: echo, source_ranges: {{allow: [\"10.0.0.0/8\", \"2001:db8::/32\"]}}}}
      - {{name: remote-moved, match: {{path: {{prefix: /moved}}}}, redirect: {{path: /elsewhere, code: 308}}, source_ranges: {{allow: [\"10.0.0.0/8\"]}}}}
  - name: blocked
    domains: [blocked.example]
    source_ranges: {{deny: [\"127.0.0.1\", \"::1/128\"]}}
    routes: [{{name: blocked-all, backend: echo}}]
",
        group("echo", &[echo.addr()], "")
    );
    let proxy = Proxy::start(&yaml);
    lb_tests::wait_for(Duration::from_secs(10), "the IPv6 listener", || {
        std::net::TcpStream::connect(v6).ok()
    })
    .unwrap();
    // (listener, host, path, request headers, expected status)
    type Case<'a> = (SocketAddr, &'a str, &'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        (proxy.addr, "office.example", "/", &[], 200),
        (v6, "office.example", "/", &[], 403),
        (v6, "office.example", "/open/x", &[], 200),
        (proxy.addr, "remote.example", "/", &[], 403),
        (
            proxy.addr,
            "remote.example",
            "/",
            &[("X-Forwarded-For", "10.1.2.3"), ("X-Real-IP", "10.1.2.3")],
            403,
        ),
        (v6, "remote.example", "/", &[("X-Forwarded-For", "2001:db8::1")], 403),
        (proxy.addr, "remote.example", "/moved", &[], 308),
        (proxy.addr, "blocked.example", "/", &[], 403),
        (v6, "blocked.example", "/", &[], 403),
    ];
    let mut failures = Vec::new();
    for &(addr, host, path, headers, expected) in cases {
        let response = request(addr, "GET", host, path, headers);
        if response.status != expected {
            failures.push(format!(
                "{addr} {host}{path} {headers:?}: expected {expected}, got {}",
                response.status
            ));
        }
        if response.status == 403 && backend_of(&response) != "<none>" {
            failures.push(format!("{addr} {host}{path}: a refused request reached the backend"));
        }
    }
    assert!(failures.is_empty(), "source ranges:\n{}", failures.join("\n"));
}

/// Basic auth from the YAML (ingress-nginx `auth-type: basic`): a request without valid
/// credentials gets 401 with the host's realm and never reaches the backend; inline apr1 lines
/// and an htpasswd file with a bcrypt line (a route's own, replacing the host's) both admit
/// their users; a wrong password, an unknown user and another scheme are refused; the backend
/// never sees the credentials (ingress-nginx clears `Authorization`). The cached
/// credential of a keep-alive client is still checked against the right route's users.
#[test]
fn basic_auth_admits_valid_credentials_only() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let dir = lb_tests::temp_dir::TempDir::new();
    let file = dir.0.join("htpasswd");
    // The OpenBSD test vector for `U*U`, with Apache's $2y$ prefix.
    std::fs::write(&file, "# staff\nops:$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n")
        .unwrap();
    let yaml = format!(
        "{PRELUDE}backends:\n{}virtual_hosts:
  - name: staff
    domains: [staff.example]
    basic_auth:
      realm: Staff only
      # openssl passwd -apr1 -salt staffsal 'open sesame'
      htpasswd: |
        alice:$apr1$staffsal$v5RZ3aJYlfSvB2MO7p.XF.
    routes:
      - {{name: staff-all, backend: echo}}
      - name: staff-ops
        match: {{path: {{prefix: /ops}}}}
        backend: echo
        basic_auth: {{realm: Ops, htpasswd_file: \"{}\"}}
",
        group("echo", &[echo.addr()], ""),
        file.display()
    );
    let proxy = Proxy::start(&yaml);
    let basic = http::basic_credentials;
    let (alice, ops) = (basic("alice", "open sesame"), basic("ops", "U*U"));
    let (wrong, stranger) = (basic("alice", "open sesame!"), basic("mallory", "open sesame"));
    // (path, Authorization, expected status, expected realm of a 401)
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("/", None, 401, "Staff only"),
        ("/", Some(&alice), 200, ""),
        ("/", Some(&alice), 200, ""),
        ("/", Some(&wrong), 401, "Staff only"),
        ("/", Some(&stranger), 401, "Staff only"),
        ("/", Some("Bearer abc"), 401, "Staff only"),
        ("/", Some(&ops), 401, "Staff only"),
        ("/ops/x", Some(&ops), 200, ""),
        ("/ops/x", Some(&alice), 401, "Ops"),
        ("/ops/x", None, 401, "Ops"),
    ];
    let mut failures = Vec::new();
    for &(path, authorization, expected, realm) in cases {
        let headers: Vec<(&str, &str)> = authorization.map(|a| ("Authorization", a)).into_iter().collect();
        let response = request(proxy.addr, "GET", "staff.example", path, &headers);
        let challenge = response.header("www-authenticate").unwrap_or("").to_owned();
        let reached = backend_of(&response) != "<none>";
        let expected_challenge =
            if expected == 401 { format!("Basic realm=\"{realm}\"") } else { String::new() };
        if reached && Echoed::of(&response).header("authorization").is_some() {
            failures.push(format!("{path}: the credentials reached the backend"));
        }
        if response.status != expected || challenge != expected_challenge || reached != (expected == 200) {
            failures.push(format!(
                "{path} {authorization:?}: got {} {challenge:?} (backend reached: {reached}), expected {expected} {expected_challenge:?}",
                response.status
            ));
        }
    }
    assert!(failures.is_empty(), "basic auth:\n{}", failures.join("\n"));
    // An Authorization accepted on one route opens nothing on a route with other users, also on
    // one keep-alive connection after it was cached.
    let mut connection = Client::connect(proxy.addr);
    for (path, expected) in [("/", 200), ("/ops/x", 401), ("/", 200)] {
        let response =
            connection.request("GET", "staff.example", path, &[("Authorization", &alice)], false).unwrap();
        assert_eq!(response.status, expected, "keep-alive {path}");
    }
}

/// External auth (ingress-nginx `auth-url`, nginx `auth_request`) against an oauth2-proxy-like
/// service: a 2xx passes with the listed answer fields on the backend's request (replacing a
/// client's spoofed one) and the service's cookie on the response; the subrequest carries the
/// original method, URL and fields, no body; 401 becomes a 302 to the sign-in page with the
/// original URL in `rd`, as ingress-nginx builds it (or the service's 401 and challenge without
/// `signin`); 403 is 403; another status or no answer in time is 500. With `cache_key`, one
/// answer per key reaches the service; connections to it are pooled.
#[test]
fn external_auth_asks_the_service_and_follows_its_answer() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let auth = lb_tests::raw_backend::auth_service(seen.clone());
    let url = format!("http://{}/oauth2/auth", auth.addr);
    let yaml = format!(
        "{PRELUDE}backends:\n{}virtual_hosts:
  - name: app
    domains: [app.example]
    external_auth:
      url: \"{url}\"
      signin: \"http://app.example/oauth2/start\"
      response_headers: [X-Auth-Request-User, X-Auth-Request-Email]
      timeout_ms: 700
    routes:
      - {{name: app-all, backend: echo}}
      - name: app-plain
        match: {{path: {{prefix: /plain}}}}
        backend: echo
        external_auth: {{url: \"{url}\"}}
      - name: app-cached
        match: {{path: {{prefix: /cached}}}}
        backend: echo
        external_auth: {{url: \"{url}\", cache_key: \"$cookie_session\", cache_duration: \"202 401 1m\"}}
",
        group("echo", &[echo.addr()], "")
    );
    let proxy = Proxy::start(&yaml);
    let get = |path: &str, session: &str, extra: &[(&str, &str)]| {
        let cookie = format!("session={session}");
        let mut headers = vec![("Cookie", cookie.as_str())];
        headers.extend_from_slice(extra);
        request(proxy.addr, "GET", "app.example", path, &headers)
    };

    let allowed = get("/x?a=b", "alice", &[("X-Auth-Request-User", "mallory")]);
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let echoed = Echoed::of(&allowed);
    assert_eq!(
        echoed.header("x-auth-request-user"),
        Some("alice"),
        "the service's field replaces the client's"
    );
    assert_eq!(echoed.header("x-auth-request-email"), Some("alice@example.com"));
    assert_eq!(echoed.header("x-not-listed"), None);
    assert_eq!(allowed.header("set-cookie"), Some("refreshed=1; Path=/"));
    let asked = seen.lock().unwrap().last().cloned().expect("the service was asked");
    assert_eq!((asked.method(), asked.path()), ("GET", "/oauth2/auth"));
    assert_eq!(asked.header("x-original-url"), Some("http://app.example/x?a=b"));
    assert_eq!(asked.header("x-original-method"), Some("GET"));
    assert_eq!(asked.header("x-auth-request-redirect"), Some("/x?a=b"));
    assert_eq!(asked.header("x-sent-from"), Some("nginx-ingress-controller"));
    assert_eq!(asked.header("host"), Some(auth.addr.to_string().as_str()));
    assert_eq!(asked.header("cookie"), Some("session=alice"));
    assert!(asked.body.is_empty());

    let post = request(proxy.addr, "POST", "app.example", "/form", &[("Cookie", "session=alice")]);
    assert_eq!(post.status, 200, "{post:?}");
    assert_eq!(seen.lock().unwrap().last().unwrap().method(), "POST", "the original method");

    let requests_before = echo.requests();
    let signin = get("/?a=b&c=d", "", &[]);
    assert_eq!(signin.status, 302, "{signin:?}");
    assert_eq!(
        signin.header("location"),
        Some("http://app.example/oauth2/start?rd=http://app.example%2F%3Fa%3Db%26c%3Dd")
    );
    let plain = get("/plain", "", &[]);
    assert_eq!((plain.status, plain.header("www-authenticate")), (401, Some("Bearer realm=\"sso\"")));
    assert_eq!(get("/", "forbidden", &[]).status, 403);
    assert_eq!(get("/", "broken", &[]).status, 500, "another status is a 500");
    let started = Instant::now();
    assert_eq!(get("/", "slow", &[]).status, 500, "no answer in time is a 500");
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout held: {:?}", started.elapsed());
    assert_eq!(echo.requests(), requests_before, "no refused request reached the backend");

    let asked_before = seen.lock().unwrap().len();
    for _ in 0..5 {
        assert_eq!(get("/cached", "alice", &[]).status, 200);
        assert_eq!(get("/cached", "bob", &[]).status, 401);
    }
    assert_eq!(seen.lock().unwrap().len() - asked_before, 2, "one answer per cache key reached the service");
    // Sequential requests reuse pooled connections (the slow one's was given up).
    let asked = seen.lock().unwrap().len();
    assert!(auth.accepted() <= 5, "{} connections for {asked} subrequests", auth.accepted());
}

const PRELUDE: &str = "\
workers: 2
xdp: {enabled: false}
limits: {shutdown_grace_ms: 500}
listeners: [{name: web, address: \"{listen}\"}]
";

fn config(rest: &str) -> String {
    format!("{PRELUDE}{rest}")
}

/// One `backends:` entry (indented for the list) with these endpoints and extra fields
/// (`extra` starts with `, ` when not empty).
fn group(name: &str, addresses: &[SocketAddr], extra: &str) -> String {
    let endpoints: Vec<String> = addresses.iter().map(|a| format!("{{address: \"{a}\"}}")).collect();
    format!("  - {{name: {name}, endpoints: [{}]{extra}}}\n", endpoints.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Client side: raw HTTP/1.1 over TCP, one-shot or keep-alive.
// ---------------------------------------------------------------------------------------------

/// One request on a new connection.
fn request(addr: SocketAddr, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http::request(addr, method, host, path, headers).unwrap_or_else(|e| panic!("{e:#}"))
}

fn get(addr: SocketAddr, host: &str, path: &str) -> HttpResponse {
    request(addr, "GET", host, path, &[])
}

/// The backend that answered, or `<none>` (a proxy-made response).
fn backend_of(response: &HttpResponse) -> &str {
    response.header(BACKEND_HEADER).unwrap_or("<none>")
}

const ROUTING_HOSTS: &str = "\
virtual_hosts:
  - name: app
    domains: [app.example.com]
    routes:
      - {backend: root, match: {path: {prefix: /}}}
      - {backend: prefix-foo, match: {path: {prefix: /foo}}}
      - {backend: exact-foo, match: {path: {exact: /foo}}}
      - {backend: prefix-foo-bar, match: {path: {prefix: /foo/bar}}}
      - {backend: trail, match: {path: {prefix: /trail/}}}
      - {backend: exact-dir, match: {path: {exact: /dir/}}}
      - {backend: prefix-api-v1, match: {path: {prefix: /api/v1}}}
      - {backend: regex-items, match: {path: {regex: \"/api/v[0-9]+/items\"}}}
      - {backend: prefix-long, match: {path: {prefix: /api/v1/items/special}}}
      - {backend: regex-tie, match: {path: {regex: \"/r.g\"}}}
      - {backend: prefix-tie, match: {path: {prefix: /reg}}}
      - {backend: stable, match: {path: {prefix: /h}}}
      - {backend: canary, match: {path: {prefix: /h}, headers: [{name: X-Canary, exact: \"1\"}]}}
      - {backend: reads, match: {path: {prefix: /m}}}
      - {backend: writes, match: {path: {prefix: /m}, methods: [POST, PUT]}}
  - name: wild
    domains: [\"*.example.com\"]
    routes: [{backend: wildcard}]
  - name: strict
    domains: [strict.example.com]
    routes: [{backend: strict, match: {path: {prefix: /only}}}]
  - name: fallback
    domains: [\"*\"]
    routes: [{backend: default}]
";

/// (method, host, path, headers, expected backend or `status N`).
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
