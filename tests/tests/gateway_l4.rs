//! TCPRoute and UDPRoute end to end (issue #22): the fake API server (serving them as
//! `v1alpha2`, the experimental channel's version before v1.6), the real binary in Kubernetes
//! mode without XDP (the user-space L4 proxy, no root) and real sockets. A Gateway with a TCP
//! and a UDP listener serves its routes' Services; the statuses are written as the conformance
//! suite reads them (TCPRouteMultipleRoutesAttachment, TCPRouteInvalidBackendRefNonexistent,
//! TCPRouteParentRefPortAndSectionName); a change of routes applies without a restart; a route
//! whose backend does not exist is reported and its port refuses connections while the others
//! serve; a listener on a tcp-services ConfigMap's port is refused and the entry keeps it.
//! Without the two kinds' CRDs (the standard channel before v1.6) nothing watches them and the
//! rest serves as before.
//!
//! Backends of one Service share a port on different loopback addresses (127.0.0.2, .3), since
//! an EndpointSlice gives one port to all its endpoints.

use std::{
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use lb_tests::{
    backend::{self, BACKEND_HEADER, Backend, Mode},
    fake_kube::{
        FakeKube,
        objects::{
            GATEWAY_V1, GATEWAY_V1ALPHA2, SliceEndpoint, config_map, endpoint_slice_ports, gateway,
            gateway_class, http_route, service_ports, tcp_route, udp_route,
        },
        sluice::{KubeSluice, KubeSluiceOptions, tcp_answer},
    },
    free_l4_ports, http, udp_echo, wait_for,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn launch(name: &str, addr: &str) -> Backend {
    let options = backend::Options { addr: addr.parse().unwrap(), mode: Mode::Name, ..Default::default() };
    Backend::launch(name, options).unwrap()
}

/// The UDP port's answer to `message`, or the error (a closed port is refused).
fn udp_exchange(port: u16, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_millis(300)))?;
    client.connect(("127.0.0.1", port))?;
    client.send(message)?;
    let mut buf = [0u8; 512];
    let n = client.recv(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// Waits until the object's conditions at `pointer` have `type` with `status` and `reason`.
fn wait_condition(
    kube: &FakeKube,
    (api_version, kind, name): (&str, &str, &str),
    pointer: &str,
    (type_, status, reason): (&str, &str, &str),
) -> Value {
    wait_for(WAIT, &format!("{kind} {name} {pointer} {type_}={status} ({reason})"), || {
        let object = kube.get(api_version, kind, "apps", name)?;
        let conditions = object.pointer(pointer)?.as_array()?.clone();
        conditions
            .iter()
            .any(|c| c["type"] == type_ && c["status"] == status && c["reason"] == reason)
            .then_some(object)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", kube.get(api_version, kind, "apps", name).unwrap_or_default()))
}

fn route_condition(kube: &FakeKube, kind: &str, name: &str, condition: (&str, &str, &str)) -> Value {
    wait_condition(kube, (GATEWAY_V1ALPHA2, kind, name), "/status/parents/0/conditions", condition)
}

/// The Gateway's listener `name`, once its status has `attachedRoutes: attached`.
fn wait_listener(kube: &FakeKube, name: &str, attached: i64) -> Value {
    wait_for(WAIT, &format!("listener {name} with {attached} attached routes"), || {
        let gateway = kube.get(GATEWAY_V1, "Gateway", "apps", "l4")?;
        let listeners = gateway.pointer("/status/listeners")?.as_array()?.clone();
        listeners.into_iter().find(|l| l["name"] == name && l["attachedRoutes"] == attached)
    })
    .unwrap_or_else(|e| {
        panic!("{e}: {:#}", kube.get(GATEWAY_V1, "Gateway", "apps", "l4").unwrap_or_default())
    })
}

fn condition(listener: &Value, type_: &str) -> (String, String) {
    let c = listener["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap();
    (c["status"].as_str().unwrap().to_owned(), c["reason"].as_str().unwrap().to_owned())
}

fn tcp_spec(parent: Value, backend: &str, minute: u32) -> (Value, String) {
    let spec = json!({"parentRefs": [parent], "rules": [{"backendRefs": [{"name": backend, "port": 7000}]}]});
    (spec, format!("2026-01-01T00:{minute:02}:00Z"))
}

/// A TCPRoute created at the time `spec_at` gives (the fake server keeps a given time).
fn timed_tcp_route(name: &str, (spec, at): (Value, String)) -> Value {
    let mut route = tcp_route("apps", name, spec);
    route["metadata"]["creationTimestamp"] = json!(at);
    route
}

#[test]
fn tcp_and_udp_routes_serve_report_and_follow_changes_live() {
    let kube = FakeKube::start().unwrap();
    let echo_a = launch("echo-a", "127.0.0.2:0");
    let port = echo_a.addr().port();
    let _echo_b = launch("echo-b", &format!("127.0.0.3:{port}"));
    let dns = udp_echo("dns-a", "127.0.0.2:0");
    for (service, ip) in [("echo-a", "127.0.0.2"), ("echo-b", "127.0.0.3")] {
        kube.apply(service_ports("apps", service, &[("tcp", 7000, port, "TCP")]));
        let endpoints = [SliceEndpoint::ready(ip), SliceEndpoint::not_ready("127.0.0.9")];
        let slice = endpoint_slice_ports(
            "apps",
            &format!("{service}-1"),
            service,
            "IPv4",
            &[("tcp", port, "TCP")],
            &endpoints,
        );
        kube.apply(slice);
    }
    kube.apply(service_ports("apps", "dns", &[("dns", 53, dns.port(), "UDP")]));
    let dns_endpoints = [SliceEndpoint::ready("127.0.0.2")];
    kube.apply(endpoint_slice_ports(
        "apps",
        "dns-1",
        "dns",
        "IPv4",
        &[("dns", dns.port(), "UDP")],
        &dns_endpoints,
    ));

    let [tcp_port, udp_port, broken_port, configmap_port] = free_l4_ports();
    kube.apply(config_map("ingress", "tcp-services", &[(&configmap_port.to_string(), "apps/echo-b:7000")]));
    let options = KubeSluiceOptions::default().args(&["--tcp-services-configmap", "ingress/tcp-services"]);
    let mut sluice = KubeSluice::start(&kube, options);
    kube.apply(gateway_class("sluice", "sluice.dev/gateway-controller"));
    kube.apply(gateway(
        "apps",
        "l4",
        "sluice",
        json!([{"name": "tcp", "port": tcp_port, "protocol": "TCP"},
               {"name": "udp", "port": udp_port, "protocol": "UDP"},
               {"name": "broken", "port": broken_port, "protocol": "TCP"},
               {"name": "clash", "port": configmap_port, "protocol": "TCP"}]),
    ));
    let tcp_parent = json!({"name": "l4", "sectionName": "tcp"});
    kube.apply(timed_tcp_route("older", tcp_spec(tcp_parent.clone(), "echo-a", 1)));
    kube.apply(timed_tcp_route("newer", tcp_spec(tcp_parent, "echo-b", 2)));
    kube.apply(udp_route(
        "apps",
        "dns",
        json!({"parentRefs": [{"name": "l4", "port": udp_port}], "rules": [{"backendRefs": [{"name": "dns", "port": 53}]}]}),
    ));
    kube.apply(timed_tcp_route(
        "broken",
        tcp_spec(json!({"name": "l4", "sectionName": "broken"}), "nowhere", 3),
    ));

    // Traffic: the TCP listener serves the older route's Service (the not-ready endpoint gets
    // nothing, the newer route's Service nothing); UDP datagrams are answered by the endpoint.
    sluice.wait_for_tcp(tcp_port, "echo-a", WAIT);
    for _ in 0..10 {
        assert_eq!(tcp_answer(tcp_port).as_deref(), Some("echo-a"));
    }
    let answer = wait_for(WAIT, "the UDP listener to answer", || udp_exchange(udp_port, b"hello").ok())
        .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert_eq!(answer, b"dns-a:hello");

    // Statuses: both TCPRoutes accepted and counted, the UDPRoute by port, the route to a
    // missing Service BackendNotFound; the listeners accepted with their kinds; the one on the
    // ConfigMap's port refused, the ConfigMap entry serving.
    for name in ["older", "newer", "broken"] {
        route_condition(&kube, "TCPRoute", name, ("Accepted", "True", "Accepted"));
    }
    route_condition(&kube, "TCPRoute", "older", ("ResolvedRefs", "True", "ResolvedRefs"));
    route_condition(&kube, "UDPRoute", "dns", ("Accepted", "True", "Accepted"));
    let broken = route_condition(&kube, "TCPRoute", "broken", ("ResolvedRefs", "False", "BackendNotFound"));
    assert_eq!(broken["status"]["parents"][0]["controllerName"], "sluice.dev/gateway-controller");
    let tcp_listener = wait_listener(&kube, "tcp", 2);
    assert_eq!(
        tcp_listener["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}])
    );
    assert_eq!(condition(&tcp_listener, "Accepted"), ("True".into(), "Accepted".into()));
    assert_eq!(condition(&tcp_listener, "Programmed"), ("True".into(), "Programmed".into()));
    let udp_listener = wait_listener(&kube, "udp", 1);
    assert_eq!(udp_listener["supportedKinds"][0]["kind"], "UDPRoute");
    let clash = wait_listener(&kube, "clash", 0);
    assert_eq!(condition(&clash, "Accepted"), ("False".into(), "PortUnavailable".into()));
    wait_condition(
        &kube,
        (GATEWAY_V1, "Gateway", "l4"),
        "/status/conditions",
        ("Accepted", "True", "ListenersNotValid"),
    );
    sluice.wait_for_tcp(configmap_port, "echo-b", WAIT);
    // The broken route's listener refuses connections; nothing else is disturbed.
    assert!(
        TcpStream::connect(("127.0.0.1", broken_port)).is_err(),
        "nothing listens on the broken route's port"
    );
    assert_eq!(tcp_answer(tcp_port).as_deref(), Some("echo-a"));
    // Counted: the newer route gets no traffic, the broken route's port is not served.
    let notes = sluice.metric("sluice_kube_translation_notes").unwrap_or_default();
    assert!(notes >= 2.0, "sluice_kube_translation_notes {notes}\n{}", sluice.child.output());

    // Live: the older route goes, the newer takes the listener.
    assert!(kube.delete(GATEWAY_V1ALPHA2, "TCPRoute", "apps", "older"));
    sluice.wait_for_tcp(tcp_port, "echo-b", WAIT);
    wait_listener(&kube, "tcp", 1);
    // The broken route fixed (its Service created): its port serves.
    kube.apply(timed_tcp_route(
        "broken",
        tcp_spec(json!({"name": "l4", "sectionName": "broken"}), "echo-a", 3),
    ));
    sluice.wait_for_tcp(broken_port, "echo-a", WAIT);
    route_condition(&kube, "TCPRoute", "broken", ("ResolvedRefs", "True", "ResolvedRefs"));
    // The UDPRoute removed: its port stops answering, TCP still serves.
    assert!(kube.delete(GATEWAY_V1ALPHA2, "UDPRoute", "apps", "dns"));
    wait_for(WAIT, "the UDP listener to stop answering", || {
        udp_exchange(udp_port, b"bye").is_err().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert_eq!(tcp_answer(tcp_port).as_deref(), Some("echo-b"));
    let output = sluice.child.output();
    assert!(sluice.child.try_status().is_none(), "sluice exited:\n{output}");
}

/// A cluster whose API serves the Gateway API without TCPRoute and UDPRoute (the standard
/// channel before v1.6): nothing asks for them, an HTTPRoute serves as before, and a TCP
/// listener is accepted with no route, opening nothing. Once the CRDs are applied, the next
/// discovery (every 10 s, so this test runs about that long) finds them and the stored
/// TCPRoute is served without a restart.
#[test]
fn without_the_l4_route_crds_nothing_watches_them_and_the_rest_serves() {
    let kube = FakeKube::start().unwrap();
    kube.uninstall_gateway_kinds(&["tcproutes", "udproutes"]);
    let web = Backend::with_mode("web", Mode::Name);
    kube.publish_backend("apps", "web", &web);
    let sluice = KubeSluice::start(&kube, KubeSluiceOptions::default());
    let [tcp_port] = free_l4_ports();
    kube.apply(gateway_class("sluice", "sluice.dev/gateway-controller"));
    kube.apply(gateway(
        "apps",
        "l4",
        "sluice",
        json!([{"name": "http", "port": sluice.addr.port(), "protocol": "HTTP"},
               {"name": "tcp", "port": tcp_port, "protocol": "TCP"}]),
    ));
    kube.apply(http_route(
        "apps",
        "web",
        json!({"parentRefs": [{"name": "l4", "sectionName": "http"}], "hostnames": ["web.test"],
               "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}]}),
    ));
    wait_for(WAIT, "web.test to answer", || {
        let response = http::request(sluice.addr, "GET", "web.test", "/", &[]).ok()?;
        (response.status == 200 && response.header(BACKEND_HEADER) == Some("web")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    let tcp = wait_listener(&kube, "tcp", 0);
    assert_eq!(condition(&tcp, "Accepted"), ("True".into(), "Accepted".into()));
    assert!(TcpStream::connect(("127.0.0.1", tcp_port)).is_err(), "no route, nothing listens");
    // A TCPRoute written while its CRD is missing is stored, unseen.
    let spec = json!({"parentRefs": [{"name": "l4", "sectionName": "tcp"}],
                      "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}]});
    kube.apply(tcp_route("apps", "late", spec));
    for plural in ["/tcproutes", "/udproutes"] {
        assert_eq!(kube.count_requests("GET", plural), 0, "nothing lists or watches {plural}");
    }
    assert!(TcpStream::connect(("127.0.0.1", tcp_port)).is_err(), "the route is not seen");

    // The CRDs applied: found at the next discovery, watched, served.
    kube.install_gateway_api();
    sluice.wait_for_tcp(tcp_port, "web", WAIT);
    route_condition(&kube, "TCPRoute", "late", ("Accepted", "True", "Accepted"));
    assert!(sluice.child.output().contains("TCPRoutes are served; watching them"));
}
