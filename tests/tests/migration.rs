//! The migration corpus: Ingress manifests shaped like the ones public charts and guides install
//! for ingress-nginx (`tests/fixtures/migration/`), applied unchanged to the fake API server and
//! served by the real binary in `--kubernetes` mode, each asserted over real sockets with the
//! behaviour ingress-nginx documents for it: oauth2-proxy's external auth and sign-in redirect,
//! cert-manager's HTTP-01 solver next to the app on the same host, a CORS API (preflight and
//! actual request), canaries by header and by weight, a WebSocket upgrade, gRPC over h2c, an
//! HTTPS-only service, basic auth from an htpasswd Secret, a per-client rate limit, a source
//! allow list, security headers from a ConfigMap with upstream-vhost, the rewrite-target regex
//! example, app-root, custom error pages from a default backend, sticky sessions, a TLS host
//! (redirect to HTTPS, HSTS by default), a www twin redirected to the bare name, shadow traffic
//! mirrored to a Service in another namespace, and PROXY protocol behind a cloud TCP balancer (the
//! controller ConfigMap's `use-proxy-protocol`).
//!
//! One Sluice serves every manifest but the PROXY protocol one, which needs every listener to
//! read a PROXY header and so gets its own instance.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use lb_tests::{
    backend::{self, BACKEND_HEADER, Backend, Echoed, Mode},
    fake_kube::{
        FakeKube,
        objects::{SliceEndpoint, endpoint_slice, ingress_class, service, tls_secret},
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    http::{self, Client, HttpResponse},
    raw_backend::{BackendConn, RawBackend},
    tls,
};
use serde_json::{Value, json};

const CONTROLLER: &str = "sluice.dev/ingress-controller";

#[test]
fn the_corpus_is_served_as_ingress_nginx_documents_it() {
    let kube = FakeKube::start().unwrap();
    let cluster = Cluster::publish(&kube);
    kube.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "ingress-nginx", "name": "controller"},
        "data": {"global-allowed-response-headers": "X-Frame-Options,X-Content-Type-Options"},
    }));
    let auth_addr = cluster.auth.addr.to_string();
    for file in corpus() {
        if file.ends_with("15-proxy-protocol.yaml") {
            continue;
        }
        apply_fixture(&kube, &file, &auth_addr);
    }
    let options = KubeSluiceOptions { tls: true, ..KubeSluiceOptions::default() };
    let sluice = KubeSluice::start(&kube, options.args(&["--nginx-configmap", "ingress-nginx/controller"]));
    sluice.wait_for_backend("cart.example.com", "/", "cart-0", Duration::from_secs(20));
    sluice.wait_for_status("dashboard.example.com", "/", 302, Duration::from_secs(10));
    let addr = sluice.addr;

    oauth2_proxy(addr);
    cert_manager_solver(addr);
    cors_api(addr);
    canaries(addr);
    websocket(addr);
    grpc_and_https(addr);
    basic_auth(addr);
    rate_limit_and_allow_list(addr);
    custom_headers_rewrite_and_app_root(addr);
    error_pages_and_sticky_sessions(addr, &cluster);
    tls_host(addr, sluice.tls_addr.unwrap(), &cluster.webapp_ca);
    www_redirect(addr, sluice.tls_addr.unwrap(), &cluster.webapp_ca);
    mirror(addr, &cluster.shadow);
    drop(sluice);

    proxy_protocol_behind_a_tcp_balancer(&kube);
}

/// 01: no session → 302 to the sign-in URL with `rd` (nginx variables expanded); a session
/// cookie → the app, with the auth service's user fields.
fn oauth2_proxy(addr: SocketAddr) {
    let denied = get(addr, "dashboard.example.com", "/private?page=2", &[]);
    assert_eq!(denied.status, 302, "{denied:?}");
    let location = denied.header("location").unwrap();
    assert!(
        location.starts_with("https://dashboard.example.com/oauth2/start?rd=")
            && location.contains("private"),
        "{location}"
    );
    let allowed = get(addr, "dashboard.example.com", "/private", &[("Cookie", "_oauth2_proxy=session")]);
    let seen = Echoed::of(&allowed);
    assert_eq!(seen.header("x-auth-request-user"), Some("alice"));
    assert_eq!(seen.header("x-auth-request-email"), Some("alice@example.com"));
}

/// 02: the challenge path answers from the solver while the app keeps `/` of the same host.
fn cert_manager_solver(addr: SocketAddr) {
    let challenge = get(addr, "shop.example.com", "/.well-known/acme-challenge/Mk3f9xV2cZ-token", &[]);
    assert_eq!(
        (challenge.status, challenge.header(BACKEND_HEADER)),
        (200, Some("cm-acme-http-solver-x7k2p")),
        "{challenge:?}"
    );
    assert_eq!(get(addr, "shop.example.com", "/", &[]).header(BACKEND_HEADER), Some("shop-stable"));
}

/// 03: a preflight is answered by Sluice (204) with the configured fields; actual requests get
/// the origin back when it is allowed (wildcard subdomains too) and nothing otherwise.
fn cors_api(addr: SocketAddr) {
    let preflight = request(
        addr,
        "OPTIONS",
        "api.example.com",
        "/v1/items",
        &[("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "PUT")],
    );
    assert_eq!(preflight.status, 204, "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(preflight.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert!(preflight.header("access-control-allow-methods").is_some_and(|m| m.contains("PUT")));
    let actual = get(addr, "api.example.com", "/v1/items", &[("Origin", "https://shop.example.org")]);
    assert_eq!(
        (actual.status, actual.header("access-control-allow-origin")),
        (200, Some("https://shop.example.org"))
    );
    let other = get(addr, "api.example.com", "/v1/items", &[("Origin", "https://evil.test")]);
    assert_eq!((other.status, other.header("access-control-allow-origin")), (200, None));
}

/// 04 and 05: `X-Canary: always` goes to the canary, `never` and no header to the stable
/// release; a canary at weight 100 takes every request.
fn canaries(addr: SocketAddr) {
    let to = |value: Option<&str>| {
        let headers: Vec<(&str, &str)> = value.map(|v| ("X-Canary", v)).into_iter().collect();
        get(addr, "shop.example.com", "/", &headers).header(BACKEND_HEADER).unwrap_or("?").to_owned()
    };
    assert_eq!(to(Some("always")), "shop-canary");
    assert_eq!(to(Some("never")), "shop-stable");
    assert_eq!(to(None), "shop-stable");
    for _ in 0..10 {
        assert_eq!(get(addr, "blog.example.com", "/", &[]).header(BACKEND_HEADER), Some("blog-green"));
    }
}

/// 06: the upgrade is passed through and bytes flow both ways after the 101.
fn websocket(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
        .write_all(
            b"GET /ws/room HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"hello over the tunnel").unwrap();
    let mut echoed = [0u8; 21];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello over the tunnel");
}

/// 07 and 08: `backend-protocol: GRPC` speaks HTTP/2 to the pods; `HTTPS` speaks TLS to a pod
/// with a self-signed certificate (not verified, ingress-nginx's default).
fn grpc_and_https(addr: SocketAddr) {
    let grpc = get(addr, "grpc.example.com", "/helloworld.Greeter/SayHello", &[]);
    assert_eq!((grpc.status, grpc.header("x-version")), (200, Some("HTTP/2.0")), "{grpc:?}");
    let https = get(addr, "k8s-dashboard.example.com", "/", &[]);
    assert_eq!(
        (https.status, https.header(BACKEND_HEADER)),
        (200, Some("kubernetes-dashboard")),
        "{https:?}"
    );
}

/// 09: 401 with the realm without credentials or with a wrong password; the htpasswd user in.
fn basic_auth(addr: SocketAddr) {
    let none = get(addr, "admin.example.com", "/", &[]);
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Basic realm=\"Authentication Required - foo\""));
    let wrong = http::basic_credentials("foo", "nope");
    assert_eq!(get(addr, "admin.example.com", "/", &[("Authorization", &wrong)]).status, 401);
    let right = http::basic_credentials("foo", "migration");
    assert_eq!(get(addr, "admin.example.com", "/", &[("Authorization", &right)]).status, 200);
}

/// 10 and 11: past `limit-rps` × `limit-burst-multiplier` at once a client gets 503; an
/// address outside the allow list gets 403.
fn rate_limit_and_allow_list(addr: SocketAddr) {
    let statuses: Vec<u16> = (0..20).map(|_| get(addr, "search.example.com", "/q", &[]).status).collect();
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses[0] == 200 && statuses.contains(&503), "{statuses:?}");
    assert!(
        (7..=9).contains(&passed),
        "the first, a burst of 2 × 3, and what refilled meanwhile: {statuses:?}"
    );
    assert_eq!(get(addr, "internal.example.com", "/", &[]).status, 403, "127.0.0.1 is not in the list");
}

/// 12, 13 and 14: the ConfigMap's headers on responses and upstream-vhost as the pod's Host;
/// the rewrite example's paths (case-insensitive, query kept); app-root's redirect from `/`.
fn custom_headers_rewrite_and_app_root(addr: SocketAddr) {
    let docs = get(addr, "docs.example.com", "/guide", &[]);
    assert_eq!(docs.header("x-frame-options"), Some("DENY"));
    assert_eq!(docs.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(Echoed::of(&docs).header("host"), Some("docs.internal"));
    for (path, target) in
        [("/something", "/"), ("/something/new", "/new"), ("/SomeThing/new?x=1", "/new?x=1")]
    {
        let response = get(addr, "rewrite.example.com", path, &[]);
        assert_eq!(Echoed::of(&response).target(), target, "{path}");
    }
    assert_eq!(get(addr, "rewrite.example.com", "/other", &[]).status, 404);
    let root = get(addr, "approot.example.com", "/", &[]);
    assert_eq!(root.status, 302);
    assert!(root.header("location").is_some_and(|l| l.ends_with("/app1")), "{root:?}");
    assert_eq!(
        get(addr, "approot.example.com", "/app1/index.html", &[]).header(BACKEND_HEADER),
        Some("portal")
    );
}

/// 16 and 17: the pod's 503 is answered by the error pages Service with X-Code; the affinity
/// cookie pins a client to one of two pods.
fn error_pages_and_sticky_sessions(addr: SocketAddr, cluster: &Cluster) {
    let page = get(addr, "flaky.example.com", "/checkout", &[]);
    let seen = Echoed::of(&page);
    assert_eq!(seen.header("x-code"), Some("503"));
    assert_eq!(seen.header("x-original-uri"), Some("/checkout"));
    assert_eq!(seen.header("x-service-name"), Some("flaky"));
    let first = get(addr, "cart.example.com", "/", &[]);
    let cookie =
        first.header("set-cookie").expect("an affinity cookie").split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("route="), "{cookie}");
    let pinned = first.header(BACKEND_HEADER).unwrap().to_owned();
    for _ in 0..10 {
        let again = get(addr, "cart.example.com", "/", &[("Cookie", &cookie)]);
        assert_eq!(again.header(BACKEND_HEADER), Some(pinned.as_str()));
    }
    assert!(cluster.cart.iter().all(|b| b.name().starts_with("cart-")));
}

/// 18: plain HTTP is redirected to HTTPS (308, path and query kept); HTTPS is served with the
/// Secret's certificate and ingress-nginx's default HSTS.
fn tls_host(addr: SocketAddr, tls_addr: SocketAddr, ca: &tls::Ca) {
    let redirect = get(addr, "webapp.example.com", "/login?next=/home", &[]);
    assert_eq!(redirect.status, 308, "{redirect:?}");
    // No port, as ingress-nginx writes it without use-port-in-redirects (TLS is on 443 where
    // clients connect).
    assert_eq!(redirect.header("location"), Some("https://webapp.example.com/login?next=/home"));
    let config = tls::client_config(tls::ClientOptions { trust: Some(ca), ..Default::default() });
    let stream = tls::connect(tls_addr, Some("webapp.example.com"), &config).unwrap();
    let response = Client::new(stream).request("GET", "webapp.example.com", "/login", &[], true).unwrap();
    assert_eq!((response.status, response.header(BACKEND_HEADER)), (200, Some("webapp")));
    assert_eq!(response.header("strict-transport-security"), Some("max-age=31536000; includeSubDomains"));
}

/// 19: the www twin of a host with `from-to-www-redirect` answers 308 to the bare name, written
/// as ingress-nginx's redirect server writes it (its e2e test): the scheme and the port the client
/// used, the URI kept but for one trailing slash; on HTTPS the certificate that covers both names
/// is served first. The bare name itself is served, over HTTPS and, after the usual redirect to
/// HTTPS, over HTTP.
fn www_redirect(addr: SocketAddr, tls_addr: SocketAddr, ca: &tls::Ca) {
    let plain = get(addr, "www.storefront.example.com", "/foo?page=2", &[]);
    assert_eq!(plain.status, 308, "{plain:?}");
    let location = format!("http://storefront.example.com:{}/foo?page=2", addr.port());
    assert_eq!(plain.header("location"), Some(location.as_str()), "{plain:?}");
    let bare = get(addr, "storefront.example.com", "/foo", &[]);
    assert_eq!(bare.status, 308, "the bare name redirects to HTTPS: {bare:?}");
    assert_eq!(bare.header("location"), Some("https://storefront.example.com/foo"));

    let config = tls::client_config(tls::ClientOptions { trust: Some(ca), ..Default::default() });
    let stream = tls::connect(tls_addr, Some("www.storefront.example.com"), &config).unwrap();
    let secure = Client::new(stream).request("GET", "www.storefront.example.com", "/", &[], true).unwrap();
    assert_eq!(secure.status, 308, "{secure:?}");
    let location = format!("https://storefront.example.com:{}", tls_addr.port());
    assert_eq!(secure.header("location"), Some(location.as_str()), "{secure:?}");
    let stream = tls::connect(tls_addr, Some("storefront.example.com"), &config).unwrap();
    let served = Client::new(stream).request("GET", "storefront.example.com", "/", &[], true).unwrap();
    assert_eq!((served.status, served.header(BACKEND_HEADER)), (200, Some("storefront")), "{served:?}");
}

/// 20: each request is answered by checkout and copied to the staging Service named by its
/// cluster DNS name, with the same method, URI and (held) body and `mirror-host` as Host.
fn mirror(addr: SocketAddr, shadow: &Backend) {
    let answer = get(addr, "checkout.example.com", "/cart?step=2", &[]);
    assert_eq!((answer.status, answer.header(BACKEND_HEADER)), (200, Some("checkout")), "{answer:?}");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
        .write_all(b"POST /pay HTTP/1.1\r\nHost: checkout.example.com\r\nContent-Length: 9\r\nConnection: close\r\n\r\ncard=4242")
        .unwrap();
    let posted = read_head(&mut stream);
    assert!(posted.starts_with("HTTP/1.1 200") && posted.contains("x-backend: checkout"), "{posted}");
    let copies = lb_tests::wait_for(Duration::from_secs(10), "both copies at the staging Service", || {
        let heads = shadow.heads();
        (heads.len() >= 2).then_some(heads)
    })
    .unwrap();
    assert!(copies[0].starts_with("GET /cart?step=2 HTTP/1.1"), "{copies:?}");
    assert!(copies[1].starts_with("POST /pay HTTP/1.1"), "{copies:?}");
    for copy in &copies {
        assert!(copy.contains("host: checkout.staging.example.com"), "mirror-host names the Host: {copy}");
    }
    assert!(copies[1].contains("content-length: 9"), "the held body goes along: {}", copies[1]);
}

/// 15: with `use-proxy-protocol: "true"` the client is the address the balancer's header names,
/// and a connection without the header is closed.
fn proxy_protocol_behind_a_tcp_balancer(kube: &FakeKube) {
    apply_fixture(kube, &fixtures_dir().join("15-proxy-protocol.yaml"), "");
    let options =
        KubeSluiceOptions::default().args(&["--nginx-configmap", "ingress-nginx/ingress-nginx-controller"]);
    let sluice = KubeSluice::start(kube, options);
    let through_balancer = || {
        let mut client = Client::connect(sluice.addr);
        client.send(
            b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 80\r\nGET / HTTP/1.1\r\nHost: edge.example.com\r\nConnection: close\r\n\r\n",
        );
        client.read_response(false)
    };
    let served = lb_tests::wait_for(Duration::from_secs(20), "edge.example.com through the balancer", || {
        Some(through_balancer()).filter(|r| r.status == 200)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    let body = String::from_utf8_lossy(&served.body).to_ascii_lowercase();
    assert!(body.contains("x-real-ip: 203.0.113.9"), "{body}");
    assert!(body.contains("x-forwarded-for: 203.0.113.9"), "{body}");
    let mut direct = Client::connect(sluice.addr);
    direct.send(b"GET / HTTP/1.1\r\nHost: edge.example.com\r\n\r\n");
    assert_eq!(direct.read_response(false).status, 0, "no PROXY header: closed without an answer");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The suite's backends, each published as the Service its manifest names.
struct Cluster {
    auth: RawBackend,
    /// The CA of the TLS hosts' certificates (`webapp-tls`, `storefront-tls`).
    webapp_ca: tls::Ca,
    /// `staging/checkout-next`, the mirror target.
    shadow: Backend,
    cart: Vec<Backend>,
    _backends: Vec<Backend>,
    _raw: Vec<RawBackend>,
}

impl Cluster {
    fn publish(kube: &FakeKube) -> Cluster {
        kube.apply(ingress_class("sluice", CONTROLLER, false));
        let mut backends = Vec::new();
        for (name, port, mode) in [
            ("dashboard", 80, Mode::Echo),
            ("cm-acme-http-solver-x7k2p", 8089, Mode::Name),
            ("api", 80, Mode::Echo),
            ("shop-stable", 80, Mode::Name),
            ("shop-canary", 80, Mode::Name),
            ("blog-blue", 80, Mode::Name),
            ("blog-green", 80, Mode::Name),
            ("greeter", 50051, Mode::Name),
            ("admin", 80, Mode::Name),
            ("search", 80, Mode::Name),
            ("internal", 80, Mode::Name),
            ("docs", 80, Mode::Echo),
            ("http-svc", 80, Mode::Echo),
            ("portal", 80, Mode::Name),
            ("flaky", 80, Mode::Status(503)),
            ("error-pages", 80, Mode::Echo),
            ("edge", 80, Mode::Echo),
            ("webapp", 80, Mode::Name),
            ("storefront", 80, Mode::Name),
            ("checkout", 80, Mode::Name),
        ] {
            let backend = Backend::launch(name, backend::Options { mode, ..Default::default() }).unwrap();
            publish(kube, name, port, &[backend.addr()]);
            backends.push(backend);
        }
        let dashboard_tls = tls::server_config(&tls::Ca::new("pod CA").leaf(&["dashboard.internal"]));
        let https = Backend::with_tls("kubernetes-dashboard", dashboard_tls);
        publish(kube, "kubernetes-dashboard", 443, &[https.addr()]);
        backends.push(https);
        let cart = Backend::loopback_group("cart", 2);
        publish(kube, "cart", 80, &cart.iter().map(Backend::addr).collect::<Vec<_>>());
        let chat = RawBackend::start(websocket_echo);
        publish(kube, "chat", 80, &[chat.addr]);
        let webapp_ca = tls::Ca::new("letsencrypt-prod (test)");
        let certificate = webapp_ca.leaf(&["webapp.example.com"]);
        kube.apply(tls_secret("default", "webapp-tls", &certificate.cert, &certificate.key));
        let certificate = webapp_ca.leaf(&["storefront.example.com", "www.storefront.example.com"]);
        kube.apply(tls_secret("default", "storefront-tls", &certificate.cert, &certificate.key));
        let shadow = Backend::launch("checkout-next", backend::Options::default()).unwrap();
        kube.apply(service("staging", "checkout-next", 8080, shadow.addr().port()));
        let ready = [SliceEndpoint::ready(&shadow.addr().ip().to_string())];
        kube.apply(endpoint_slice(
            "staging",
            "checkout-next-1",
            "checkout-next",
            "IPv4",
            shadow.addr().port(),
            &ready,
        ));
        let auth = RawBackend::start(oauth2_proxy_auth);
        Cluster { auth, webapp_ca, shadow, cart, _backends: backends, _raw: vec![chat] }
    }
}

/// A Service `name` on `port` whose one slice lists `endpoints` (which share a port).
fn publish(kube: &FakeKube, name: &str, port: u16, endpoints: &[SocketAddr]) {
    let target = endpoints[0].port();
    kube.apply(service("default", name, port, target));
    let ready: Vec<SliceEndpoint> =
        endpoints.iter().map(|a| SliceEndpoint::ready(&a.ip().to_string())).collect();
    kube.apply(endpoint_slice("default", &format!("{name}-1"), name, "IPv4", target, &ready));
}

/// oauth2-proxy's `/oauth2/auth`: 202 with the user's fields for a session cookie, else 401.
fn oauth2_proxy_auth(mut conn: BackendConn) {
    while let Some(request) = conn.next_request() {
        let signed_in = request.header("cookie").is_some_and(|c| c.contains("_oauth2_proxy="));
        let answer: &[u8] = if signed_in {
            b"HTTP/1.1 202 Accepted\r\nX-Auth-Request-User: alice\r\nX-Auth-Request-Email: alice@example.com\r\nContent-Length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
        };
        if !conn.send(answer) {
            return;
        }
    }
}

/// A WebSocket server reduced to what a proxy sees: a 101 to the upgrade, then every byte back.
fn websocket_echo(mut conn: BackendConn) {
    let Some(request) = conn.next_request() else { return };
    if !request.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        conn.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
    loop {
        if !conn.buf.is_empty() {
            let bytes = std::mem::take(&mut conn.buf);
            if !conn.send(&bytes) {
                return;
            }
        }
        if !conn.fill() {
            return;
        }
    }
}

fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/migration")
}

/// The manifests, in name order.
fn corpus() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus has {} manifests", files.len());
    files
}

/// Applies every object of a manifest file, as `kubectl apply -f` would.
fn apply_fixture(kube: &FakeKube, file: &Path, auth_addr: &str) {
    let text = std::fs::read_to_string(file).unwrap().replace("{{AUTH_ADDR}}", auth_addr);
    let options = serde_saphyr::options! { strict_booleans: true };
    let documents: Vec<Value> = serde_saphyr::from_multiple_with_options(&text, options)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    for document in documents.into_iter().filter(|d| !d.is_null()) {
        kube.apply(document);
    }
}

fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(addr, "GET", host, path, headers)
}

fn request(addr: SocketAddr, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http::request(addr, method, host, path, headers)
        .unwrap_or_else(|e| panic!("{method} {host}{path}: {e:#}"))
}

/// Reads a response head off a raw stream (for the upgrade, whose connection stays open).
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}
