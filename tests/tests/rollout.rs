//! Graceful rollout: two `sluice` processes behind a client that retries nothing and sends only
//! to the instances whose `/readyz` says ready, as an outer load balancer does. The first one
//! gets SIGTERM while the client keeps sending: readiness fails at once, the listeners keep
//! serving for `limits.shutdown_delay_ms`, then close, and requests and a WebSocket still in
//! flight finish; no request fails.

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
    http::http_get,
    sluice::{Binary, wait_for_load},
    wait_for,
};
use tokio_tungstenite::tungstenite::Message;

/// Long enough for the client's readiness poll (every 50 ms) to see the 503 many times over.
const SHUTDOWN_DELAY_MS: u64 = 1500;

#[test]
fn sigterm_fails_readiness_first_then_drains_with_no_failed_request() {
    let fast = Backend::with_mode("fast", Mode::Name);
    let slow = Backend::with_mode("slow", Mode::Hold);
    let ws_runtime = tokio::runtime::Runtime::new().unwrap();
    let ws_addr = spawn_ws_echo(&ws_runtime);
    let (mut first, first_admin) = start_instance(&fast, &slow, ws_addr);
    let (second, second_admin) = start_instance(&fast, &slow, ws_addr);
    let balancer = Arc::new(OuterBalancer::new(vec![(first.addr, first_admin), (second.addr, second_admin)]));
    let load = balancer.clone().start();
    wait_for(Duration::from_secs(10), "both instances ready", || {
        balancer.ready.iter().all(|r| r.load(Ordering::Relaxed)).then_some(())
    })
    .unwrap();
    wait_for_load(&balancer.sent, 50, "before the rollout");

    // Requests in flight on the first instance when its signal comes, and a WebSocket.
    let first_addr = first.addr;
    let in_flight: Vec<_> =
        (0..3).map(|_| std::thread::spawn(move || http_get(first_addr, "/slow"))).collect();
    wait_for(Duration::from_secs(10), "the slow requests at their backend", || {
        (slow.holding() == 3).then_some(())
    })
    .unwrap();
    let mut ws = ws_runtime.block_on(ws_connect(first_addr));
    ws_runtime.block_on(ws_round_trip(&mut ws, "before the signal"));

    let signalled = Instant::now();
    // SAFETY: signalling our own child process by pid.
    unsafe { libc::kill(first.child.pid() as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(5), "/readyz to fail", || (!is_ready(first_admin)).then_some(())).unwrap();
    // Not ready, yet serving: a request sent now is answered.
    let during_delay = http_get(first_addr, "/").expect("served during the shutdown delay");
    assert_eq!(during_delay.status, 200);
    assert!(signalled.elapsed() < Duration::from_millis(SHUTDOWN_DELAY_MS), "checked within the delay");
    wait_for(Duration::from_secs(10), "the listener to close after the delay", || {
        std::net::TcpStream::connect(first_addr).is_err().then_some(())
    })
    .unwrap();
    let closed_after = signalled.elapsed();
    assert!(
        closed_after >= Duration::from_millis(SHUTDOWN_DELAY_MS),
        "the listener closed after the delay, not before ({closed_after:?})"
    );
    wait_for_load(&balancer.sent, 50, "after the first instance closed its listeners");

    // Draining: the slow requests finish, and the WebSocket keeps the process up until it
    // closes (well within the 20 s grace period).
    assert!(in_flight.iter().all(|t| !t.is_finished()), "the slow requests are still in flight");
    slow.release();
    for request in in_flight {
        let response = request.join().unwrap().expect("an in-flight request completes");
        assert_eq!(response.status, 200, "{response:?}");
    }
    ws_runtime.block_on(ws_round_trip(&mut ws, "after the listeners closed"));
    assert!(first.child.try_status().is_none(), "still draining while the WebSocket is open");
    ws_runtime.block_on(async { ws.close(None).await.expect("the WebSocket closes cleanly") });
    drop(ws);
    let status = wait_for(Duration::from_secs(10), "the first instance to exit once drained", || {
        first.child.try_status()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", first.child.output()));
    assert!(status.success(), "the first instance exits cleanly: {status:?}\n{}", first.child.output());
    assert!(signalled.elapsed() < Duration::from_secs(15), "it did not wait out the grace period");

    balancer.stop.store(true, Ordering::Relaxed);
    let counts = load.join().unwrap();
    assert_eq!(counts.failed, 0, "no request failed: {counts:?}");
    assert!(counts.answered.iter().all(|&n| n > 0), "both instances served: {counts:?}");
    eprintln!("rollout: {counts:?}, listener closed {closed_after:?} after SIGTERM");
    drop(second);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One `sluice` with its own admin port: `/slow` to the holding backend, `/ws` to the WebSocket
/// echo, everything else to `fast`.
fn start_instance(fast: &Backend, slow: &Backend, ws: SocketAddr) -> (Binary, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = format!(
        "workers: 2\nxdp: {{enabled: false}}\nadmin: {{address: \"{admin}\"}}\n\
         limits: {{shutdown_delay_ms: {SHUTDOWN_DELAY_MS}, shutdown_grace_ms: 20000}}\n\
         listeners: [{{name: web, address: \"{{listen}}\"}}]\n\
         virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n\
         \x20     - {{match: {{path: {{prefix: /slow}}}}, backend: slow}}\n\
         \x20     - {{match: {{path: {{prefix: /ws}}}}, backend: ws}}\n\
         \x20     - {{backend: fast}}\n\
         backends:\n\
         \x20 - {{name: fast, endpoints: [{{address: \"{}\"}}]}}\n\
         \x20 - {{name: slow, endpoints: [{{address: \"{}\"}}],}}\n\
         \x20 - {{name: ws, endpoints: [{{address: \"{ws}\"}}]}}\n",
        fast.addr(),
        slow.addr(),
    );
    (Binary::start(&yaml), admin)
}

fn is_ready(admin: SocketAddr) -> bool {
    http_get(admin, "/readyz").is_ok_and(|r| r.status == 200)
}

/// The outer load balancer and its client in one: polls each instance's `/readyz` every 50 ms
/// and sends one request per new connection, round robin over the instances it last saw ready,
/// retrying nothing.
struct OuterBalancer {
    instances: Vec<(SocketAddr, SocketAddr)>,
    ready: Vec<AtomicBool>,
    sent: AtomicU64,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct Counts {
    answered: [u64; 2],
    failed: u64,
    errors: Vec<String>,
}

impl OuterBalancer {
    fn new(instances: Vec<(SocketAddr, SocketAddr)>) -> OuterBalancer {
        let ready = instances.iter().map(|_| AtomicBool::new(false)).collect();
        OuterBalancer { instances, ready, sent: AtomicU64::new(0), stop: AtomicBool::new(false) }
    }

    fn start(self: Arc<Self>) -> std::thread::JoinHandle<Counts> {
        let checker = self.clone();
        std::thread::spawn(move || {
            while !checker.stop.load(Ordering::Relaxed) {
                for (i, (_, admin)) in checker.instances.iter().enumerate() {
                    checker.ready[i].store(is_ready(*admin), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        std::thread::spawn(move || self.send_until_stopped())
    }

    /// Bounded: at most 60 s or 100,000 requests.
    fn send_until_stopped(&self) -> Counts {
        let mut counts = Counts::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = 0;
        for _ in 0..100_000 {
            if self.stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            let Some(i) = (0..2).map(|k| (next + k) % 2).find(|&i| self.ready[i].load(Ordering::Relaxed))
            else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            next = i + 1;
            match http_get(self.instances[i].0, "/") {
                Ok(r) if r.status == 200 && r.header(BACKEND_HEADER) == Some("fast") => {
                    counts.answered[i] += 1
                }
                Ok(r) => {
                    counts.failed += 1;
                    counts.errors.push(format!("instance {i}: {} {}", r.status, r.body));
                }
                Err(e) => {
                    counts.failed += 1;
                    counts.errors.push(format!("instance {i}: {e}"));
                }
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        counts
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket echo server (tokio-tungstenite on a loopback listener).
fn spawn_ws_echo(runtime: &tokio::runtime::Runtime) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let (write, read) = ws.split();
                let _ = read.try_filter(|m| std::future::ready(m.is_text())).forward(write).await;
            });
        }
    });
    addr
}

async fn ws_connect(proxy: SocketAddr) -> Ws {
    let connect = tokio_tungstenite::connect_async(format!("ws://{proxy}/ws"));
    let (ws, _) = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("WebSocket handshake within 10 s")
        .expect("WebSocket handshake through the proxy");
    ws
}

async fn ws_round_trip(ws: &mut Ws, what: &str) {
    ws.send(Message::text(what)).await.unwrap_or_else(|e| panic!("{what}: send failed: {e}"));
    let echo = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Err(_) => panic!("{what}: no echo within 5 s"),
        Ok(None) => panic!("{what}: the WebSocket closed"),
        Ok(Some(Err(e))) => panic!("{what}: {e}"),
        Ok(Some(Ok(echo))) => echo,
    };
    assert_eq!(echo, Message::text(what), "{what}");
}
