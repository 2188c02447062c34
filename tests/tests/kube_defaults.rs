//! ingress-nginx's defaults end to end through the fake API server and the real binary: error
//! pages and default backends (`custom-http-errors`, `default-backend`,
//! `--default-backend-service`); the default certificate (`--default-ssl-certificate`, else the
//! generated one) over real TLS.
//!
//! Backends of one Service share a port on different loopback addresses (127.0.0.2, .3, ...),
//! since an EndpointSlice gives one port to all its endpoints.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use lb_tests::{
    backend::{self, BACKEND_HEADER, Backend, Echoed, Mode},
    fake_kube::{
        FakeKube,
        objects::{SliceEndpoint, endpoint_slice, ingress, ingress_class, service, tls_secret},
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    http, tls, wait_for,
};
use serde_json::json;

const CONTROLLER: &str = "sluice.dev/ingress-controller";

/// A backend on `ip` (port chosen by the system), published as Service `name` (port 80) with
/// one ready endpoint.
fn published(kube: &FakeKube, name: &str, ip: &str, mode: Mode) -> Backend {
    let options = backend::Options { addr: format!("{ip}:0").parse().unwrap(), mode, ..Default::default() };
    publish(kube, Backend::launch(name, options).unwrap(), ip)
}

fn publish(kube: &FakeKube, backend: Backend, ip: &str) -> Backend {
    let name = backend.name().to_owned();
    let name = name.as_str();
    let port = backend.addr().port();
    kube.apply(service("default", name, 80, port));
    let endpoints = [SliceEndpoint::ready(ip)];
    kube.apply(endpoint_slice("default", &format!("{name}-1"), name, "IPv4", port, &endpoints));
    backend
}

/// An upstream 503 is answered by the Ingress's default-backend Service with ingress-nginx's
/// X-Code set; an unlisted status passes; a host no Ingress names goes to the controller's
/// default backend; the same method reaches the error backend, without the body.
#[test]
fn custom_http_errors_are_answered_by_the_default_backend_with_the_x_code_fields() {
    let kube = FakeKube::start().unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    let web = published(&kube, "web", "127.0.0.2", Mode::Status(503));
    let errors = published(&kube, "errors", "127.0.0.3", Mode::Echo);
    let fallback = published(&kube, "fallback", "127.0.0.4", Mode::Name);
    let mut shop = ingress("default", "shop", "sluice", "shop.test", "/", "web", 80);
    shop["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/custom-http-errors": "404,503",
        "nginx.ingress.kubernetes.io/default-backend": "errors",
    });
    kube.apply(shop);
    let options = KubeSluiceOptions::default().args(&["--default-backend-service", "default/fallback"]);
    let sluice = KubeSluice::start(&kube, options);
    sluice.wait_for_status("shop.test", "/", 200, Duration::from_secs(20));

    let accept = ("Accept", "application/json");
    let response =
        http::request(sluice.addr, "GET", "shop.test", "/cart?item=1", &[accept, ("X-Code", "forged")])
            .unwrap();
    // The error backend's answer as it is (nginx's `error_page 503 = @custom...`).
    assert_eq!(response.status, 200, "{response:?}");
    let seen = Echoed::of(&response);
    assert_eq!(seen.line, "GET / HTTP/1.1", "nginx rewrites the error request to /");
    assert_eq!(seen.all("x-code"), ["503"], "the client's X-Code is replaced");
    assert_eq!(seen.header("x-format"), Some("application/json"));
    assert_eq!(seen.header("x-original-uri"), Some("/cart?item=1"));
    assert_eq!(seen.header("x-namespace"), Some("default"));
    assert_eq!(seen.header("x-ingress-name"), Some("shop"));
    assert_eq!(seen.header("x-service-name"), Some("web"));
    assert_eq!(seen.header("x-service-port"), Some("80"));
    assert_eq!(seen.header("x-request-id"), response.header("x-request-id"), "one request id for both");
    assert!(seen.header("x-request-id").is_some_and(|id| id.len() == 32));
    assert_eq!(web.requests(), errors.requests(), "every request reached the Service first");

    // The method stays; the body is not sent again.
    let post = http::request(sluice.addr, "POST", "shop.test", "/order", &[]).unwrap();
    assert_eq!(Echoed::of(&post).line, "POST / HTTP/1.1");

    // A status the list does not name passes through.
    web.set_mode(Mode::Status(500));
    let passed = sluice.get("shop.test", "/").unwrap();
    assert_eq!((passed.status, passed.header(BACKEND_HEADER)), (500, Some("web")));

    // An error backend that cannot answer gives Sluice's own 502/503, as nginx's would.
    web.set_mode(Mode::Status(404));
    errors.set_mode(Mode::Reset);
    let failed = sluice.get("shop.test", "/").unwrap();
    assert_eq!(failed.status, 502, "{failed:?}");

    // Hosts and paths no Ingress claims go to the controller's default backend.
    for host in ["unknown.test", "192.0.2.9"] {
        let response = sluice.get(host, "/anything").unwrap();
        assert_eq!((response.status, response.header(BACKEND_HEADER)), (200, Some("fallback")), "{host:?}");
    }
    assert!(fallback.requests() >= 2);
}

const FAKE_COMMON_NAME: &str = "Kubernetes Ingress Controller Fake Certificate";

/// The certificate served for `sni` (`None`: no SNI), and the answer to `GET /` for `host` over
/// that connection.
fn over_tls(
    addr: SocketAddr,
    sni: Option<&str>,
    host: &str,
) -> anyhow::Result<(Vec<u8>, http::HttpResponse)> {
    let any = tls::client_config(tls::ClientOptions::default());
    let stream = tls::connect(addr, sni, &any)?;
    let served = tls::served_certificate(&stream);
    let response = http::Client::new(stream).request("GET", host, "/", &[], true)?;
    Ok((served, response))
}

fn names_fake_subject(der: &[u8]) -> bool {
    der.windows(FAKE_COMMON_NAME.len()).any(|w| w == FAKE_COMMON_NAME.as_bytes())
}

/// An unknown SNI, and no SNI, complete the handshake with the generated certificate (ingress-
/// nginx's fake one) and reach the default backend; a known SNI gets its Secret's certificate
/// and passthrough by SNI still splices; with --default-ssl-certificate the Secret's
/// certificate is the default instead.
#[test]
fn unknown_names_get_the_default_certificate_and_the_default_backend() {
    let kube = FakeKube::start().unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    let ca = tls::Ca::new("test CA");
    let secure_leaf = ca.leaf(&["secure.test"]);
    let pass_leaf = ca.leaf(&["pass.test"]);
    let default_leaf = ca.leaf(&["default.test"]);
    kube.apply(tls_secret("default", "secure-tls", &secure_leaf.cert, &secure_leaf.key));
    kube.apply(tls_secret("default", "default-tls", &default_leaf.cert, &default_leaf.key));
    let _web = published(&kube, "web", "127.0.0.2", Mode::Name);
    let _fallback = published(&kube, "fallback", "127.0.0.3", Mode::Name);
    let pass = Backend::launch(
        "pass",
        backend::Options {
            addr: "127.0.0.4:0".parse().unwrap(),
            tls: Some(tls::server_config(&pass_leaf)),
            ..Default::default()
        },
    )
    .unwrap();
    let _pass = publish(&kube, pass, "127.0.0.4");
    let mut secure = ingress("default", "secure", "sluice", "secure.test", "/", "web", 80);
    secure["spec"]["tls"] = json!([{"hosts": ["secure.test"], "secretName": "secure-tls"}]);
    kube.apply(secure);
    let mut passthrough = ingress("default", "pass", "sluice", "pass.test", "/", "pass", 80);
    passthrough["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/ssl-passthrough": "true"});
    kube.apply(passthrough);

    let options = KubeSluiceOptions { tls: true, ..Default::default() }
        .args(&["--default-backend-service", "default/fallback"]);
    let sluice = KubeSluice::start(&kube, options);
    let tls_addr = sluice.tls_addr.unwrap();
    wait_for(Duration::from_secs(20), "secure.test served with its Secret", || {
        over_tls(tls_addr, Some("secure.test"), "secure.test")
            .ok()
            .filter(|(cert, _)| *cert == secure_leaf.der())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));

    let (served, response) = over_tls(tls_addr, Some("secure.test"), "secure.test").unwrap();
    assert_eq!((served, response.header(BACKEND_HEADER)), (secure_leaf.der(), Some("web")));
    for sni in [Some("unknown.test"), None] {
        let (served, response) = over_tls(tls_addr, sni, "unknown.test").unwrap();
        assert!(names_fake_subject(&served), "{sni:?}: the generated certificate");
        assert_eq!((response.status, response.header(BACKEND_HEADER)), (200, Some("fallback")), "{sni:?}");
    }
    // The same generated certificate every time (made once per process).
    assert_eq!(
        over_tls(tls_addr, None, "x.test").unwrap().0,
        over_tls(tls_addr, Some("y.test"), "y.test").unwrap().0
    );
    let spliced =
        tls::connect(tls_addr, Some("pass.test"), &tls::client_config(tls::ClientOptions::default()))
            .unwrap();
    assert_eq!(tls::served_certificate(&spliced), pass_leaf.der(), "passthrough by SNI");
    drop(sluice);

    let options = KubeSluiceOptions { tls: true, ..Default::default() }
        .args(&["--default-ssl-certificate", "default/default-tls"]);
    let sluice = KubeSluice::start(&kube, options);
    let tls_addr = sluice.tls_addr.unwrap();
    wait_for(Duration::from_secs(20), "the --default-ssl-certificate Secret served", || {
        over_tls(tls_addr, Some("unknown.test"), "unknown.test")
            .ok()
            .filter(|(cert, _)| *cert == default_leaf.der())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    // Without a default backend Service, Sluice's plain 404.
    let (_, response) = over_tls(tls_addr, None, "unknown.test").unwrap();
    assert_eq!(response.status, 404, "{response:?}");
}

/// from-to-www-redirect: the bare name redirects (308, URI kept) to the www host the rule names,
/// and a twin with an Ingress of its own is left to it.
#[test]
fn from_to_www_redirect_sends_the_twin_to_the_rule_host() {
    let kube = FakeKube::start().unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    let _web = published(&kube, "web", "127.0.0.2", Mode::Name);
    let mut site = ingress("default", "site", "sluice", "www.site.test", "/", "web", 80);
    site["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/from-to-www-redirect": "true",
        "nginx.ingress.kubernetes.io/server-alias": "alias.test, www.other.test",
    });
    kube.apply(site);
    let mut other = ingress("default", "other", "sluice", "other.test", "/", "web", 80);
    other["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/from-to-www-redirect": "true"});
    kube.apply(other);
    kube.apply(ingress("default", "own", "sluice", "www.other.test", "/", "web", 80));
    let sluice = KubeSluice::start(&kube, KubeSluiceOptions::default());
    sluice.wait_for_status("site.test", "/a?b=1", 308, Duration::from_secs(20));
    // As ingress-nginx writes it (its e2e test: `http://fromtowwwredirect.bar.com:80/foo`): the
    // scheme and the port the client used, always, and one trailing slash dropped.
    let port = sluice.addr.port();
    let response = sluice.get("site.test", "/a?b=1").unwrap();
    let location = format!("http://www.site.test:{port}/a?b=1");
    assert_eq!(response.header("location"), Some(location.as_str()), "{response:?}");
    let response = sluice.get("site.test", "/a/").unwrap();
    let location = format!("http://www.site.test:{port}/a");
    assert_eq!(response.header("location"), Some(location.as_str()), "{response:?}");
    let response = sluice.get("site.test", "/").unwrap();
    let location = format!("http://www.site.test:{port}");
    assert_eq!(response.header("location"), Some(location.as_str()), "{response:?}");
    // A client's own X-Forwarded-Port is not believed (no trusted proxy here).
    let response =
        http::request(sluice.addr, "GET", "site.test", "/a", &[("X-Forwarded-Port", "8443")]).unwrap();
    let location = format!("http://www.site.test:{port}/a");
    assert_eq!(response.header("location"), Some(location.as_str()), "{response:?}");
    assert_eq!(sluice.get("www.site.test", "/").unwrap().header(BACKEND_HEADER), Some("web"));
    let own = sluice.get("www.other.test", "/").unwrap();
    assert_eq!((own.status, own.header(BACKEND_HEADER)), (200, Some("web")), "its own Ingress serves it");
    // server-alias serves the same routes under another name; one that is another host's is
    // ignored (www.other.test stays its own Ingress's, reported).
    let aliased = sluice.get("alias.test", "/").unwrap();
    assert_eq!((aliased.status, aliased.header(BACKEND_HEADER)), (200, Some("web")));
    sluice.wait_for_log(&["server-alias www.other.test is already a host name"], Duration::from_secs(5));
}

/// Redirects to HTTPS as ingress-nginx writes them (its lua_ingress.lua and e2e tests):
/// `force-ssl-redirect` on a host without TLS here (TLS ends at an outer balancer) answers 308
/// to `https://host` with no port and the trailing slash dropped; a trusted proxy's
/// `X-Forwarded-Proto: https` is served instead and its `X-Forwarded-Host` names the target,
/// while an untrusted peer's changes nothing; `use-port-in-redirects` (the ConfigMap's default,
/// an annotation's "false" over it) names the TLS listener's port and `preserve-trailing-slash`
/// keeps the slash.
#[test]
fn redirects_to_https_are_written_as_ingress_nginx_writes_them() {
    let kube = FakeKube::start().unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    kube.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "ingress-nginx", "name": "controller"},
        "data": {
            "use-forwarded-headers": "true",
            "proxy-real-ip-cidr": "127.0.0.1/32",
            "use-port-in-redirects": "true",
        },
    }));
    let ca = tls::Ca::new("test CA");
    let leaf = ca.leaf(&["kept.test", "plain-tls.test"]);
    kube.apply(tls_secret("default", "site-tls", &leaf.cert, &leaf.key));
    let _web = published(&kube, "web", "127.0.0.2", Mode::Name);
    let mut forced = ingress("default", "forced", "sluice", "forced.test", "/", "web", 80);
    forced["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/force-ssl-redirect": "true",
        "nginx.ingress.kubernetes.io/use-port-in-redirects": "false",
    });
    kube.apply(forced);
    let mut kept = ingress("default", "kept", "sluice", "kept.test", "/", "web", 80);
    kept["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/preserve-trailing-slash": "true"});
    kept["spec"]["tls"] = json!([{"hosts": ["kept.test"], "secretName": "site-tls"}]);
    kube.apply(kept);
    let mut plain_tls = ingress("default", "plain-tls", "sluice", "plain-tls.test", "/", "web", 80);
    plain_tls["metadata"]["annotations"] =
        json!({"nginx.ingress.kubernetes.io/use-port-in-redirects": "false"});
    plain_tls["spec"]["tls"] = json!([{"hosts": ["plain-tls.test"], "secretName": "site-tls"}]);
    kube.apply(plain_tls);
    kube.apply(ingress("default", "open", "sluice", "open.test", "/", "web", 80));
    let mut brand = ingress("default", "brand", "sluice", "www.brand.test", "/", "web", 80);
    brand["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/from-to-www-redirect": "true"});
    kube.apply(brand);
    let options = KubeSluiceOptions { tls: true, ..Default::default() }
        .args(&["--nginx-configmap", "ingress-nginx/controller"]);
    let sluice = KubeSluice::start(&kube, options);
    let tls_port = sluice.tls_addr.unwrap().port();
    sluice.wait_for_status("kept.test", "/", 308, Duration::from_secs(20));
    sluice.wait_for_status("open.test", "/", 200, Duration::from_secs(20));

    // From 127.0.0.1 (trusted) and from 127.0.0.9 (not), with the given headers.
    let ask = |source: [u8; 4], host: &str, path: &str, headers: &[(&str, &str)]| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
        socket.connect_timeout(&sluice.addr.into(), Duration::from_secs(5)).unwrap();
        http::Client::over_tcp(socket.into()).unwrap().request("GET", host, path, headers, true).unwrap()
    };
    let (trusted, untrusted) = ([127, 0, 0, 1], [127, 0, 0, 9]);
    let location = |response: &http::HttpResponse| {
        assert_eq!(response.status, 308, "{response:?}");
        response.header("location").unwrap_or_default().to_owned()
    };
    // force-ssl-redirect without TLS here: ingress-nginx's e2e test's exact Location.
    assert_eq!(location(&ask(untrusted, "forced.test", "/", &[])), "https://forced.test");
    assert_eq!(location(&ask(untrusted, "forced.test:8080", "/a/", &[])), "https://forced.test/a");
    assert_eq!(location(&ask(untrusted, "forced.test", "/a/?q=1", &[])), "https://forced.test/a/?q=1");
    // ACME challenges stay plain.
    let acme = ask(untrusted, "forced.test", "/.well-known/acme-challenge/token", &[]);
    assert_eq!((acme.status, acme.header(BACKEND_HEADER)), (200, Some("web")));
    // The outer balancer (trusted) says the client came over HTTPS: served.
    let https = [("X-Forwarded-Proto", "https")];
    let served = ask(trusted, "forced.test", "/a/", &https);
    assert_eq!((served.status, served.header(BACKEND_HEADER)), (200, Some("web")), "{served:?}");
    // An untrusted client cannot say so.
    assert_eq!(location(&ask(untrusted, "forced.test", "/a/", &https)), "https://forced.test/a");
    // Plain HTTP reported by the balancer: redirected to the host the client asked it for.
    let hops = [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "www.forced.test, inner.test")];
    assert_eq!(location(&ask(trusted, "forced.test", "/b", &hops)), "https://www.forced.test/b");
    assert_eq!(location(&ask(untrusted, "forced.test", "/b", &hops)), "https://forced.test/b");
    // ssl-redirect on TLS hosts: the ConfigMap's use-port-in-redirects names the TLS listener's
    // port; preserve-trailing-slash keeps the slash; an annotation's "false" wins over the
    // ConfigMap.
    assert_eq!(location(&ask(untrusted, "kept.test", "/", &[])), format!("https://kept.test:{tls_port}/"));
    assert_eq!(
        location(&ask(untrusted, "kept.test", "/x/", &[])),
        format!("https://kept.test:{tls_port}/x/")
    );
    assert_eq!(location(&ask(untrusted, "plain-tls.test", "/", &[])), "https://plain-tls.test");
    assert_eq!(location(&ask(untrusted, "plain-tls.test", "/x/", &[])), "https://plain-tls.test/x");
    let served = ask(trusted, "plain-tls.test", "/x/", &https);
    assert_eq!((served.status, served.header(BACKEND_HEADER)), (200, Some("web")));
    // from-to-www-redirect takes the scheme and port the balancer says the client used.
    let outside = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "443")];
    assert_eq!(location(&ask(trusted, "brand.test", "/p/", &outside)), "https://www.brand.test:443/p");
    let port = sluice.addr.port();
    assert_eq!(
        location(&ask(untrusted, "brand.test", "/p/", &outside)),
        format!("http://www.brand.test:{port}/p")
    );
    // Hosts without TLS or force-ssl-redirect stay plain.
    let open = ask(untrusted, "open.test", "/", &https);
    assert_eq!((open.status, open.header(BACKEND_HEADER)), (200, Some("web")));
    // Over TLS nothing is redirected, unless the trusted balancer in front (which re-encrypts)
    // says its client came over plain HTTP; another value is not plain HTTP (as ingress-nginx).
    let over_tls = |sni: &str, headers: &[(&str, &str)]| {
        let any = tls::client_config(tls::ClientOptions::default());
        let stream = tls::connect(sluice.tls_addr.unwrap(), Some(sni), &any).unwrap();
        http::Client::new(stream).request("GET", sni, "/x/", headers, true).unwrap()
    };
    let response = over_tls("kept.test", &[]);
    assert_eq!((response.status, response.header(BACKEND_HEADER)), (200, Some("web")));
    let plain_outside = [("X-Forwarded-Proto", "http")];
    assert_eq!(location(&over_tls("kept.test", &plain_outside)), format!("https://kept.test:{tls_port}/x/"));
    assert_eq!(location(&over_tls("forced.test", &plain_outside)), "https://forced.test/x");
    let other = over_tls("forced.test", &[("X-Forwarded-Proto", "wss")]);
    assert_eq!((other.status, other.header(BACKEND_HEADER)), (200, Some("web")));
    let other = ask(trusted, "forced.test", "/a/", &[("X-Forwarded-Proto", "wss")]);
    assert_eq!((other.status, other.header(BACKEND_HEADER)), (200, Some("web")));
}

/// `nginx_metrics: true`: after real traffic `/metrics` has ingress-nginx's series with its
/// names and labels (the Ingress, its namespace, the path's Service, the Ingress path, the
/// host, method and status, and the controller labels), its histograms, and the reload series
/// its dashboards read their variables from; a request no Ingress routes is not in them, and
/// without the key none of them is there.
#[test]
fn nginx_compatible_metrics_count_the_traffic_with_ingress_nginx_labels() {
    let kube = FakeKube::start().unwrap();
    kube.apply(ingress_class("sluice", CONTROLLER, false));
    let _api = published(&kube, "api", "127.0.0.2", Mode::Name);
    let _front = published(&kube, "front", "127.0.0.3", Mode::Name);
    let mut shop = ingress("default", "shop", "sluice", "shop.test", "/api", "api", 80);
    shop["spec"]["rules"][0]["http"]["paths"]
        .as_array_mut()
        .unwrap()
        .push(json!({"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "front", "port": {"number": 80}}}}));
    kube.apply(shop);
    let options = KubeSluiceOptions { base_extra: "nginx_metrics: true\n".into(), ..Default::default() };
    let sluice = KubeSluice::start(&kube, options);
    sluice.wait_for_backend("shop.test", "/api/x", "api", Duration::from_secs(20));
    let labels = |status: &str, method: &str, path: &str, service: &str| {
        format!(
            "status=\"{status}\",method=\"{method}\",path=\"{path}\",namespace=\"default\",ingress=\"shop\",service=\"{service}\",canary=\"\",host=\"shop.test\""
        )
    };
    let api = labels("200", "GET", "/api", "api");
    let requests = "nginx_ingress_controller_requests";
    // The request that found the backend is recorded when its body ends, maybe after the
    // client read it: counted before what follows.
    let before = wait_for(Duration::from_secs(5), "the first request counted", || {
        let text = scrape(&sluice);
        sample(&text, requests, &api).is_some().then_some(text)
    })
    .unwrap();
    for _ in 0..3 {
        assert_eq!(sluice.get("shop.test", "/api/x").unwrap().status, 200);
    }
    for _ in 0..2 {
        let mut stream = std::net::TcpStream::connect(sluice.addr).unwrap();
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            )
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(sluice.get("nowhere.test", "/").unwrap().status, 404);

    let was = |name: &str, labels: &str| sample(&before, name, labels).unwrap_or(0.0);
    // Recorded when each response body ends, just after the client has it.
    let front = labels("200", "POST", "/", "front");
    let after = wait_for(Duration::from_secs(5), "the requests counted", || {
        let text = scrape(&sluice);
        let counted =
            |labels: &str, n: f64| sample(&text, requests, labels) == Some(was(requests, labels) + n);
        (counted(&api, 3.0) && counted(&front, 2.0)).then_some(text)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape(&sluice)));
    let delta = |name: &str, labels: &str| sample(&after, name, labels).unwrap_or(0.0) - was(name, labels);
    assert!(
        after.contains("\nnginx_ingress_controller_requests{controller_namespace=\"\",controller_class=\"sluice.dev/ingress-controller\",controller_pod="),
        "{after}"
    );
    assert!(after.contains("# TYPE nginx_ingress_controller_requests unknown\n"), "{after}");
    assert_eq!(delta("nginx_ingress_controller_request_duration_seconds_count", &api), 3.0);
    assert_eq!(delta("nginx_ingress_controller_response_duration_seconds_count", &api), 3.0);
    let inf = format!("le=\"+Inf\",{}", "");
    let bucket = after
        .lines()
        .find(|l| {
            l.starts_with("nginx_ingress_controller_request_duration_seconds_bucket{")
                && l.contains(&inf)
                && l.contains(&api)
        })
        .expect("a +Inf bucket");
    assert_eq!(
        bucket.rsplit(' ').next(),
        sample(&after, "nginx_ingress_controller_request_duration_seconds_count", &api)
            .map(|c| c.to_string())
            .as_deref()
    );
    // Sizes: every response head has a status line and fields, every body the backend's name.
    let response_size = delta("nginx_ingress_controller_response_size_sum", &api);
    assert!(response_size > 3.0 * 50.0, "{response_size}");
    assert_eq!(delta("nginx_ingress_controller_bytes_sent_sum", &api), response_size);
    // The POSTs on the other path: their own series, the 5-byte bodies counted.
    assert_eq!(delta(requests, &front), 2.0, "{after}");
    let received = delta("nginx_ingress_controller_request_size_sum", &front);
    assert!(received > 2.0 * (5.0 + 40.0), "{received}");
    // Nothing for the host no Ingress names, and no `_total` renaming.
    assert!(!after.contains("host=\"nowhere.test\""), "{after}");
    assert!(!after.contains("nginx_ingress_controller_requests_total"), "{after}");
    // The reload series the dashboards take their variables from.
    assert!(sample(&after, "nginx_ingress_controller_config_hash", "controller_class=").is_some(), "{after}");
    assert_eq!(sample(&after, "nginx_ingress_controller_config_last_reload_successful", ""), Some(1.0));
    assert!(sample(&after, "nginx_ingress_controller_success", "").unwrap() >= 1.0);

    // Off by default.
    let plain = KubeSluice::start(&kube, KubeSluiceOptions::default());
    plain.wait_for_backend("shop.test", "/api/x", "api", Duration::from_secs(20));
    assert_eq!(plain.get("shop.test", "/api/x").unwrap().status, 200);
    assert!(!scrape(&plain).contains("nginx_ingress_controller"));
}

fn scrape(sluice: &KubeSluice) -> String {
    http::request(sluice.admin, "GET", "admin", "/metrics", &[]).map(|r| r.body).unwrap_or_default()
}

/// The value of the first sample of `name` whose labels hold `labels`.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{");
    text.lines().find(|l| l.starts_with(&prefix) && l.contains(labels))?.rsplit(' ').next()?.parse().ok()
}
