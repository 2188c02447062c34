//! ingress-nginx's defaults end to end through the fake API server and the real binary: error
//! pages and default backends (`custom-http-errors`, `default-backend`,
//! `--default-backend-service`).
//!
//! Backends of one Service share a port on different loopback addresses (127.0.0.2, .3, ...),
//! since an EndpointSlice gives one port to all its endpoints.

use std::time::Duration;

use lb_tests::{
    backend::{self, BACKEND_HEADER, Backend, Echoed, Mode},
    fake_kube::{
        FakeKube,
        objects::{SliceEndpoint, endpoint_slice, ingress, ingress_class, service},
        sluice::{KubeSluice, KubeSluiceOptions},
    },
    http,
};
use serde_json::json;

const CONTROLLER: &str = "sluice.dev/ingress-controller";

/// A backend on `ip` (port chosen by the system), published as Service `name` (port 80) with
/// one ready endpoint.
fn published(kube: &FakeKube, name: &str, ip: &str, mode: Mode) -> Backend {
    let options = backend::Options { addr: format!("{ip}:0").parse().unwrap(), mode, ..Default::default() };
    let backend = Backend::launch(name, options).unwrap();
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
