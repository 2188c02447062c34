//! Leader election through a `coordination.k8s.io/v1` Lease, and the Ingress status the leader
//! writes.
//!
//! Election follows client-go: the Lease names its holder and a duration; a candidate takes it
//! over only when the holder has not renewed it for a whole duration *as observed locally*
//! (clocks of different nodes are never compared). Writes carry the Lease's resourceVersion, so
//! of two candidates racing, one gets 409 Conflict and stays a follower. A leader that cannot
//! renew for two thirds of the duration steps down on its own. On a clean stop the leader
//! releases the Lease (empty holder), so another instance takes over at its next try.
//!
//! Only the leader writes `.status.loadBalancer.ingress` of the Ingresses served: the
//! configured publish addresses, or the addresses of this node (ExternalIP, else InternalIP).
//! It writes only when the status differs, through the status subresource.

use std::{net::IpAddr, time::Duration};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Node,
        networking::v1::Ingress,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::reflector::{ObjectRef, Store},
};
use tokio::{sync::watch, time::Instant};

use super::IngressId;

/// Where the Lease lives, who we are, and what to publish.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    pub lease_namespace: String,
    pub lease_name: String,
    /// Unique per instance: the pod name in a cluster.
    pub identity: String,
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How often a follower tries to acquire.
    pub retry_every: Duration,
    /// Addresses (IPs or host names) to write into the Ingresses' status; when empty, the
    /// addresses of `node_name`.
    pub publish_addresses: Vec<String>,
    pub node_name: Option<String>,
}

impl Default for StatusOptions {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
        StatusOptions {
            lease_namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
            lease_name: "sluice-leader".into(),
            identity: std::env::var("POD_NAME").unwrap_or_else(|_| format!("{host}-{}", std::process::id())),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
            publish_addresses: Vec::new(),
            node_name: std::env::var("NODE_NAME").ok(),
        }
    }
}

impl StatusOptions {
    /// Derives the renew and retry periods from a lease duration (a third and a sixth of it).
    pub fn with_lease_duration(mut self, duration: Duration) -> StatusOptions {
        self.lease_duration = duration;
        self.renew_every = duration / 3;
        self.retry_every = (duration / 6).max(Duration::from_millis(100));
        self
    }
}

/// Campaigns for the Lease until `shutdown`; while leading, keeps the served Ingresses'
/// status up to date. Releases the Lease on the way out.
pub async fn run(
    client: Client,
    options: StatusOptions,
    ingresses: Store<Ingress>,
    mut served: watch::Receiver<Vec<IngressId>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut elector = Elector::new(client.clone(), options.clone());
    let mut publisher = Publisher::new(client, options.clone());
    loop {
        let was_leading = elector.leading;
        elector.campaign().await;
        match (was_leading, elector.leading) {
            (false, true) => {
                tracing::info!(identity = %options.identity, lease = %options.lease_name, "elected leader; writing Ingress status")
            }
            (true, false) => {
                tracing::warn!(identity = %options.identity, "no longer the leader; not writing Ingress status")
            }
            _ => {}
        }
        if elector.leading {
            let served = served.borrow_and_update().clone();
            publisher.publish(&ingresses, &served).await;
        }
        let pause = if elector.leading { options.renew_every } else { options.retry_every };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            r = served.changed(), if elector.leading => if r.is_err() { break },
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    elector.release().await;
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn log_api_error(what: &str, verb: &str, resource: &str, error: &kube::Error) {
    if status_code(error) == Some(403) {
        tracing::error!(verb, resource, error = %error, "RBAC: sluice may not {verb} {resource} ({what})");
    } else {
        tracing::warn!(error = %error, "{what} failed");
    }
}

struct Elector {
    api: Api<Lease>,
    options: StatusOptions,
    leading: bool,
    /// The Lease's resourceVersion as last seen, and when it was first seen locally.
    observed: Option<(String, Instant)>,
    /// When this instance last renewed successfully.
    renewed: Option<Instant>,
}

impl Elector {
    fn new(client: Client, options: StatusOptions) -> Elector {
        Elector {
            api: Api::namespaced(client, &options.lease_namespace),
            options,
            leading: false,
            observed: None,
            renewed: None,
        }
    }

    /// Still leading after a failed renewal, until two thirds of the duration have passed.
    fn keep_after_failure(&self) -> bool {
        self.leading && self.renewed.is_some_and(|r| r.elapsed() < self.options.lease_duration * 2 / 3)
    }

    async fn campaign(&mut self) {
        self.leading = match self.try_acquire_or_renew().await {
            Ok(leading) => leading,
            Err(e) => {
                log_api_error("leader election", "get/create/update", "leases.coordination.k8s.io", &e);
                self.keep_after_failure()
            }
        };
    }

    fn spec_for_us(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let ours =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.options.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.options.identity.clone()),
            lease_duration_seconds: Some(self.options.lease_duration.as_secs().max(1) as i32),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                previous.and_then(|p| p.lease_transitions).unwrap_or(0)
                    + i32::from(previous.is_some() && !ours),
            ),
            ..LeaseSpec::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let name = self.options.lease_name.clone();
        let Some(lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name), ..ObjectMeta::default() },
                spec: Some(self.spec_for_us(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.renewed = Some(Instant::now());
                    Ok(true)
                }
                Err(e) if status_code(&e) == Some(409) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let now = Instant::now();
        if self.observed.as_ref().is_none_or(|(v, _)| *v != version) {
            self.observed = Some((version, now));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let duration = spec
            .lease_duration_seconds
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or(self.options.lease_duration);
        let observed_at = self.observed.as_ref().map(|(_, at)| *at).unwrap_or(now);
        if let Some(holder) = holder
            && holder != self.options.identity
            && now < observed_at + duration
        {
            return Ok(false);
        }
        let mut renewed = lease.clone();
        renewed.spec = Some(self.spec_for_us(Some(&spec)));
        match self.api.replace(&self.options.lease_name, &PostParams::default(), &renewed).await {
            Ok(_) => {
                self.renewed = Some(Instant::now());
                Ok(true)
            }
            Err(e) if status_code(&e) == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (empty holder) if we hold it, so another instance takes over at its
    /// next try instead of after the lease duration.
    async fn release(&mut self) {
        if !self.leading {
            return;
        }
        let Ok(Some(mut lease)) = self.api.get_opt(&self.options.lease_name).await else { return };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.options.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        match self.api.replace(&self.options.lease_name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(identity = %self.options.identity, "leadership released"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the leader Lease; another instance takes over when it expires")
            }
        }
        self.leading = false;
    }
}

/// Writes the Ingresses' load-balancer status.
struct Publisher {
    client: Client,
    options: StatusOptions,
    /// Node addresses, and when they were read.
    node_addresses: Option<(Vec<String>, Instant)>,
    warned_nothing: bool,
}

impl Publisher {
    fn new(client: Client, options: StatusOptions) -> Publisher {
        Publisher { client, options, node_addresses: None, warned_nothing: false }
    }

    async fn addresses(&mut self) -> Vec<String> {
        if !self.options.publish_addresses.is_empty() {
            return self.options.publish_addresses.clone();
        }
        let Some(node_name) = self.options.node_name.clone() else { return Vec::new() };
        if let Some((addresses, read)) = &self.node_addresses
            && read.elapsed() < Duration::from_secs(60)
        {
            return addresses.clone();
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let addresses = match api.get(&node_name).await {
            Ok(node) => {
                let all = node.status.and_then(|s| s.addresses).unwrap_or_default();
                let of = |kind: &str| -> Vec<String> {
                    all.iter().filter(|a| a.type_ == kind).map(|a| a.address.clone()).collect()
                };
                let external = of("ExternalIP");
                if external.is_empty() { of("InternalIP") } else { external }
            }
            Err(e) => {
                log_api_error("reading this node's addresses", "get", "nodes", &e);
                Vec::new()
            }
        };
        self.node_addresses = Some((addresses.clone(), Instant::now()));
        addresses
    }

    async fn publish(&mut self, ingresses: &Store<Ingress>, served: &[IngressId]) {
        let addresses = self.addresses().await;
        if addresses.is_empty() {
            if !self.warned_nothing {
                tracing::warn!(
                    "no publish address and no node address known; Ingress status is not written (set --publish-address)"
                );
                self.warned_nothing = true;
            }
            return;
        }
        let desired: Vec<serde_json::Value> = addresses
            .iter()
            .map(|a| match a.parse::<IpAddr>() {
                Ok(_) => serde_json::json!({"ip": a}),
                Err(_) => serde_json::json!({"hostname": a}),
            })
            .collect();
        for id in served {
            let Some(ingress) = ingresses.get(&ObjectRef::new(&id.name).within(&id.namespace)) else {
                continue;
            };
            let current = ingress
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .map(|list| serde_json::to_value(list).unwrap_or_default())
                .unwrap_or(serde_json::json!([]));
            if current == serde_json::Value::Array(desired.clone()) {
                continue;
            }
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &id.namespace);
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": desired}}});
            match api.patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => tracing::debug!(ingress = %id, "status written"),
                Err(e) => log_api_error("writing Ingress status", "patch", "ingresses/status", &e),
            }
        }
    }
}
