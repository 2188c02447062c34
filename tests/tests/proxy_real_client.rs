//! The real client address end to end over loopback: forwarding headers believed only from
//! trusted proxies (nginx's realip, recursive), replaced otherwise as ingress-nginx does, and the
//! PROXY protocol (v1 and v2, plain and under TLS) on a listener; malformed headers close the
//! connection and are counted. The real address is what source ranges decide on.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lb_tests::{
    backend::{Backend, Echoed, Mode},
    free_port,
    http::{self, HttpResponse},
    sluice::Proxy,
    tls::{Ca, ClientOptions, client_config, connect_over, inline_certificate},
    wait_for,
};

fn request(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http::request(addr, "GET", host, path, headers).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A node with one echo backend; `listener` and `top` are spliced into the YAML.
fn start(listener: &str, top: &str, echo: &Backend) -> Proxy {
    Proxy::start(&format!(
        "workers: 2
xdp: {{enabled: false}}
limits: {{shutdown_grace_ms: 500, header_read_timeout_ms: 1000}}
listeners: [{{name: web, address: \"{{listen}}\"{listener}}}]
{top}
backends:
  - {{name: echo, endpoints: [{{address: \"{}\"}}]}}
virtual_hosts:
  - name: app
    domains: [\"*\"]
    routes:
      - backend: echo
        match: {{path: {{prefix: /office}}}}
        source_ranges: {{allow: [203.0.113.0/24, \"2001:db8::/32\"]}}
      - backend: echo
",
        echo.addr()
    ))
}

#[test]
fn an_untrusted_clients_forwarding_headers_are_replaced() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    // Trusting someone else changes nothing for loopback clients.
    let proxy = start("", "forwarded: {trusted_proxies: [10.0.0.0/8], use_forwarded_headers: true}", &echo);
    let spoofed =
        [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"), ("X-Real-IP", "203.0.113.7")];
    let seen = Echoed::of(&request(proxy.addr, "a.test", "/", &spoofed));
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "replaced, not appended");
    assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(request(proxy.addr, "a.test", "/office", &spoofed).status, 403, "a spoofed hop opens nothing");
}

#[test]
fn a_trusted_proxys_forwarding_headers_name_the_client() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let proxy = start(
        "",
        "forwarded: {trusted_proxies: [127.0.0.0/8, 10.0.0.0/8], use_forwarded_headers: true}",
        &echo,
    );
    // The client prepended a lie; the trusted hops (loopback, then 10.x) appended the truth.
    let hops = [
        ("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.1.2.3"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Host", "edge.test"),
    ];
    let response = request(proxy.addr, "a.test", "/office", &hops);
    assert_eq!(response.status, 200, "the real client is inside the allow list: {response:?}");
    let seen = Echoed::of(&response);
    assert_eq!(seen.all("x-real-ip"), ["203.0.113.7"]);
    assert_eq!(seen.all("x-forwarded-for"), ["203.0.113.7"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["https"], "the trusted proxy's scheme goes on");
    assert_eq!(seen.all("x-forwarded-port"), ["443"]);
    assert_eq!(seen.all("x-forwarded-host"), ["edge.test"]);
    let outside = [("X-Forwarded-For", "198.51.100.1, 10.1.2.3")];
    assert_eq!(request(proxy.addr, "a.test", "/office", &outside).status, 403);

    // compute-full-forwarded-for: the hops with the peer appended, the client still found.
    let full = start(
        "",
        "forwarded: {trusted_proxies: [127.0.0.0/8], use_forwarded_headers: true, compute_full_forwarded_for: true}",
        &echo,
    );
    let response = request(full.addr, "a.test", "/office", &[("X-Forwarded-For", "203.0.113.7")]);
    let seen = Echoed::of(&response);
    assert_eq!(seen.all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(seen.all("x-real-ip"), ["203.0.113.7"]);
}

fn metric(admin: SocketAddr, reason: &str) -> u64 {
    let text = http::http_get(admin, "/metrics").unwrap().body;
    let wanted = format!("sluice_proxy_protocol_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(wanted.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {wanted} in\n{text}"))
}

/// Sends `header`, then a request, and reads until the server closes.
fn exchange(addr: SocketAddr, header: &[u8], path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Writes may meet a reset: a listener that refused the header has closed already.
    let request = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(&[header, request.as_bytes()].concat());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn v2_tcp4(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&source);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&80u16.to_be_bytes());
    header
}

#[test]
fn proxy_protocol_names_the_client_and_refuses_connections_without_it() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = start(", proxy_protocol: true", &format!("admin: {{address: \"{admin}\"}}"), &echo);

    let v1 = exchange(proxy.addr, b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n", "/office");
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    assert!(v1.contains("x-real-ip: 203.0.113.7"), "the header's source is the client: {v1}");
    let v1_six = exchange(proxy.addr, b"PROXY TCP6 2001:db8::7 ::1 40000 80\r\n", "/office");
    assert!(v1_six.starts_with("HTTP/1.1 200") && v1_six.contains("x-real-ip: 2001:db8::7"), "{v1_six}");
    let v2 = exchange(proxy.addr, &v2_tcp4([203, 0, 113, 9], 40001), "/office");
    assert!(v2.starts_with("HTTP/1.1 200") && v2.contains("x-real-ip: 203.0.113.9"), "{v2}");
    let outside = exchange(proxy.addr, &v2_tcp4([198, 51, 100, 1], 40002), "/office");
    assert!(outside.starts_with("HTTP/1.1 403"), "source ranges decide on the header's source: {outside}");
    // UNKNOWN (a balancer's own check): the connection's peer stands.
    let unknown = exchange(proxy.addr, b"PROXY UNKNOWN\r\n", "/");
    assert!(unknown.starts_with("HTTP/1.1 200") && unknown.contains("x-real-ip: 127.0.0.1"), "{unknown}");

    let requests_before = echo.requests();
    let invalid_before = metric(admin, "invalid");
    for bad in [&b""[..], b"PROXY TCP4 203.0.113.7 127.0.0.1 040000 80\r\n", b"PROXY TCP4 nope\r\n"] {
        // Without a header the request itself is what the listener refuses.
        let answer = exchange(proxy.addr, bad, "/");
        assert_eq!(answer, "", "closed without an answer: {:?}", String::from_utf8_lossy(bad));
    }
    wait_for(Duration::from_secs(5), "the refusals to be counted", || {
        (metric(admin, "invalid") >= invalid_before + 3).then_some(())
    })
    .unwrap();
    // A header that never completes: closed at the header timeout.
    let timeout_before = metric(admin, "timeout");
    let mut silent = TcpStream::connect(proxy.addr).unwrap();
    silent.write_all(b"PROXY TCP4 203.0.").unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).unwrap_or(0), 0, "closed after the header timeout");
    assert_eq!(metric(admin, "timeout"), timeout_before + 1);
    assert_eq!(echo.requests(), requests_before, "nothing refused reached the backend");
}

#[test]
fn proxy_protocol_comes_before_the_tls_handshake() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let ca = Ca::new("proxy protocol test CA");
    let leaf = ca.leaf(&["a.test"]);
    let top = format!("certificates:\n{}", inline_certificate("a", &leaf));
    let proxy = start(", proxy_protocol: true, tls: {default_certificate: a}", &top, &echo);
    let config = client_config(ClientOptions { trust: Some(&ca), ..Default::default() });
    for header in
        [b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n".to_vec(), v2_tcp4([203, 0, 113, 8], 40001)]
    {
        let mut tcp = TcpStream::connect(proxy.addr).unwrap();
        tcp.write_all(&header).unwrap();
        let mut tls = connect_over(tcp, "a.test".try_into().unwrap(), &config).unwrap();
        tls.write_all(b"GET /office HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("x-real-ip: 203.0.113."), "{answer}");
        assert!(answer.contains("x-forwarded-proto: https"), "{answer}");
    }
}

/// The access log names the real client and, for a refused request, the check that refused it.
#[test]
fn the_access_log_names_the_real_client_and_the_refusal() {
    let echo = Backend::with_mode("echo", Mode::Echo);
    let sluice = lb_tests::sluice::Binary::start(&format!(
        "workers: 1
xdp: {{enabled: false}}
listeners: [{{name: web, address: \"{{listen}}\"}}]
forwarded: {{trusted_proxies: [127.0.0.0/8], use_forwarded_headers: true}}
backends:
  - {{name: echo, endpoints: [{{address: \"{}\"}}]}}
virtual_hosts:
  - name: app
    domains: [\"*\"]
    routes:
      - backend: echo
        source_ranges: {{allow: [203.0.113.0/24]}}
",
        echo.addr()
    ));
    assert_eq!(request(sluice.addr, "a.test", "/in", &[("X-Forwarded-For", "203.0.113.7")]).status, 200);
    assert_eq!(request(sluice.addr, "a.test", "/out", &[("X-Forwarded-For", "198.51.100.9")]).status, 403);
    let lines = wait_for(Duration::from_secs(10), "both access log lines", || {
        let output = sluice.child.output();
        let lines: Vec<String> = output
            .lines()
            .filter(|l| l.contains("path=/in") || l.contains("path=/out"))
            .map(String::from)
            .collect();
        (lines.len() == 2).then_some(lines)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.child.output()));
    let (allowed, refused) = (&lines[0], &lines[1]);
    assert!(allowed.contains("client=203.0.113.7") && allowed.contains("denied=\"\""), "{allowed}");
    assert!(
        refused.contains("client=198.51.100.9") && refused.contains("denied=\"source_range\""),
        "{refused}"
    );
}
