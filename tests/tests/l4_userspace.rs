//! The L4 services without the kernel path (`xdp.enabled: false`, as `--no-xdp` or a failed
//! load leave it): the node proxies the same TCP and UDP services in user space, so the
//! feature never depends on the accelerator. A reload that changes them is applied; a service
//! whose address is taken when it is applied is served once the address frees up.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::free_port;
use lb_userspace::{config::Config, node::Node};

#[test]
fn tcp_and_udp_services_are_proxied_in_user_space_without_xdp() {
    let tcp_endpoint = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp_endpoint.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in tcp_endpoint.incoming() {
            let Ok(mut stream) = stream else { continue };
            let peer = stream.peer_addr().unwrap();
            let _ = stream.write_all(format!("tcp {peer}").as_bytes());
        }
    });
    let udp_endpoint = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp_endpoint.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp_endpoint.recv_from(&mut buf) {
            let mut answer = b"udp ".to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = udp_endpoint.send_to(&answer, from);
        }
    });
    let (tcp_port, udp_port, web_port) = (free_port(), free_port(), free_port());
    let yaml = |tcp_service_port: u16| {
        format!(
            "listeners: [{{name: web, address: '127.0.0.1:{web_port}'}}]
workers: 1
xdp: {{enabled: false}}
metrics: {{address: '127.0.0.1:0'}}
l4_services:
  - {{name: t, address: '127.0.0.1:{tcp_service_port}', endpoints: ['{tcp_addr}']}}
  - {{name: u, address: '127.0.0.1:{udp_port}', protocol: udp, endpoints: ['{udp_addr}']}}
"
        )
    };
    let first = yaml(tcp_port);
    let node = Node::start(&Config::from_yaml(&first, "test").unwrap()).unwrap();
    assert!(node.dataplane().is_none());

    let ask_tcp = |port: u16| -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = ask_tcp(tcp_port);
    assert!(answer.starts_with("tcp 127.0.0.1:"), "{answer}");
    let seen: SocketAddr = answer["tcp ".len()..].parse().unwrap();
    assert_ne!(seen.port(), tcp_port, "the endpoint sees the proxy's own connection");

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    client.connect(("127.0.0.1", udp_port)).unwrap();
    client.send(b"hello").unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"udp hello");
    let metrics = lb_tests::http::http_get(node.metrics_addr().unwrap(), "/metrics").unwrap().body;
    for protocol in ["tcp", "udp"] {
        let sample = format!("sluice_l4_proxied_flows_total{{protocol=\"{protocol}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{sample} in:\n{metrics}"));
        assert!(count >= 1.0, "{sample}{count}");
    }

    // A reload moving the TCP service to another port: the new one serves, the old is closed.
    let moved = free_port();
    node.apply(&Config::from_yaml(&yaml(moved), "test").unwrap()).unwrap();
    assert!(ask_tcp(moved).starts_with("tcp "));
    assert!(TcpStream::connect(("127.0.0.1", tcp_port)).is_err(), "the old service port is closed");
    node.stop().unwrap();
}

/// A TCP endpoint on loopback that writes `name` to each connection and closes it.
fn named_endpoint(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.write_all(name.as_bytes());
        }
    });
    addr
}

/// What a connection to `port` on loopback reads before it closes, if it connects.
fn read_from(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn an_l4_service_whose_port_is_taken_at_a_reload_is_served_once_the_port_frees_up() {
    let endpoint = named_endpoint("served");
    let web_port = free_port();
    let listeners = format!(
        "listeners: [{{name: web, address: '127.0.0.1:{web_port}'}}]\nworkers: 1\nxdp: {{enabled: false}}\n"
    );
    // Started without L4 services: the reload below starts the userspace L4 proxy.
    let node = Node::start(&Config::from_yaml(&listeners, "test").unwrap()).unwrap();
    let occupier = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = occupier.local_addr().unwrap().port();
    let free = free_port();
    let with_services = format!(
        "{listeners}l4_services:
  - {{name: taken, address: '127.0.0.1:{taken}', endpoints: ['{endpoint}']}}
  - {{name: free, address: '127.0.0.1:{free}', endpoints: ['{endpoint}']}}
"
    );
    node.apply(&Config::from_yaml(&with_services, "test").unwrap()).expect("the reload applies");
    assert_eq!(
        read_from(free).unwrap(),
        "served",
        "a taken port does not keep the other service from serving"
    );
    // The port is still the occupier's: a connection reaches it, not the proxy.
    let _ = TcpStream::connect(("127.0.0.1", taken)).unwrap();
    let (accepted, _) = occupier.accept().unwrap();
    drop((accepted, occupier));

    // Retried in the background (first after 1 s): served without another reload.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match read_from(taken) {
            Ok(answer) if answer == "served" => break,
            other => assert!(Instant::now() < deadline, "not served after the port freed up: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read_from(free).unwrap(), "served");
    node.stop().unwrap();
}
