//! The `tcp-services` / `udp-services` ConfigMaps: every malformed entry shape is skipped with
//! a reason (never a panic, never a refused configuration), the well-formed ones become
//! `l4_services` on every node address, resolved through the Service (port by number or by
//! name, of the map's protocol) to its ready endpoints.

use super::*;
use crate::{
    config::L4Protocol,
    provider::kube::translate::stream_services::{ServicePortRef, StreamEntry, parse_entry, reserved},
};

fn entry(key: &str, value: &str) -> Result<(StreamEntry, Vec<String>), String> {
    parse_entry(key, value, L4Protocol::Tcp)
}

#[test]
fn well_formed_entries_parse_as_ingress_nginx_reads_them() {
    let (e, warnings) = entry("9000", "default/example-go:8080").unwrap();
    assert_eq!(
        e,
        StreamEntry {
            port: 9000,
            namespace: "default".into(),
            service: "example-go".into(),
            service_port: ServicePortRef::Number(8080),
            decode: false,
            encode: false,
        }
    );
    assert!(warnings.is_empty());
    let (e, _) = entry("5432", "db/postgres:pg").unwrap();
    assert_eq!(e.service_port, ServicePortRef::Name("pg".into()));
    // The PROXY fields, case-insensitive: decode, encode, both.
    let proxy = |value: &str| {
        let (e, warnings) = entry("1", value).unwrap();
        (e.decode, e.encode, warnings.len())
    };
    assert_eq!(proxy("a/b:80:PROXY"), (true, false, 0));
    assert_eq!(proxy("a/b:80::PROXY"), (false, true, 0));
    assert_eq!(proxy("a/b:80:proxy:Proxy"), (true, true, 0));
    assert_eq!(proxy("a/b:80:"), (false, false, 0));
    // Not PROXY: ignored with a warning (ingress-nginx ignores it silently).
    assert_eq!(proxy("a/b:80:PROXYv2"), (false, false, 1));
    assert_eq!(proxy("a/b:80:PROXY:yes"), (true, false, 1));
    // A fifth field: ingress-nginx reads the third and drops the fourth.
    assert_eq!(proxy("a/b:80:PROXY:PROXY:x"), (true, false, 1));
    // Leading zeros and a plus sign are a number, as Go's Atoi reads them.
    assert_eq!(entry("09000", "a/b:080").unwrap().0.port, 9000);
    assert_eq!(entry("09000", "a/b:080").unwrap().0.service_port, ServicePortRef::Number(80));
    // UDP: the PROXY protocol fields are ignored, with a warning.
    let (e, warnings) = parse_entry("53", "kube-system/kube-dns:53:PROXY", L4Protocol::Udp).unwrap();
    assert!(!e.decode && !e.encode && warnings.len() == 1, "{warnings:?}");
}

#[test]
fn every_malformed_entry_shape_is_an_error_naming_what_is_wrong() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "a/b:80", "not a port number"),
        ("http", "a/b:80", "not a port number"),
        ("0", "a/b:80", "not a port number"),
        ("65536", "a/b:80", "not a port number"),
        ("-1", "a/b:80", "not a port number"),
        ("99999999999999999999", "a/b:80", "not a port number"),
        (" 80", "a/b:80", "not a port number"),
        ("9000", "", "not NAMESPACE/SERVICE:PORT"),
        ("9000", "a/b", "not NAMESPACE/SERVICE:PORT"),
        ("9000", "b:80", "not NAMESPACE/SERVICE"),
        ("9000", "/b:80", "not NAMESPACE/SERVICE"),
        ("9000", "a/:80", "not NAMESPACE/SERVICE"),
        ("9000", "a/b/c:80", "not NAMESPACE/SERVICE"),
        ("9000", ":80", "not NAMESPACE/SERVICE"),
        ("9000", "a/b:", "names no Service port"),
        ("9000", "a/b::PROXY", "names no Service port"),
        ("9000", "a/b:0", "not a port number"),
        ("9000", "a/b:65536", "not a port number"),
        ("9000", "a/b:99999999999999999999", "not a port number"),
        ("9000", "a/b:80\u{0}", ""),
        ("9000", "[::1]:80", "not NAMESPACE/SERVICE"),
    ];
    for (key, value, wanted) in cases {
        match entry(key, value) {
            // A NUL makes a port name no Service has: parsed, then not found.
            Ok((e, _)) if wanted.is_empty() => {
                assert_eq!(e.service_port, ServicePortRef::Name("80\u{0}".into()))
            }
            Ok(parsed) => panic!("{key:?}: {value:?} parsed as {parsed:?}"),
            Err(why) => assert!(why.contains(wanted), "{key:?}: {value:?}: {why}"),
        }
    }
}

/// A Service with ports (name, port, protocol) in `namespace`.
fn l4_service(namespace: &str, name: &str, ports: &[(&str, i32, &str)]) -> Arc<Service> {
    let mut service = Service::clone(&service(name, &[]));
    service.metadata = meta(Some(namespace), name);
    service.spec.as_mut().unwrap().ports = Some(
        ports
            .iter()
            .map(|(n, port, protocol)| ServicePort {
                name: (!n.is_empty()).then(|| n.to_string()),
                port: *port,
                protocol: Some(protocol.to_string()),
                ..ServicePort::default()
            })
            .collect(),
    );
    Arc::new(service)
}

/// A slice of `service` in `namespace` with one port (name, port, protocol) and endpoints
/// (address, ready).
fn l4_slice(
    namespace: &str,
    name: &str,
    service: &str,
    port: (&str, i32, &str),
    endpoints: &[(&str, Option<bool>)],
) -> Arc<EndpointSlice> {
    let mut slice = SliceTest::new(name, service);
    for (address, ready) in endpoints {
        slice = slice.endpoint(address, *ready, *ready, Some(false));
    }
    let mut slice = EndpointSlice::clone(&slice.build());
    slice.metadata.namespace = Some(namespace.into());
    if endpoints.iter().any(|(a, _)| a.contains(':')) {
        slice.address_type = "IPv6".into();
    }
    slice.ports = vec![EndpointPort {
        name: (!port.0.is_empty()).then(|| port.0.to_owned()),
        port: Some(port.1),
        protocol: Some(port.2.into()),
        app_protocol: None,
    }];
    Arc::new(slice)
}

fn stream_translator() -> Translator {
    Translator::new(Settings {
        ingress_class: "sluice".into(),
        tcp_services_configmap: Some("ingress/tcp-services".into()),
        udp_services_configmap: Some("ingress/udp-services".into()),
        ..Settings::default()
    })
}

/// A cluster with a TCP Service `db/postgres` (port 5432 named `pg`, two ready endpoints and a
/// not-ready one), a UDP one `kube-system/dns` (53 named `dns`), and the two ConfigMaps.
fn stream_state(tcp: &[(&str, &str)], udp: &[(&str, &str)]) -> ClusterState {
    ClusterState {
        services: vec![
            l4_service("db", "postgres", &[("pg", 5432, "TCP")]),
            l4_service("kube-system", "dns", &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]),
            l4_service("db", "empty", &[("pg", 5432, "TCP")]),
        ],
        slices: vec![
            l4_slice(
                "db",
                "postgres-a",
                "postgres",
                ("pg", 15432, "TCP"),
                &[("10.0.0.1", Some(true)), ("10.0.0.2", None), ("10.0.0.3", Some(false))],
            ),
            // An unspecified or unparsable address is no endpoint (and must not make the
            // configuration fail validation).
            l4_slice(
                "kube-system",
                "dns-a",
                "dns",
                ("dns", 1053, "UDP"),
                &[("10.0.1.1", Some(true)), ("0.0.0.0", Some(true)), ("ten.0.1.2", Some(true))],
            ),
            l4_slice("db", "empty-a", "empty", ("pg", 15432, "TCP"), &[("10.0.0.9", Some(false))]),
        ],
        configmaps: vec![
            configmap("ingress", "tcp-services", tcp),
            configmap("ingress", "udp-services", udp),
        ],
        ..ClusterState::default()
    }
}

fn stream_build(state: &ClusterState) -> Translation {
    stream_translator().build(&base(), state).expect("the translation validates")
}

#[test]
fn entries_become_l4_services_on_every_node_address_with_the_ready_endpoints() {
    let state = stream_state(
        &[("5432", "db/postgres:5432"), ("6432", "db/postgres:pg:PROXY:PROXY")],
        &[("53", "kube-system/dns:dns")],
    );
    let t = stream_build(&state);
    let services = &t.config.l4_services;
    let summary: Vec<String> = services
        .iter()
        .map(|s| {
            let endpoints: Vec<String> = s.endpoints.iter().map(ToString::to_string).collect();
            let (accept, send) = (s.accept_proxy_protocol, s.proxy_protocol);
            format!(
                "{} {} {} {} accept={accept} send={send:?}",
                s.name,
                s.address,
                s.protocol,
                endpoints.join(",")
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "tcp/5432 0.0.0.0:5432 tcp 10.0.0.1:15432,10.0.0.2:15432 accept=false send=None",
            "tcp/6432 0.0.0.0:6432 tcp 10.0.0.1:15432,10.0.0.2:15432 accept=true send=Some(V1)",
            "udp/53 0.0.0.0:53 udp 10.0.1.1:1053 accept=false send=None",
        ],
        "{}",
        notes(&t)
    );
    assert!(t.notes.is_empty(), "{}", notes(&t));
    // Proxied in user space unless --l4-services-in-xdp says the endpoints' replies come back
    // through XDP's interfaces.
    assert!(services.iter().all(|s| !s.xdp));
    let in_xdp = Translator::new(Settings { l4_in_xdp: true, ..stream_translator().settings().clone() });
    assert!(in_xdp.build(&base(), &state).unwrap().config.l4_services.iter().all(|s| s.xdp));
    // The same objects in another order give the same services.
    let mut shuffled = state.clone();
    shuffled.services.reverse();
    shuffled.slices.reverse();
    shuffled.configmaps.reverse();
    assert_eq!(stream_build(&shuffled).config.l4_services, t.config.l4_services);
}

#[test]
fn entries_that_cannot_be_served_are_skipped_with_a_note_and_the_rest_served() {
    let state = stream_state(
        &[
            ("5432", "db/postgres:pg"),
            ("http", "db/postgres:pg"),
            ("5433", "db/missing:5432"),
            ("5434", "db/postgres:9999"),
            ("5435", "db/postgres:dns"),
            ("5436", "db/empty:pg"),
            ("5437", "nonsense"),
            ("8080", "db/postgres:pg"),
            ("5438", "nowhere/postgres:pg"),
            ("05432", "db/postgres:pg"),
        ],
        // A TCP port of a Service is not its UDP port.
        &[("53", "kube-system/dns:dns-tcp"), ("54", "kube-system/dns:53")],
    );
    let t = stream_build(&state);
    let served: Vec<&str> = t.config.l4_services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(served, ["tcp/5432", "udp/54"], "{}", notes(&t));
    let notes = notes(&t);
    for wanted in [
        "key \"http\": the key \"http\" is not a port number",
        "port 5433: Service db/missing not found; skipped",
        "port 5434: Service db/postgres has no TCP port 9999",
        "port 5435: Service db/postgres has no TCP port dns",
        "port 5436: Service db/empty has no ready endpoint for TCP port pg",
        "key \"5437\": \"nonsense\" is not NAMESPACE/SERVICE:PORT",
        "port 8080: port 8080 is listener \"web\"'s",
        "port 5438: Service nowhere/postgres not found",
        // "05432" and "5432" are one port: the first key (as sorted) has it.
        "port 5432: tcp port 5432 is already L4 service \"tcp/5432\"'s",
        "port 53: Service kube-system/dns has no UDP port dns-tcp",
    ] {
        assert!(notes.contains(wanted), "no note {wanted:?} in:\n{notes}");
    }
}

#[test]
fn a_missing_configmap_serves_no_services_from_it_and_says_so() {
    let mut state = stream_state(&[("5432", "db/postgres:pg")], &[]);
    state.configmaps.retain(|c| c.metadata.name.as_deref() != Some("tcp-services"));
    let t = stream_build(&state);
    assert!(t.config.l4_services.is_empty());
    assert!(notes(&t).contains("tcp-services ConfigMap ingress/tcp-services not found"), "{}", notes(&t));
    // Without the flags nothing is read, whatever ConfigMaps exist.
    let t = translator().build(&base(), &stream_state(&[("5432", "db/postgres:pg")], &[])).unwrap();
    assert!(t.config.l4_services.is_empty() && t.notes.is_empty(), "{}", notes(&t));
}

#[test]
fn reserved_ports_are_the_nodes_own() {
    let config = Config::from_yaml(
        "listeners: [{name: web, address: '0.0.0.0:80'}]\nworkers: 2\nadmin: {address: '127.0.0.1:9901'}\nmetrics: {address: '0.0.0.0:10254'}\nl4_services: [{name: dns, address: '192.0.2.1:53', protocol: udp, endpoints: ['10.0.0.1:53']}]\n",
        "t",
    )
    .unwrap();
    let tcp = |port| reserved(&config, port, L4Protocol::Tcp);
    assert!(tcp(80).unwrap().contains("listener"));
    // ingress-nginx reserves its HTTP ports for UDP too.
    assert!(reserved(&config, 80, L4Protocol::Udp).is_some());
    assert!(tcp(9901).unwrap().contains("admin"));
    assert!(tcp(10254).unwrap().contains("metrics"));
    assert!(tcp(20000).unwrap().contains("workers' own ports"));
    assert!(tcp(20001).is_some());
    assert!(tcp(20002).is_none(), "one listener, two workers: 20000 and 20001");
    assert!(tcp(61000).unwrap().contains("XDP"));
    assert!(tcp(65535).is_some());
    assert!(reserved(&config, 53, L4Protocol::Udp).unwrap().contains("\"dns\""));
    assert!(tcp(53).is_none(), "TCP and UDP ports are apart");
    assert!(tcp(5432).is_none());
    let mut no_xdp = config.clone();
    no_xdp.xdp.enabled = false;
    assert!(reserved(&no_xdp, 61000, L4Protocol::Tcp).is_none(), "the SNAT range is XDP's only");
}

#[test]
fn ipv6_only_endpoints_make_an_ipv6_service_and_dual_stack_takes_ipv4() {
    let mut state = stream_state(&[("5432", "db/postgres:pg")], &[]);
    state.slices.push(l4_slice(
        "db",
        "postgres-b",
        "postgres",
        ("pg", 15432, "TCP"),
        &[("fd00::1", Some(true))],
    ));
    let t = stream_build(&state);
    assert_eq!(t.config.l4_services[0].address.to_string(), "0.0.0.0:5432");
    assert!(t.config.l4_services[0].endpoints.iter().all(SocketAddr::is_ipv4));
    state.slices.retain(|s| s.metadata.name.as_deref() != Some("postgres-a"));
    let t = stream_build(&state);
    assert_eq!(t.config.l4_services[0].address.to_string(), "[::]:5432");
    assert_eq!(t.config.l4_services[0].endpoints, ["[fd00::1]:15432".parse().unwrap()]);
}

#[test]
fn at_most_sixteen_services_and_256_endpoints_and_what_is_left_out_is_said() {
    let tcp: Vec<(String, String)> =
        (0..20).map(|i| ((7000 + i).to_string(), "db/postgres:pg".to_owned())).collect();
    let tcp: Vec<(&str, &str)> = tcp.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut state = stream_state(&tcp, &[]);
    let many: Vec<String> = (0..300).map(|i| format!("10.1.{}.{}", i / 256, i % 256)).collect();
    let many: Vec<(&str, Option<bool>)> = many.iter().map(|a| (a.as_str(), Some(true))).collect();
    state.slices.push(l4_slice("db", "postgres-many", "postgres", ("pg", 15432, "TCP"), &many));
    let t = stream_build(&state);
    assert_eq!(t.config.l4_services.len(), 16);
    assert!(t.config.l4_services.iter().all(|s| s.endpoints.len() == 256));
    let notes = notes(&t);
    assert!(notes.contains("port 7016: at most 16 L4 services per node"), "{notes}");
    assert!(notes.contains("302 ready endpoints; the first 256 by address are served"), "{notes}");
}

#[test]
fn a_base_l4_service_keeps_its_port_and_name() {
    let base = Config::from_yaml(
        "listeners: [{name: web, address: '127.0.0.1:8080'}]\nxdp: {enabled: false}\nl4_services: [{name: tcp/6000, address: '127.0.0.1:5432', endpoints: ['10.9.9.9:5432']}]\n",
        "base",
    )
    .unwrap();
    let state = stream_state(&[("5432", "db/postgres:pg"), ("6000", "db/postgres:pg")], &[]);
    let t = stream_translator().build(&base, &state).unwrap();
    let served: Vec<&str> = t.config.l4_services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(served, ["tcp/6000"], "{}", notes(&t));
    assert_eq!(t.config.l4_services[0].address.to_string(), "127.0.0.1:5432");
    let notes = notes(&t);
    assert!(notes.contains("already L4 service \"tcp/6000\"'s"), "{notes}");
    assert!(notes.contains("the base configuration has an L4 service named \"tcp/6000\""), "{notes}");
}

#[test]
fn the_idle_timeout_is_proxy_stream_timeout() {
    let state = stream_state(&[("5432", "db/postgres:pg")], &[("53", "kube-system/dns:dns")]);
    let timeouts = |t: &Translation| -> Vec<Option<u64>> {
        t.config.l4_services.iter().map(|s| s.idle_timeout_ms).collect()
    };
    // ingress-nginx's default for TCP; UDP keeps the l4_services default.
    assert_eq!(timeouts(&stream_build(&state)), [Some(600_000), None]);
    let mut state = state;
    state.configmaps.push(configmap("ingress", "controller", &[("proxy-stream-timeout", "2m")]));
    let translator = Translator::new(Settings {
        controller_configmap: Some("ingress/controller".into()),
        ..stream_translator().settings().clone()
    });
    let t = translator.build(&base(), &state).unwrap();
    assert_eq!(timeouts(&t), [Some(120_000), Some(120_000)], "{}", notes(&t));
}

#[test]
fn external_name_services_are_skipped() {
    let mut state = stream_state(&[("5432", "db/postgres:pg")], &[]);
    let mut service = Service::clone(&state.services[0]);
    service.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    service.spec.as_mut().unwrap().external_name = Some("db.example.com".into());
    state.services[0] = Arc::new(service);
    let t = stream_build(&state);
    assert!(t.config.l4_services.is_empty());
    assert!(notes(&t).contains("is ExternalName, which is not supported"), "{}", notes(&t));
}

/// Seeded random entries made of the pieces entries are made of, over Services with odd
/// endpoints: the translation always validates (a bad entry is skipped, never refuses the
/// configuration) and never panics.
#[test]
fn random_entries_never_refuse_the_configuration() {
    const KEYS: [&str; 9] = ["5432", "05432", "0", "65536", "8080", "61000", "x", "", "53"];
    const PIECES: [&str; 14] = [
        "db/postgres",
        "db/empty",
        "kube-system/dns",
        "db",
        "/",
        ":",
        "pg",
        "dns",
        "5432",
        "53",
        "PROXY",
        "proxy",
        "",
        "0",
    ];
    let mut rng = fastrand::Rng::with_seed(22);
    for round in 0..300 {
        let mut entries = Vec::new();
        for _ in 0..rng.usize(0..6) {
            let value: String = (0..rng.usize(0..6)).map(|_| PIECES[rng.usize(..PIECES.len())]).collect();
            entries.push((KEYS[rng.usize(..KEYS.len())].to_owned(), value));
        }
        let pairs: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (tcp, udp) = pairs.split_at(pairs.len() / 2);
        let mut state = stream_state(tcp, udp);
        let odd = [("0.0.0.0", Some(true)), ("::", Some(true)), ("fd00::9", None), ("10.0.0.1", Some(true))];
        state.slices.push(l4_slice(
            "db",
            "postgres-odd",
            "postgres",
            ("pg", 15432, "TCP"),
            &odd[..rng.usize(0..=4)],
        ));
        if let Err(e) = stream_translator().build(&base(), &state) {
            panic!("round {round}: {entries:?}: {e}");
        }
    }
}
