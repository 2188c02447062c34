//! ingress-nginx's `tcp-services` and `udp-services` ConfigMaps end to end: the fake API
//! server, the real binary in Kubernetes mode (`--tcp-services-configmap`,
//! `--udp-services-configmap`, without XDP: the user-space L4 proxy) and real sockets. A TCP
//! and a UDP service answer on their external ports, by Service port number and by name; a
//! `PROXY:PROXY` entry takes the client's header off and sends one to the endpoint (checked on
//! the backend's wire); changes to the ConfigMaps and to the EndpointSlices apply without a
//! restart; entries that cannot be served are skipped and logged while the others serve.
//!
//! Backends of one Service share a port on different loopback addresses (127.0.0.2, .3), since
//! an EndpointSlice gives one port to all its endpoints.

use std::{
    io::{Read, Write},
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use lb_tests::{
    backend::{self, Backend, Mode},
    fake_kube::{
        FakeKube,
        objects::{SliceEndpoint, config_map, endpoint_slice_ports, service_ports},
        sluice::{KubeSluice, KubeSluiceOptions, tcp_answer},
    },
    free_l4_ports, udp_echo, wait_for,
};

const WAIT: Duration = Duration::from_secs(20);

fn launch(name: &str, addr: &str, proxy_protocol: bool) -> Backend {
    let options = backend::Options {
        addr: addr.parse().unwrap(),
        mode: Mode::Name,
        proxy_protocol,
        ..Default::default()
    };
    Backend::launch(name, options).unwrap()
}

fn wait_for_closed(sluice: &KubeSluice, port: u16) {
    wait_for(WAIT, &format!("TCP port {port} to close"), || {
        TcpStream::connect(("127.0.0.1", port)).is_err().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
}

/// The UDP service's answer to `message`, or the error (a closed port is refused).
fn udp_exchange(port: u16, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_millis(300)))?;
    client.connect(("127.0.0.1", port))?;
    client.send(message)?;
    let mut buf = [0u8; 512];
    let n = client.recv(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// `GET /` through the TCP service on `port` after `prefix` (a PROXY header); the response
/// bytes (empty when the connection is closed without an answer).
fn raw_get(port: u16, prefix: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request: &[u8] = b"GET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n";
    stream.write_all(&[prefix, request].concat()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn tcp_and_udp_services_from_the_configmaps_serve_and_follow_changes_live() {
    let kube = FakeKube::start().unwrap();
    let echo_a = launch("echo-a", "127.0.0.2:0", false);
    let port = echo_a.addr().port();
    let echo_b = launch("echo-b", &format!("127.0.0.3:{port}"), false);
    let pp = launch("pp", "127.0.0.4:0", true);
    let dns = udp_echo("dns-a", "127.0.0.2:0");

    kube.apply(service_ports("apps", "echo", &[("tcp-echo", 7000, port, "TCP")]));
    let echo_slice = |ip: &str| {
        let endpoints = [SliceEndpoint::ready(ip), SliceEndpoint::not_ready("127.0.0.9")];
        endpoint_slice_ports("apps", "echo-1", "echo", "IPv4", &[("tcp-echo", port, "TCP")], &endpoints)
    };
    kube.apply(echo_slice("127.0.0.2"));
    let pp_port = pp.addr().port();
    kube.apply(service_ports("apps", "pp", &[("pp", 7001, pp_port, "TCP")]));
    let pp_endpoints = [SliceEndpoint::ready("127.0.0.4")];
    kube.apply(endpoint_slice_ports("apps", "pp-1", "pp", "IPv4", &[("pp", pp_port, "TCP")], &pp_endpoints));
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

    // Started before the ConfigMaps exist (reported), which then apply live; and before the
    // ports are chosen, so that its own listeners cannot take one of the unserved ones.
    let options = KubeSluiceOptions::default().args(&[
        "--tcp-services-configmap",
        "ingress/tcp-services",
        "--udp-services-configmap",
        "ingress/udp-services",
    ]);
    let sluice = KubeSluice::start(&kube, options);
    sluice.wait_for_log(&["tcp-services ConfigMap ingress/tcp-services not found"], WAIT);

    let [by_number, by_name, proxied, missing, unparsable, added, udp] = free_l4_ports();
    let (by_number_key, by_name_key, proxied_key) =
        (by_number.to_string(), by_name.to_string(), proxied.to_string());
    let (missing_key, unparsable_key, added_key) =
        (missing.to_string(), unparsable.to_string(), added.to_string());
    let tcp_entries = |extra: &[(&str, &str)], with_by_name: bool| {
        let mut data = vec![
            (by_number_key.as_str(), "apps/echo:7000"),
            (proxied_key.as_str(), "apps/pp:pp:PROXY:PROXY"),
            (missing_key.as_str(), "apps/missing:80"),
            (unparsable_key.as_str(), "apps-echo-7000"),
            ("ssh", "apps/echo:7000"),
        ];
        if with_by_name {
            data.push((by_name_key.as_str(), "apps/echo:tcp-echo"));
        }
        data.extend_from_slice(extra);
        config_map("ingress", "tcp-services", &data)
    };
    kube.apply(tcp_entries(&[], true));
    kube.apply(config_map("ingress", "udp-services", &[(&udp.to_string(), "apps/dns:dns")]));

    // By Service port number and by port name; the not-ready endpoint gets nothing.
    sluice.wait_for_tcp(by_number, "echo-a", WAIT);
    sluice.wait_for_tcp(by_name, "echo-a", WAIT);
    for _ in 0..10 {
        assert_eq!(tcp_answer(by_number).as_deref(), Some("echo-a"));
    }
    let answer = wait_for(WAIT, "the UDP service to answer", || udp_exchange(udp, b"hello").ok())
        .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    assert_eq!(answer, b"dns-a:hello");

    // PROXY:PROXY: the client's header is taken off, and the endpoint gets one naming the
    // client the header named (and the address and port the client reached).
    let answer = raw_get(proxied, b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("pp"), "{answer}");
    let sent = pp.proxy_headers();
    assert_eq!(
        sent.last().map(|h| String::from_utf8_lossy(h).into_owned()),
        Some(format!("PROXY TCP4 203.0.113.7 127.0.0.1 40000 {proxied}\r\n"))
    );
    // Without a header the connection is closed before it reaches the endpoint.
    assert_eq!(raw_get(proxied, b""), b"");
    assert_eq!(pp.proxy_headers().len(), sent.len());

    // The entries that cannot be served are skipped, logged, and take nothing else down.
    for port in [missing, unparsable] {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} is not served");
    }
    sluice.wait_for_log(&[&missing_key, "Service apps/missing not found; skipped"], WAIT);
    sluice.wait_for_log(&["apps-echo-7000", "is not NAMESPACE/SERVICE:PORT"], WAIT);
    sluice.wait_for_log(&["ssh", "is not a port number"], WAIT);

    // The Service's endpoints change: new connections go to the new endpoint, no restart.
    kube.apply(echo_slice("127.0.0.3"));
    sluice.wait_for_tcp(by_number, "echo-b", WAIT);
    sluice.wait_for_tcp(by_name, "echo-b", WAIT);
    assert!(echo_b.requests() > 0);

    // An entry added and one removed.
    kube.apply(tcp_entries(&[(added_key.as_str(), "apps/echo:7000")], false));
    sluice.wait_for_tcp(added, "echo-b", WAIT);
    wait_for_closed(&sluice, by_name);
    sluice.wait_for_tcp(by_number, "echo-b", WAIT);

    // The UDP ConfigMap deleted: its service goes (a datagram gets no answer; the socket stays
    // bound while the flows it had drain).
    assert!(kube.delete("v1", "ConfigMap", "ingress", "udp-services"));
    wait_for(WAIT, "the UDP service to stop answering", || udp_exchange(udp, b"x").err().map(|_| ()))
        .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    sluice.wait_for_tcp(added, "echo-b", WAIT);
    drop(echo_a);
}
