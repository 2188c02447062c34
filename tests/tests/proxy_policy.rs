//! A route's traffic policy end to end over loopback sockets: configured header changes on
//! requests and responses (virtual host, then route), and CORS as ingress-nginx's
//! `enable-cors` serves it (preflights answered by Sluice before the access checks, the
//! `Access-Control-*` fields on every response to an allowed origin). Each test runs an
//! in-process node (`lb_tests::sluice::Proxy`, no XDP, no root) in front of echoing backends.

use std::net::SocketAddr;

use lb_tests::{
    backend::{Backend, Echoed, Mode},
    free_port,
    http::{self, HttpResponse},
    sluice::Proxy,
};

const PRELUDE: &str = "\
workers: 2
xdp: {enabled: false}
limits: {shutdown_grace_ms: 500}
listeners: [{name: web, address: \"{listen}\"}]
";

fn request(addr: SocketAddr, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http::request(addr, method, host, path, headers).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every value of a response field, in order.
fn all<'r>(response: &'r HttpResponse, name: &str) -> Vec<&'r str> {
    response.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

#[test]
fn header_changes_apply_host_then_route_to_requests_and_every_response() {
    let echo = Backend::with_mode("echo", Mode::EchoHop);
    let yaml = format!(
        "{PRELUDE}backends:
  - {{name: echo, endpoints: [{{address: \"{}\"}}]}}
  - {{name: dead, endpoints: [{{address: \"{}\"}}], retries: {{attempts: 0}}}}
virtual_hosts:
  - name: app
    domains: [app.test]
    request_headers:
      set: [{{name: X-Env, value: host}}, {{name: X-Team, value: platform}}]
      add: [{{name: X-Trace, value: host-added}}]
    response_headers:
      set: [{{name: X-Frame-Options, value: DENY}}]
    routes:
      - backend: echo
        match: {{path: {{prefix: /api}}}}
        request_headers:
          set: [{{name: X-Env, value: route}}, {{name: Host, value: internal.svc}}]
          remove: [X-Team, X-Secret, X-Forwarded-Port]
        response_headers:
          remove: [X-End-To-End]
          add: [{{name: X-Served-By, value: sluice}}]
      - backend: dead
        match: {{path: {{prefix: /dead}}}}
      - backend: echo
",
        echo.addr(),
        SocketAddr::from(([127, 0, 0, 1], free_port()))
    );
    let proxy = Proxy::start(&yaml);

    let response = request(
        proxy.addr,
        "GET",
        "app.test",
        "/api/x",
        &[("X-Env", "client"), ("X-Secret", "s3cret"), ("X-Trace", "client"), ("X-Team", "client")],
    );
    assert_eq!(response.status, 200, "{response:?}");
    let seen = Echoed::of(&response);
    assert_eq!(seen.all("x-env"), ["route"], "the route's set wins over the host's and the client's");
    assert_eq!(seen.all("host"), ["internal.svc"], "Host replaced (upstream-vhost)");
    assert_eq!(seen.header("x-forwarded-host"), Some("app.test"), "the client's host is forwarded");
    assert_eq!(seen.all("x-trace"), ["client", "host-added"], "add appends to the client's");
    for removed in ["x-team", "x-secret", "x-forwarded-port"] {
        assert_eq!(seen.header(removed), None, "{removed} removed: {:?}", seen.headers);
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"), "the other forwarding fields stay");
    assert_eq!(all(&response, "x-frame-options"), ["DENY"], "the host's response change");
    assert_eq!(all(&response, "x-served-by"), ["sluice"], "the route's response change");
    assert_eq!(response.header("x-end-to-end"), None, "the backend's field removed by the route");

    // Another route of the host gets the host's changes only.
    let response = request(proxy.addr, "GET", "app.test", "/other", &[("X-Team", "client")]);
    let seen = Echoed::of(&response);
    assert_eq!(seen.all("x-env"), ["host"]);
    assert_eq!(seen.all("x-team"), ["platform"], "set replaces the client's value");
    assert_eq!(seen.all("host"), ["app.test"]);
    assert_eq!(response.header("x-end-to-end"), Some("1"), "the backend's field kept on this route");
    assert_eq!(all(&response, "x-frame-options"), ["DENY"]);
    assert_eq!(response.header("x-served-by"), None);

    // Sluice's own answers carry the route's response changes too (nginx's more_set_headers).
    let response = request(proxy.addr, "GET", "app.test", "/dead", &[]);
    assert_eq!(response.status, 502, "{response:?}");
    assert_eq!(all(&response, "x-frame-options"), ["DENY"]);
}

#[test]
fn cors_answers_preflights_and_decorates_responses_to_allowed_origins() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let yaml = format!(
        "{PRELUDE}backends:
  - {{name: echo, endpoints: [{{address: \"{}\"}}]}}
virtual_hosts:
  - name: api
    domains: [api.test]
    cors:
      allow_origins: [\"https://app.test\", \"https://*.corp.test:8443\"]
      expose_headers: [X-Total]
    routes:
      - backend: echo
        match: {{path: {{prefix: /locked}}}}
        source_ranges: {{deny: [127.0.0.0/8]}}
      - backend: echo
        match: {{path: {{prefix: /open}}}}
        cors: {{allow_credentials: false, allow_methods: [GET], max_age_seconds: 60}}
      - backend: echo
",
        echo.addr()
    );
    let proxy = Proxy::start(&yaml);
    let origin = "https://app.test";

    // A preflight from an allowed origin: 204 from Sluice, the backend never sees it.
    let preflight = request(
        proxy.addr,
        "OPTIONS",
        "api.test",
        "/items",
        &[("Origin", origin), ("Access-Control-Request-Method", "PUT")],
    );
    assert_eq!(preflight.status, 204, "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some(origin));
    assert_eq!(preflight.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
    );
    assert!(preflight.header("access-control-allow-headers").is_some_and(|h| h.contains("Authorization")));
    assert_eq!(preflight.header("access-control-expose-headers"), Some("X-Total"));
    assert_eq!(preflight.header("access-control-max-age"), Some("1728000"));
    assert_eq!(all(&preflight, "vary"), ["Origin"]);
    assert_eq!(echo.requests(), 0, "a preflight is answered by Sluice");

    // A wildcard origin: one label, the port as listed.
    let wild = request(proxy.addr, "OPTIONS", "api.test", "/", &[("Origin", "https://eu-1.corp.test:8443")]);
    assert_eq!(
        (wild.status, wild.header("access-control-allow-origin")),
        (204, Some("https://eu-1.corp.test:8443"))
    );

    // An OPTIONS from an origin not on the list goes to the backend, with no CORS fields.
    for other in [
        "https://evil.test",
        "https://a.b.corp.test:8443",
        "https://x.corp.test",
        "https://evil.testhttps://app.test",
    ] {
        let response = request(proxy.addr, "OPTIONS", "api.test", "/items", &[("Origin", other)]);
        assert_eq!(response.status, 200, "{other}: {response:?}");
        assert_eq!(response.header("access-control-allow-origin"), None, "{other}");
    }
    assert_eq!(echo.requests(), 4);

    // An actual request from an allowed origin reaches the backend and carries the fields.
    let actual = request(proxy.addr, "GET", "api.test", "/items", &[("Origin", origin)]);
    assert_eq!(actual.status, 200);
    assert_eq!(actual.header("access-control-allow-origin"), Some(origin));
    assert_eq!(actual.header("access-control-expose-headers"), Some("X-Total"));
    assert_eq!(Echoed::of(&actual).header("origin"), Some(origin), "the backend sees the Origin");
    let other = request(proxy.addr, "GET", "api.test", "/items", &[("Origin", "https://evil.test")]);
    assert_eq!((other.status, other.header("access-control-allow-origin")), (200, None));

    // Preflights come before the access checks (nginx's rewrite phase before its access
    // phase); the refusal itself still carries the CORS fields, so the browser shows it.
    let preflight = request(proxy.addr, "OPTIONS", "api.test", "/locked", &[("Origin", origin)]);
    assert_eq!(preflight.status, 204);
    let refused = request(proxy.addr, "GET", "api.test", "/locked", &[("Origin", origin)]);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("access-control-allow-origin"), Some(origin));

    // A route's own policy replaces the host's: here `*` (the default), without credentials.
    let open = request(proxy.addr, "GET", "api.test", "/open", &[]);
    assert_eq!(open.status, 200);
    assert_eq!(open.header("access-control-allow-origin"), Some("*"), "`*` answers even without Origin");
    assert_eq!(open.header("access-control-allow-credentials"), None);
    assert_eq!(open.header("access-control-allow-methods"), Some("GET"));
    assert_eq!(open.header("vary"), None, "a `*` answer does not vary by origin");
    let preflight = request(proxy.addr, "OPTIONS", "api.test", "/open", &[]);
    assert_eq!((preflight.status, preflight.header("access-control-max-age")), (204, Some("60")));
}
