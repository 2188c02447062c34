//! The fake API server through its own HTTP API, as a client sees it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    sync::mpsc,
    time::Duration,
};

use serde_json::{Value, json};

use super::{FakeKube, http::percent_decode, objects::*, store::rfc3339};

/// One request over a new connection; (status, body as JSON).
fn call(server: &FakeKube, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let content_type = if method == "PATCH" { "application/merge-patch+json" } else { "application/json" };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A watch whose events arrive on a channel, one JSON value each.
struct Watch {
    events: mpsc::Receiver<Value>,
    _stream: TcpStream,
}

impl Watch {
    fn open(server: &FakeKube, path_and_query: &str) -> Watch {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        write!(stream, "GET {path_and_query} HTTP/1.1\r\nHost: k\r\n\r\n").unwrap();
        let (tx, events) = mpsc::channel();
        let reader = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = String::new();
            // Skip the head.
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
            }
            // Chunked: size line, data, CRLF. Events are whole lines inside the data.
            let mut pending = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let Ok(size) = usize::from_str_radix(line.trim(), 16) else { return };
                if size == 0 {
                    return;
                }
                let mut data = vec![0; size + 2];
                if reader.read_exact(&mut data).is_err() {
                    return;
                }
                pending.push_str(&String::from_utf8_lossy(&data[..size]));
                while let Some((event, rest)) = pending.split_once('\n') {
                    if let Ok(value) = serde_json::from_str(event) {
                        let _ = tx.send(value);
                    }
                    pending = rest.to_owned();
                }
            }
        });
        Watch { events, _stream: stream }
    }

    fn next(&self) -> Value {
        self.events.recv_timeout(Duration::from_secs(5)).expect("a watch event within 5 s")
    }

    /// The next event that is not a bookmark.
    fn next_change(&self) -> Value {
        loop {
            let event = self.next();
            if event["type"] != "BOOKMARK" {
                return event;
            }
        }
    }

    fn ended(&self) -> bool {
        loop {
            match self.events.recv_timeout(Duration::from_secs(5)) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

const SERVICES: &str = "/api/v1/namespaces/default/services";

fn rv_of(value: &Value) -> u64 {
    value["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

#[test]
fn create_get_list_and_versions() {
    let server = FakeKube::start().unwrap();
    let (status, created) = call(&server, "POST", SERVICES, Some(&service("default", "web", 80, 8080)));
    assert_eq!(status, 201);
    assert_eq!(created["metadata"]["resourceVersion"], "1");
    assert!(created["metadata"]["uid"].is_string());
    let (status, _) = call(&server, "POST", SERVICES, Some(&service("default", "web", 80, 8080)));
    assert_eq!(status, 409, "AlreadyExists");
    server.apply(service("other", "api", 80, 8080));
    let (status, list) = call(&server, "GET", "/api/v1/services", None);
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["metadata"]["resourceVersion"], "2");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(server.count("v1", "Service", |s| s["metadata"]["namespace"] == "other"), 1);
    let (_, namespaced) = call(&server, "GET", SERVICES, None);
    assert_eq!(namespaced["items"].as_array().unwrap().len(), 1);
    let (status, got) = call(&server, "GET", &format!("{SERVICES}/web"), None);
    assert_eq!((status, got["spec"]["ports"][0]["port"].as_u64()), (200, Some(80)));
    let (status, missing) = call(&server, "GET", &format!("{SERVICES}/nope"), None);
    assert_eq!((status, missing["reason"].as_str()), (404, Some("NotFound")));
}

#[test]
fn paged_lists_are_one_consistent_snapshot() {
    let server = FakeKube::start().unwrap();
    for i in 0..5 {
        server.apply(service("default", &format!("s{i}"), 80, 8080));
    }
    let (_, first) = call(&server, "GET", &format!("{SERVICES}?limit=2"), None);
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    // A change between pages is not in this list.
    server.apply(service("default", "s9", 80, 8080));
    let (_, second) = call(&server, "GET", &format!("{SERVICES}?limit=10&continue={token}"), None);
    assert_eq!(second["items"].as_array().unwrap().len(), 3);
    assert!(second["metadata"].get("continue").is_none());
    assert_eq!(second["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);
    // A token can be used again (a client retrying a page) until a compaction expires it.
    let (status, again) = call(&server, "GET", &format!("{SERVICES}?limit=10&continue={token}"), None);
    assert_eq!((status, &again["items"]), (200, &second["items"]));
    server.compact();
    let (status, body) = call(&server, "GET", &format!("{SERVICES}?limit=10&continue={token}"), None);
    assert_eq!((status, body["reason"].as_str()), (410, Some("Expired")), "compaction expires the token");
}

#[test]
fn replace_checks_the_version_and_keeps_status() {
    let server = FakeKube::start().unwrap();
    let path = "/apis/networking.k8s.io/v1/namespaces/default/ingresses/web";
    let stored = server.apply(ingress("default", "web", "sluice", "a.test", "/", "web", 80));
    let mut stale = stored.clone();
    stale["metadata"]["resourceVersion"] = json!("0");
    assert_eq!(call(&server, "PUT", path, Some(&stale)).0, 409);
    // The status subresource changes only the status.
    let mut with_status = stored.clone();
    with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    with_status["spec"]["ingressClassName"] = json!("ignored");
    let (status, after) = call(&server, "PUT", &format!("{path}/status"), Some(&with_status));
    assert_eq!(status, 200);
    assert_eq!(after["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
    assert_eq!(after["spec"]["ingressClassName"], "sluice");
    // A main-resource write keeps the status.
    let mut spec_change = after.clone();
    spec_change["spec"]["ingressClassName"] = json!("other");
    spec_change["status"] = json!({});
    let (_, after) = call(&server, "PUT", path, Some(&spec_change));
    assert_eq!(after["spec"]["ingressClassName"], "other");
    assert_eq!(after["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
    assert_eq!(after["metadata"]["generation"], 2);
    // A merge patch on the status.
    let patch = json!({"status": {"loadBalancer": {"ingress": [{"hostname": "lb.test"}]}}});
    let (status, after) = call(&server, "PATCH", &format!("{path}/status"), Some(&patch));
    assert_eq!(status, 200);
    assert_eq!(after["status"]["loadBalancer"]["ingress"], json!([{"hostname": "lb.test"}]));
    assert_eq!(server.count_requests("PATCH", "/web/status"), 1);
}

#[test]
fn watch_replays_from_a_version_then_streams_changes() {
    let server = FakeKube::start().unwrap();
    let a = server.apply(service("default", "a", 80, 8080));
    server.apply(service("default", "b", 80, 8080));
    let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion={}", rv_of(&a)));
    let event = watch.next_change();
    assert_eq!(
        (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );
    server.apply(service("default", "a", 81, 8080));
    let event = watch.next_change();
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(event["object"]["spec"]["ports"][0]["port"], 81);
    server.delete("v1", "Service", "default", "b");
    let event = watch.next_change();
    assert_eq!(
        (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("b"))
    );
    assert_eq!(rv_of(&event["object"]), server.resource_version());
    // Other namespaces are not in a namespaced watch.
    server.apply(service("other", "c", 80, 8080));
    server.apply(service("default", "d", 80, 8080));
    assert_eq!(watch.next_change()["object"]["metadata"]["name"], "d");
}

#[test]
fn watch_without_a_version_starts_with_the_current_state() {
    let server = FakeKube::start().unwrap();
    server.apply(service("default", "a", 80, 8080));
    let watch = Watch::open(&server, &format!("{SERVICES}?watch=1"));
    let event = watch.next_change();
    assert_eq!(
        (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("a"))
    );
}

#[test]
fn bookmarks_carry_the_current_version() {
    let server = FakeKube::start().unwrap();
    server.set_bookmark_interval(Duration::from_millis(50));
    server.apply(service("default", "a", 80, 8080));
    let watch =
        Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=1&allowWatchBookmarks=true"));
    let event = watch.next();
    assert_eq!(event["type"], "BOOKMARK");
    assert_eq!(event["object"]["metadata"]["resourceVersion"], "1");
    assert_eq!(event["object"]["kind"], "Service");
}

#[test]
fn an_expired_version_gets_410_gone_as_a_watch_event() {
    let server = FakeKube::start().unwrap();
    server.apply(service("default", "a", 80, 8080));
    server.apply(service("default", "b", 80, 8080));
    server.compact();
    let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=1"));
    let event = watch.next();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
    assert!(watch.ended(), "the stream ends after 410");
    // From the current version it is fine.
    let watch =
        Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion={}", server.resource_version()));
    server.apply(service("default", "c", 80, 8080));
    assert_eq!(watch.next_change()["object"]["metadata"]["name"], "c");
}

#[test]
fn label_and_field_selectors_filter_and_transitions_become_added_and_deleted() {
    let server = FakeKube::start().unwrap();
    let slice = |service: &str| {
        endpoint_slice("default", "s1", service, "IPv4", 8080, &[SliceEndpoint::ready("10.0.0.1")])
    };
    server.apply(slice("web"));
    let path = "/apis/discovery.k8s.io/v1/endpointslices";
    let (_, list) =
        call(&server, "GET", &format!("{path}?labelSelector=kubernetes.io%2Fservice-name%3Dweb"), None);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) =
        call(&server, "GET", &format!("{path}?labelSelector=kubernetes.io%2Fservice-name%3Dapi"), None);
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let watch = Watch::open(
        &server,
        &format!(
            "{path}?watch=true&resourceVersion={}&labelSelector=kubernetes.io%2Fservice-name%3Dweb",
            server.resource_version()
        ),
    );
    server.apply(slice("api"));
    assert_eq!(watch.next_change()["type"], "DELETED", "no longer matching");
    server.apply(slice("web"));
    assert_eq!(watch.next_change()["type"], "ADDED", "matching again");
    // Field selector on the Secret type.
    server.apply(tls_secret("default", "tls", "CERT", "KEY"));
    server.apply(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque"}, "type": "Opaque"}),
    );
    let (_, list) = call(&server, "GET", "/api/v1/secrets?fieldSelector=type%3Dkubernetes.io%2Ftls", None);
    let names: Vec<&str> =
        list["items"].as_array().unwrap().iter().filter_map(|s| s["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["tls"]);
}

#[test]
fn faults_500_delay_403_and_dropped_watches() {
    let server = FakeKube::start().unwrap();
    server.fail_requests(Some(500));
    let (status, body) = call(&server, "GET", SERVICES, None);
    assert_eq!((status, body["code"].as_u64()), (500, Some(500)));
    server.fail_requests(None);
    assert_eq!(call(&server, "GET", SERVICES, None).0, 200);

    server.set_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    call(&server, "GET", SERVICES, None);
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_delay(Duration::ZERO);

    server.forbid("list", "secrets");
    let (status, body) = call(&server, "GET", "/api/v1/secrets", None);
    assert_eq!(status, 403);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("cannot list resource \"secrets\""), "{message}");
    assert_eq!(call(&server, "GET", "/api/v1/namespaces/default/secrets/x", None).0, 404, "get is allowed");
    server.allow_all();
    assert_eq!(call(&server, "GET", "/api/v1/secrets", None).0, 200);

    let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=0"));
    lb_wait(|| server.open_watches() == 1);
    server.drop_watches();
    assert!(watch.ended(), "a dropped watch ends");
    lb_wait(|| server.open_watches() == 0);
}

#[test]
fn down_refuses_connections_and_up_serves_again_on_the_same_port() {
    let server = FakeKube::start().unwrap();
    server.apply(service("default", "a", 80, 8080));
    let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=1"));
    lb_wait(|| server.open_watches() == 1);
    server.set_up(false);
    assert!(watch.ended(), "open connections are cut");
    lb_wait(|| TcpStream::connect(server.addr()).is_err());
    server.set_up(true);
    lb_wait(|| TcpStream::connect(server.addr()).is_ok());
    let (status, list) = call(&server, "GET", SERVICES, None);
    assert_eq!((status, list["items"].as_array().unwrap().len()), (200, 1), "objects are kept");
}

#[test]
fn leases_support_optimistic_concurrency() {
    let server = FakeKube::start().unwrap();
    let path = "/apis/coordination.k8s.io/v1/namespaces/sluice/leases";
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "sluice"}, "spec": {"holderIdentity": "a"}});
    let (status, created) = call(&server, "POST", path, Some(&lease));
    assert_eq!(status, 201);
    let mut b = created.clone();
    b["spec"]["holderIdentity"] = json!("b");
    let mut c = created.clone();
    c["spec"]["holderIdentity"] = json!("c");
    assert_eq!(call(&server, "PUT", &format!("{path}/l"), Some(&b)).0, 200);
    assert_eq!(call(&server, "PUT", &format!("{path}/l"), Some(&c)).0, 409, "c lost the race");
    assert_eq!(
        server.get("coordination.k8s.io/v1", "Lease", "sluice", "l").unwrap()["spec"]["holderIdentity"],
        "b"
    );
}

#[test]
fn timestamps_and_base64() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
    assert_eq!(base64(b"hello!"), "aGVsbG8h");
    assert_eq!(base64(b"hi"), "aGk=");
    assert_eq!(base64(b"h"), "aA==");
    assert_eq!(percent_decode("a%2Fb%3Dc"), "a/b=c");
}

/// One request with extra headers and a raw body; (status, lower-case head, body as JSON).
fn call_with(
    server: &FakeKube,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn patch_status(server: &FakeKube, path: &str, status: &Value) -> (u16, Value) {
    let body = json!({"status": status}).to_string();
    let (code, _, body) =
        call_with(server, "PATCH", path, &[("content-type", "application/merge-patch+json")], &body);
    (code, body)
}

const INGRESS: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses/web";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice/leases";

#[test]
fn fail_next_answers_n_matching_requests_with_the_code_and_retry_after() {
    let server = FakeKube::start().unwrap();
    server.apply(service("default", "web", 80, 8080));
    server.fail_next(2, "list", "*/services", 429, Some(Duration::from_secs(3)));
    for _ in 0..2 {
        let (status, head, body) = call_with(&server, "GET", SERVICES, &[], "");
        assert_eq!((status, body["reason"].as_str()), (429, Some("TooManyRequests")));
        assert!(head.contains("retry-after: 3"), "{head}");
    }
    // A get of the same kind is not a list; after two the rule is used up.
    assert_eq!(call(&server, "GET", &format!("{SERVICES}/web"), None).0, 200);
    assert_eq!(call(&server, "GET", SERVICES, None).0, 200);
    // Any method, a glob over the whole path; without Retry-After.
    server.fail_next(1, "*", "/api/v1/namespaces/*/services/web", 503, None);
    let (status, head, _) = call_with(&server, "GET", &format!("{SERVICES}/web"), &[], "");
    assert_eq!(status, 503);
    assert!(!head.contains("retry-after"), "{head}");
    assert_eq!(call(&server, "GET", &format!("{SERVICES}/web"), None).0, 200);
    // Recorded as answered.
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200, 200, 503, 200]);
}

#[test]
fn a_black_hole_holds_requests_and_silences_watches_until_lifted() {
    let server = FakeKube::start().unwrap();
    server.apply(service("default", "web", 80, 8080));
    server.black_hole("GET", "*/services*");
    // A held request: no answer at all.
    let mut held = TcpStream::connect(server.addr()).unwrap();
    write!(held, "GET {SERVICES} HTTP/1.1\r\nHost: k\r\n\r\n").unwrap();
    held.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut byte = [0u8; 1];
    let error = held.read(&mut byte).unwrap_err();
    assert!(matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{error}");
    // A watch opens, then hears nothing: neither changes nor bookmarks.
    server.set_bookmark_interval(Duration::from_millis(50));
    let watch =
        Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=1&allowWatchBookmarks=true"));
    lb_wait(|| server.open_watches() == 1);
    server.apply(service("default", "web", 81, 8080));
    assert!(watch.events.recv_timeout(Duration::from_millis(500)).is_err(), "a black-holed watch is silent");
    // Other paths answer.
    assert_eq!(call(&server, "GET", "/api/v1/namespaces/default/secrets", None).0, 200);
    // Lifted: the held request ends with a 504, the silent watch ends.
    server.clear_black_holes();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = held.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(watch.ended());
    assert_eq!(call(&server, "GET", SERVICES, None).0, 200);
}

#[test]
fn restart_cuts_watches_throttles_then_expires_history_and_continue_tokens() {
    let server = FakeKube::start().unwrap();
    for i in 0..5 {
        server.apply(service("default", &format!("s{i}"), 80, 8080));
    }
    let old_rv = server.resource_version();
    let (_, first) = call(&server, "GET", &format!("{SERVICES}?limit=2"), None);
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion={old_rv}"));
    lb_wait(|| server.open_watches() == 1);
    server.restart(Duration::from_millis(800), Duration::from_secs(2));
    assert!(watch.ended(), "a restart cuts the watches");
    let (status, head, _) = call_with(&server, "GET", SERVICES, &[], "");
    assert_eq!(status, 429, "coming up");
    assert!(head.contains("retry-after: 2"), "{head}");
    lb_wait(|| call(&server, "GET", SERVICES, None).0 == 200);
    let (_, list) = call(&server, "GET", SERVICES, None);
    assert_eq!(list["items"].as_array().unwrap().len(), 5, "the objects are kept");
    let (status, _) = call(&server, "GET", &format!("{SERVICES}?limit=2&continue={token}"), None);
    assert_eq!(status, 410, "continue tokens from before the restart expired");
    let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=1"));
    assert_eq!(watch.next()["object"]["code"], 410, "history from before the restart is gone");
}

#[test]
fn compacting_one_kind_expires_only_its_watches() {
    let server = FakeKube::start().unwrap();
    server.apply(service("default", "a", 80, 8080));
    server.apply(tls_secret("default", "t", "C", "K"));
    server.compact_kind("v1", "Service");
    let services = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=1"));
    assert_eq!(services.next()["object"]["code"], 410);
    let secrets = Watch::open(&server, "/api/v1/namespaces/default/secrets?watch=true&resourceVersion=1");
    assert_eq!(secrets.next_change()["object"]["metadata"]["name"], "t", "secrets resume as before");
}

#[test]
fn apply_then_fail_lands_the_write_and_answers_an_error() {
    let server = FakeKube::start().unwrap();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "sluice"}, "spec": {"holderIdentity": "a"}});
    let created = server.apply(lease);
    let mut renewed = created.clone();
    renewed["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
    server.apply_then_fail(1, "PUT", "*/leases/l", 504);
    assert_eq!(call(&server, "PUT", &format!("{LEASES}/l"), Some(&renewed)).0, 504);
    let stored = server.get("coordination.k8s.io/v1", "Lease", "sluice", "l").unwrap();
    assert_eq!(stored["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z", "the write landed");
    assert!(rv_of(&stored) > rv_of(&created));
    // Its retry with the old version meets its own write.
    assert_eq!(call(&server, "PUT", &format!("{LEASES}/l"), Some(&renewed)).0, 409);
    let puts: Vec<(u16, bool)> =
        server.requests().iter().filter(|r| r.method == "PUT").map(|r| (r.status, r.applied)).collect();
    assert_eq!(puts, [(504, true), (409, false)]);
}

#[test]
fn status_addresses_patch_types_and_no_op_writes_are_checked_as_the_apiserver_does() {
    let server = FakeKube::start().unwrap();
    server.apply(ingress("default", "web", "sluice", "a.test", "/", "web", 80));
    let status_path = format!("{INGRESS}/status");
    for (entry, field) in [
        (json!({"ip": "lb:80"}), "ip"),
        (json!({"ip": "lb.example.com"}), "ip"),
        (json!({"hostname": "LB_1.example"}), "hostname"),
        (json!({"hostname": "192.0.2.1"}), "hostname"),
    ] {
        let (code, body) =
            patch_status(&server, &status_path, &json!({"loadBalancer": {"ingress": [entry]}}));
        let message = body["message"].as_str().unwrap_or("");
        assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")), "{message}");
        assert!(message.contains(&format!("status.loadBalancer.ingress[0].{field}")), "{message}");
    }
    let good =
        json!({"loadBalancer": {"ingress": [{"ip": "2001:db8::1"}, {"hostname": "lb-1.example.com"}]}});
    let (code, written) = patch_status(&server, &status_path, &good);
    assert_eq!(code, 200);
    // The same write again changes nothing: same version, no event.
    let watch = Watch::open(
        &server,
        &format!("/apis/networking.k8s.io/v1/ingresses?watch=true&resourceVersion={}", rv_of(&written)),
    );
    let (code, again) = patch_status(&server, &status_path, &good);
    assert_eq!((code, rv_of(&again)), (200, rv_of(&written)));
    assert!(watch.events.recv_timeout(Duration::from_millis(300)).is_err(), "no event for a no-op write");
    assert_eq!(server.status_writes().len(), 1, "only the write that changed something counts");
    // A patch naming a resourceVersion is a precondition.
    let stale = json!({"metadata": {"resourceVersion": "1"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}});
    let (code, _, _) = call_with(
        &server,
        "PATCH",
        &status_path,
        &[("content-type", "application/merge-patch+json")],
        &stale.to_string(),
    );
    assert_eq!(code, 409);
    let mut current = stale.clone();
    current["metadata"]["resourceVersion"] = json!(rv_of(&written).to_string());
    let (code, _, _) = call_with(
        &server,
        "PATCH",
        &status_path,
        &[("content-type", "application/merge-patch+json")],
        &current.to_string(),
    );
    assert_eq!(code, 200);
    // Patch media types.
    let body = json!({"metadata": {"labels": {"a": "b"}}}).to_string();
    let (code, _, answer) =
        call_with(&server, "PATCH", INGRESS, &[("content-type", "application/foo+json")], &body);
    assert_eq!((code, answer["reason"].as_str()), (415, Some("UnsupportedMediaType")));
    let (code, _, _) =
        call_with(&server, "PATCH", INGRESS, &[("content-type", "application/apply-patch+yaml")], &body);
    assert_eq!(code, 422, "server-side apply needs a field manager");
    let json_patch = json!([{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}]).to_string();
    let (code, _, patched) =
        call_with(&server, "PATCH", INGRESS, &[("content-type", "application/json-patch+json")], &json_patch);
    assert_eq!((code, patched["metadata"]["labels"]["x"].as_str()), (200, Some("y")));
    let test_fails = json!([{"op": "test", "path": "/metadata/name", "value": "other"}]).to_string();
    let (code, _, _) =
        call_with(&server, "PATCH", INGRESS, &[("content-type", "application/json-patch+json")], &test_fails);
    assert_eq!(code, 422);
}

#[test]
fn finalizers_hold_a_deletion_until_the_last_is_removed() {
    let server = FakeKube::start().unwrap();
    let mut object = service("default", "web", 80, 8080);
    object["metadata"]["finalizers"] = json!(["sluice.dev/test"]);
    let created = server.apply(object);
    let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion={}", rv_of(&created)));
    let (status, marked) = call(&server, "DELETE", &format!("{SERVICES}/web"), None);
    assert_eq!(status, 200);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let event = watch.next_change();
    assert_eq!(event["type"], "MODIFIED");
    assert!(event["object"]["metadata"]["deletionTimestamp"].is_string());
    // Still there; a write cannot take the deletion back.
    let mut keep = server.get("v1", "Service", "default", "web").unwrap();
    keep["metadata"]["deletionTimestamp"] = Value::Null;
    keep["metadata"]["labels"] = json!({"still": "here"});
    let (status, kept) = call(&server, "PUT", &format!("{SERVICES}/web"), Some(&keep));
    assert_eq!(status, 200);
    assert!(kept["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(watch.next_change()["type"], "MODIFIED");
    // Removing the last finalizer completes the deletion.
    let mut done = kept.clone();
    done["metadata"]["finalizers"] = json!([]);
    assert_eq!(call(&server, "PUT", &format!("{SERVICES}/web"), Some(&done)).0, 200);
    assert_eq!(watch.next_change()["type"], "DELETED");
    assert!(server.get("v1", "Service", "default", "web").is_none());
}

#[test]
fn status_writes_are_recorded_in_order_with_their_writer() {
    let server = FakeKube::start().unwrap();
    server.apply(ingress("default", "web", "sluice", "a.test", "/", "web", 80));
    let status = |ip: &str| json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}).to_string();
    let merge = ("content-type", "application/merge-patch+json");
    call_with(
        &server,
        "PATCH",
        &format!("{INGRESS}/status"),
        &[merge, ("user-agent", "sluice/0.1 (sluice-a)")],
        &status("192.0.2.1"),
    );
    call_with(
        &server,
        "PATCH",
        &format!("{INGRESS}/status?fieldManager=sluice-b"),
        &[merge],
        &status("192.0.2.2"),
    );
    server.fail_next(1, "PATCH", "*/status", 429, Some(Duration::from_secs(1)));
    call_with(
        &server,
        "PATCH",
        &format!("{INGRESS}/status?fieldManager=sluice-c"),
        &[merge],
        &status("192.0.2.3"),
    );
    let writers: Vec<String> = server.status_writes().iter().map(|r| r.writer().to_owned()).collect();
    assert_eq!(writers, ["sluice/0.1 (sluice-a)", "sluice-b"], "the throttled write did not land");
}

#[test]
fn a_service_gets_several_slices() {
    let server = FakeKube::start().unwrap();
    let endpoints: Vec<SliceEndpoint> =
        (0..250).map(|i| SliceEndpoint::ready(&format!("10.0.{}.{}", i / 200, i % 200 + 1))).collect();
    let slices = endpoint_slices("default", "web", "IPv4", 8080, &endpoints, 100);
    assert_eq!(slices.len(), 3);
    server.apply_all(slices);
    let (_, list) = call(
        &server,
        "GET",
        "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb",
        None,
    );
    let sizes: Vec<usize> =
        list["items"].as_array().unwrap().iter().map(|s| s["endpoints"].as_array().unwrap().len()).collect();
    assert_eq!(sizes, [100, 100, 50]);
}

#[test]
fn tokens_are_required_when_set_and_rules_can_pick_one_client() {
    let server = FakeKube::start().unwrap();
    server.require_tokens(Some(&["t1"]));
    let (status, _, body) = call_with(&server, "GET", SERVICES, &[], "");
    assert_eq!((status, body["reason"].as_str()), (401, Some("Unauthorized")));
    assert_eq!(call_with(&server, "GET", SERVICES, &[("authorization", "Bearer t2")], "").0, 401);
    assert_eq!(call_with(&server, "GET", SERVICES, &[("authorization", "Bearer t1")], "").0, 200);
    server.require_tokens(None);
    server.fail_next_from("(sluice-a)", 5, "*", "*", 429, None);
    let from = |agent: &str| call_with(&server, "GET", SERVICES, &[("user-agent", agent)], "").0;
    assert_eq!(from("sluice/0.1.0 (sluice-b)"), 200);
    assert_eq!(from("sluice/0.1.0 (sluice-a)"), 429);
}

fn lb_wait(mut check: impl FnMut() -> bool) {
    crate::wait_for(Duration::from_secs(5), "the fake server", || check().then_some(())).unwrap();
}
