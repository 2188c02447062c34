//! `cargo xtask soak --minutes N`: the `sluice` binary (debug build, no XDP) under mixed
//! traffic for N minutes, its configuration file rewritten every 3 s (alternating between two
//! versions): HTTP/1.1 keep-alive and a new connection per request, HTTP/2 (h2c), HTTPS
//! (keep-alive, a new handshake every 50 requests) and WebSocket echoes. Reports failed
//! requests and the process's RSS and open descriptors at the start (after 10 s of warm-up),
//! the end and their peak; fails when a request failed. A bounded run, not a test.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use lb_tests::{
    backend::{BACKEND_HEADER, Backend, Mode},
    free_port,
    http::{self, Client},
    tls,
};

/// One kind of traffic's counts.
#[derive(Default)]
struct Kind {
    ok: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
struct Counts {
    h1: Kind,
    h2: Kind,
    tls: Kind,
    ws: Kind,
    errors: parking_errors::Errors,
}

mod parking_errors {
    /// The first errors, for the report.
    #[derive(Default)]
    pub struct Errors(std::sync::Mutex<Vec<String>>);

    impl Errors {
        pub fn push(&self, error: String) {
            let mut errors = self.0.lock().unwrap();
            if errors.len() < 10 {
                errors.push(error);
            }
        }

        pub fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }
}

impl Kind {
    fn record<T, E: std::fmt::Display>(
        &self,
        what: &str,
        result: Result<T, E>,
        errors: &parking_errors::Errors,
    ) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                errors.push(format!("{what}: {e}"));
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

pub fn run(minutes: u64) -> anyhow::Result<()> {
    anyhow::ensure!(minutes > 0, "--minutes must be at least 1");
    let binary = crate::build::build_sluice(false)?;
    let a = Backend::with_mode("a", Mode::Name);
    let b = Backend::with_mode("b", Mode::Name);
    let ws_runtime = tokio::runtime::Runtime::new()?;
    let ws_backend = spawn_ws_echo(&ws_runtime)?;
    let ca = tls::Ca::new("soak-ca");
    let leaf = ca.leaf(&["soak.test"]);
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = |backend: &str| {
        format!(
            "workers: 2\naccess_log: {{enabled: false}}\n\
             listeners:\n  - {{name: web, address: \"{addr}\"}}\n  - {{name: tls, address: \"{tls_addr}\", tls: {{default_certificate: c}}}}\n\
             certificates:\n{}\
             virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n\
             \x20     - {{match: {{path: {{prefix: /ws}}}}, backend: ws}}\n\
             \x20     - {{backend: {backend}}}\n\
             backends:\n\
             \x20 - {{name: a, endpoints: [{{address: \"{}\"}}]}}\n\
             \x20 - {{name: b, endpoints: [{{address: \"{}\"}}]}}\n\
             \x20 - {{name: ws, endpoints: [{{address: \"{ws_backend}\"}}]}}\n",
            tls::inline_certificate("c", &leaf),
            a.addr(),
            b.addr(),
        )
    };
    let dir = lb_tests::temp_dir::TempDir::new();
    let config = dir.0.join("sluice.yaml");
    std::fs::write(&config, yaml("a"))?;
    let mut command = std::process::Command::new(&binary);
    command.arg("run").arg("--config").arg(&config).arg("--no-xdp").env("RUST_LOG", "info");
    let mut sluice = lb_tests::process::ChildGuard::spawn(command)?;
    lb_tests::wait_for(Duration::from_secs(30), "sluice to accept", || {
        assert!(sluice.try_status().is_none(), "sluice exited:\n{}", sluice.output());
        std::net::TcpStream::connect(addr).ok()
    })?;
    let pid = sluice.pid();
    let rewrite = |yaml: String| -> anyhow::Result<()> {
        // Write then rename, as editors and config management do.
        let next = config.with_extension("yaml.next");
        std::fs::write(&next, yaml)?;
        std::fs::rename(&next, &config)?;
        Ok(())
    };
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for kind in 0..5 {
        let (counts, stop) = (counts.clone(), stop.clone());
        threads.push(std::thread::spawn(move || match kind {
            0 => h1_keep_alive(addr, &counts, &stop),
            1 => h1_new_connections(addr, &counts, &stop),
            2 => h2c(addr, &counts, &stop),
            3 => https(tls_addr, &counts, &stop),
            _ => websockets(addr, &counts, &stop),
        }));
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(minutes * 60);
    let mut samples: Vec<(u64, usize)> = Vec::new();
    let mut reloads = 0u64;
    let mut last_reload = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        if last_reload.elapsed() >= Duration::from_secs(3) {
            reloads += 1;
            rewrite(yaml(if reloads % 2 == 1 { "b" } else { "a" }))?;
            last_reload = Instant::now();
        }
        if started.elapsed() >= Duration::from_secs(10) {
            samples.push((rss_kib(pid), open_fds(pid)));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let (first, last) =
        (samples.first().copied().unwrap_or_default(), samples.last().copied().unwrap_or_default());
    let peak_rss = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let peak_fds = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let mut failed = 0;
    println!("soak: {minutes} min, {reloads} reloads (every 3 s)");
    for (name, kind) in
        [("http1", &counts.h1), ("h2c", &counts.h2), ("https", &counts.tls), ("websocket", &counts.ws)]
    {
        let (ok, bad) = (kind.ok.load(Ordering::Relaxed), kind.failed.load(Ordering::Relaxed));
        failed += bad;
        println!("  {name:<10} {ok:>9} ok {bad:>6} failed");
    }
    println!(
        "  rss   start {:.1} MiB, end {:.1} MiB, peak {:.1} MiB",
        mib(first.0),
        mib(last.0),
        mib(peak_rss)
    );
    println!("  fds   start {}, end {}, peak {}", first.1, last.1, peak_fds);
    for error in counts.errors.all() {
        println!("  error: {error}");
    }
    println!(
        "soak_failed={failed} rss_start_kib={} rss_end_kib={} rss_peak_kib={peak_rss} fds_start={} fds_end={} fds_peak={peak_fds}",
        first.0, last.0, first.1, last.1
    );
    let (status, output) = sluice.terminate(Duration::from_secs(30))?;
    let applied = output.lines().filter(|l| l.contains("configuration reloaded")).count();
    let refused = output.lines().filter(|l| l.contains("refused")).count();
    println!("  exit {status}; {applied} reloads applied, {refused} refused");
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(str::to_owned))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn check(response: anyhow::Result<http::HttpResponse>) -> anyhow::Result<()> {
    let response = response?;
    anyhow::ensure!(
        response.status == 200 && matches!(response.header(BACKEND_HEADER), Some("a" | "b")),
        "status {} from {:?}",
        response.status,
        response.header(BACKEND_HEADER)
    );
    Ok(())
}

fn h1_keep_alive(addr: SocketAddr, counts: &Counts, stop: &AtomicBool) {
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match &mut client {
            Some(c) => c,
            None => client.insert(Client::connect(addr)),
        };
        let result = check(c.request("GET", "soak.test", "/keep-alive", &[], false));
        if result.is_err() {
            client = None;
        }
        counts.h1.record("http1 keep-alive", result, &counts.errors);
    }
}

fn h1_new_connections(addr: SocketAddr, counts: &Counts, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let result = check(http::request(addr, "GET", "soak.test", "/new", &[]));
        counts.h1.record("http1 new connection", result, &counts.errors);
    }
}

fn h2c(addr: SocketAddr, counts: &Counts, stop: &AtomicBool) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    runtime.block_on(async {
        while !stop.load(Ordering::Relaxed) {
            let connected = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                anyhow::Ok(sender)
            };
            let mut sender = match connected.await {
                Ok(sender) => sender,
                Err(e) => {
                    counts.h2.record("h2c connect", Err::<(), _>(e), &counts.errors);
                    continue;
                }
            };
            // 200 requests per connection, 4 streams at a time.
            for _ in 0..50 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let requests = (0..4).map(|_| {
                    let request = hyper::Request::get("http://soak.test/h2")
                        .body(Empty::<bytes::Bytes>::new())
                        .expect("a valid request");
                    let response = sender.send_request(request);
                    async move {
                        let response = response.await?;
                        let status = response.status();
                        let backend = response.headers().get(BACKEND_HEADER).cloned();
                        response.into_body().collect().await?;
                        anyhow::ensure!(status == 200 && backend.is_some(), "status {status}");
                        anyhow::Ok(())
                    }
                });
                for result in futures_util::future::join_all(requests).await {
                    counts.h2.record("h2c", result, &counts.errors);
                }
            }
        }
    });
}

fn https(addr: SocketAddr, counts: &Counts, stop: &AtomicBool) {
    let config = tls::client_config(tls::ClientOptions { resume: true, ..Default::default() });
    while !stop.load(Ordering::Relaxed) {
        let stream = match tls::connect(addr, Some("soak.test"), &config) {
            Ok(stream) => stream,
            Err(e) => {
                counts.tls.record("https handshake", Err::<(), _>(e), &counts.errors);
                continue;
            }
        };
        let mut client = Client::new(stream);
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let result = check(client.request("GET", "soak.test", "/tls", &[], false));
            let failed = result.is_err();
            counts.tls.record("https", result, &counts.errors);
            if failed {
                break;
            }
        }
    }
}

fn websockets(addr: SocketAddr, counts: &Counts, stop: &AtomicBool) {
    use tokio_tungstenite::tungstenite::Message;
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    runtime.block_on(async {
        while !stop.load(Ordering::Relaxed) {
            let (mut ws, _) = match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
                Ok(ws) => ws,
                Err(e) => {
                    counts.ws.record("websocket handshake", Err::<(), _>(e), &counts.errors);
                    continue;
                }
            };
            // 100 echoes per WebSocket, then a clean close.
            for i in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let text = format!("echo {i}");
                let round_trip = async {
                    ws.send(Message::text(text.clone())).await?;
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(echo))) if echo == Message::text(text) => anyhow::Ok(()),
                        other => anyhow::bail!("no echo: {other:?}"),
                    }
                };
                counts.ws.record("websocket", round_trip.await, &counts.errors);
            }
            let _ = ws.close(None).await;
        }
    });
}

/// A WebSocket echo server (tokio-tungstenite on a loopback listener).
fn spawn_ws_echo(runtime: &tokio::runtime::Runtime) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let (write, read) = ws.split();
                let _ = read.try_filter(|m| std::future::ready(m.is_text())).forward(write).await;
            });
        }
    });
    Ok(addr)
}
