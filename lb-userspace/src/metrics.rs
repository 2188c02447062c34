//! Prometheus metrics. The request path only touches its own worker's counters (an
//! uncontended per-worker lock, never a node-wide one); a scrape merges every worker's
//! counters and reads the shared state (endpoints, XDP, reloads) at that moment.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;

use crate::FastMap;

pub mod nginx;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

/// Upper bounds of the request duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Labels of a request: virtual host and route names (bounded by the configuration, never
/// the raw Host header), and the status class.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RequestKey {
    host: Arc<str>,
    route: Arc<str>,
    class: u8,
}

#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        if let Some(i) = DURATION_BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i] += 1;
        }
    }

    fn merge(&mut self, other: &Histogram) {
        self.count += other.count;
        self.sum += other.sum;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }
}

#[derive(Debug, Default)]
struct WorkerCounters {
    requests: FastMap<RequestKey, u64>,
    durations: FastMap<(Arc<str>, Arc<str>), Histogram>,
    connect_errors: FastMap<Arc<str>, u64>,
    retries: FastMap<Arc<str>, u64>,
    denied: FastMap<(Arc<str>, Denial), u64>,
    /// ingress-nginx's series, when the configuration asks for them.
    nginx: FastMap<nginx::Key, nginx::Series>,
}

/// Why a request was refused before it reached a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Denial {
    /// The client's address is outside the route's source ranges.
    SourceRange,
    /// Basic authentication failed (no or wrong credentials, or none could be read).
    BasicAuth,
    /// The client is over the route's requests per second or minute.
    RateLimit,
    /// The client has the route's most requests in progress already.
    ConnectionLimit,
    /// The external auth service refused the request, or failed.
    ExternalAuth,
}

impl Denial {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Denial::SourceRange => "source_range",
            Denial::BasicAuth => "basic_auth",
            Denial::RateLimit => "rate_limit",
            Denial::ConnectionLimit => "connection_limit",
            Denial::ExternalAuth => "external_auth",
        }
    }
}

/// One worker's metrics.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    counters: Mutex<WorkerCounters>,
    active_connections: AtomicI64,
    accepted: AtomicU64,
    /// Connections closed for want of a valid PROXY protocol header, by reason.
    proxy_protocol_refused: [AtomicU64; PROXY_PROTOCOL_REASONS.len()],
    /// Mirrored copies of requests, by outcome (`Mirrored` as the index).
    mirrored: [AtomicU64; MIRRORED_OUTCOMES.len()],
    /// Connections closed because a write to the client waited `limits.send_timeout_ms`, by
    /// what the connection carried (`SendTimeout` as the index).
    send_timeouts: [AtomicU64; SEND_TIMEOUT_KINDS.len()],
    /// Requests abandoned because their client left before the response (logged as 499), by
    /// protocol (`ClientGone` as the index).
    client_gone: [AtomicU64; CLIENT_GONE_PROTOCOLS.len()],
}

/// What a connection closed on the send timeout carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTimeout {
    /// HTTP/1.1 or HTTP/2 responses (the connection's own timer).
    Http,
    /// An upgraded connection's tunnel (WebSocket).
    Tunnel,
    /// A TLS passthrough splice.
    Passthrough,
}

const SEND_TIMEOUT_KINDS: [&str; 3] = ["http", "tunnel", "passthrough"];

/// The protocol of a request whose client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientGone {
    Http1,
    /// A reset stream, or a closed connection, on HTTP/2.
    Http2,
}

const CLIENT_GONE_PROTOCOLS: [&str; 2] = ["http1", "h2"];

/// What became of a mirrored copy of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirrored {
    /// Sent, and answered (whatever the status).
    Sent,
    /// No endpoint, a failed connection or exchange, or no answer within the request timeout.
    Failed,
    /// Not sent: the worker's copies in flight or the endpoint's connection cap were full.
    Dropped,
    /// Not sent: the copy needs the body and the route streamed it instead of holding it.
    BodyNotHeld,
}

const MIRRORED_OUTCOMES: [&str; 4] = ["sent", "failed", "dropped", "body_not_held"];

/// The reasons a PROXY protocol listener closes a connection (`proxy_protocol::Invalid::reason`).
const PROXY_PROTOCOL_REASONS: [&str; 3] = ["invalid", "timeout", "closed"];

/// Connections to L4 services with `accept_proxy_protocol` closed for want of a valid header,
/// by reason (index into `PROXY_PROTOCOL_REASONS`): the user-space L4 proxy has no worker of
/// its own, so it counts here, and `sluice_proxy_protocol_refused_total` adds these in.
static L4_PROXY_PROTOCOL_REFUSED: [AtomicU64; PROXY_PROTOCOL_REASONS.len()] =
    [const { AtomicU64::new(0) }; PROXY_PROTOCOL_REASONS.len()];

/// An L4 service's connection closed for want of a valid PROXY protocol header.
pub fn l4_proxy_protocol_refused(reason: &str) {
    if let Some(i) = PROXY_PROTOCOL_REASONS.iter().position(|r| *r == reason) {
        L4_PROXY_PROTOCOL_REFUSED[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Flows the user-space L4 proxy took (TCP connections accepted, new UDP flows), by protocol
/// (`L4_PROXIED_PROTOCOLS`): with the kernel path, the services XDP balances never reach it.
static L4_PROXIED: [AtomicU64; L4_PROXIED_PROTOCOLS.len()] = [const { AtomicU64::new(0) }; 2];
const L4_PROXIED_PROTOCOLS: [&str; 2] = ["tcp", "udp"];

/// A flow the user-space L4 proxy took: `protocol` is `tcp` or `udp`.
pub fn l4_proxied(protocol: &str) {
    if let Some(i) = L4_PROXIED_PROTOCOLS.iter().position(|p| *p == protocol) {
        L4_PROXIED[i].fetch_add(1, Ordering::Relaxed);
    }
}

impl WorkerMetrics {
    /// A finished request.
    pub fn request(&self, host: &Arc<str>, route: &Arc<str>, status: u16, duration: Duration) {
        let mut counters = self.counters.lock();
        let key = RequestKey { host: host.clone(), route: route.clone(), class: (status / 100) as u8 };
        *counters.requests.entry(key).or_insert(0) += 1;
        counters.durations.entry((host.clone(), route.clone())).or_default().observe(duration.as_secs_f64());
    }

    pub fn connect_error(&self, backend: &Arc<str>) {
        *self.counters.lock().connect_errors.entry(backend.clone()).or_insert(0) += 1;
    }

    pub fn retry(&self, backend: &Arc<str>) {
        *self.counters.lock().retries.entry(backend.clone()).or_insert(0) += 1;
    }

    /// A request refused on `route` before it reached a backend.
    pub fn denied(&self, route: &Arc<str>, why: Denial) {
        *self.counters.lock().denied.entry((route.clone(), why)).or_insert(0) += 1;
    }

    pub fn connection_opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed for want of a valid PROXY protocol header.
    pub fn proxy_protocol_refused(&self, reason: &str) {
        if let Some(i) = PROXY_PROTOCOL_REASONS.iter().position(|r| *r == reason) {
            self.proxy_protocol_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn mirrored(&self, outcome: Mirrored) {
        self.mirrored[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn send_timeout(&self, kind: SendTimeout) {
        self.send_timeouts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_gone(&self, protocol: ClientGone) {
        self.client_gone[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.active_connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn active_connections(&self) -> i64 {
        self.active_connections.load(Ordering::Relaxed)
    }
}

/// A source of gauges and counters read at scrape time (endpoints, XDP, reloads, TLS).
pub trait ScrapeSource: Send + Sync + std::fmt::Debug + 'static {
    /// Calls `emit` once per sample: (metric name, help, type, labels, value).
    fn samples(&self, emit: &mut dyn FnMut(Sample));
}

/// One sample of a scrape-time metric.
pub struct Sample<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub kind: MetricType,
    pub unit: Option<Unit>,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A `Sample` kept until the scrape is grouped by name.
struct OwnedSample {
    name: String,
    help: String,
    kind: MetricType,
    unit: Option<Unit>,
    labels: Vec<(&'static str, String)>,
    value: f64,
}

/// Every worker's metrics plus the scrape-time sources, rendered as OpenMetrics text.
#[derive(Debug, Default)]
pub struct Metrics {
    workers: Vec<Arc<WorkerMetrics>>,
    sources: Vec<Arc<dyn ScrapeSource>>,
}

impl Metrics {
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            workers: (0..workers).map(|_| Arc::new(WorkerMetrics::default())).collect(),
            sources: Vec::new(),
        }
    }

    pub fn worker(&self, id: usize) -> Arc<WorkerMetrics> {
        self.workers[id % self.workers.len()].clone()
    }

    pub fn workers(&self) -> &[Arc<WorkerMetrics>] {
        &self.workers
    }

    pub fn add_source(&mut self, source: Arc<dyn ScrapeSource>) {
        self.sources.push(source);
    }

    /// The OpenMetrics text of everything.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    fn merged(&self) -> WorkerCounters {
        let mut total = WorkerCounters::default();
        for worker in &self.workers {
            let counters = worker.counters.lock();
            for (k, v) in &counters.requests {
                *total.requests.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &counters.durations {
                total.durations.entry(k.clone()).or_default().merge(v);
            }
            for (k, v) in &counters.connect_errors {
                *total.connect_errors.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &counters.retries {
                *total.retries.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &counters.denied {
                *total.denied.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &counters.nginx {
                total.nginx.entry(k.clone()).or_default().merge(v);
            }
        }
        total
    }
}

const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let total = self.merged();

        let mut family = encoder.encode_descriptor(
            "sluice_requests",
            "HTTP requests answered, by virtual host, route and status class",
            None,
            MetricType::Counter,
        )?;
        let mut requests: Vec<_> = total.requests.iter().collect();
        requests.sort_by(|a, b| (&a.0.host, &a.0.route, a.0.class).cmp(&(&b.0.host, &b.0.route, b.0.class)));
        for (key, count) in requests {
            let class = STATUS_CLASSES.get(usize::from(key.class)).copied().unwrap_or("other");
            let labels = [
                ("host", key.host.to_string()),
                ("route", key.route.to_string()),
                ("status_class", class.to_owned()),
            ];
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "sluice_request_duration",
            "Time from the request head to the response head, by virtual host and route",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let mut durations: Vec<_> = total.durations.iter().collect();
        durations.sort_by(|a, b| a.0.cmp(b.0));
        for ((host, route), histogram) in durations {
            let labels = [("host", host.to_string()), ("route", route.to_string())];
            // Per-bucket counts: the encoder accumulates them into `le` buckets itself.
            let overflow = histogram.count - histogram.buckets.iter().sum::<u64>();
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .copied()
                .zip(histogram.buckets)
                .chain(std::iter::once((f64::INFINITY, overflow)))
                .collect();
            family.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                histogram.sum,
                histogram.count,
                &buckets,
                None,
            )?;
        }

        for (name, help, map) in [
            (
                "sluice_upstream_connect_errors",
                "Failed connections to backend endpoints",
                &total.connect_errors,
            ),
            ("sluice_upstream_retries", "Requests retried on another endpoint", &total.retries),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort();
            for (backend, count) in entries {
                ConstCounter::new(*count)
                    .encode(family.encode_family(&[("backend", backend.to_string())])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "sluice_requests_denied",
            "Requests refused before reaching a backend, by route and reason",
            None,
            MetricType::Counter,
        )?;
        let mut denied: Vec<_> = total.denied.iter().collect();
        denied.sort();
        for ((route, why), count) in denied {
            let labels = [("route", route.to_string()), ("reason", why.name().to_owned())];
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "sluice_worker_active_connections",
            "Client connections open on each worker",
            None,
            MetricType::Gauge,
        )?;
        for (id, worker) in self.workers.iter().enumerate() {
            ConstGauge::new(worker.active_connections())
                .encode(family.encode_family(&[("worker", id.to_string())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sluice_worker_connections",
            "Client connections each worker accepted: with XDP, the share XDP steered to it",
            None,
            MetricType::Counter,
        )?;
        for (id, worker) in self.workers.iter().enumerate() {
            ConstCounter::new(worker.accepted())
                .encode(family.encode_family(&[("worker", id.to_string())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "sluice_proxy_protocol_refused",
            "Connections closed on PROXY protocol listeners for want of a valid header, by reason",
            None,
            MetricType::Counter,
        )?;
        for (i, reason) in PROXY_PROTOCOL_REASONS.iter().enumerate() {
            let total: u64 =
                self.workers.iter().map(|w| w.proxy_protocol_refused[i].load(Ordering::Relaxed)).sum();
            let total = total + L4_PROXY_PROTOCOL_REFUSED[i].load(Ordering::Relaxed);
            ConstCounter::new(total).encode(family.encode_family(&[("reason", (*reason).to_owned())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "sluice_l4_proxied_flows",
            "Flows of L4 services the node proxied in user space (TCP connections, new UDP flows), by protocol",
            None,
            MetricType::Counter,
        )?;
        for (i, protocol) in L4_PROXIED_PROTOCOLS.iter().enumerate() {
            ConstCounter::new(L4_PROXIED[i].load(Ordering::Relaxed))
                .encode(family.encode_family(&[("protocol", (*protocol).to_owned())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "sluice_mirrored_requests",
            "Mirrored copies of requests (routes' mirrors), by outcome",
            None,
            MetricType::Counter,
        )?;
        for (i, outcome) in MIRRORED_OUTCOMES.iter().enumerate() {
            let total: u64 = self.workers.iter().map(|w| w.mirrored[i].load(Ordering::Relaxed)).sum();
            ConstCounter::new(total).encode(family.encode_family(&[("outcome", (*outcome).to_owned())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "sluice_send_timeouts",
            "Connections closed because the client took no byte for limits.send_timeout_ms, by what they carried (tunnel: also the upstream side of a WebSocket)",
            None,
            MetricType::Counter,
        )?;
        for (i, kind) in SEND_TIMEOUT_KINDS.iter().enumerate() {
            let total: u64 = self.workers.iter().map(|w| w.send_timeouts[i].load(Ordering::Relaxed)).sum();
            ConstCounter::new(total).encode(family.encode_family(&[("kind", (*kind).to_owned())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "sluice_client_gone",
            "Requests abandoned because the client closed its connection or reset its stream before the response (access log status 499), their upstream request cancelled",
            None,
            MetricType::Counter,
        )?;
        for (i, protocol) in CLIENT_GONE_PROTOCOLS.iter().enumerate() {
            let total: u64 = self.workers.iter().map(|w| w.client_gone[i].load(Ordering::Relaxed)).sum();
            ConstCounter::new(total)
                .encode(family.encode_family(&[("protocol", (*protocol).to_owned())])?)?;
        }

        // Scrape-time sources, grouped by metric name so each family is described once.
        let mut samples: Vec<OwnedSample> = Vec::new();
        for source in &self.sources {
            source.samples(&mut |s| {
                samples.push(OwnedSample {
                    name: s.name.to_owned(),
                    help: s.help.to_owned(),
                    kind: s.kind,
                    unit: s.unit,
                    labels: s.labels,
                    value: s.value,
                });
            });
        }
        samples.sort_by(|a, b| a.name.cmp(&b.name));
        for group in samples.chunk_by(|a, b| a.name == b.name) {
            let first = &group[0];
            let mut family =
                encoder.encode_descriptor(&first.name, &first.help, first.unit.as_ref(), first.kind)?;
            for sample in group {
                match first.kind {
                    MetricType::Counter => ConstCounter::new(sample.value as u64)
                        .encode(family.encode_family(&sample.labels)?)?,
                    _ => ConstGauge::new(sample.value).encode(family.encode_family(&sample.labels)?)?,
                }
            }
        }
        nginx::encode(&total.nginx, &mut encoder)?;
        KUBE_API.encode(&mut encoder)
    }
}

/// The Kubernetes API client's troubles, counted by the provider's client (one per process,
/// hence process-wide) and rendered once the client has been used.
#[derive(Debug)]
pub struct KubeApiStats {
    used: std::sync::atomic::AtomicBool,
    /// 429, 503, 504 answers, each attempt (retries included).
    throttled: [AtomicU64; 3],
    /// Attempts abandoned at their deadline.
    timeouts: AtomicU64,
    /// 401 answers.
    unauthorized: AtomicU64,
    /// Watch events that changed only an object's status (the leader's own writes): no
    /// rebuild.
    status_only_changes: AtomicU64,
    /// Translations of the cluster state run (rebuilds).
    translations: AtomicU64,
    /// Notes of the last translation: what it left out or served otherwise than written.
    notes: AtomicU64,
}

pub static KUBE_API: KubeApiStats = KubeApiStats {
    used: std::sync::atomic::AtomicBool::new(false),
    throttled: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
    timeouts: AtomicU64::new(0),
    unauthorized: AtomicU64::new(0),
    status_only_changes: AtomicU64::new(0),
    translations: AtomicU64::new(0),
    notes: AtomicU64::new(0),
};

impl KubeApiStats {
    const THROTTLING: [u16; 3] = [429, 503, 504];

    pub fn throttled(&self, status: u16) {
        if let Some(i) = Self::THROTTLING.iter().position(|s| *s == status) {
            self.used.store(true, Ordering::Relaxed);
            self.throttled[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn timed_out(&self) {
        self.used.store(true, Ordering::Relaxed);
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unauthorized(&self) {
        self.used.store(true, Ordering::Relaxed);
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    pub fn status_only_change(&self) {
        self.status_only_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn translated(&self) {
        self.translations.fetch_add(1, Ordering::Relaxed);
    }

    /// The number of notes the last translation made.
    pub fn noted(&self, notes: usize) {
        self.notes.store(notes as u64, Ordering::Relaxed);
    }

    /// Marks the client as in use, so the counters are rendered (at zero) from the start.
    pub fn enable(&self) {
        self.used.store(true, Ordering::Relaxed);
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.used.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "sluice_kube_api_throttled",
            "Kubernetes API answers that ask to come back later (429, 503, 504), each attempt",
            None,
            MetricType::Counter,
        )?;
        for (status, count) in Self::THROTTLING.iter().zip(&self.throttled) {
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("status", status.to_string())])?)?;
        }
        let family = encoder.encode_descriptor(
            "sluice_kube_api_timeouts",
            "Kubernetes API request attempts abandoned at their deadline",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.timeouts.load(Ordering::Relaxed)).encode(family)?;
        let family = encoder.encode_descriptor(
            "sluice_kube_api_unauthorized",
            "Kubernetes API answers 401 Unauthorized (the credentials were refused)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.unauthorized.load(Ordering::Relaxed)).encode(family)?;
        let family = encoder.encode_descriptor(
            "sluice_kube_translations",
            "Translations of the watched cluster state into a configuration (rebuilds)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.translations.load(Ordering::Relaxed)).encode(family)?;
        let family = encoder.encode_descriptor(
            "sluice_kube_translation_notes",
            "What the last translation of the cluster state left out or served otherwise than written (skipped TCP/UDP services and Gateway listeners, ignored annotations, conflicts...), each logged once as a warning",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.notes.load(Ordering::Relaxed) as i64).encode(family)?;
        let family = encoder.encode_descriptor(
            "sluice_kube_status_only_changes",
            "Watch events that changed only an object's status (such as the leader's own status writes); no rebuild follows",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.status_only_changes.load(Ordering::Relaxed)).encode(family)
    }
}

/// Configuration reload outcomes, counted by the node that applies configurations; the admin
/// server reports them in `/metrics` and the status.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Unix seconds of the last successful reload (0 = none yet).
    pub last_success_unix: AtomicU64,
    /// Whether the last reload was refused.
    pub last_failed: std::sync::atomic::AtomicBool,
}

impl ReloadStats {
    pub fn record(&self, ok: bool) {
        self.last_failed.store(!ok, Ordering::Relaxed);
        if ok {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            self.last_success_unix.store(now, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Binary upgrades this process was asked for, by outcome (`sluice upgrade`, SIGUSR2).
#[derive(Debug, Default)]
pub struct UpgradeStats {
    /// Handed over to a new process that serves.
    pub succeeded: AtomicU64,
    /// The new process exited, failed or was not ready in time; this one served on.
    pub failed: AtomicU64,
    /// Asked while another upgrade was in progress.
    pub refused: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_from_several_workers_are_merged_and_rendered() {
        let metrics = Arc::new(Metrics::new(2));
        let (host, route): (Arc<str>, Arc<str>) = ("web".into(), "web/0".into());
        metrics.worker(0).request(&host, &route, 200, Duration::from_millis(3));
        metrics.worker(1).request(&host, &route, 204, Duration::from_millis(30));
        metrics.worker(1).request(&host, &route, 503, Duration::from_millis(1));
        metrics.worker(0).connection_opened();
        metrics.worker(0).denied(&route, Denial::SourceRange);
        metrics.worker(1).denied(&route, Denial::SourceRange);
        let text = metrics.render();
        assert!(
            text.contains(r#"sluice_requests_denied_total{route="web/0",reason="source_range"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_requests_total{host="web",route="web/0",status_class="2xx"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_requests_total{host="web",route="web/0",status_class="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_request_duration_seconds_count{host="web",route="web/0"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_request_duration_seconds_bucket{le="0.005",host="web",route="web/0"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_request_duration_seconds_bucket{le="+Inf",host="web",route="web/0"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"sluice_worker_active_connections{worker="0"} 1"#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
