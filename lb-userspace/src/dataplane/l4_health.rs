//! Health of the L4 services' endpoints flowing down to the kernel: one checker thread per
//! endpoint (a TCP connect, or a UDP request/response probe) reports changes to one supervisor
//! thread, the single writer of the L4 maps, which rebuilds that service's Maglev table. A
//! failed endpoint leaves the table at the first check after it failed: within one interval
//! when it refuses connections, one interval plus the timeout when it stops answering.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    l4::{L4Maps, L4Spec},
    neighbours,
};
use crate::config::{L4HealthCheck, L4Protocol};

/// One L4 service to balance and how to check its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Target {
    pub spec: L4Spec,
    pub check: L4HealthCheck,
}

enum Command {
    Configure(Vec<L4Target>),
    Health { generation: u64, service: usize, endpoint: SocketAddr, healthy: bool },
    Stop,
}

/// The running supervisor. Dropping it stops it and every checker.
pub struct L4Supervisor {
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<(L4Maps, Vec<L4Target>)>>,
}

impl L4Supervisor {
    /// Starts balancing `targets` (every endpoint healthy until its first check says not).
    pub fn start(maps: L4Maps, targets: Vec<L4Target>) -> io::Result<L4Supervisor> {
        let (commands, receiver) = mpsc::channel();
        let sender = commands.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-l4-health".into())
            .spawn(move || run(maps, receiver, sender))?;
        let supervisor = L4Supervisor { commands, thread: Some(thread) };
        supervisor.configure(targets);
        Ok(supervisor)
    }

    /// Replaces the services; endpoints that stay keep their health.
    pub fn configure(&self, targets: Vec<L4Target>) {
        let _ = self.commands.send(Command::Configure(targets));
    }

    /// Stops checking and writing; gives back the maps and the services last configured
    /// (for a supervisor started again after a failed upgrade).
    pub fn stop(mut self) -> Option<(L4Maps, Vec<L4Target>)> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Option<(L4Maps, Vec<L4Target>)> {
        let _ = self.commands.send(Command::Stop);
        self.thread.take()?.join().ok()
    }
}

impl Drop for L4Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A checker thread's stop flag; set on reconfiguration and on stop.
struct Checker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn run(
    mut maps: L4Maps,
    commands: mpsc::Receiver<Command>,
    sender: mpsc::Sender<Command>,
) -> (L4Maps, Vec<L4Target>) {
    let mut generation = 0u64;
    let mut targets: Vec<L4Target> = Vec::new();
    let mut healthy: Vec<BTreeSet<SocketAddr>> = Vec::new();
    let mut checkers: Vec<Checker> = Vec::new();
    // A command that came while flows were being reset (they give way to it).
    let mut next: Option<Command> = None;
    while let Some(command) = next.take().or_else(|| commands.recv().ok()) {
        match command {
            Command::Configure(next) => {
                generation += 1;
                stop_all(&mut checkers);
                // Health carries over by (service address, protocol, endpoint): an endpoint
                // that was failing stays out until its checker sees it up; new ones start in.
                let known: BTreeMap<(SocketAddr, L4Protocol), (&L4Target, &BTreeSet<SocketAddr>)> = targets
                    .iter()
                    .zip(&healthy)
                    .map(|(t, h)| ((t.spec.address, t.spec.protocol), (t, h)))
                    .collect();
                healthy = next
                    .iter()
                    .map(|t| {
                        let before = known.get(&(t.spec.address, t.spec.protocol));
                        t.spec
                            .endpoints
                            .iter()
                            .filter(|e| {
                                before.is_none_or(|(old, h)| h.contains(e) || !old.spec.endpoints.contains(e))
                            })
                            .copied()
                            .collect()
                    })
                    .collect();
                // New endpoints' neighbours are asked for before the tables name them (the
                // kernel resolves a managed entry at once, while the tables are written), so a
                // new flow's first packet finds its next hop rather than passing to a stack
                // that can only reset it; entries of endpoints gone go once the tables moved.
                neighbours::sync(v4_endpoints(&targets).chain(v4_endpoints(&next)));
                targets = next;
                write(&mut maps, &targets, &healthy);
                neighbours::sync(v4_endpoints(&targets));
                for (service, target) in targets.iter().enumerate() {
                    if target.spec.protocol == L4Protocol::Udp && target.check.udp_send.is_none() {
                        continue;
                    }
                    for &endpoint in &target.spec.endpoints {
                        let up = healthy[service].contains(&endpoint);
                        match spawn_checker(generation, (service, endpoint, up), target, sender.clone()) {
                            Ok(checker) => checkers.push(checker),
                            Err(e) => {
                                tracing::error!(%endpoint, error = %e, "cannot start an L4 health checker")
                            }
                        }
                    }
                }
            }
            Command::Health { generation: of, service, endpoint, healthy: up } => {
                if of != generation {
                    continue;
                }
                let Some(set) = healthy.get_mut(service) else { continue };
                let changed = if up { set.insert(endpoint) } else { set.remove(&endpoint) };
                if changed {
                    tracing::info!(
                        service = %targets[service].spec.address,
                        %endpoint,
                        healthy = up,
                        "l4 endpoint health changed"
                    );
                    write(&mut maps, &targets, &healthy);
                }
            }
            Command::Stop => break,
        }
        // After the tables, and only while no other command waits.
        while next.is_none() && maps.resets_pending() {
            let finished = maps.reset_flows(|| {
                next = commands.try_recv().ok();
                next.is_some()
            });
            if let Err(e) = finished {
                tracing::error!(error = %e, "resetting the flows of removed L4 endpoints failed");
                break;
            }
        }
    }
    stop_all(&mut checkers);
    (maps, targets)
}

/// The IPv4 endpoints of `targets` (the fast path, and so its neighbours, are IPv4 only).
fn v4_endpoints(targets: &[L4Target]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    targets.iter().flat_map(|t| t.spec.endpoints.iter()).filter_map(|e| match e.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
}

fn write(maps: &mut L4Maps, targets: &[L4Target], healthy: &[BTreeSet<SocketAddr>]) {
    let services: Vec<(L4Spec, BTreeSet<SocketAddr>)> =
        targets.iter().zip(healthy).map(|(t, h)| (t.spec.clone(), h.clone())).collect();
    if let Err(e) = maps.apply(&services) {
        tracing::error!(error = %e, "writing the L4 tables failed; the next change retries");
    }
}

fn stop_all(checkers: &mut Vec<Checker>) {
    for checker in checkers.iter() {
        checker.stop.store(true, Ordering::Relaxed);
        checker.thread.thread().unpark();
    }
    for checker in checkers.drain(..) {
        let _ = checker.thread.join();
    }
}

/// `now`: the service index, the endpoint and whether the tables count it healthy now.
fn spawn_checker(
    generation: u64,
    (service, endpoint, now): (usize, SocketAddr, bool),
    target: &L4Target,
    sender: mpsc::Sender<Command>,
) -> io::Result<Checker> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let protocol = target.spec.protocol;
    let check = target.check.clone();
    let thread = std::thread::Builder::new().name("sluice-l4-check".into()).spawn(move || {
        let interval = Duration::from_millis(check.interval_ms);
        let mut last = now;
        while !flag.load(Ordering::Relaxed) {
            let started = Instant::now();
            let up = probe(protocol, endpoint, &check);
            if up != last {
                last = up;
                if sender.send(Command::Health { generation, service, endpoint, healthy: up }).is_err() {
                    return;
                }
            }
            // Parked until the next check is due; `stop_all` unparks at once.
            while !flag.load(Ordering::Relaxed) {
                let Some(left) = interval.checked_sub(started.elapsed()) else { break };
                std::thread::park_timeout(left);
            }
        }
    })?;
    Ok(Checker { stop, thread })
}

/// One check: a TCP connect within the timeout, or a UDP probe answered within it.
pub fn probe(protocol: L4Protocol, endpoint: SocketAddr, check: &L4HealthCheck) -> bool {
    let timeout = Duration::from_millis(check.timeout_ms);
    match protocol {
        L4Protocol::Tcp => TcpStream::connect_timeout(&endpoint, timeout).is_ok(),
        L4Protocol::Udp => {
            let Some(send) = &check.udp_send else { return true };
            udp_probe(endpoint, send.as_bytes(), check.udp_expect.as_deref().map(str::as_bytes), timeout)
                .unwrap_or(false)
        }
    }
}

fn udp_probe(
    endpoint: SocketAddr,
    send: &[u8],
    expect: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<bool> {
    let bind: SocketAddr = if endpoint.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(bind)?;
    socket.connect(endpoint)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(send)?;
    let mut answer = [0u8; 512];
    // A closed port answers with ICMP port unreachable: recv fails with ConnectionRefused.
    let n = socket.recv(&mut answer)?;
    Ok(expect.is_none_or(|prefix| answer[..n].starts_with(prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(udp_send: Option<&str>, udp_expect: Option<&str>) -> L4HealthCheck {
        L4HealthCheck {
            interval_ms: 100,
            timeout_ms: 200,
            udp_send: udp_send.map(str::to_owned),
            udp_expect: udp_expect.map(str::to_owned),
        }
    }

    #[test]
    fn tcp_checks_connect_and_udp_probes_want_an_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        assert!(probe(L4Protocol::Tcp, open, &check(None, None)));
        drop(listener);
        assert!(!probe(L4Protocol::Tcp, open, &check(None, None)), "a closed port fails");

        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let answer = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            for reply in [&b"pong!"[..], b"nope"] {
                let (_, from) = server.recv_from(&mut buf).unwrap();
                server.send_to(reply, from).unwrap();
            }
        });
        assert!(probe(L4Protocol::Udp, addr, &check(Some("ping"), Some("pong"))));
        assert!(!probe(L4Protocol::Udp, addr, &check(Some("ping"), Some("pong"))), "a wrong answer fails");
        answer.join().unwrap();
        assert!(!probe(L4Protocol::Udp, addr, &check(Some("ping"), None)), "no server: refused or silent");
        assert!(probe(L4Protocol::Udp, addr, &check(None, None)), "UDP without a probe counts as up");
    }
}
