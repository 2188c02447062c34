//! `sluice webhook`, the validating admission webhook, as the API server calls it: real
//! `admission.k8s.io/v1` AdmissionReview bodies POSTed over real TLS to the binary, which lists
//! and watches the fake API server.
//!
//! - Allowed: a new host (the uid echoed); an Ingress of another class; another kind, with a
//!   warning.
//! - Denied with the reason naming the field: a refused annotation, a bad value, a host and
//!   path an Ingress already in the cluster serves (also one created after the webhook
//!   started: it watches).
//! - A malformed body is answered 400.
//! - The certificate files are reloaded when they change (a Secret rotation), and a pair that
//!   does not load stops the start with the reason.

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use lb_tests::{
    fake_kube::{
        FakeKube,
        objects::{ingress, service},
    },
    free_port,
    http::{Client, HttpResponse},
    process::ChildGuard,
    sluice_binary,
    temp_dir::TempDir,
    tls::{self, Ca, ClientOptions, Leaf},
    wait_for,
};
use serde_json::{Value, json};

#[test]
fn reviews_over_tls_are_allowed_denied_with_the_field_or_refused_as_malformed() {
    let kube = FakeKube::start().unwrap();
    kube.apply(ingress("shop", "old", "sluice", "shop.example", "/app", "web", 80));
    let webhook = Webhook::start(&kube);

    let allowed = webhook
        .review(&review("u-allowed", &ingress("shop", "new", "sluice", "new.example", "/", "web", 80)));
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let answer: Value = serde_json::from_str(&allowed.body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"], json!({"uid": "u-allowed", "allowed": true}));

    let mut snippet = ingress("shop", "snippet", "sluice", "snippet.example", "/", "web", 80);
    snippet["metadata"]["annotations"] =
        json!({"nginx.ingress.kubernetes.io/configuration-snippet": "deny all;"});
    let denied = webhook.decision(&review("u-snippet", &snippet));
    assert_eq!(denied["uid"], "u-snippet");
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["status"]["code"], 400);
    assert_eq!(denied["status"]["reason"], "BadRequest");
    let message = denied["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("Ingress shop/snippet") && message.contains("annotation configuration-snippet"),
        "{message}"
    );

    let mut bad_value = ingress("shop", "slow", "sluice", "slow.example", "/", "web", 80);
    bad_value["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/proxy-body-size": "lots"});
    let message =
        webhook.decision(&review("u-bad", &bad_value))["status"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("annotation proxy-body-size: \"lots\""), "{message}");

    let conflict = webhook.decision(&review(
        "u-conflict",
        &ingress("shop", "copy", "sluice", "shop.example", "/app", "web", 80),
    ));
    let message = conflict["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("host shop.example path /app") && message.contains("older Ingress shop/old"),
        "{message}"
    );

    // Watched: an Ingress created now is seen by the next reviews.
    kube.apply(ingress("blog", "later", "sluice", "blog.example", "/", "web", 80));
    wait_for(Duration::from_secs(10), "the webhook to see the new Ingress", || {
        let decision = webhook
            .decision(&review("u-late", &ingress("shop", "late", "sluice", "blog.example", "/", "web", 80)));
        (decision["allowed"] == false).then_some(())
    })
    .unwrap();

    // Another class's Ingress is not judged, whatever it holds.
    let mut other = snippet.clone();
    other["spec"]["ingressClassName"] = json!("nginx");
    assert_eq!(webhook.decision(&review("u-other", &other))["allowed"], true);

    // Another kind: allowed, with a warning that it was not checked.
    let http_route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": "route"}, "spec": {}
    });
    let mut route = review("u-route", &http_route);
    route["request"]["kind"] =
        json!({"group": "gateway.networking.k8s.io", "version": "v1", "kind": "HTTPRoute"});
    let decision = webhook.decision(&route);
    assert_eq!(decision["allowed"], true);
    assert!(decision["warnings"][0].as_str().unwrap().contains("HTTPRoute"), "{decision}");

    for body in [
        &b"{\"apiVersion\": "[..],
        b"[]",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let response = webhook.post(body);
        assert_eq!(response.status, 400, "{}: {}", String::from_utf8_lossy(body), response.body);
    }
    assert_eq!(webhook.get("/healthz").status, 200);
}

#[test]
fn the_certificate_files_are_reloaded_when_they_rotate() {
    let kube = FakeKube::start().unwrap();
    let webhook = Webhook::start(&kube);
    let first = tls::served_certificate(&webhook.connect());
    assert_eq!(first, webhook.leaf.der());
    // As the kubelet swaps a Secret volume: new files in place of the old.
    let rotated = webhook.ca.leaf(&["sluice-webhook.sluice.svc"]);
    webhook.write_certificate(&rotated);
    wait_for(Duration::from_secs(10), "the rotated certificate to be served", || {
        (tls::served_certificate(&webhook.connect()) == rotated.der()).then_some(())
    })
    .unwrap();
    // A half-written rotation (a key from another pair) keeps the last good certificate.
    let other = webhook.ca.leaf(&["other"]);
    std::fs::write(webhook.dir.0.join("tls.key"), &other.key).unwrap();
    webhook.wait_for_log("do not load");
    assert_eq!(tls::served_certificate(&webhook.connect()), rotated.der());
    assert_eq!(
        webhook.decision(&review("u-after", &ingress("a", "b", "sluice", "c.example", "/", "web", 80)))["allowed"],
        true
    );
}

#[test]
fn a_certificate_that_does_not_load_stops_the_start() {
    let kube = FakeKube::start().unwrap();
    let dir = TempDir::new();
    let ca = Ca::new("webhook CA");
    let (a, b) = (ca.leaf(&["a"]), ca.leaf(&["b"]));
    std::fs::write(dir.0.join("tls.crt"), &a.cert).unwrap();
    std::fs::write(dir.0.join("tls.key"), &b.key).unwrap();
    let output = Command::new(sluice_binary().unwrap())
        .args(webhook_args(&kube, &dir, SocketAddr::from(([127, 0, 0, 1], free_port()))))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("the private key does not match the certificate"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The AdmissionReview the API server sends for creating `object`.
/// The controller's `--default-backend-service` and `--default-ssl-certificate` are accepted,
/// and the default backend is used as the controller uses it: `custom-http-errors` without a
/// `default-backend` annotation has no error backend without the flag (a warning: the
/// annotation is not applied) and has the controller's with it.
#[test]
fn the_controllers_default_backend_flags_translate_as_the_controller_does() {
    let kube = FakeKube::start().unwrap();
    kube.apply(service("shop", "errors", 80, 8080));
    let mut pages = ingress("shop", "pages", "sluice", "pages.example", "/", "web", 80);
    pages["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/custom-http-errors": "503"});
    let plain = Webhook::start(&kube);
    let decision = plain.decision(&review("u-plain", &pages));
    assert_eq!(decision["allowed"], true);
    let warning = decision["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("custom-http-errors: no error backend"), "{decision}");
    let flags = ["--default-backend-service", "shop/errors", "--default-ssl-certificate", "shop/default-tls"];
    let like_the_controller = Webhook::start_with(&kube, &flags);
    let decision = like_the_controller.decision(&review("u-flags", &pages));
    assert_eq!(decision, json!({"uid": "u-flags", "allowed": true}));
}

fn review(uid: &str, object: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
            "requestKind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "namespace": object["metadata"]["namespace"],
            "name": object["metadata"]["name"],
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn webhook_args(kube: &FakeKube, dir: &TempDir, addr: SocketAddr) -> Vec<String> {
    let kubeconfig = kube.write_kubeconfig(&dir.0).unwrap();
    let path = |name: &str| dir.0.join(name).display().to_string();
    vec![
        "webhook".into(),
        "--listen".into(),
        addr.to_string(),
        "--tls-cert-file".into(),
        path("tls.crt"),
        "--tls-key-file".into(),
        path("tls.key"),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
    ]
}

fn write_certificate(dir: &TempDir, leaf: &Leaf) {
    std::fs::write(dir.0.join("tls.crt"), &leaf.cert).unwrap();
    std::fs::write(dir.0.join("tls.key"), &leaf.key).unwrap();
}

/// `sluice webhook` against a fake API server; killed on drop.
struct Webhook {
    child: ChildGuard,
    addr: SocketAddr,
    ca: Ca,
    leaf: Leaf,
    dir: TempDir,
}

impl Webhook {
    fn start(kube: &FakeKube) -> Webhook {
        Self::start_with(kube, &[])
    }

    /// With more arguments.
    fn start_with(kube: &FakeKube, args: &[&str]) -> Webhook {
        let dir = TempDir::new();
        let ca = Ca::new("webhook CA");
        let leaf = ca.leaf(&["sluice-webhook.sluice.svc"]);
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        write_certificate(&dir, &leaf);
        let mut command = Command::new(sluice_binary().unwrap());
        command.args(webhook_args(kube, &dir, addr)).args(args);
        command.env("RUST_LOG", "info").env_remove("KUBECONFIG");
        let mut webhook = Webhook { child: ChildGuard::spawn(command).unwrap(), addr, ca, leaf, dir };
        // It listens only once the cluster is listed.
        wait_for(Duration::from_secs(20), "the webhook to listen", || {
            assert!(
                webhook.child.try_status().is_none(),
                "sluice webhook exited:\n{}",
                webhook.child.output()
            );
            TcpStream::connect(addr).ok()
        })
        .unwrap();
        webhook
    }

    fn write_certificate(&self, leaf: &Leaf) {
        write_certificate(&self.dir, leaf);
    }

    fn connect(&self) -> tls::TlsStream {
        let config = tls::client_config(ClientOptions { trust: Some(&self.ca), ..ClientOptions::default() });
        tls::connect(self.addr, Some("sluice-webhook.sluice.svc"), &config).unwrap()
    }

    fn send(&self, head: &str, body: &[u8]) -> HttpResponse {
        let mut client = Client::new(self.connect());
        let mut request = head.as_bytes().to_vec();
        request.extend_from_slice(body);
        client.send(&request);
        HttpResponse::try_from(client.read_response(false)).unwrap()
    }

    fn post(&self, body: &[u8]) -> HttpResponse {
        let head = format!(
            "POST /validate?timeout=10s HTTP/1.1\r\nHost: sluice-webhook.sluice.svc:443\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        self.send(&head, body)
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: webhook\r\nConnection: close\r\n\r\n"), b"")
    }

    fn review(&self, review: &Value) -> HttpResponse {
        self.post(&serde_json::to_vec(review).unwrap())
    }

    /// The response part of the answer to `review`.
    fn decision(&self, review: &Value) -> Value {
        let response = self.review(review);
        assert_eq!(response.status, 200, "{}", response.body);
        let mut answer: Value = serde_json::from_str(&response.body).unwrap();
        answer["response"].take()
    }

    fn wait_for_log(&self, part: &str) {
        wait_for(Duration::from_secs(10), &format!("a log line with {part:?}"), || {
            // A handshake is what makes it look at the files.
            let _ = tls::served_certificate(&self.connect());
            self.child.output().contains(part).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.child.output()));
    }
}
