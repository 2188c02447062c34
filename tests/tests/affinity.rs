//! Session affinity end to end: cookie affinity (balanced and persistent modes, change on
//! failure, cookies honoured across instances sharing the key, tampered cookies replaced),
//! and hash affinity on a header or the client address (consistent when endpoints change).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use common::Proxy;
use lb_tests::backend::{BACKEND_HEADER, Backend, HttpResponse};

/// A GET with extra header lines, one connection each.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    HttpResponse::parse(&raw).unwrap()
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| Backend::start(None, "127.0.0.1:0".parse().unwrap(), &format!("b{i}")).unwrap()).collect()
}

fn endpoints_yaml(backends: &[Backend], not_ready: Option<usize>) -> String {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("      - {{address: \"{}\", ready: {}}}\n", b.addr(), Some(i) != not_ready))
        .collect()
}

fn cookie_config(backends: &[Backend], mode: &str, extra: &str, not_ready: Option<usize>) -> String {
    format!(
        r#"workers: 2
affinity_key: "a key every node of the cluster shares"
access_log: {{enabled: false}}
listeners: [{{name: web, address: "{{listen}}"}}]
virtual_hosts:
  - {{name: shop, domains: ["*"], routes: [{{backend: shop}}]}}
backends:
  - name: shop
    cookie_affinity: {{name: route, mode: {mode}{extra}}}
    endpoints:
{}"#,
        endpoints_yaml(backends, not_ready)
    )
}

/// The `name=value` of the Set-Cookie for cookie `route`.
fn affinity_cookie(response: &HttpResponse) -> Option<String> {
    response
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.split(';').next().filter(|c| c.starts_with("route=")).map(str::to_owned))
}

#[test]
fn one_cookie_one_backend_on_every_instance_and_tampering_is_replaced() {
    let pool = backends(3);
    // Two separate sluice processes (two instances, as on two nodes) with the same key.
    let yaml =
        cookie_config(&pool, "balanced", "", None).replace("workers: 2", "workers: 2\nxdp: {enabled: false}");
    let first = common::Binary::start(&yaml);
    let second = common::Binary::start(&yaml);

    let response = get(first.addr, "/", &[]);
    assert_eq!(response.status, 200);
    let cookie = affinity_cookie(&response).expect("the first response pins the client");
    let pinned = response.header(BACKEND_HEADER).unwrap().to_owned();
    assert!(!cookie.contains("127.0.0.1"), "the cookie names the endpoint opaquely: {cookie}");

    for i in 0..100 {
        // Alternate instances: the second never issued this cookie, but shares the key.
        let proxy = if i % 2 == 0 { &first } else { &second };
        let response = get(proxy.addr, "/", &[("Cookie", &format!("a=1; {cookie}"))]);
        assert_eq!(response.header(BACKEND_HEADER), Some(pinned.as_str()), "request {i}");
        assert!(affinity_cookie(&response).is_none(), "a valid cookie is not reissued");
    }

    // A tampered cookie names nothing: the request is balanced and gets a fresh cookie.
    let mut tampered = cookie.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let response = get(first.addr, "/", &[("Cookie", &tampered)]);
    assert_eq!(response.status, 200);
    let replaced = affinity_cookie(&response).expect("a tampered cookie is replaced");
    assert_ne!(replaced, tampered);
}

#[test]
fn balanced_mode_repins_when_the_endpoint_leaves_and_persistent_mode_stays() {
    let pool = backends(3);
    for mode in ["balanced", "persistent"] {
        let proxy = Proxy::start(&cookie_config(&pool, mode, "", None));
        let response = get(proxy.addr, "/", &[]);
        let cookie = affinity_cookie(&response).unwrap();
        let pinned: usize = response.header(BACKEND_HEADER).unwrap()[1..].parse().unwrap();
        // The pinned endpoint turns not ready (as a Kubernetes endpoint does while draining).
        proxy.apply(&cookie_config(&pool, mode, "", Some(pinned)));
        let response = get(proxy.addr, "/", &[("Cookie", &cookie)]);
        let served: usize = response.header(BACKEND_HEADER).unwrap()[1..].parse().unwrap();
        match mode {
            "balanced" => {
                assert_ne!(served, pinned, "balanced: the client moves");
                let new_cookie = affinity_cookie(&response).expect("balanced: re-pinned with a new cookie");
                let again = get(proxy.addr, "/", &[("Cookie", &new_cookie)]);
                assert_eq!(again.header(BACKEND_HEADER).unwrap()[1..].parse::<usize>().unwrap(), served);
            }
            _ => {
                assert_eq!(served, pinned, "persistent: the client stays while its endpoint exists");
                assert!(affinity_cookie(&response).is_none());
            }
        }
        drop(proxy);
    }
}

#[test]
fn change_on_failure_repins_the_client() {
    let mut pool = backends(3);
    let yaml = |pool: &[Backend]| cookie_config(pool, "persistent", ", change_on_failure: true", None);
    let proxy = Proxy::start(&yaml(&pool));
    // Find a cookie for b0, then make b0 fail to connect by stopping it.
    let (cookie, _) = (0..50)
        .map(|_| get(proxy.addr, "/", &[]))
        .find(|r| r.header(BACKEND_HEADER) == Some("b0"))
        .map(|r| (affinity_cookie(&r).unwrap(), ()))
        .expect("round robin reaches b0");
    let stopped = pool.remove(0);
    let addr = stopped.addr();
    drop(stopped);
    assert!(TcpStream::connect(addr).is_err(), "b0 is down");
    let response = get(proxy.addr, "/", &[("Cookie", &cookie)]);
    assert_eq!(response.status, 200, "the failed attempt was retried elsewhere");
    let new_cookie = affinity_cookie(&response).expect("change on failure: a new cookie");
    assert_ne!(new_cookie, cookie);
    let served = response.header(BACKEND_HEADER).unwrap().to_owned();
    let again = get(proxy.addr, "/", &[("Cookie", &new_cookie)]);
    assert_eq!(again.header(BACKEND_HEADER), Some(served.as_str()), "the new pin holds");
}

fn hash_config(backends: &[Backend], hash_on: &str, not_ready: Option<usize>) -> String {
    format!(
        r#"workers: 2
access_log: {{enabled: false}}
listeners: [{{name: web, address: "{{listen}}"}}]
virtual_hosts:
  - {{name: shop, domains: ["*"], routes: [{{backend: shop}}]}}
backends:
  - name: shop
    balance: hash
    hash_on: {hash_on}
    endpoints:
{}"#,
        endpoints_yaml(backends, not_ready)
    )
}

/// Which backend each of 1,000 user keys lands on.
fn placement(proxy: &Proxy) -> HashMap<usize, String> {
    (0..1000)
        .map(|user| {
            let response = get(proxy.addr, "/", &[("X-User", &format!("user-{user}"))]);
            (user, response.header(BACKEND_HEADER).unwrap().to_owned())
        })
        .collect()
}

#[test]
fn hash_affinity_is_sticky_and_consistent_when_endpoints_change() {
    let pool = backends(4);
    let proxy = Proxy::start(&hash_config(&pool[..3], "{header: X-User}", None));
    let before = placement(&proxy);
    let again = placement(&proxy);
    assert_eq!(before, again, "each key stays on one endpoint");
    let spread: BTreeMap<&String, usize> = before.values().fold(BTreeMap::new(), |mut m, b| {
        *m.entry(b).or_default() += 1;
        m
    });
    assert_eq!(spread.len(), 3, "keys spread over every endpoint: {spread:?}");

    // Scaling 3 -> 4 endpoints moves at most 35% of the keys (ideally 25%).
    proxy.apply(&hash_config(&pool, "{header: X-User}", None));
    let scaled = placement(&proxy);
    let moved = before.iter().filter(|(user, b)| scaled[user] != **b).count();
    assert!(moved <= 350, "{moved} of 1000 keys moved when one endpoint joined three");
    assert!(moved > 0, "the new endpoint takes some keys");

    // An endpoint leaving (not ready): its keys move, every other key stays.
    proxy.apply(&hash_config(&pool, "{header: X-User}", Some(1)));
    let without_b1 = placement(&proxy);
    for (user, backend) in &scaled {
        if backend == "b1" {
            assert_ne!(without_b1[user], "b1", "user {user} left the gone endpoint");
        } else {
            assert_eq!(&without_b1[user], backend, "user {user} stayed");
        }
    }
}

#[test]
fn client_address_affinity_keeps_a_client_on_one_endpoint() {
    let pool = backends(3);
    let proxy = Proxy::start(&hash_config(&pool, "{client_ip: true}", None));
    let first = get(proxy.addr, "/", &[]).header(BACKEND_HEADER).unwrap().to_owned();
    for _ in 0..50 {
        assert_eq!(get(proxy.addr, "/", &[]).header(BACKEND_HEADER), Some(first.as_str()));
    }
}
