//! Scrape-time metric sources: state that lives outside the workers' counters (endpoint
//! health, the XDP counters, reload outcomes), read when `/metrics` is scraped.

use std::sync::{Arc, atomic::Ordering};

use lb_common::Stat;
use prometheus_client::{metrics::MetricType, registry::Unit};

use crate::{
    dataplane::CountersReader,
    metrics::{ReloadStats, Sample, ScrapeSource},
    now_ms,
    proxy::snapshot::Published,
};

/// Health and load of every endpoint in the current snapshot.
#[derive(Clone)]
pub struct Endpoints(pub Published);

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Endpoints")
    }
}

impl ScrapeSource for Endpoints {
    fn samples(&self, emit: &mut dyn FnMut(Sample)) {
        let snapshot = self.0.load();
        let now = now_ms();
        for group in &snapshot.backends {
            for endpoint in &group.endpoints {
                let labels =
                    vec![("backend", group.name.clone()), ("endpoint", endpoint.address.to_string())];
                emit(Sample {
                    name: "sluice_endpoint_healthy",
                    help: "1 when the endpoint may take requests (ready, passing checks, not ejected)",
                    kind: MetricType::Gauge,
                    unit: None,
                    labels: labels.clone(),
                    value: f64::from(u8::from(endpoint.is_available(now))),
                });
                emit(Sample {
                    name: "sluice_endpoint_inflight_requests",
                    help: "Requests in flight to the endpoint, across workers",
                    kind: MetricType::Gauge,
                    unit: None,
                    labels,
                    value: f64::from(endpoint.inflight()),
                });
            }
        }
        emit(Sample {
            name: "sluice_config_generation",
            help: "Generation of the serving configuration (increases with each applied reload)",
            kind: MetricType::Gauge,
            unit: None,
            labels: Vec::new(),
            value: snapshot.generation as f64,
        });
    }
}

/// The XDP per-CPU counters, summed.
pub struct Xdp(pub CountersReader);

impl std::fmt::Debug for Xdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Xdp")
    }
}

impl ScrapeSource for Xdp {
    fn samples(&self, emit: &mut dyn FnMut(Sample)) {
        let Ok(counters) = self.0.read() else { return };
        for (stat, value) in counters.iter() {
            let (name, help, labels) = match stat {
                Stat::Packets => ("sluice_xdp_packets", "Frames the XDP program saw", vec![]),
                Stat::Bytes => ("sluice_xdp_bytes", "Bytes of the frames the XDP program saw", vec![]),
                Stat::Steered => ("sluice_xdp_steered", "Frames steered to a worker's port", vec![]),
                Stat::NewFlows => {
                    ("sluice_xdp_new_flows", "Connections placed through the Maglev table", vec![])
                }
                Stat::ConntrackHits => {
                    ("sluice_xdp_conntrack_hits", "Packets that followed their flow entry", vec![])
                }
                Stat::ConntrackInsertFailed => (
                    "sluice_xdp_conntrack_insert_failures",
                    "Flows steered without a conntrack entry",
                    vec![],
                ),
                Stat::EgressRestored => {
                    ("sluice_tc_egress_restored", "Replies whose service port TC egress restored", vec![])
                }
                Stat::L4Forwarded => {
                    ("sluice_xdp_l4_forwarded", "L4 service packets XDP sent to an endpoint", vec![])
                }
                Stat::L4Replied => {
                    ("sluice_xdp_l4_replied", "L4 endpoint replies XDP sent back to the client", vec![])
                }
                Stat::L4IcmpReplied => (
                    "sluice_xdp_l4_icmp_replied",
                    "ICMP errors about L4 flows XDP sent back to the client",
                    vec![],
                ),
                Stat::L4NewFlows => {
                    ("sluice_xdp_l4_new_flows", "L4 flows placed through the Maglev table", vec![])
                }
                Stat::DropNoWorker
                | Stat::DropL4NoBackend
                | Stat::DropL4NoPort
                | Stat::DropBadWorker
                | Stat::DropDeny
                | Stat::DropNotAllowed
                | Stat::DropSynRate
                | Stat::DropUdpRate => (
                    "sluice_xdp_dropped",
                    "Frames XDP dropped, by reason",
                    vec![("reason", stat.name().to_owned())],
                ),
                _ => (
                    "sluice_xdp_passed",
                    "Frames XDP passed untouched, by reason",
                    vec![("reason", stat.name().to_owned())],
                ),
            };
            emit(Sample { name, help, kind: MetricType::Counter, unit: None, labels, value: value as f64 });
        }
    }
}

/// Configuration reload outcomes.
#[derive(Debug)]
pub struct Reloads(pub Arc<ReloadStats>);

/// Binary upgrade outcomes.
#[derive(Debug)]
pub struct Upgrades(pub Arc<crate::metrics::UpgradeStats>);

impl ScrapeSource for Upgrades {
    fn samples(&self, emit: &mut dyn FnMut(Sample)) {
        for (outcome, value) in [
            ("ok", self.0.succeeded.load(Ordering::Relaxed)),
            ("failed", self.0.failed.load(Ordering::Relaxed)),
            ("refused", self.0.refused.load(Ordering::Relaxed)),
        ] {
            emit(Sample {
                name: "sluice_upgrades",
                help: "Binary upgrades this process was asked for: handed over (ok), the new process failed (failed), refused during another (refused)",
                kind: MetricType::Counter,
                unit: None,
                labels: vec![("outcome", outcome.to_owned())],
                value: value as f64,
            });
        }
    }
}

impl ScrapeSource for Reloads {
    fn samples(&self, emit: &mut dyn FnMut(Sample)) {
        for (result, value) in [
            ("ok", self.0.succeeded.load(Ordering::Relaxed)),
            ("failed", self.0.failed.load(Ordering::Relaxed)),
        ] {
            emit(Sample {
                name: "sluice_config_reloads",
                help: "Configuration reloads, applied (ok) or refused (failed)",
                kind: MetricType::Counter,
                unit: None,
                labels: vec![("result", result.to_owned())],
                value: value as f64,
            });
        }
        emit(Sample {
            name: "sluice_config_last_reload_success_timestamp",
            help: "When the last reload was applied (0 before any)",
            kind: MetricType::Gauge,
            unit: Some(Unit::Seconds),
            labels: Vec::new(),
            value: self.0.last_success_unix.load(Ordering::Relaxed) as f64,
        });
    }
}

/// ingress-nginx's controller series that its dashboards read their variables and reload
/// panels from, when the configuration asks for its series (`nginx_metrics`):
/// `config_hash` (here the configuration's generation), `config_last_reload_successful`,
/// `config_last_reload_successful_timestamp_seconds` and `success` (reloads applied).
#[derive(Clone)]
pub struct NginxReloads(pub Published, pub Arc<ReloadStats>);

impl std::fmt::Debug for NginxReloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NginxReloads")
    }
}

impl ScrapeSource for NginxReloads {
    fn samples(&self, emit: &mut dyn FnMut(Sample)) {
        let snapshot = self.0.load();
        if !snapshot.config.nginx_metrics {
            return;
        }
        let labels = crate::metrics::nginx::constant_labels();
        let reloads = &self.1;
        let samples = [
            (
                "nginx_ingress_controller_config_hash",
                "Running configuration hash actually running (here its generation)",
                snapshot.generation as f64,
            ),
            (
                "nginx_ingress_controller_config_last_reload_successful",
                "Whether the last configuration reload attempt was successful",
                f64::from(u8::from(!reloads.last_failed.load(Ordering::Relaxed))),
            ),
            (
                "nginx_ingress_controller_config_last_reload_successful_timestamp_seconds",
                "Timestamp of the last successful configuration reload",
                reloads.last_success_unix.load(Ordering::Relaxed) as f64,
            ),
            // `unknown`, not a counter, so its sample keeps ingress-nginx's name (no `_total`).
            (
                "nginx_ingress_controller_success",
                "Cumulative number of Ingress controller reload operations",
                reloads.succeeded.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, value) in samples {
            let kind = if name.ends_with("_success") { MetricType::Unknown } else { MetricType::Gauge };
            emit(Sample { name, help, kind, unit: None, labels: labels.clone(), value });
        }
    }
}

/// TLS handshakes (completed, resumed, failed by reason) and certificate expiry.
#[derive(Clone)]
pub struct Tls(pub Published);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl ScrapeSource for Tls {
    fn samples(&self, emit: &mut dyn FnMut(Sample)) {
        let counts = crate::tls::handshake_counts();
        for (kind, value) in [
            ("completed", counts.completed),
            ("resumed", counts.resumed),
            ("passthrough", counts.passthrough),
            ("passthrough_failed", counts.passthrough_failed),
        ] {
            emit(Sample {
                name: "sluice_tls_handshakes",
                help: "TLS handshakes by outcome (resumed ones are also completed)",
                kind: MetricType::Counter,
                unit: None,
                labels: vec![("outcome", kind.to_owned())],
                value: value as f64,
            });
        }
        for (reason, value) in crate::tls::handshake_failures() {
            emit(Sample {
                name: "sluice_tls_handshake_failures",
                help: "TLS handshakes that failed, by reason",
                kind: MetricType::Counter,
                unit: None,
                labels: vec![("reason", reason.to_owned())],
                value: value as f64,
            });
        }
        let snapshot = self.0.load();
        for (name, not_after) in snapshot.tls.certificate_expiry() {
            emit(Sample {
                name: "sluice_certificate_expiry_timestamp",
                help: "When each configured certificate expires",
                kind: MetricType::Gauge,
                unit: Some(Unit::Seconds),
                labels: vec![("certificate", name.clone())],
                value: *not_after as f64,
            });
        }
    }
}
