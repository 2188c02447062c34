//! `sluice check --ingress`: the manifests under `tests/fixtures/ingress/` translated offline by
//! the controller's translation: what is served (routes, backends, endpoints), what is refused
//! and why, every warning, and the exit codes a CI job reads (0 served, 1 refused or `--strict`
//! warnings, 2 unreadable).

use std::{path::PathBuf, process::Command};

use lb_tests::sluice_binary;

#[test]
fn a_served_ingress_prints_its_routes_backends_and_endpoints() {
    let (code, out, err) = check(&["--ingress", "shop.yaml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("served   shop/web\n"), "{out}");
    // TLS from the Secret: the host is served over HTTPS; each path to its Service's backend.
    assert!(
        out.contains("https://shop.example.com /api (Prefix) -> backend shop/api:http  [shop/web]"),
        "{out}"
    );
    assert!(
        out.contains("https://shop.example.com / (Prefix) -> backend shop/front:80  [shop/web]"),
        "{out}"
    );
    // The port by name through the slice; the starting endpoint is listed, not ready.
    assert!(out.contains("shop/api:http: 10.0.0.1:8080, 10.0.0.2:8080 (not ready)"), "{out}");
    assert!(out.contains("1 served, 0 refused, 0 warnings"), "{out}");
}

#[test]
fn tcp_services_entries_are_listed_and_the_ones_not_served_warned() {
    let (code, out, err) = check(&[
        "--ingress",
        "shop.yaml",
        "tcp-services.yaml",
        "--tcp-services-configmap",
        "ingress-nginx/tcp-services",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // On every node address, to the ready endpoint of the Service port named.
    assert!(out.contains("l4 services:\n  tcp/5432 0.0.0.0:5432 -> 10.0.0.1:8080\n"), "{out}");
    assert!(out.contains("port 9999: Service shop/missing not found; skipped"), "{out}");
}

#[test]
fn refusals_fail_the_check_and_every_warning_is_printed() {
    let (code, out, err) = check(&["--ingress", "shop.yaml", "refused.yaml", "other-class.yaml"]);
    assert_eq!(code, 1, "a refused Ingress fails the check:\n{out}{err}");
    assert!(
        out.contains("REFUSED  blog/snippet: annotation configuration-snippet: snippets are refused"),
        "{out}"
    );
    assert!(!out.contains("blog.example.com"), "a refused Ingress makes no route:\n{out}");
    for warning in [
        "shop/late: annotation enable-opentelemetry is ignored: tracing is not implemented; no spans are sent",
        "shop/late: Service shop/api-v2 not found; its paths answer 503",
        "shop/late: host shop.example.com path /api (Prefix) is already served by the older Ingress shop/web",
        "other-class.yaml document 1: Ingress docs: not of class \"sluice\"",
        "other-class.yaml document 1: Deployment docs is not read",
    ] {
        assert!(out.contains(warning), "missing warning {warning:?}:\n{out}");
    }
    // The newer Ingress keeps the path nobody else claims, with no endpoints.
    assert!(
        out.contains("https://shop.example.com /new (Exact) -> backend shop/api-v2:80  [shop/late]"),
        "{out}"
    );
    assert!(out.contains("shop/api-v2:80: no endpoints (503)"), "{out}");
    assert!(out.contains("2 served, 1 refused, 5 warnings"), "{out}");
}

#[test]
fn warnings_fail_only_with_strict_and_the_class_is_chosen_as_run_chooses_it() {
    let (code, out, _) = check(&["--ingress", "other-class.yaml"]);
    assert_eq!(code, 0, "warnings alone pass:\n{out}");
    assert!(out.contains("0 served, 0 refused, 2 warnings"), "{out}");
    let (code, out, _) = check(&["--strict", "--ingress", "other-class.yaml"]);
    assert_eq!(code, 1, "--strict fails on warnings:\n{out}");
    let (code, out, _) = check(&["--ingress-class", "nginx", "--ingress", "other-class.yaml"]);
    assert_eq!(code, 0, "{out}");
    // No namespace in the manifest: `default`, as kubectl apply would put it.
    assert!(out.contains("served   default/docs"), "{out}");
    assert!(out.contains("http://docs.example.com / (Prefix) -> backend default/docs:80"), "{out}");
}

#[test]
fn unreadable_input_exits_2_naming_the_file_and_where() {
    let (code, out, err) = check(&["--ingress", "broken/syntax.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("broken/syntax.yaml") && err.contains("line 5 column 9"), "{err}");
    let (code, _, err) = check(&["--ingress", "broken/shape.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken/shape.yaml document 1: Ingress x: spec.rules: invalid type"), "{err}");
    let (code, _, err) = check(&["--ingress", "missing.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.yaml: cannot read"), "{err}");
    // A base configuration that does not load is unreadable input too.
    let (code, _, err) = check(&["missing-base.yaml", "--ingress", "shop.yaml"]);
    assert_eq!(code, 2, "{err}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs `sluice check ARGS` in the fixture directory: exit code, stdout, stderr.
fn check(args: &[&str]) -> (i32, String, String) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ingress");
    let output = Command::new(sluice_binary().unwrap())
        .arg("check")
        .args(args)
        .current_dir(fixtures)
        .output()
        .expect("sluice runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (output.status.code().expect("an exit code"), text(output.stdout), text(output.stderr))
}
