//! The L4 services in user space, for when XDP does not balance them (the kernel path is off,
//! or a service needs what XDP cannot do: the PROXY protocol, IPv6 for now). TCP connections
//! are spliced to a healthy endpoint (`upstream::passthrough::copy_both_ways`, with the PROXY
//! header first when asked); UDP datagrams go through one connected socket per client flow,
//! forgotten after the service's idle timeout. Endpoints are checked as the kernel path checks
//! them (`dataplane::l4_health::probe`). One thread with its own runtime; a flow's endpoint is
//! chosen by a hash of the client's address and port over the healthy endpoints.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{Hash, Hasher},
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, watch},
};

use crate::{
    config::{L4Protocol, L4ServiceConfig},
    dataplane::l4_health,
    proxy::{
        proxy_protocol,
        upstream::passthrough::{CopyBounds, copy_both_ways},
    },
};

/// A write to a side that stopped reading gives up after this.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The running proxy. Dropping it stops it (its connections end with it).
pub struct L4Proxy {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    services: Vec<L4ServiceConfig>,
}

enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl L4Proxy {
    /// Binds every service's socket (an error names the one that failed), then serves them.
    pub fn start(services: Vec<L4ServiceConfig>) -> io::Result<L4Proxy> {
        let mut bound = Vec::new();
        for service in &services {
            let socket = match service.protocol {
                L4Protocol::Tcp => std::net::TcpListener::bind(service.address).map(Bound::Tcp),
                L4Protocol::Udp => std::net::UdpSocket::bind(service.address).map(Bound::Udp),
            };
            let socket = socket.map_err(|e| {
                io::Error::new(e.kind(), format!("L4 service {} on {}: {e}", service.name, service.address))
            })?;
            bound.push(socket);
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = watch::channel(false);
        let configs = services.clone();
        let thread = std::thread::Builder::new().name("sluice-l4-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                for (service, socket) in configs.into_iter().zip(bound) {
                    if let Err(e) = serve(service, socket, stopped.clone()) {
                        tracing::error!(error = %e, "an L4 service could not start");
                    }
                }
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            });
        })?;
        Ok(L4Proxy { stop, thread: Some(thread), services })
    }

    /// What it serves.
    pub fn services(&self) -> &[L4ServiceConfig] {
        &self.services
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for L4Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the health checks and the serving task of one service.
fn serve(service: L4ServiceConfig, socket: Bound, stop: watch::Receiver<bool>) -> io::Result<()> {
    let healthy = Arc::new(ArcSwap::from_pointee(service.endpoints.clone()));
    check_endpoints(&service, healthy.clone());
    match socket {
        Bound::Tcp(listener) => {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            tokio::spawn(serve_tcp(service, listener, healthy, stop));
        }
        Bound::Udp(socket) => {
            socket.set_nonblocking(true)?;
            let socket = UdpSocket::from_std(socket)?;
            tokio::spawn(serve_udp(service, Arc::new(socket), healthy, stop));
        }
    }
    Ok(())
}

/// One task per endpoint: probes every interval (on the blocking pool) and republishes the
/// healthy list when its state changes. The lock is taken only there, never per connection.
fn check_endpoints(service: &L4ServiceConfig, healthy: Arc<ArcSwap<Vec<SocketAddr>>>) {
    if service.protocol == L4Protocol::Udp && service.health_check.udp_send.is_none() {
        return;
    }
    let down = Arc::new(parking_lot::Mutex::new(BTreeSet::new()));
    for &endpoint in &service.endpoints {
        let (check, protocol, all) =
            (service.health_check.clone(), service.protocol, service.endpoints.clone());
        let (healthy, down) = (healthy.clone(), down.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(check.interval_ms));
            loop {
                ticks.tick().await;
                let probe = check.clone();
                let up = tokio::task::spawn_blocking(move || l4_health::probe(protocol, endpoint, &probe))
                    .await
                    .unwrap_or(false);
                let mut down = down.lock();
                let changed = if up { down.remove(&endpoint) } else { down.insert(endpoint) };
                if changed {
                    tracing::info!(%endpoint, healthy = up, "l4 endpoint health changed (user space)");
                    healthy.store(Arc::new(all.iter().filter(|e| !down.contains(e)).copied().collect()));
                }
            }
        });
    }
}

/// The endpoint for a client flow: a hash of its address and port over the healthy ones.
fn pick(healthy: &ArcSwap<Vec<SocketAddr>>, client: SocketAddr) -> Option<SocketAddr> {
    let endpoints = healthy.load();
    if endpoints.is_empty() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client.hash(&mut hasher);
    Some(endpoints[(hasher.finish() % endpoints.len() as u64) as usize])
}

async fn serve_tcp(
    service: L4ServiceConfig,
    listener: TcpListener,
    healthy: Arc<ArcSwap<Vec<SocketAddr>>>,
    mut stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().unwrap_or(service.address);
    let connect_timeout = Duration::from_millis(service.health_check.timeout_ms.max(1000));
    loop {
        let (client, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "l4 accept failed");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Some(endpoint) = pick(&healthy, peer) else {
            tracing::debug!(service = %service.name, "l4: no healthy endpoint; connection closed");
            continue;
        };
        let header =
            service.proxy_protocol.map(|v| proxy_protocol::encode(v, peer, local)).unwrap_or_default();
        let idle = service.idle_timeout();
        tokio::spawn(async move {
            let mut client = client;
            let Ok(Ok(mut upstream)) =
                tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await
            else {
                tracing::debug!(%endpoint, "l4: endpoint connect failed");
                return;
            };
            let _ = upstream.set_nodelay(true);
            let bounds = CopyBounds { idle: Some(idle), send_timeout: SEND_TIMEOUT };
            let _ = copy_both_ways(&mut client, &mut upstream, (Vec::new(), header), bounds).await;
        });
    }
}

/// A client flow's socket towards its endpoint and the time of the client's last datagram.
struct UdpFlow {
    upstream: Arc<UdpSocket>,
    last_seen_ms: Arc<AtomicU64>,
}

async fn serve_udp(
    service: L4ServiceConfig,
    socket: Arc<UdpSocket>,
    healthy: Arc<ArcSwap<Vec<SocketAddr>>>,
    mut stop: watch::Receiver<bool>,
) {
    // Only this task touches the table; reader tasks report their flow's expiry by channel.
    let mut flows: HashMap<SocketAddr, UdpFlow> = HashMap::new();
    let (expired_tx, mut expired) = mpsc::unbounded_channel::<SocketAddr>();
    let mut buf = vec![0u8; 65_536];
    let idle = service.idle_timeout();
    loop {
        let (n, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(_) => continue,
            },
            Some(client) = expired.recv() => {
                flows.remove(&client);
                continue;
            }
            _ = stop.changed() => return,
        };
        let now = crate::now_ms();
        let flow = match flows.entry(client) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let Some(endpoint) = pick(&healthy, client) else { continue };
                let Ok(upstream) = connect_udp(endpoint).await else { continue };
                let flow =
                    UdpFlow { upstream: Arc::new(upstream), last_seen_ms: Arc::new(AtomicU64::new(now)) };
                tokio::spawn(relay_replies(
                    flow.upstream.clone(),
                    socket.clone(),
                    client,
                    (flow.last_seen_ms.clone(), idle),
                    expired_tx.clone(),
                ));
                entry.insert(flow)
            }
        };
        flow.last_seen_ms.store(now, Ordering::Relaxed);
        let _ = flow.upstream.send(&buf[..n]).await;
    }
}

async fn connect_udp(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if endpoint.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let upstream = UdpSocket::bind(bind).await?;
    upstream.connect(endpoint).await?;
    Ok(upstream)
}

/// Sends the endpoint's datagrams back to the client until the flow has been idle (no
/// datagram either way) for the idle timeout, then reports it expired.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    (last_seen_ms, idle): (Arc<AtomicU64>, Duration),
    expired: mpsc::UnboundedSender<SocketAddr>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let quiet =
            Duration::from_millis(crate::now_ms().saturating_sub(last_seen_ms.load(Ordering::Relaxed)));
        let Some(left) = idle.checked_sub(quiet).filter(|left| !left.is_zero()) else {
            let _ = expired.send(client);
            return;
        };
        // An ICMP error from the endpoint keeps the flow (its client may retry); the idle time
        // running out ends it unless the client sent meanwhile: the loop head decides.
        if let Ok(Ok(n)) = tokio::time::timeout(left, upstream.recv(&mut buf)).await {
            last_seen_ms.store(crate::now_ms(), Ordering::Relaxed);
            let _ = socket.send_to(&buf[..n], client).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener as StdListener, TcpStream as StdStream, UdpSocket as StdUdp},
    };

    use super::*;
    use crate::config::Config;

    fn service(yaml_tail: &str) -> L4ServiceConfig {
        let yaml =
            format!("listeners: [{{name: a, address: '127.0.0.1:1'}}]\nl4_services:\n  - {yaml_tail}\n");
        Config::from_yaml(&yaml, "t.yaml").unwrap().l4_services.remove(0)
    }

    /// A TCP endpoint that answers each connection with its name and closes.
    fn tcp_endpoint(
        name: &'static str,
    ) -> (SocketAddr, std::thread::JoinHandle<()>, Arc<std::sync::atomic::AtomicBool>) {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.write_all(name.as_bytes());
            }
        });
        (addr, thread, stop)
    }

    #[test]
    fn tcp_connections_spread_over_healthy_endpoints_and_avoid_a_dead_one() {
        let (a, _ta, _) = tcp_endpoint("a");
        let (b, tb, stop_b) = tcp_endpoint("b");
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = L4Proxy::start(vec![service(&format!(
            "{{name: t, address: '127.0.0.1:{port}', endpoints: ['{a}', '{b}'], health_check: {{interval_ms: 100, timeout_ms: 50}}}}"
        ))])
        .unwrap();
        let ask = || -> String {
            let mut stream = StdStream::connect(("127.0.0.1", port)).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let answers: Vec<String> = (0..60).map(|_| ask()).collect();
        assert!(answers.iter().any(|a| a == "a") && answers.iter().any(|a| a == "b"), "{answers:?}");
        stop_b.store(true, Ordering::Relaxed);
        let _ = StdStream::connect(b);
        tb.join().unwrap();
        // The bound under test: one interval (+ the check) after b died.
        std::thread::sleep(Duration::from_millis(250));
        let answers: Vec<String> = (0..40).map(|_| ask()).collect();
        assert!(answers.iter().all(|a| a == "a"), "{answers:?}");
        proxy.stop();
    }

    #[test]
    fn udp_flows_get_their_endpoints_answers_and_expire_when_idle() {
        let endpoint = StdUdp::bind("127.0.0.1:0").unwrap();
        let endpoint_addr = endpoint.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut peers = BTreeSet::new();
            for _ in 0..3 {
                let (n, from) = endpoint.recv_from(&mut buf).unwrap();
                peers.insert(from);
                endpoint.send_to(&buf[..n], from).unwrap();
            }
            peers
        });
        let port = StdUdp::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = L4Proxy::start(vec![service(&format!(
            "{{name: u, address: '127.0.0.1:{port}', protocol: udp, endpoints: ['{endpoint_addr}'], idle_timeout_ms: 1000}}"
        ))])
        .unwrap();
        let client = StdUdp::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        client.connect(("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 64];
        for message in [&b"one"[..], b"two"] {
            client.send(message).unwrap();
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], message);
        }
        // Past the idle timeout the flow is forgotten: the next datagram opens a new one, from
        // another proxy port.
        std::thread::sleep(Duration::from_millis(1300));
        client.send(b"three").unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"three");
        let peers = echo.join().unwrap();
        assert_eq!(peers.len(), 2, "one upstream socket per flow, a new one after expiry: {peers:?}");
        proxy.stop();
    }
}
