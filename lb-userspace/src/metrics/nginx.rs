//! ingress-nginx's request series (`nginx_ingress_controller_*`, its `SocketCollector`), when
//! the configuration's `nginx_metrics` asks for them: dashboards and alerts built on them keep
//! working. Labels as ingress-nginx's with `--metrics-per-host` (its default): `status` (the
//! code), `method`, `path` (the Ingress path), `namespace`, `ingress`, `service`, `canary`,
//! `host`, plus its constant `controller_namespace`, `controller_class`, `controller_pod`.
//! Buckets are its defaults (`--time-buckets`, `--length-buckets`, `--size-buckets`).
//!
//! A request is recorded when its response body ends (or is dropped), into its worker's map
//! under the worker's own lock, as the other request counters; the scrape merges the workers.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use super::WorkerMetrics;

/// `prometheus.DefBuckets`: `request_duration_seconds`, `response_duration_seconds`.
pub const TIME_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// `prometheus.LinearBuckets(10, 10, 10)`: `request_size`, `response_size`.
pub const LENGTH_BUCKETS: [f64; 10] = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];
/// `prometheus.ExponentialBuckets(10, 10, 7)`: `bytes_sent`.
pub const SIZE_BUCKETS: [f64; 7] = [10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];

/// The controller value ingress-nginx's dashboards see as `controller_class`.
pub const CONTROLLER_CLASS: &str = "sluice.dev/ingress-controller";

/// The labels a request takes from its route, made once per route when a configuration is
/// compiled. Hashed by a digest made then, so recording hashes one number.
#[derive(Debug)]
pub struct RouteSeries {
    digest: u64,
    pub namespace: Arc<str>,
    pub ingress: Arc<str>,
    pub service: Arc<str>,
    pub path: Arc<str>,
    /// The virtual host's name (bounded by the configuration, never the raw Host header).
    pub host: Arc<str>,
}

impl RouteSeries {
    pub fn new(namespace: &str, ingress: &str, service: &str, path: &str, host: &str) -> RouteSeries {
        use std::hash::{Hash, Hasher};
        // Fixed keys: equal labels digest alike in every snapshot.
        let mut hasher = std::hash::DefaultHasher::new();
        (namespace, ingress, service, path, host).hash(&mut hasher);
        RouteSeries {
            digest: hasher.finish(),
            namespace: namespace.into(),
            ingress: ingress.into(),
            service: service.into(),
            path: path.into(),
            host: host.into(),
        }
    }

    fn labels(&self) -> (&str, &str, &str, &str, &str) {
        (&self.namespace, &self.ingress, &self.service, &self.path, &self.host)
    }
}

impl std::hash::Hash for RouteSeries {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

impl PartialEq for RouteSeries {
    fn eq(&self, other: &RouteSeries) -> bool {
        self.digest == other.digest && self.labels() == other.labels()
    }
}

impl Eq for RouteSeries {}

/// One series: a route's labels, the method and the status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    route: Arc<RouteSeries>,
    method: &'static str,
    status: u16,
}

/// Counts per bucket (the encoder accumulates them), the count and the sum.
#[derive(Clone, Debug)]
struct Buckets<const N: usize> {
    counts: [u64; N],
    count: u64,
    sum: f64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Buckets { counts: [0; N], count: 0, sum: 0.0 }
    }
}

impl<const N: usize> Buckets<N> {
    fn observe(&mut self, bounds: &[f64; N], value: f64) {
        self.count += 1;
        self.sum += value;
        if let Some(i) = bounds.iter().position(|&le| value <= le) {
            self.counts[i] += 1;
        }
    }

    fn merge(&mut self, other: &Buckets<N>) {
        self.count += other.count;
        self.sum += other.sum;
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }

    fn encode(
        &self,
        bounds: &[f64; N],
        family: &mut prometheus_client::encoding::MetricEncoder<'_>,
        labels: &[(&str, &str)],
    ) -> Result<(), std::fmt::Error> {
        let overflow = self.count - self.counts.iter().sum::<u64>();
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .zip(self.counts)
            .chain(std::iter::once((f64::INFINITY, overflow)))
            .collect();
        family
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(self.sum, self.count, &buckets, None)
    }
}

/// Everything recorded for one series.
#[derive(Clone, Debug, Default)]
pub(super) struct Series {
    requests: u64,
    duration: Buckets<11>,
    upstream_duration: Buckets<11>,
    request_size: Buckets<10>,
    response_size: Buckets<10>,
    bytes_sent: Buckets<7>,
}

impl Series {
    pub(super) fn merge(&mut self, other: &Series) {
        self.requests += other.requests;
        self.duration.merge(&other.duration);
        self.upstream_duration.merge(&other.upstream_duration);
        self.request_size.merge(&other.request_size);
        self.response_size.merge(&other.response_size);
        self.bytes_sent.merge(&other.bytes_sent);
    }
}

/// A request being answered; recorded on its worker when dropped (the response body ended or
/// was dropped).
#[derive(Debug)]
pub struct NginxRequest {
    worker: Arc<WorkerMetrics>,
    key: Key,
    started: Instant,
    /// Whether a backend answered (only those have a `response_duration_seconds`).
    upstream: bool,
    /// The request head and body length; the response head length, then the body's bytes.
    request_bytes: u64,
    sent: u64,
}

impl NginxRequest {
    pub fn new(
        worker: Arc<WorkerMetrics>,
        route: Arc<RouteSeries>,
        method: &'static str,
        started: Instant,
        request_bytes: u64,
    ) -> NginxRequest {
        let key = Key { route, method, status: 0 };
        NginxRequest { worker, key, started, upstream: false, request_bytes, sent: 0 }
    }

    /// The response's status, whether a backend gave it, and its head's length.
    pub fn answered(&mut self, status: u16, upstream: bool, head_bytes: u64) {
        self.key.status = status;
        self.upstream = upstream;
        self.sent = head_bytes;
    }

    /// Response body bytes sent.
    pub fn sent(&mut self, bytes: u64) {
        self.sent += bytes;
    }
}

impl Drop for NginxRequest {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        self.worker.nginx_request(
            &self.key,
            elapsed,
            self.upstream.then_some(elapsed),
            self.request_bytes,
            self.sent,
        );
    }
}

impl WorkerMetrics {
    fn nginx_request(
        &self,
        key: &Key,
        duration: Duration,
        upstream: Option<Duration>,
        received: u64,
        sent: u64,
    ) {
        let mut counters = self.counters.lock();
        let series = match counters.nginx.get_mut(key) {
            Some(series) => series,
            None => counters.nginx.entry(key.clone()).or_default(),
        };
        series.requests += 1;
        series.duration.observe(&TIME_BUCKETS, duration.as_secs_f64());
        if let Some(upstream) = upstream {
            series.upstream_duration.observe(&TIME_BUCKETS, upstream.as_secs_f64());
        }
        series.request_size.observe(&LENGTH_BUCKETS, received as f64);
        series.response_size.observe(&LENGTH_BUCKETS, sent as f64);
        series.bytes_sent.observe(&SIZE_BUCKETS, sent as f64);
    }
}

/// nginx passes any method; here the registered ones, others as `OTHER` (a client cannot
/// make series without bound).
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    for known in [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ] {
        if *method == known {
            return match known {
                Method::GET => "GET",
                Method::HEAD => "HEAD",
                Method::POST => "POST",
                Method::PUT => "PUT",
                Method::DELETE => "DELETE",
                Method::OPTIONS => "OPTIONS",
                Method::PATCH => "PATCH",
                Method::CONNECT => "CONNECT",
                _ => "TRACE",
            };
        }
    }
    "OTHER"
}

/// The length of a request's head as sent in HTTP/1.1, plus its declared body (nginx's
/// `request_length`; a chunked body is not counted).
pub fn request_head_bytes<B>(request: &http::Request<B>) -> u64 {
    // `METHOD TARGET HTTP/1.1\r\n`
    let line =
        request.method().as_str().len() + request.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    let body = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    (line + fields_bytes(request.headers())) as u64 + body
}

/// The length of a response's head as sent in HTTP/1.1 (nginx's `bytes_sent` counts it).
pub fn response_head_bytes<B>(response: &http::Response<B>) -> u64 {
    let reason = response.status().canonical_reason().map_or(0, str::len);
    (13 + reason + 2 + fields_bytes(response.headers())) as u64
}

/// `name: value\r\n` each, and the empty line.
fn fields_bytes(fields: &http::HeaderMap) -> usize {
    fields.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>() + 2
}

/// ingress-nginx's constant labels: the pod and its namespace (POD_NAME, POD_NAMESPACE; the
/// host name when unset) and the controller.
fn controller_labels() -> &'static [(&'static str, String); 3] {
    static LABELS: OnceLock<[(&'static str, String); 3]> = OnceLock::new();
    LABELS.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
        [
            ("controller_namespace", std::env::var("POD_NAMESPACE").unwrap_or_default()),
            ("controller_class", CONTROLLER_CLASS.to_owned()),
            ("controller_pod", std::env::var("POD_NAME").unwrap_or(host)),
        ]
    })
}

/// The constant labels, for the scrape-time series of the same set.
pub fn constant_labels() -> Vec<(&'static str, String)> {
    controller_labels().to_vec()
}

/// A series' labels: namespace, ingress, service, path, host, method, status.
type Row<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str, u16);

/// Renders the merged series (nothing when none was recorded).
pub(super) fn encode(
    merged: &crate::FastMap<Key, Series>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    if merged.is_empty() {
        return Ok(());
    }
    // Series of equal labels from different snapshots' routes are one.
    let mut rows: std::collections::BTreeMap<Row<'_>, Series> = std::collections::BTreeMap::new();
    for (key, series) in merged {
        let (namespace, ingress, service, path, host) = key.route.labels();
        let row = (namespace, ingress, service, path, host, key.method, key.status);
        rows.entry(row).or_default().merge(series);
    }
    let constant = controller_labels();
    let status_texts: Vec<String> = rows.keys().map(|k| k.6.to_string()).collect();
    let label_sets: Vec<Vec<(&str, &str)>> = rows
        .keys()
        .zip(&status_texts)
        .map(|(k, status)| {
            let mut labels: Vec<(&str, &str)> = constant.iter().map(|(n, v)| (*n, v.as_str())).collect();
            labels.extend([
                ("status", status.as_str()),
                ("method", k.5),
                ("path", k.3),
                ("namespace", k.0),
                ("ingress", k.1),
                ("service", k.2),
                ("canary", ""),
                ("host", k.4),
            ]);
            labels
        })
        .collect();
    let series: Vec<&Series> = rows.values().collect();

    // Typed `unknown`: an OpenMetrics counter's sample takes `_total`, and the dashboards ask
    // for ingress-nginx's name as it is.
    let mut family = encoder.encode_descriptor(
        "nginx_ingress_controller_requests",
        "The total number of client requests",
        None,
        MetricType::Unknown,
    )?;
    for (labels, s) in label_sets.iter().zip(&series) {
        ConstGauge::new(s.requests as i64).encode(family.encode_family(labels)?)?;
    }
    let rows: Vec<(&[(&str, &str)], &Series)> = label_sets.iter().map(Vec::as_slice).zip(series).collect();
    let time = |pick: fn(&Series) -> &Buckets<11>| rows.iter().map(move |(l, s)| (*l, pick(s)));
    histogram(
        encoder,
        "nginx_ingress_controller_request_duration_seconds",
        "The request processing time in seconds",
        &TIME_BUCKETS,
        time(|s| &s.duration),
    )?;
    let upstream = time(|s| &s.upstream_duration).filter(|(_, h)| h.count > 0);
    histogram(
        encoder,
        "nginx_ingress_controller_response_duration_seconds",
        "The time spent on receiving the response from the upstream server",
        &TIME_BUCKETS,
        upstream,
    )?;
    let length = |pick: fn(&Series) -> &Buckets<10>| rows.iter().map(move |(l, s)| (*l, pick(s)));
    histogram(
        encoder,
        "nginx_ingress_controller_request_size",
        "The request length (including request line, header, and request body)",
        &LENGTH_BUCKETS,
        length(|s| &s.request_size),
    )?;
    histogram(
        encoder,
        "nginx_ingress_controller_response_size",
        "The response length (including request line, header, and request body)",
        &LENGTH_BUCKETS,
        length(|s| &s.response_size),
    )?;
    let sent = rows.iter().map(|(l, s)| (*l, &s.bytes_sent));
    histogram(
        encoder,
        "nginx_ingress_controller_bytes_sent",
        "The number of bytes sent to a client",
        &SIZE_BUCKETS,
        sent,
    )
}

/// One histogram family.
fn histogram<'a, const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64; N],
    rows: impl Iterator<Item = (&'a [(&'a str, &'a str)], &'a Buckets<N>)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, buckets) in rows {
        buckets.encode(bounds, &mut family, labels)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn requests_are_rendered_with_ingress_nginx_names_labels_and_buckets() {
        let metrics = Arc::new(Metrics::new(2));
        let route = Arc::new(RouteSeries::new("shop", "web", "front", "/api", "shop.test"));
        // Equal labels from another snapshot's route are the same series.
        let again = Arc::new(RouteSeries::new("shop", "web", "front", "/api", "shop.test"));
        let started = Instant::now() - Duration::from_millis(30);
        let mut first = NginxRequest::new(metrics.worker(0), route, "GET", started, 45);
        first.answered(200, true, 60);
        first.sent(1000);
        drop(first);
        let mut second = NginxRequest::new(metrics.worker(1), again, "GET", started, 5);
        second.answered(200, false, 30);
        drop(second);
        let text = metrics.render();
        let labels = |status: &str| {
            format!(
                "status=\"{status}\",method=\"GET\",path=\"/api\",namespace=\"shop\",ingress=\"web\",service=\"front\",canary=\"\",host=\"shop.test\""
            )
        };
        assert!(text.contains("# TYPE nginx_ingress_controller_requests unknown\n"), "{text}");
        assert!(text.contains("\nnginx_ingress_controller_requests{controller_namespace="), "{text}");
        assert!(text.contains(&format!("{}}} 2\n", labels("200"))), "{text}");
        assert!(
            text.contains("nginx_ingress_controller_request_duration_seconds_bucket{le=\"0.025\","),
            "{text}"
        );
        assert!(
            text.contains("nginx_ingress_controller_request_duration_seconds_count{controller_namespace="),
            "{text}"
        );
        // Only the upstream's answer has a response duration.
        let upstream = text
            .lines()
            .find(|l| l.starts_with("nginx_ingress_controller_response_duration_seconds_count"))
            .unwrap();
        assert!(upstream.ends_with(" 1"), "{upstream}");
        // Sizes: 45 and 5 bytes received; 1060 and 30 sent (head included).
        let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).unwrap().to_owned();
        assert!(line("nginx_ingress_controller_request_size_sum").ends_with(" 50.0"), "{text}");
        assert!(line("nginx_ingress_controller_response_size_sum").ends_with(" 1090.0"), "{text}");
        assert!(line("nginx_ingress_controller_bytes_sent_bucket{le=\"10000.0\"").ends_with(" 2"), "{text}");
        assert!(line("nginx_ingress_controller_request_size_bucket{le=\"10.0\"").ends_with(" 1"), "{text}");
    }

    #[test]
    fn heads_are_measured_as_sent_and_odd_methods_are_one_label() {
        let request =
            http::Request::post("/a?b").header("host", "x").header("content-length", "10").body(()).unwrap();
        // "POST /a?b HTTP/1.1\r\n" (20) + "host: x\r\n" (9) + "content-length: 10\r\n" (20) + "\r\n" + 10.
        assert_eq!(request_head_bytes(&request), 20 + 9 + 20 + 2 + 10);
        let response = http::Response::builder().status(404).header("a", "b").body(()).unwrap();
        // "HTTP/1.1 404 Not Found\r\n" (24) + "a: b\r\n" (6) + "\r\n".
        assert_eq!(response_head_bytes(&response), 24 + 6 + 2);
        assert_eq!(method_label(&http::Method::from_bytes(b"PURGE").unwrap()), "OTHER");
        assert_eq!(method_label(&http::Method::PATCH), "PATCH");
    }
}
