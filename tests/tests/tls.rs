//! TLS end to end on loopback: certificates per SNI (exact, wildcard, default or a refused
//! handshake), ALPN h2, session resumption (also across reloads), certificate rotation under
//! load with zero failed requests, broken replacements refused while the old certificate
//! serves, PEM files on disk watched by the file provider, client certificates (mTLS), TLS
//! passthrough, TLS towards backends, HTTP to HTTPS redirects with HSTS, and bad input counted
//! per reason without touching other connections.
//!
//! Certificates are made with rcgen and clients set up by the harness (`lb_tests::tls`). Clients are rustls (sync), hyper over tokio-rustls
//! (HTTP/2), and `curl` and `openssl s_client` (the test fails, naming the package, when one is missing).
//! Backends are the harness's (`lb_tests::backend`), plain or TLS, that say who answered, which
//! HTTP version they spoke and which `x-forwarded-proto` they saw.
//!
//! Handshake counters are process-wide, so every test takes [`serial`] and deltas are exact.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_tests::{
    backend::{Backend, Mode},
    free_port,
    http::{Client, HttpResponse},
    sluice::{Proxy, with_listener},
    temp_dir::TempDir,
    tls::{
        Ca, ClientOptions, Leaf, client_config, connect, inline_certificate, quoted, served_certificate,
        server_config, tls_error,
    },
    wait_for,
};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, NamedGroup,
    client::{
        ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
        Tls13ClientSessionValue,
    },
    pki_types::ServerName,
};

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn sni_selects_exact_wildcard_and_default_certificates() {
    let _serial = serial();
    let certs = Certs::new();
    let backend = Backend::with_mode("be", Mode::Name);
    let proxy = TlsProxy::start("{default_certificate: default}", &standard_body(&certs, backend.addr()));
    let any = client_config(ClientOptions::default());
    for (sni, expected, what) in [
        (Some("a.test"), &certs.a, "exact name"),
        (Some("A.Test"), &certs.a, "names are case-insensitive"),
        (Some("x.wild.test"), &certs.wild, "wildcard"),
        (Some("a.b.wild.test"), &certs.default, "a wildcard takes one label"),
        (Some("other.test"), &certs.default, "unknown name"),
        (Some("plain.test"), &certs.default, "a host without tls"),
        (None, &certs.default, "no SNI"),
    ] {
        let stream = connect(proxy.addr(), sni, &any).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert!(served_certificate(&stream) == expected.der(), "{what}: {sni:?} got the wrong certificate");
    }
    // Verified by a client that trusts the CA, and forwarded as HTTPS.
    let trusting = client_config(ClientOptions { trust: Some(&certs.ca), ..Default::default() });
    for (sni, host) in [("a.test", "a.test"), ("x.wild.test", "x.wild.test")] {
        let response = https_get(proxy.addr(), Some(sni), host, "/", &trusting).unwrap();
        assert_eq!(response.status, 200, "{sni}");
        assert_eq!(response.header("x-backend"), Some("be"));
        assert_eq!(response.header("x-seen-proto"), Some("https"), "X-Forwarded-Proto over TLS");
    }
    assert!(backend.requests() >= 2);
}

#[test]
fn unknown_sni_fails_the_handshake_when_the_listener_rejects() {
    let _serial = serial();
    let certs = Certs::new();
    let backend = Backend::with_mode("be", Mode::Name);
    let proxy = TlsProxy::start(
        "{default_certificate: default, unknown_sni: reject}",
        &standard_body(&certs, backend.addr()),
    );
    let any = client_config(ClientOptions::default());
    let before = failures();
    for sni in [Some("other.test"), None] {
        let err = connect(proxy.addr(), sni, &any).expect_err("the handshake fails");
        assert_eq!(
            tls_error(&err),
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::UnrecognisedName)),
            "{sni:?}: {err:#}"
        );
    }
    wait_for(Duration::from_secs(5), "both counted", || {
        (failures_since(&before) == HashMap::from([("unknown_sni", 2)])).then_some(())
    })
    .unwrap();
    let stream = connect(proxy.addr(), Some("a.test"), &any).unwrap();
    assert!(served_certificate(&stream) == certs.a.der(), "known names still work");
}

#[test]
fn alpn_h2_serves_http2_and_http1_stays_http1() {
    let _serial = serial();
    let certs = Certs::new();
    let backend = Backend::with_mode("be", Mode::Name);
    let proxy = TlsProxy::start("{default_certificate: default}", &standard_body(&certs, backend.addr()));
    let h2 = client_config(ClientOptions {
        trust: Some(&certs.ca),
        alpn: &[b"h2", b"http/1.1"],
        ..Default::default()
    });
    let stream = connect(proxy.addr(), Some("a.test"), &h2).unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"h2"[..]));
    let h1 =
        client_config(ClientOptions { trust: Some(&certs.ca), alpn: &[b"http/1.1"], ..Default::default() });
    let mut stream = connect(proxy.addr(), Some("a.test"), &h1).unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(request(&mut stream, "a.test", "/", true).unwrap().status, 200);

    // HTTP/2 requests over the negotiated connection, several streams at once.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(h2.clone())
            .connect(ServerName::try_from("a.test").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        let mut requests = Vec::new();
        for i in 0..10 {
            let mut sender = sender.clone();
            requests.push(tokio::spawn(async move {
                let request = Request::builder()
                    .uri(format!("https://a.test/{i}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.version(), http::Version::HTTP_2);
                assert_eq!(response.status(), 200);
                let backend = response.headers()["x-backend"].to_str().unwrap().to_owned();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (backend, body)
            }));
        }
        for request in requests {
            let (backend, body) = request.await.unwrap();
            assert_eq!(backend, "be");
            assert_eq!(&body[..], b"be\n");
        }
    });
}

#[test]
fn sessions_resume_on_every_worker_and_across_reloads() {
    let _serial = serial();
    let certs = Certs::new();
    let backend = Backend::with_mode("be", Mode::Name);
    let body = standard_body(&certs, backend.addr());
    let proxy = TlsProxy::start("{default_certificate: default}", &body);
    let before = lb_userspace::tls::handshake_counts();
    for (what, tls12_only) in [("TLS 1.3", false), ("TLS 1.2", true)] {
        let config = client_config(ClientOptions {
            trust: Some(&certs.ca),
            resume: true,
            tls12_only,
            ..Default::default()
        });
        let mut kinds = Vec::new();
        for i in 0..12 {
            if i == 6 {
                // A reload in between: the ticket keys and the session cache outlive snapshots.
                proxy.apply(&body).unwrap();
            }
            let mut stream = connect(proxy.addr(), Some("a.test"), &config).unwrap();
            // TLS 1.3 tickets arrive after the handshake: a request reads them.
            assert_eq!(request(&mut stream, "a.test", "/", true).unwrap().status, 200);
            kinds.push(stream.conn.handshake_kind());
        }
        assert_eq!(kinds[0], Some(HandshakeKind::Full), "{what}");
        for (i, kind) in kinds.iter().enumerate().skip(1) {
            assert_eq!(*kind, Some(HandshakeKind::Resumed), "{what}: connection {i} (2 workers, one reload)");
        }
    }
    let after = lb_userspace::tls::handshake_counts();
    assert_eq!(after.resumed - before.resumed, 22, "the node counts resumed handshakes");

    // Without tickets, TLS 1.3 resumes from the node's session cache.
    let proxy = TlsProxy::start("{default_certificate: default, session_tickets: false}", &body);
    let config = client_config(ClientOptions { trust: Some(&certs.ca), resume: true, ..Default::default() });
    for i in 0..4 {
        let mut stream = connect(proxy.addr(), Some("a.test"), &config).unwrap();
        assert_eq!(request(&mut stream, "a.test", "/", true).unwrap().status, 200);
        let expected = if i == 0 { HandshakeKind::Full } else { HandshakeKind::Resumed };
        assert_eq!(stream.conn.handshake_kind(), Some(expected), "connection {i} without tickets");
    }
}

/// The client's session store, counting the TLS 1.3 tickets it was given.
#[derive(Debug)]
struct CountingTickets {
    store: Arc<dyn ClientSessionStore>,
    tickets: AtomicU64,
}

impl ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.store.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.store.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.store.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.store.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.store.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
        self.store.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.store.take_tls13_ticket(server_name)
    }
}

#[test]
fn a_full_handshake_issues_two_tickets_and_a_resumption_one() {
    let _serial = serial();
    let certs = Certs::new();
    let backend = Backend::with_mode("be", Mode::Name);
    let body = standard_body(&certs, backend.addr());
    for settings in
        ["{default_certificate: default}", "{default_certificate: default, session_tickets: false}"]
    {
        let proxy = TlsProxy::start(settings, &body);
        let counting = Arc::new(CountingTickets {
            store: Arc::new(ClientSessionMemoryCache::new(16)),
            tickets: AtomicU64::new(0),
        });
        let mut config =
            (*client_config(ClientOptions { trust: Some(&certs.ca), resume: true, ..Default::default() }))
                .clone();
        config.resumption = Resumption::store(counting.clone());
        let config = Arc::new(config);
        let mut issued = Vec::new();
        for _ in 0..4 {
            let before = counting.tickets.load(Ordering::Relaxed);
            let mut stream = connect(proxy.addr(), Some("a.test"), &config).unwrap();
            // The tickets come before the response: reading it to the end reads them.
            assert_eq!(request(&mut stream, "a.test", "/", true).unwrap().status, 200);
            issued.push((stream.conn.handshake_kind(), counting.tickets.load(Ordering::Relaxed) - before));
        }
        let resumed = Some(HandshakeKind::Resumed);
        assert_eq!(
            issued,
            [(Some(HandshakeKind::Full), 2), (resumed, 1), (resumed, 1), (resumed, 1)],
            "{settings}: (handshake, tickets issued) per connection"
        );
    }
}

/// Runs `tool` (from Debian's `package`) with `args`; fails the test, saying what to install,
/// when the tool is missing.
fn run_tool(tool: &str, package: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(lb_tests::required_tool(tool, package))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

#[test]
fn curl_and_openssl_see_the_right_certificate_and_h2() {
    let _serial = serial();
    let certs = Certs::new();
    let dir = TempDir::new();
    let ca_file = dir.0.join("ca.pem");
    std::fs::write(&ca_file, certs.ca.pem()).unwrap();
    let ca_file = ca_file.to_str().unwrap().to_owned();
    let backend = Backend::with_mode("be", Mode::Name);
    let proxy = TlsProxy::start("{default_certificate: default}", &standard_body(&certs, backend.addr()));
    let port = proxy.addr().port();
    for host in ["a.test", "x.wild.test"] {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("https://{host}:{port}/");
        let out = run_tool(
            "curl",
            "curl",
            &[
                "-sS",
                "--cacert",
                &ca_file,
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code} %{http_version}",
                &url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "curl {host}: {text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.ends_with("200 2"), "curl verified {host} and spoke HTTP/2: {text:?}");
        assert!(text.starts_with("be\n"), "{text:?}");
    }
    let connect_to = format!("127.0.0.1:{port}");
    for (sni, subject) in
        [("a.test", "CN=a.test"), ("x.wild.test", "CN=*.wild.test"), ("nope.test", "CN=default.test")]
    {
        let out = run_tool(
            "openssl",
            "openssl",
            &[
                "s_client",
                "-connect",
                &connect_to,
                "-servername",
                sni,
                "-CAfile",
                &ca_file,
                "-alpn",
                "h2,http/1.1",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // OpenSSL 3 prints `subject=CN = a.test`, 1.1 `subject=/CN=a.test`.
        let subject_line = text.lines().find(|l| l.starts_with("subject=")).unwrap_or("").replace(' ', "");
        assert!(subject_line.ends_with(subject), "openssl -servername {sni}: {subject_line:?}\n{text}");
        assert!(text.contains("ALPN protocol: h2"), "{sni}: {text}");
        if sni != "nope.test" {
            assert!(text.contains("Verify return code: 0 (ok)"), "{sni}: {text}");
        }
    }
    // TLS 1.1 is refused with a protocol_version alert.
    let out = run_tool(
        "openssl",
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect_to,
            "-servername",
            "a.test",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "TLS 1.1 must not connect: {text}");
    assert!(
        text.contains("protocol version") || text.contains("no protocols available"),
        "TLS 1.1 ends with protocol_version (or the local OpenSSL refuses to offer it): {text}"
    );
}

/// Load for the rotation test: `threads` clients doing new-connection requests (full
/// handshakes, no resumption, so each sees the certificate served at that moment).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    /// The certificate seen by the latest handshake of any client.
    latest: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, ca: &Ca, threads: usize) -> Load {
        let config = client_config(ClientOptions { trust: Some(ca), ..Default::default() });
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (failed, latest) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed, latest, config) =
                    (stop.clone(), ok.clone(), failed.clone(), latest.clone(), config.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let result = connect(addr, Some("a.test"), &config).and_then(|mut stream| {
                            let seen = served_certificate(&stream);
                            let response = request(&mut stream, "a.test", "/", true)?;
                            anyhow::ensure!(response.status == 200, "status {}", response.status);
                            Ok(seen)
                        });
                        match result {
                            Ok(seen) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                *latest.lock().unwrap() = seen;
                            }
                            Err(e) => failed.lock().unwrap().push(format!("{e:#}")),
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, latest, threads }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.lock().unwrap().clone())
    }
}

/// Waits until the load has made `more` successful requests beyond now.
fn wait_for_requests(load: &Load, more: u64) {
    let target = load.ok.load(Ordering::Relaxed) + more;
    wait_for(Duration::from_secs(20), "requests under load", || {
        (load.ok.load(Ordering::Relaxed) >= target).then_some(())
    })
    .unwrap();
}

#[test]
fn rotating_a_certificate_under_load_fails_no_request() {
    let _serial = serial();
    let certs = Certs::new();
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.0.join("a.crt"), dir.0.join("a.key"));
    write_pem(&cert_path, &certs.a.cert);
    write_pem(&key_path, &certs.a.key);
    let backend = Backend::with_mode("be", Mode::Name);
    let body = format!(
        "certificates:\n  - {{name: a, cert_path: {}, key_path: {}}}\n{}{}{}backends:\n{}",
        quoted(cert_path.to_str().unwrap()),
        quoted(key_path.to_str().unwrap()),
        inline_certificate("wild", &certs.wild),
        inline_certificate("default", &certs.default),
        hosts(""),
        backend_group("be", backend.addr(), "")
    );
    let proxy = TlsProxy::start("{default_certificate: default}", &body);

    // A keep-alive connection from before the rotation, used all along.
    let trusting = client_config(ClientOptions { trust: Some(&certs.ca), ..Default::default() });
    let mut established = connect(proxy.addr(), Some("a.test"), &trusting).unwrap();
    assert!(served_certificate(&established) == certs.a.der());
    // Its first request goes now: until then the listener's 1 s header timeout applies, which a
    // slow machine's wait for the load below can outlast; after it, the 60 s idle timeout.
    assert_eq!(request(&mut established, "a.test", "/", false).unwrap().status, 200);
    let load = Load::start(proxy.addr(), &certs.ca, 4);
    let started = Instant::now();
    wait_for_requests(&load, 100);
    assert_eq!(request(&mut established, "a.test", "/", false).unwrap().status, 200);

    let rotated = certs.ca.leaf(&["a.test"]);
    write_pem(&cert_path, &rotated.cert);
    write_pem(&key_path, &rotated.key);
    let applied_at = Instant::now();
    proxy.apply(&body).expect("the rotated certificate applies");
    wait_for(Duration::from_secs(5), "new handshakes to see the rotated certificate", || {
        (*load.latest.lock().unwrap() == rotated.der()).then_some(())
    })
    .unwrap();
    let switched_after = applied_at.elapsed();
    wait_for_requests(&load, 100);
    assert_eq!(
        request(&mut established, "a.test", "/", false).unwrap().status,
        200,
        "the established connection survives the rotation"
    );
    assert!(served_certificate(&established) == certs.a.der(), "and keeps its session");
    let (ok, failed) = load.finish();
    let elapsed = started.elapsed();
    eprintln!(
        "rotation under load: {ok} requests (each a full handshake) in {elapsed:.2?} ({:.0}/s), {} failed; \
         new certificate seen {switched_after:.2?} after apply",
        ok as f64 / elapsed.as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "{} requests failed, first: {:?}", failed.len(), failed.first());
    assert!(ok >= 200);
}

#[test]
fn a_broken_replacement_is_refused_and_the_old_certificate_keeps_serving() {
    let _serial = serial();
    let certs = Certs::new();
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.0.join("site.crt"), dir.0.join("site.key"));
    write_pem(&cert_path, &certs.a.cert);
    write_pem(&key_path, &certs.a.key);
    let backend = Backend::with_mode("be", Mode::Name);
    let body = format!(
        "certificates:\n  - {{name: a, cert_path: {}, key_path: {}}}\n{}{}{}backends:\n{}",
        quoted(cert_path.to_str().unwrap()),
        quoted(key_path.to_str().unwrap()),
        inline_certificate("wild", &certs.wild),
        inline_certificate("default", &certs.default),
        hosts(""),
        backend_group("be", backend.addr(), "")
    );
    let proxy = TlsProxy::start("{default_certificate: default}", &body);
    let trusting = client_config(ClientOptions { trust: Some(&certs.ca), ..Default::default() });
    let other = certs.ca.leaf(&["a.test"]);
    let expired = certs.ca.leaf_with(&["a.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2010, 1, 1);
        p.not_after = rcgen::date_time_ymd(2011, 1, 1);
    });
    let cases = [
        ("a key that does not match", certs.a.cert.clone(), other.key.clone(), "does not match", &key_path),
        (
            "an expired certificate",
            expired.cert.clone(),
            expired.key.clone(),
            "expired at 2011-01-01",
            &cert_path,
        ),
        ("garbage", "not a certificate\n".to_owned(), certs.a.key.clone(), "no CERTIFICATE", &cert_path),
    ];
    for (what, cert, key, message, named) in cases {
        write_pem(&cert_path, &cert);
        write_pem(&key_path, &key);
        let err = proxy.apply(&body).expect_err(what);
        assert!(err.contains("certificate \"a\""), "{what}: the error names the certificate: {err}");
        assert!(err.contains(named.to_str().unwrap()), "{what}: the error names the file: {err}");
        assert!(err.contains(message), "{what}: {err}");
        let response = https_get(proxy.addr(), Some("a.test"), "a.test", "/", &trusting).unwrap();
        assert_eq!(response.status, 200, "{what}: still serving");
        let stream = connect(proxy.addr(), Some("a.test"), &trusting).unwrap();
        assert!(served_certificate(&stream) == certs.a.der(), "{what}: the old certificate keeps serving");
    }
    // Inline PEM (as from a Kubernetes Secret) is checked the same way.
    let broken_inline =
        body.replace(&inline_certificate("wild", &certs.wild), &inline_certificate("wild", &expired));
    write_pem(&cert_path, &certs.a.cert);
    write_pem(&key_path, &certs.a.key);
    let err = proxy.apply(&broken_inline).expect_err("expired inline certificate");
    assert!(err.contains("certificate \"wild\" (inline cert_pem): expired"), "{err}");
    // A good replacement then applies.
    write_pem(&cert_path, &other.cert);
    write_pem(&key_path, &other.key);
    proxy.apply(&body).unwrap();
    let stream = connect(proxy.addr(), Some("a.test"), &trusting).unwrap();
    assert!(served_certificate(&stream) == other.der());
    // The expiry export follows the serving snapshot.
    let snapshot = proxy.proxy.node.published().load();
    let names: Vec<&str> = snapshot.tls.certificate_expiry().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "default", "wild"]);
    assert!(snapshot.tls.certificate_expiry().iter().all(|(_, t)| *t > lb_userspace::tls::now_unix()));
}

#[test]
fn the_file_provider_reloads_when_a_pem_file_changes() {
    use lb_userspace::provider::file::{FileProvider, Overrides};
    let _serial = serial();
    let certs = Certs::new();
    let dir = TempDir::new();
    let pem_dir = dir.0.join("pki");
    std::fs::create_dir_all(&pem_dir).unwrap();
    let (cert_path, key_path) = (pem_dir.join("tls.crt"), pem_dir.join("tls.key"));
    write_pem(&cert_path, &certs.a.cert);
    write_pem(&key_path, &certs.a.key);
    let backend = Backend::with_mode("be", Mode::Name);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = format!(
        "workers: 2
xdp: {{enabled: false}}
limits: {{shutdown_grace_ms: 500}}
listeners: [{{name: web, address: \"{addr}\", tls: {{default_certificate: a}}}}]
certificates: [{{name: a, cert_path: {}, key_path: {}}}]
virtual_hosts: [{{name: a, domains: [a.test], tls: {{certificate: a}}, routes: [{{backend: be}}]}}]
backends:
{}",
        quoted(cert_path.to_str().unwrap()),
        quoted(key_path.to_str().unwrap()),
        backend_group("be", backend.addr(), "")
    );
    let config_path = dir.0.join("sluice.yaml");
    std::fs::write(&config_path, yaml).unwrap();

    // The node and the provider's reload loop (what `sluice run` does) on their own thread.
    let (outcomes_tx, outcomes) = std::sync::mpsc::channel::<Result<u64, String>>();
    let (watching_tx, watching) = std::sync::mpsc::channel::<()>();
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (stop, config_path) = (stop.clone(), config_path.clone());
        std::thread::spawn(move || {
            let provider =
                FileProvider::new(Some(config_path), Overrides { no_xdp: true, ..Overrides::default() });
            let node = lb_userspace::node::Node::start(&provider.load().unwrap()).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (_watcher, mut changes) = provider.watch().unwrap().unwrap();
                watching_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await
                    else {
                        continue;
                    };
                    let outcome = provider
                        .load()
                        .map_err(|e| e.to_string())
                        .and_then(|config| node.apply(&config).map_err(|e| e.to_string()));
                    let _ = outcomes_tx.send(outcome);
                }
            });
            node.stop().unwrap();
        })
    };
    watching.recv_timeout(Duration::from_secs(10)).expect("the provider watches");
    wait_for(Duration::from_secs(10), "the node", || TcpStream::connect(addr).ok()).unwrap();
    let trusting = client_config(ClientOptions { trust: Some(&certs.ca), ..Default::default() });
    let seen = || served_certificate(&connect(addr, Some("a.test"), &trusting).unwrap());
    assert!(seen() == certs.a.der());

    // Rotation on disk: the watcher reloads, new handshakes see the new certificate.
    let rotated = certs.ca.leaf(&["a.test"]);
    write_pem(&key_path, &rotated.key);
    write_pem(&cert_path, &rotated.cert);
    wait_for(Duration::from_secs(10), "the rotated file to serve", || {
        (seen() == rotated.der()).then_some(())
    })
    .unwrap();
    while outcomes.try_recv().is_ok() {}

    // A broken file is refused (with the file named) and the rotated certificate keeps serving.
    write_pem(&cert_path, "garbage\n");
    let refused = wait_for(Duration::from_secs(10), "the broken file to be refused", || {
        outcomes.try_recv().ok().and_then(|outcome| outcome.err())
    })
    .unwrap();
    assert!(refused.contains(cert_path.to_str().unwrap()), "{refused}");
    assert!(seen() == rotated.der());
    let response = https_get(addr, Some("a.test"), "a.test", "/", &trusting).unwrap();
    assert_eq!(response.status, 200);

    // A Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`;
    // an update writes a new timestamped directory and swaps the `..data` link by rename, so
    // only `..data` changes in the watched directory.
    let secret_volume = |version: &str, leaf: &Leaf| {
        let data = pem_dir.join(format!("..{version}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("tls.crt"), &leaf.cert).unwrap();
        std::fs::write(data.join("tls.key"), &leaf.key).unwrap();
        let link = pem_dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &link).unwrap();
        std::fs::rename(&link, pem_dir.join("..data")).unwrap();
    };
    let first = certs.ca.leaf(&["a.test"]);
    secret_volume("2026_11_29_v1", &first);
    for name in ["tls.crt", "tls.key"] {
        let link = pem_dir.join(format!("{name}.link"));
        std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        std::fs::rename(&link, pem_dir.join(name)).unwrap();
    }
    wait_for(Duration::from_secs(10), "the volume's files to serve", || {
        (seen() == first.der()).then_some(())
    })
    .unwrap();
    let second = certs.ca.leaf(&["a.test"]);
    secret_volume("2026_11_29_v2", &second);
    wait_for(Duration::from_secs(10), "the swapped volume to serve", || {
        (seen() == second.der()).then_some(())
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    reloader.join().unwrap();
}

/// ingress-nginx's `auth-tls-verify-client` modes (YAML `client_verify`), with real TLS: the
/// handshake finishes and the answer is nginx's: `on` wants a valid certificate (400 "No
/// required SSL certificate was sent" / "The SSL certificate error", or a 302 to the error
/// page), `optional` lets a client without one through but not a bad one, `optional_no_ca`
/// lets an unknown CA through marked FAILED, `off` asks for nothing; `client_match_cn` refuses
/// another subject with 403. The backend sees `ssl-client-verify`, `-subject-dn`, `-issuer-dn`
/// (and `ssl-client-cert` when passed on) as nginx formats them, never the client's own.
#[test]
fn client_certificate_modes_answer_as_ingress_nginx() {
    let _serial = serial();
    let certs = Certs::new();
    let clients = Ca::new("client CA");
    let strangers = Ca::new("stranger CA");
    let names = ["on.test", "optional.test", "noca.test", "off.test", "cn.test", "page.test"];
    let server = certs.ca.leaf(&names);
    let backend = Backend::with_mode("be", Mode::Echo);
    let ca = quoted(&clients.pem());
    let host = |name: &str, extra: &str| {
        format!(
            "  - {{name: {name}, domains: [{name}.test], tls: {{certificate: modes, client_ca_pem: {ca}, {extra}}}, routes: [{{backend: be}}]}}\n"
        )
    };
    let body = format!(
        "{}{}{}{}{}{}{}{}{}backends:\n{}",
        certs.yaml(),
        inline_certificate("modes", &server),
        hosts(""),
        host("on", "client_verify: on, pass_client_certificate: true"),
        host("optional", "client_verify: optional"),
        host("noca", "client_verify: optional_no_ca"),
        host("off", "client_verify: off"),
        host("cn", "client_verify: on, client_match_cn: '^CN=alice$'"),
        host("page", "client_verify: on, client_error_page: 'https://errors.test/certificate'"),
        backend_group("be", backend.addr(), "")
    );
    let proxy = TlsProxy::start("{default_certificate: default}", &body);
    let alice = clients.leaf(&["alice"]);
    let bob = clients.leaf(&["bob"]);
    let stranger = strangers.leaf(&["mallory"]);
    let expired = clients.leaf_with(&["old"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    // (host, client certificate) -> response, with a forged ssl-client-verify sent along.
    let get = |name: &str, leaf: Option<&Leaf>| {
        let config = client_config(ClientOptions {
            trust: Some(&certs.ca),
            client_certificate: leaf,
            ..Default::default()
        });
        let host = format!("{name}.test");
        let stream = connect(proxy.addr(), Some(&host), &config).unwrap_or_else(|e| panic!("{host}: {e:#}"));
        Client::new(stream)
            .request(
                "GET",
                &host,
                "/",
                &[("ssl-client-verify", "SUCCESS"), ("ssl-client-subject-dn", "CN=root")],
                true,
            )
            .unwrap_or_else(|e| panic!("{host}: {e:#}"))
    };
    // What the backend saw of the ssl-client-* fields.
    let seen = |response: &HttpResponse| -> Vec<String> {
        response
            .body
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("ssl-client-"))
            .map(String::from)
            .collect()
    };
    let status = |name: &str, leaf: Option<&Leaf>| get(name, leaf).status;

    let ok = get("on", Some(&alice));
    assert_eq!(ok.status, 200, "{ok:?}");
    let fields = seen(&ok);
    assert_eq!(
        &fields[..3],
        [
            "ssl-client-verify: SUCCESS",
            "ssl-client-subject-dn: CN=alice",
            "ssl-client-issuer-dn: CN=client CA"
        ],
        "{fields:?}"
    );
    let escaped = fields[3].strip_prefix("ssl-client-cert: ").expect("the certificate is passed on");
    let mut pem = String::new();
    let mut bytes = escaped.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = [bytes.next().unwrap() as char, bytes.next().unwrap() as char].iter().collect();
            pem.push(u8::from_str_radix(&hex, 16).unwrap() as char);
        } else {
            pem.push(b as char);
        }
    }
    assert_eq!(
        pem.replace("\r\n", "\n"),
        alice.cert.replace("\r\n", "\n"),
        "ssl-client-cert is the URL-encoded PEM"
    );
    let none = get("on", None);
    assert_eq!(none.status, 400);
    assert!(none.body.contains("No required SSL certificate was sent"), "{}", none.body);
    let bad = get("on", Some(&stranger));
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("The SSL certificate error"), "{}", bad.body);
    assert_eq!(status("on", Some(&expired)), 400);

    let optional = get("optional", None);
    assert_eq!((optional.status, seen(&optional)), (200, vec!["ssl-client-verify: NONE".to_owned()]));
    assert_eq!(status("optional", Some(&stranger)), 400);
    assert_eq!(seen(&get("optional", Some(&bob)))[0], "ssl-client-verify: SUCCESS");

    let unknown_ca = get("noca", Some(&stranger));
    assert_eq!(unknown_ca.status, 200, "optional_no_ca lets an unknown CA through");
    assert_eq!(
        seen(&unknown_ca)[..2],
        [
            "ssl-client-verify: FAILED:unable to get local issuer certificate",
            "ssl-client-subject-dn: CN=mallory"
        ]
    );
    assert_eq!(status("noca", Some(&expired)), 400, "but not an expired certificate");
    assert_eq!(status("noca", None), 200);

    let off = get("off", Some(&alice));
    assert_eq!(
        (off.status, seen(&off)),
        (200, vec!["ssl-client-verify: NONE".to_owned()]),
        "no certificate asked for"
    );

    assert_eq!(status("cn", Some(&alice)), 200);
    let other = get("cn", Some(&bob));
    assert_eq!(other.status, 403);
    assert!(other.body.contains("client certificate unauthorized"), "{}", other.body);

    let redirected = get("page", None);
    assert_eq!(redirected.status, 302);
    assert_eq!(redirected.header("location"), Some("https://errors.test/certificate"));
    assert_eq!(get("page", Some(&stranger)).status, 302);
    assert_eq!(status("page", Some(&alice)), 200);
    // Hosts without client certificates pass the client's own fields on untouched.
    let plain = https_get(
        proxy.addr(),
        Some("a.test"),
        "a.test",
        "/",
        &client_config(ClientOptions { trust: Some(&certs.ca), ..Default::default() }),
    )
    .unwrap();
    assert_eq!(plain.status, 200);
}

#[test]
fn client_certificates_are_required_for_mtls_hosts() {
    let _serial = serial();
    let certs = Certs::new();
    let clients = Ca::new("client CA");
    let strangers = Ca::new("stranger CA");
    let secure = certs.ca.leaf(&["secure.test"]);
    let backend = Backend::with_mode("be", Mode::Name);
    let body = format!(
        "{}{}{}  - {{name: secure, domains: [secure.test], tls: {{certificate: secure, client_ca_pem: {}}}, routes: [{{backend: be}}]}}\nbackends:\n{}",
        certs.yaml(),
        inline_certificate("secure", &secure),
        hosts(""),
        quoted(&clients.pem()),
        backend_group("be", backend.addr(), "")
    );
    let proxy = TlsProxy::start("{default_certificate: default}", &body);
    let good = clients.leaf(&[]);
    let wrong = strangers.leaf(&[]);
    let with = |leaf: Option<&Leaf>| {
        client_config(ClientOptions {
            trust: Some(&certs.ca),
            client_certificate: leaf,
            ..Default::default()
        })
    };
    let before = failures();

    let response =
        https_get(proxy.addr(), Some("secure.test"), "secure.test", "/", &with(Some(&good))).unwrap();
    assert_eq!(response.status, 200, "the right client certificate is accepted");

    let err =
        https_get(proxy.addr(), Some("secure.test"), "secure.test", "/", &with(Some(&wrong))).unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)),
        "{err:#}"
    );
    let err = https_get(proxy.addr(), Some("secure.test"), "secure.test", "/", &with(None)).unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)),
        "{err:#}"
    );
    wait_for(Duration::from_secs(5), "both refusals counted", || {
        (failures_since(&before) == HashMap::from([("client_certificate", 2)])).then_some(())
    })
    .unwrap();

    // Other hosts do not ask for a certificate; switching to the mTLS host on their session is
    // refused with 421 instead of bypassing the check.
    let response = https_get(proxy.addr(), Some("a.test"), "a.test", "/", &with(None)).unwrap();
    assert_eq!(response.status, 200);
    let response = https_get(proxy.addr(), Some("a.test"), "secure.test", "/", &with(None)).unwrap();
    assert_eq!(response.status, 421, "{response:?}");
    // Over TLS 1.2 too.
    let tls12 = client_config(ClientOptions {
        trust: Some(&certs.ca),
        client_certificate: Some(&good),
        tls12_only: true,
        ..Default::default()
    });
    let response = https_get(proxy.addr(), Some("secure.test"), "secure.test", "/", &tls12).unwrap();
    assert_eq!(response.status, 200);

    // An established mTLS connection keeps working across a reload that keeps its CA (here the
    // secure host moves to the front, so host indices change), and gets 421 once the CA
    // changed: its certificate was checked against the old one.
    let mut established = connect(proxy.addr(), Some("secure.test"), &with(Some(&good))).unwrap();
    assert_eq!(request(&mut established, "secure.test", "/", false).unwrap().status, 200);
    let secure_host = format!(
        "  - {{name: secure, domains: [secure.test], tls: {{certificate: secure, client_ca_pem: {}}}, routes: [{{backend: be}}]}}\n",
        quoted(&clients.pem())
    );
    let reordered =
        body.replace(&secure_host, "").replace("virtual_hosts:\n", &format!("virtual_hosts:\n{secure_host}"));
    assert_ne!(reordered, body);
    proxy.apply(&reordered).unwrap();
    assert_eq!(request(&mut established, "secure.test", "/", false).unwrap().status, 200);
    let other_ca = Ca::new("next client CA");
    proxy.apply(&reordered.replace(&quoted(&clients.pem()), &quoted(&other_ca.pem()))).unwrap();
    assert_eq!(request(&mut established, "secure.test", "/", false).unwrap().status, 421);
}

#[test]
fn passthrough_splices_to_a_tls_backend_whose_certificate_the_client_sees() {
    let _serial = serial();
    let certs = Certs::new();
    let backend_ca = Ca::new("backend CA");
    let pass_leaf = backend_ca.leaf(&["pass.test"]);
    let tls_backend = Backend::with_tls("pass-server", server_config(&pass_leaf));
    let backend = Backend::with_mode("be", Mode::Name);
    let body = format!(
        "{}{}  - {{name: pass, domains: [pass.test], tls: {{passthrough: pass-be}}, routes: [{{backend: be}}]}}\nbackends:\n{}{}",
        certs.yaml(),
        hosts(""),
        backend_group("be", backend.addr(), ""),
        backend_group("pass-be", tls_backend.addr(), "")
    );
    let proxy = TlsProxy::start("{default_certificate: default}", &body);
    let before = failures();
    let trusting_backend = client_config(ClientOptions {
        trust: Some(&backend_ca),
        alpn: &[b"h2", b"http/1.1"],
        ..Default::default()
    });
    let stream = connect(proxy.addr(), Some("pass.test"), &trusting_backend).unwrap();
    assert!(served_certificate(&stream) == pass_leaf.der(), "the client sees the backend's certificate");
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"h2"[..]), "ALPN is the backend's to answer");
    drop(stream);
    let h1 = client_config(ClientOptions { trust: Some(&backend_ca), ..Default::default() });
    for _ in 0..5 {
        let response = https_get(proxy.addr(), Some("pass.test"), "pass.test", "/", &h1).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-backend"), Some("pass-server"), "answered by the TLS backend itself");
        assert_eq!(response.header("x-seen-proto"), Some(""), "nothing in between added headers");
    }
    assert_eq!(tls_backend.requests(), 5);
    // The same listener still terminates other names.
    let trusting = client_config(ClientOptions { trust: Some(&certs.ca), ..Default::default() });
    let response = https_get(proxy.addr(), Some("a.test"), "a.test", "/", &trusting).unwrap();
    assert_eq!(response.header("x-backend"), Some("be"));
    // Plain HTTP for the passthrough host is redirected to HTTPS.
    let response = lb_tests::http::request(proxy.plain, "GET", "pass.test", "/x", &[]).unwrap();
    assert_eq!(response.status, 308);
    assert_eq!(
        response.header("location"),
        Some(format!("https://pass.test:{}/x", proxy.addr().port()).as_str())
    );
    // Garbage on a passthrough listener goes to rustls, which refuses it.
    let mut raw = TcpStream::connect(proxy.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: pass.test\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&21), "an alert record: {reply:?}");
    wait_for(Duration::from_secs(5), "the garbage counted", || {
        (failures_since(&before) == HashMap::from([("malformed", 1)])).then_some(())
    })
    .unwrap();
    assert!(lb_userspace::tls::handshake_counts().passthrough >= 6);
}

/// `passthrough_proxy_protocol`: a passthrough backend that terminates TLS behind a PROXY
/// header (v1 or v2, read by the backend's own parser) learns the client's address and the
/// address it dialled, then completes the handshake the client started; a host without the
/// setting sends none; the setting without passthrough is refused by name.
#[test]
fn passthrough_can_name_the_client_in_a_proxy_protocol_header() {
    let _serial = serial();
    let certs = Certs::new();
    let backend_ca = Ca::new("backend CA");
    let leaf = backend_ca.leaf(&["v1.test", "v2.test", "none.test"]);
    let tls_backend = |name: &str, proxy_protocol: bool| {
        let options = lb_tests::backend::Options {
            tls: Some(server_config(&leaf)),
            proxy_protocol,
            ..Default::default()
        };
        Backend::launch(name, options).unwrap()
    };
    let (v1, v2, plain) =
        (tls_backend("v1-server", true), tls_backend("v2-server", true), tls_backend("none", false));
    let backend = Backend::with_mode("be", Mode::Name);
    let pass = |name: &str, version: &str| {
        let setting = if version.is_empty() {
            String::new()
        } else {
            format!(", passthrough_proxy_protocol: {version}")
        };
        format!(
            "  - {{name: {name}, domains: [{name}.test], tls: {{passthrough: {name}-be{setting}}}, routes: [{{backend: be}}]}}\n"
        )
    };
    let body = format!(
        "{}{}{}{}{}backends:\n{}{}{}{}",
        certs.yaml(),
        hosts(""),
        pass("v1", "v1"),
        pass("v2", "v2"),
        pass("none", ""),
        backend_group("be", backend.addr(), ""),
        backend_group("v1-be", v1.addr(), ""),
        backend_group("v2-be", v2.addr(), ""),
        backend_group("none-be", plain.addr(), "")
    );
    let proxy = TlsProxy::start("{default_certificate: default}", &body);
    let trusting = client_config(ClientOptions { trust: Some(&backend_ca), ..Default::default() });
    for (host, server) in [("v1.test", &v1), ("v2.test", &v2), ("none.test", &plain)] {
        let stream = connect(proxy.addr(), Some(host), &trusting).unwrap();
        let client = stream.sock.local_addr().unwrap();
        let response = Client::new(stream).request("GET", host, "/", &[], true).unwrap();
        assert_eq!((response.status, response.header("x-backend")), (200, Some(server.name())), "{host}");
        if server.name() == "none" {
            continue;
        }
        let headers = server.proxy_headers();
        let header = headers.last().unwrap_or_else(|| panic!("{host}: no PROXY header"));
        let (source, destination) = if header.starts_with(b"PROXY ") {
            let line = String::from_utf8(header.clone()).unwrap();
            let fields: Vec<&str> = line.trim_end().split(' ').collect();
            assert_eq!(fields[..2], ["PROXY", "TCP4"], "{line}");
            (format!("{}:{}", fields[2], fields[4]), format!("{}:{}", fields[3], fields[5]))
        } else {
            assert_eq!((header[12], header[13], header.len()), (0x21, 0x11, 28), "PROXY, TCP over IPv4");
            let address = |ip: &[u8], port: &[u8]| {
                format!("{}.{}.{}.{}:{}", ip[0], ip[1], ip[2], ip[3], u16::from_be_bytes([port[0], port[1]]))
            };
            (address(&header[16..20], &header[24..26]), address(&header[20..24], &header[26..28]))
        };
        assert_eq!(source, client.to_string(), "{host}: the header names the client");
        assert_eq!(destination, proxy.addr().to_string(), "{host}: and the address it dialled");
    }
    assert_eq!((v1.proxy_headers().len(), v2.proxy_headers().len()), (1, 1));
    assert!(plain.proxy_headers().is_empty());

    let refused = lb_userspace::config::Config::from_yaml(
        "listeners: [{name: web, address: \"127.0.0.1:8443\", tls: {default_certificate: a}}]
certificates: [{name: a, cert_pem: x, key_pem: y}]
virtual_hosts: [{name: a, domains: [a.test], tls: {certificate: a, passthrough_proxy_protocol: v2}}]
",
        "test",
    );
    let error = format!("{:?}", refused.expect_err("passthrough_proxy_protocol without passthrough"));
    assert!(
        error.contains("passthrough_proxy_protocol") && error.contains("only with passthrough"),
        "{error}"
    );
}

#[test]
fn backends_over_tls_verify_their_certificate_or_explicitly_skip() {
    let _serial = serial();
    let certs = Certs::new();
    let backend_ca = Ca::new("backend CA");
    let other_ca = Ca::new("other CA");
    let tls_backend = Backend::with_tls("tls-server", server_config(&backend_ca.leaf(&["backend.test"])));
    let addr = tls_backend.addr();
    let ca = quoted(&backend_ca.pem());
    let dir = TempDir::new();
    let ca_file = dir.0.join("backend-ca.pem");
    std::fs::write(&ca_file, backend_ca.pem()).unwrap();
    let route =
        |path: &str, backend: &str| format!("{{match: {{path: {{prefix: /{path}}}}}, backend: {backend}}}");
    let body = format!(
        "{}virtual_hosts:
  - {{name: up, domains: ['*'], routes: [{}, {}, {}, {}, {}, {}]}}
backends:
{}{}{}{}{}{}",
        certs.yaml(),
        route("verified", "verified"),
        route("file", "file"),
        route("wrongca", "wrongca"),
        route("wrongname", "wrongname"),
        route("skip", "skip"),
        route("h2", "h2"),
        backend_group("verified", addr, &format!(", tls: {{ca_pem: {ca}, server_name: backend.test}}")),
        backend_group(
            "file",
            addr,
            &format!(", tls: {{ca_path: {}, server_name: backend.test}}", quoted(ca_file.to_str().unwrap()))
        ),
        backend_group(
            "wrongca",
            addr,
            &format!(
                ", tls: {{ca_pem: {}, server_name: backend.test}}, retries: {{attempts: 0}}",
                quoted(&other_ca.pem())
            )
        ),
        backend_group(
            "wrongname",
            addr,
            &format!(", tls: {{ca_pem: {ca}, server_name: other.test}}, retries: {{attempts: 0}}")
        ),
        backend_group("skip", addr, ", tls: {insecure_skip_verify: true}"),
        backend_group(
            "h2",
            addr,
            &format!(", protocol: h2c, tls: {{ca_pem: {ca}, server_name: backend.test}}")
        ),
    );
    let proxy = TlsProxy::start("{default_certificate: default}", &body);
    for (path, status, version) in [
        ("/verified", 200, "HTTP/1.1"),
        ("/file", 200, "HTTP/1.1"),
        ("/skip", 200, "HTTP/1.1"),
        ("/h2", 200, "HTTP/2.0"),
        ("/wrongca", 502, ""),
        ("/wrongname", 502, ""),
    ] {
        for _ in 0..3 {
            let response = lb_tests::http::request(proxy.plain, "GET", "anything", path, &[]).unwrap();
            assert_eq!(response.status, status, "{path}: {response:?}");
            if status == 200 {
                assert_eq!(response.header("x-backend"), Some("tls-server"), "{path}");
                assert_eq!(response.header("x-version"), Some(version), "{path}: ALPN picks the version");
                assert_eq!(response.header("x-seen-proto"), Some("http"), "{path}: the client's scheme");
            }
        }
    }
    assert_eq!(tls_backend.requests(), 12, "only the verified, file, skip and h2 backends got requests");
}

#[test]
fn plain_http_is_redirected_for_tls_hosts_and_hsts_is_sent_over_https() {
    let _serial = serial();
    let certs = Certs::new();
    let backend = Backend::with_mode("be", Mode::Name);
    let proxy = TlsProxy::start(
        "{default_certificate: default}",
        &format!(
            "{}{}backends:\n{}",
            certs.yaml(),
            hosts(", hsts: {max_age_seconds: 600, include_subdomains: true}"),
            backend_group("be", backend.addr(), "")
        ),
    );
    let port = proxy.addr().port();
    let response = lb_tests::http::request(proxy.plain, "GET", "a.test", "/path?q=1", &[]).unwrap();
    assert_eq!(response.status, 308);
    assert_eq!(response.header("location"), Some(format!("https://a.test:{port}/path?q=1").as_str()));
    assert_eq!(response.header("strict-transport-security"), None, "never over plain HTTP");
    let response = lb_tests::http::request(proxy.plain, "GET", "x.wild.test:8080", "/", &[]).unwrap();
    assert_eq!(response.status, 308);
    assert_eq!(response.header("location"), Some(format!("https://x.wild.test:{port}/").as_str()));
    // ACME HTTP-01 challenges and hosts without TLS stay on plain HTTP.
    let response =
        lb_tests::http::request(proxy.plain, "GET", "a.test", "/.well-known/acme-challenge/token", &[])
            .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-seen-proto"), Some("http"));
    let response = lb_tests::http::request(proxy.plain, "GET", "plain.test", "/", &[]).unwrap();
    assert_eq!(response.status, 200);

    let trusting = client_config(ClientOptions { trust: Some(&certs.ca), ..Default::default() });
    let response = https_get(proxy.addr(), Some("a.test"), "a.test", "/", &trusting).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("strict-transport-security"), Some("max-age=600; includeSubDomains"));
    let response = https_get(proxy.addr(), Some("x.wild.test"), "x.wild.test", "/", &trusting).unwrap();
    assert_eq!(response.header("strict-transport-security"), None, "only hosts with hsts");

    // redirect_http: false keeps plain HTTP for that host.
    proxy
        .apply(&format!(
            "{}{}backends:\n{}",
            certs.yaml(),
            hosts(", redirect_http: false"),
            backend_group("be", backend.addr(), "")
        ))
        .unwrap();
    let response = lb_tests::http::request(proxy.plain, "GET", "a.test", "/", &[]).unwrap();
    assert_eq!(response.status, 200);
}

/// A TLS 1.0 ClientHello (no supported_versions extension) with SNI `a.test`.
fn tls10_client_hello() -> Vec<u8> {
    let name = b"a.test";
    let mut sni = vec![0u8];
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut sni_list = (sni.len() as u16).to_be_bytes().to_vec();
    sni_list.extend(sni);
    let mut extensions = vec![0, 0];
    extensions.extend((sni_list.len() as u16).to_be_bytes());
    extensions.extend(sni_list);
    let mut body = vec![3, 1];
    body.extend([0x42u8; 32]);
    body.push(0);
    body.extend([0, 4, 0x00, 0x2f, 0x00, 0x35]); // RSA with AES-CBC: TLS 1.0 era suites
    body.extend([1, 0]);
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// A real ClientHello from rustls, for cutting short.
fn rustls_client_hello(sni: &str) -> Vec<u8> {
    let config = client_config(ClientOptions::default());
    let mut connection =
        ClientConnection::new(config, ServerName::try_from(sni.to_owned()).unwrap()).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// Sends `bytes` on a new connection, optionally half-closes, and returns what comes back
/// until the server closes.
fn raw_exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(bytes).unwrap();
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

#[test]
fn bad_input_ends_only_its_own_handshake_with_the_right_alert_and_is_counted() {
    let _serial = serial();
    let certs = Certs::new();
    let clients = Ca::new("client CA");
    let strangers = Ca::new("stranger CA");
    let secure = certs.ca.leaf(&["secure.test"]);
    let backend = Backend::with_mode("be", Mode::Name);
    let body = format!(
        "{}{}{}  - {{name: secure, domains: [secure.test], tls: {{certificate: secure, client_ca_pem: {}}}, routes: [{{backend: be}}]}}\nbackends:\n{}",
        certs.yaml(),
        inline_certificate("secure", &secure),
        hosts(""),
        quoted(&clients.pem()),
        backend_group("be", backend.addr(), "")
    );
    let proxy = TlsProxy::start("{default_certificate: default, unknown_sni: reject}", &body);
    let addr = proxy.addr();
    let trusting = client_config(ClientOptions { trust: Some(&certs.ca), ..Default::default() });
    // An established keep-alive connection, busy all along, that must not notice any of this.
    let mut bystander = connect(addr, Some("a.test"), &trusting).unwrap();
    assert_eq!(request(&mut bystander, "a.test", "/", false).unwrap().status, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let bystander = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                let response =
                    request(&mut bystander, "a.test", "/", false).expect("the bystander is served");
                assert_eq!(response.status, 200);
                served += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            served
        })
    };
    let before = failures();
    let started = lb_userspace::tls::handshake_counts();

    // Garbage instead of a ClientHello: an alert record (fatal), then the close.
    let reply = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", false);
    assert_eq!(&reply[..2], &[21, 3], "an alert record: {reply:?}");
    assert_eq!(reply[5], 2, "fatal");
    // A handshake record holding a ClientHello of four random bytes: decode_error (50).
    let reply = raw_exchange(addr, &[22, 3, 1, 0, 8, 1, 0, 0, 4, 9, 9, 9, 9], false);
    assert_eq!(reply, [21, 3, 3, 0, 2, 2, 50], "decode_error alert");
    // A truncated ClientHello: the client goes away mid-hello.
    let hello = rustls_client_hello("a.test");
    assert!(raw_exchange(addr, &hello[..hello.len() / 2], true).is_empty());
    // A ClientHello that stops and waits: cut off at the handshake deadline (1 s here).
    let waited = Instant::now();
    assert!(raw_exchange(addr, &hello[..40], false).is_empty());
    assert!(waited.elapsed() >= Duration::from_millis(900), "{:?}", waited.elapsed());
    // TLS 1.0 only: protocol_version (70), also to a real TLS 1.0 hello without
    // signature_algorithms (rustls alone would say handshake_failure).
    let reply = raw_exchange(addr, &tls10_client_hello(), false);
    assert_eq!(reply, [21, 3, 3, 0, 2, 2, 70], "protocol_version alert");
    // An unknown SNI on a rejecting listener: unrecognized_name (112).
    let reply = raw_exchange(addr, &rustls_client_hello("unknown.test"), false);
    assert_eq!(reply, [21, 3, 3, 0, 2, 2, 112], "unrecognized_name alert");
    // A client certificate from the wrong CA: unknown_ca.
    let wrong = client_config(ClientOptions {
        trust: Some(&certs.ca),
        client_certificate: Some(&strangers.leaf(&[])),
        ..Default::default()
    });
    let err = https_get(addr, Some("secure.test"), "secure.test", "/", &wrong).unwrap_err();
    assert_eq!(tls_error(&err), Some(rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)));
    // A client that does not trust our certificate aborts; that is counted too.
    let distrusting = client_config(ClientOptions { trust: Some(&strangers), ..Default::default() });
    assert!(connect(addr, Some("a.test"), &distrusting).is_err());
    // A TCP connection that sends nothing (a port probe) is no handshake: not counted.
    drop(TcpStream::connect(addr).unwrap());

    let expected = HashMap::from([
        ("malformed", 2),
        ("truncated", 1),
        ("timeout", 1),
        ("unsupported_version", 1),
        ("unknown_sni", 1),
        ("client_certificate", 1),
        ("client_alert", 1),
    ]);
    wait_for(Duration::from_secs(5), "every failure counted", || {
        (failures_since(&before) == expected).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", failures_since(&before)));
    assert_eq!(lb_userspace::tls::handshake_counts().completed, started.completed, "none completed");
    // The bystander never noticed, and new clients are served.
    stop.store(true, Ordering::Relaxed);
    let served = bystander.join().expect("the bystander had no failure");
    assert!(served >= 10, "{served}");
    assert_eq!(https_get(addr, Some("a.test"), "a.test", "/", &trusting).unwrap().status, 200);
    let good = client_config(ClientOptions {
        trust: Some(&certs.ca),
        client_certificate: Some(&clients.leaf(&[])),
        ..Default::default()
    });
    assert_eq!(https_get(addr, Some("secure.test"), "secure.test", "/", &good).unwrap().status, 200);
}

#[test]
fn the_standalone_yaml_model_parses_with_every_tls_setting() {
    let yaml = r#"
listeners:
  - name: https
    address: "0.0.0.0:443"
    tls: {default_certificate: site, unknown_sni: default, session_tickets: true}
  - {name: http, address: "0.0.0.0:80"}
certificates:
  - {name: site, cert_path: /etc/sluice/site.crt, key_path: /etc/sluice/site.key}
  - name: inline
    cert_pem: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
    key_pem: "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n"
virtual_hosts:
  - name: site
    domains: [example.com, "*.example.com"]
    tls:
      certificate: site
      redirect_http: true
      hsts: {max_age_seconds: 31536000, include_subdomains: true, preload: false}
      client_ca_path: /etc/sluice/clients.pem
    routes: [{backend: app}]
  - name: pass
    domains: [pass.example.com]
    tls: {passthrough: app-tls}
backends:
  - {name: app, endpoints: [{address: "10.0.0.1:8443"}], tls: {ca_path: /etc/sluice/app-ca.pem, server_name: app.internal}}
  - {name: app-tls, protocol: h2c, endpoints: [{address: "10.0.0.2:443"}], tls: {insecure_skip_verify: true}}
"#;
    let config = lb_userspace::config::Config::from_yaml(yaml, "example.yaml").unwrap();
    let key = config.certificates[1].key_pem.as_ref().unwrap();
    assert_eq!(format!("{key:?}"), "<redacted>", "private keys never reach logs");
    assert!(config.listeners[0].tls.as_ref().unwrap().session_tickets);
    assert!(config.virtual_hosts[0].tls.as_ref().unwrap().hsts.as_ref().unwrap().include_subdomains);
    assert!(config.backends[1].tls.as_ref().unwrap().insecure_skip_verify);
    let _ = PathBuf::new();
}

#[test]
fn active_health_checks_speak_tls_to_tls_backends() {
    let _serial = serial();
    let certs = Certs::new();
    let backend_ca = Ca::new("backend CA");
    let other_ca = Ca::new("other CA");
    let tls_backend = Backend::with_tls("tls-server", server_config(&backend_ca.leaf(&["backend.test"])));
    let addr = tls_backend.addr();
    let check = "health_check: {path: /healthz, interval_ms: 50, timeout_ms: 500, healthy_threshold: 1, unhealthy_threshold: 2}";
    let body = format!(
        "{}virtual_hosts:
  - {{name: up, domains: ['*'], routes: [{{match: {{path: {{prefix: /good}}}}, backend: good}}, {{match: {{path: {{prefix: /bad}}}}, backend: bad}}]}}
backends:
{}{}",
        certs.yaml(),
        backend_group(
            "good",
            addr,
            &format!(", tls: {{ca_pem: {}, server_name: backend.test}}, {check}", quoted(&backend_ca.pem()))
        ),
        backend_group(
            "bad",
            addr,
            &format!(
                ", tls: {{ca_pem: {}, server_name: backend.test}}, retries: {{attempts: 0}}, {check}",
                quoted(&other_ca.pem())
            )
        ),
    );
    let proxy = TlsProxy::start("{default_certificate: default}", &body);
    // Checks to the good backend pass over TLS, so it keeps serving while they run...
    let before = tls_backend.requests();
    wait_for(Duration::from_secs(10), "health checks over TLS to reach the backend", || {
        (tls_backend.requests() >= before + 3).then_some(())
    })
    .unwrap();
    assert_eq!(lb_tests::http::request(proxy.plain, "GET", "anything", "/good", &[]).unwrap().status, 200);
    // ...and checks that cannot verify the backend's certificate take it out: no endpoint left.
    wait_for(Duration::from_secs(10), "the unverifiable backend to be marked down", || {
        (lb_tests::http::request(proxy.plain, "GET", "anything", "/bad", &[]).ok()?.status == 503)
            .then_some(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Writes both files by rename, as configuration management does.
fn write_pem(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// One `GET` on an open connection, plain or TLS.
fn request(
    stream: &mut (impl Read + Write),
    host: &str,
    path: &str,
    close: bool,
) -> anyhow::Result<HttpResponse> {
    Client::new(stream).request("GET", host, path, &[], close)
}

/// Connect, handshake, one request with `Connection: close`.
fn https_get(
    addr: SocketAddr,
    sni: Option<&str>,
    host: &str,
    path: &str,
    config: &Arc<ClientConfig>,
) -> anyhow::Result<HttpResponse> {
    let mut stream = connect(addr, sni, config)?;
    request(&mut stream, host, path, true)
}

// ---------------------------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------------------------

/// Handshake counters are process-wide: tests that make handshakes run one at a time so each
/// can assert exact deltas.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn failures() -> HashMap<&'static str, u64> {
    lb_userspace::tls::handshake_failures().into_iter().collect()
}

/// Failure counts added since `before` (reasons with no change left out).
fn failures_since(before: &HashMap<&'static str, u64>) -> HashMap<&'static str, u64> {
    failures().into_iter().map(|(k, v)| (k, v - before[k])).filter(|(_, v)| *v > 0).collect()
}

/// A node with a TLS listener (`proxy.addr`, the `{listen}` of the common harness) and a plain
/// listener (`plain`). `body` holds everything after `listeners:`, where `{plain}` and
/// `{listener_tls}` are replaced.
struct TlsProxy {
    proxy: Proxy,
    plain: SocketAddr,
    listener_tls: String,
}

impl TlsProxy {
    fn start(listener_tls: &str, body: &str) -> TlsProxy {
        let plain = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let yaml = Self::yaml(plain, listener_tls, body);
        let proxy = Proxy::start(&yaml);
        wait_for(Duration::from_secs(10), "the plain listener", || TcpStream::connect(plain).ok()).unwrap();
        TlsProxy { proxy, plain, listener_tls: listener_tls.to_owned() }
    }

    fn yaml(plain: SocketAddr, listener_tls: &str, body: &str) -> String {
        format!(
            "workers: 2
xdp: {{enabled: false}}
limits: {{shutdown_grace_ms: 500, header_read_timeout_ms: 1000}}
listeners:
  - {{name: web, address: \"{{listen}}\", tls: {listener_tls}}}
  - {{name: plain, address: \"{plain}\"}}
{body}"
        )
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    /// Builds a configuration from `body` with the same listeners, for `apply`.
    fn config(&self, body: &str) -> lb_userspace::config::Config {
        let yaml = with_listener(&Self::yaml(self.plain, &self.listener_tls, body), self.proxy.addr);
        lb_userspace::config::Config::from_yaml(&yaml, "test").expect("valid configuration")
    }

    fn apply(&self, body: &str) -> Result<u64, String> {
        self.proxy.node.apply(&self.config(body)).map_err(|e| e.to_string())
    }
}

/// The usual certificates: `a.test`, `*.wild.test`, `default.test` from one CA.
struct Certs {
    ca: Ca,
    a: Leaf,
    wild: Leaf,
    default: Leaf,
}

impl Certs {
    fn new() -> Certs {
        let ca = Ca::new("Sluice test CA");
        Certs {
            a: ca.leaf(&["a.test"]),
            wild: ca.leaf(&["*.wild.test"]),
            default: ca.leaf(&["default.test"]),
            ca,
        }
    }

    fn yaml(&self) -> String {
        format!(
            "certificates:\n{}{}{}",
            inline_certificate("a", &self.a),
            inline_certificate("wild", &self.wild),
            inline_certificate("default", &self.default)
        )
    }
}

/// Virtual hosts `a.test` and `*.wild.test` with TLS, `plain.test` without, all to `be`.
fn hosts(a_tls_extra: &str) -> String {
    format!(
        "virtual_hosts:
  - {{name: a, domains: [a.test], tls: {{certificate: a{a_tls_extra}}}, routes: [{{backend: be}}]}}
  - {{name: wild, domains: ['*.wild.test'], tls: {{certificate: wild}}, routes: [{{backend: be}}]}}
  - {{name: plain, domains: [plain.test], routes: [{{backend: be}}]}}
"
    )
}

fn backend_group(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("  - {{name: {name}, endpoints: [{{address: \"{addr}\"}}]{extra}}}\n")
}

/// The usual configuration body: the test certificates, the hosts of [`hosts`] and one backend
/// `be` at `backend`.
fn standard_body(certs: &Certs, backend: SocketAddr) -> String {
    format!("{}{}backends:\n{}", certs.yaml(), hosts(""), backend_group("be", backend, ""))
}
