//! Session affinity end to end: cookie affinity (balanced and persistent modes, change on
//! failure, cookies honoured across instances sharing the key, tampered cookies replaced),
//! and hash affinity on a header or the client address (consistent when endpoints change).

use std::{
    collections::{BTreeMap, HashMap},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lb_tests::backend::{BACKEND_HEADER, Backend};
use lb_tests::http::{Client, HttpResponse};
use lb_tests::sluice::Proxy;

#[test]
fn one_cookie_one_backend_on_every_instance_and_tampering_is_replaced() {
    let pool = backends(3);
    // Two separate sluice processes (two instances, as on two nodes) with the same key.
    let yaml =
        cookie_config(&pool, "balanced", "", None).replace("workers: 2", "workers: 2\nxdp: {enabled: false}");
    let first = lb_tests::sluice::Binary::start(&yaml);
    let second = lb_tests::sluice::Binary::start(&yaml);

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

/// A GET from a connection bound to `source` (any 127.0.0.0/8 address works on loopback).
fn get_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> HttpResponse {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect_timeout(&addr.into(), Duration::from_secs(5)).unwrap();
    Client::over_tcp(socket.into()).unwrap().request("GET", "shop.test", "/", &[], true).unwrap()
}

#[test]
fn client_address_affinity_keeps_each_client_on_one_endpoint_and_spreads_clients() {
    let pool = backends(3);
    let proxy = Proxy::start(&hash_config(&pool, "{client_ip: true}", None));
    // 40 clients, 127.0.0.10 to 127.0.0.49, each sending 5 requests on new connections.
    let mut placement: BTreeMap<std::net::Ipv4Addr, String> = BTreeMap::new();
    for round in 0..5 {
        for host in 10..50u8 {
            let client = std::net::Ipv4Addr::new(127, 0, 0, host);
            let response = get_from(client, proxy.addr);
            assert_eq!(response.status, 200);
            let served = response.header(BACKEND_HEADER).unwrap().to_owned();
            let first = placement.entry(client).or_insert_with(|| served.clone());
            assert_eq!(*first, served, "client {client} moved in round {round}");
        }
    }
    let spread: BTreeMap<&String, usize> = placement.values().fold(BTreeMap::new(), |mut m, b| {
        *m.entry(b).or_default() += 1;
        m
    });
    assert_eq!(spread.len(), 3, "40 client addresses spread over every endpoint: {spread:?}");
}

// ---------------------------------------------------------------------------------------------
// Pinned placement. Every instance (worker, node, version) must send a key to the same
// endpoint: during a rolling upgrade old and new instances serve side by side, and a change of
// hash or table silently moves every hashed client and voids every affinity cookie. These
// reference outputs were recorded from the implementation; if one fails, the change reshuffles
// clients between versions: make it only on purpose, and update the pin with a note.

mod pinned {
    use std::{net::IpAddr, sync::Arc};

    use http::{HeaderMap, HeaderValue, Uri};
    use lb_userspace::{
        config::{Balance, CookieAffinityConfig, HashOn},
        maglev::{MaglevEntry, build_table},
        proxy::upstream::{
            affinity::{CookieAffinity, Pin},
            balance::{Balancer, hash_key},
            endpoint::Endpoint,
        },
    };

    /// FNV-1a 64 of the bytes: a fixed digest for pinning long outputs.
    fn digest(bytes: impl IntoIterator<Item = u8>) -> u64 {
        bytes
            .into_iter()
            .fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3))
    }

    fn key(on: HashOn, headers: &[(&str, &str)], client: &str, uri: &str) -> Option<u64> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        hash_key(&on, &map, client.parse::<IpAddr>().unwrap(), &uri.parse::<Uri>().unwrap())
    }

    fn endpoints() -> Vec<Arc<Endpoint>> {
        (1..=4).map(|i| Endpoint::detached("shop", format!("10.1.0.{i}:8080").parse().unwrap())).collect()
    }

    /// Request keys: header, cookie, client address (IPv4, IPv6, IPv4-mapped) and an
    /// ingress-nginx `upstream-hash-by` template. The values also match an independent
    /// implementation of FNV-1a 64 then SplitMix64 (the algorithm balance.rs documents).
    #[test]
    fn request_keys_hash_to_their_reference_values() {
        let header = key(HashOn::Header("x-user".into()), &[("x-user", "alice")], "10.9.9.9", "/");
        assert_eq!(header, Some(0x1a04_6f57_3e1e_5475));
        let cookie = key(HashOn::Cookie("sticky".into()), &[("cookie", "a=1; sticky=abc")], "10.9.9.9", "/");
        assert_eq!(cookie, Some(0x29e3_2c04_ec3f_9c30));
        assert_eq!(key(HashOn::ClientIp, &[], "192.0.2.7", "/"), Some(0x9355_7860_0dfa_27d9));
        assert_eq!(key(HashOn::ClientIp, &[], "::ffff:192.0.2.7", "/"), Some(0x9355_7860_0dfa_27d9));
        assert_eq!(key(HashOn::ClientIp, &[], "2001:db8::7", "/"), Some(0xf534_9e64_7136_8c31));
        let template = HashOn::Template("$remote_addr$request_uri".into());
        assert_eq!(key(template, &[], "192.0.2.7", "/cart?id=3"), Some(0x51f9_23f6_6133_a9d6));
    }

    /// Which of four endpoints 1,000 user keys land on (the Maglev table of the hash balancer,
    /// built from the endpoints' addresses).
    #[test]
    fn hash_balancer_placement_is_pinned() {
        let endpoints = endpoints();
        let balancer = Balancer::new(Balance::Hash, &endpoints);
        let picks: Vec<u8> = (0..1000)
            .map(|user| {
                let key = key(
                    HashOn::Header("x-user".into()),
                    &[("x-user", &format!("user-{user}"))],
                    "10.9.9.9",
                    "/",
                );
                u8::try_from(balancer.pick(&endpoints, key, 0, &[]).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(picks[..16], [1, 3, 1, 0, 0, 3, 3, 1, 0, 3, 3, 0, 3, 2, 0, 2]);
        assert_eq!(digest(picks.iter().copied()), 0x211e_31ec_0470_5bfc);
        // The endpoints' order in the configuration does not matter.
        let reversed: Vec<_> = endpoints.iter().rev().cloned().collect();
        let balancer = Balancer::new(Balance::Hash, &reversed);
        let key = key(HashOn::Header("x-user".into()), &[("x-user", "user-1")], "10.9.9.9", "/");
        assert_eq!(reversed[balancer.pick(&reversed, key, 0, &[]).unwrap()].address, endpoints[3].address);
    }

    /// The XDP worker table of a four-worker service (keys are the worker ids).
    #[test]
    fn xdp_worker_table_is_pinned() {
        let workers: Vec<MaglevEntry> =
            (0..4u32).map(|w| MaglevEntry { key: u64::from(w), value: w + 1, weight: 1 }).collect();
        let table = build_table(&workers, lb_common::MAGLEV_TABLE_SIZE);
        assert_eq!(table[..16], [4, 1, 2, 2, 1, 2, 4, 2, 1, 3, 3, 3, 3, 4, 3, 1]);
        assert_eq!(digest(table.iter().flat_map(|v| v.to_le_bytes())), 0x21c1_8d45_91f3_58d4);
    }

    /// Affinity cookies: the same key gives the same cookie for an endpoint on every instance
    /// and version (HMAC-SHA256 of "sluice-affinity\0<backend>\0<address>", 16 bytes,
    /// base64url; the values match Python's hmac module).
    #[test]
    fn affinity_cookie_values_are_pinned() {
        let endpoints = endpoints();
        let config = CookieAffinityConfig { name: "route".into(), ..Default::default() };
        let affinity = CookieAffinity::new(&config, b"a key every node shares", "shop", &endpoints);
        let values = [
            "pkVbrf5RsqAwtFuUOyEGXA",
            "9kXx1ZtyRYYxlEdmRqlrsQ",
            "-1P5LcAkedx7v9EmL-zN4g",
            "EGffUzE552-NoYu6JEnJkg",
        ];
        for (index, value) in values.iter().enumerate() {
            let cookie = affinity.set_cookie(index, None).unwrap();
            assert_eq!(cookie.to_str().unwrap(), format!("route={value}; Path=/; HttpOnly"));
            let mut headers = HeaderMap::new();
            headers.insert(http::header::COOKIE, HeaderValue::from_str(&format!("route={value}")).unwrap());
            assert_eq!(affinity.pinned(&headers), Pin::Endpoint(index));
        }
    }
}

/// Kubernetes mode names a backend group by Service and port, plus a hash of its annotation
/// settings when they are not the defaults. Affinity cookies are keyed by that name (and hash
/// keys by the endpoints in it), so it is pinned too.
#[test]
fn kubernetes_backend_group_names_are_pinned() {
    use lb_tests::fake_kube::objects::{SliceEndpoint, endpoint_slice, ingress, ingress_class, service};
    use lb_userspace::{
        config::Config,
        provider::kube::{CONTROLLER, ClusterState, Settings, Translator},
    };
    fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> std::sync::Arc<T> {
        std::sync::Arc::new(serde_json::from_value(value).unwrap())
    }
    let mut sticky = ingress("default", "sticky", "sluice", "shop.test", "/", "web", 80);
    sticky["metadata"]["annotations"] = serde_json::json!({
        "nginx.ingress.kubernetes.io/affinity": "cookie",
        "nginx.ingress.kubernetes.io/session-cookie-name": "route",
    });
    let state = ClusterState {
        classes: vec![typed(ingress_class("sluice", CONTROLLER, false))],
        ingresses: vec![
            typed(ingress("default", "plain", "sluice", "plain.test", "/", "web", 80)),
            typed(sticky),
        ],
        services: vec![typed(service("default", "web", 80, 8080))],
        slices: vec![typed(endpoint_slice(
            "default",
            "web-1",
            "web",
            "IPv4",
            8080,
            &[SliceEndpoint::ready("10.1.0.1")],
        ))],
        ..ClusterState::default()
    };
    let base = Config::from_yaml("listeners: [{name: web, address: \"127.0.0.1:8080\"}]", "test").unwrap();
    let settings = Settings { ingress_class: "sluice".into(), ..Settings::default() };
    let translation = Translator::new(settings).translate(&base, &state);
    let mut names: Vec<&str> = translation.config.backends.iter().map(|b| b.name.as_str()).collect();
    names.sort();
    // The suffix is FNV-1a 32 of `BackendSettings::group_key` (the first release's fields as
    // their Debug text, later fields only when set), so changing that text changes every such
    // group's name, and with it its clients' cookies.
    assert_eq!(names, ["default/web:80", "default/web:80~ef29e8c3"]);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A GET with extra header lines, one connection each.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    lb_tests::http::request(addr, "GET", "shop.test", path, headers).unwrap()
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
