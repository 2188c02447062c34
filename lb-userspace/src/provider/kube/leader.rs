//! Leader election through a `coordination.k8s.io/v1` Lease, and the Ingress status the leader
//! writes.
//!
//! Election follows client-go: the Lease names its holder and a duration; a candidate takes it
//! over only when the holder has not renewed it for a whole duration *as observed locally*
//! (clocks of different nodes are never compared). Writes carry the Lease's resourceVersion, so
//! of two candidates racing, one gets 409 Conflict and stays a follower. On a clean stop the
//! leader releases the Lease (empty holder), so another instance takes over at its next try.
//!
//! The leader keeps its own clock: its lease is good until two thirds of the duration after it
//! *sent* its last successful renewal (others wait a whole duration from when they *saw* it,
//! which is later). Past that deadline it stops writing status at once: a renewal still in
//! flight is abandoned at the deadline, and no status write starts after it or runs past it,
//! however slow or stuck the API calls are. A renewal whose write landed but whose answer was
//! lost (a 504, then a retry that meets 409 against its own write) is recognised by re-reading
//! the Lease: our identity and the renew time we sent mean the renewal took.
//!
//! Only the leader writes `.status.loadBalancer.ingress` of the Ingresses served: the
//! configured publish addresses (checked at start: an IP address or a DNS-1123 name), else the
//! addresses of the `--publish-service` Service ([`publish_service`]), else the addresses of
//! this node (ExternalIP, else InternalIP), in ingress-nginx's order of precedence. It writes only when the status
//! differs, through the status subresource, and each write names the Ingress's
//! resourceVersion as read: Kubernetes has no precondition across objects, so instead of
//! re-reading the Lease before each write (a GET per write that still leaves a window) the
//! write is conditional on the Ingress itself. A late write of an old leader whose lease ran
//! out while the write was in flight meets 409 if the new leader has written since, so it can
//! never overwrite the newer status.
//!
//! The leader also writes the Events on Ingresses ([`super::events`]), under the same deadline.

use std::{net::IpAddr, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Node,
        networking::v1::{Ingress, IngressLoadBalancerIngress},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::reflector::{ObjectRef, Store},
};
use tokio::{sync::watch, time::Instant};

use super::{IngressId, events::Recorder, translate::Note};

mod gateway_status;
mod publish_service;
pub use gateway_status::GatewayStatusWriter;
pub use publish_service::{Published, published};

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
    /// `NAMESPACE/NAME` of a Service whose addresses are written instead of the node's
    /// (`--publish-service`; the publish addresses win, as in ingress-nginx).
    pub publish_service: Option<String>,
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
            publish_service: None,
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

/// What the status writer reads: the Ingresses, which of them are served, the translation's
/// notes, and the `--publish-service` Service's addresses (kept by the provider from its
/// Service store; changes wake the leader).
pub struct StatusInputs {
    pub ingresses: Store<Ingress>,
    pub served: watch::Receiver<Vec<IngressId>>,
    pub notes: watch::Receiver<Arc<Vec<Note>>>,
    pub published: watch::Receiver<Published>,
}

/// Campaigns for the Lease until `shutdown`; while leading, keeps the served Ingresses'
/// status up to date. Releases the Lease on the way out, unless the process handed over to an
/// upgrade's new process (same identity), which keeps it.
pub async fn run(
    client: Client,
    options: StatusOptions,
    inputs: StatusInputs,
    mut gateway: GatewayStatusWriter,
    mut shutdown: watch::Receiver<super::Stop>,
) {
    let StatusInputs { ingresses, mut served, mut notes, mut published } = inputs;
    let mut elector = Elector::new(client.clone(), options.clone());
    let mut recorder = Recorder::new(client.clone(), options.identity.clone());
    let mut publisher = Publisher::new(client, options.clone());
    // What woke the last round: a change of the served set alone writes only the Ingresses
    // served since the last round (visiting all of a large cluster after every change was a
    // sixth of the process's time); every other round, timed or not, visits every one, so a
    // write that failed or a status someone else changed is seen within a renewal period.
    let mut only_newly_served = false;
    let mut last_served: Vec<IngressId> = Vec::new();
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
        if elector.may_write() {
            let served = served.borrow_and_update().clone();
            let published = published.borrow_and_update().clone();
            let desired = publisher.desired(&elector, published).await;
            if let Some(desired) = &desired {
                let newly;
                let to_check = match only_newly_served {
                    true => {
                        newly = newly_served(&served, &last_served);
                        &newly
                    }
                    false => &served,
                };
                publisher.publish(&elector, &ingresses, to_check, desired).await;
            }
            let addresses: Vec<String> = desired
                .iter()
                .flatten()
                .filter_map(|a| a.ip.clone().or_else(|| a.hostname.clone()))
                .collect();
            gateway.publish(&elector, &addresses).await;
            // Events only from the leader, within its deadline as status writes.
            let notes = notes.borrow_and_update().clone();
            // At most half a renewal period, so the next renewal starts in time.
            if let Some(deadline) = elector.deadline()
                && !only_newly_served
            {
                let stop = deadline.min(Instant::now() + options.renew_every / 2);
                recorder.record(&ingresses, &served, &notes, stop).await;
            }
            last_served = served;
        }
        let pause = if elector.leading { options.renew_every } else { options.retry_every };
        only_newly_served = false;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            r = served.changed(), if elector.leading => {
                if r.is_err() { break }
                // The translator sends its notes before the served set: a change of both is
                // a full round (its Events are written now).
                only_newly_served = !notes.has_changed().unwrap_or(true) && !published.has_changed().unwrap_or(true);
            }
            r = gateway.changed(), if elector.leading => if !r { break },
            r = notes.changed(), if elector.leading => if r.is_err() { break },
            r = published.changed(), if elector.leading => if r.is_err() { break },
            _ = shutdown.wait_for(super::Stop::stopping) => break,
        }
    }
    if *shutdown.borrow() == super::Stop::HandedOver {
        if elector.leading {
            tracing::info!(identity = %options.identity, "handed over: the Lease stays with the new process, which renews it");
        }
    } else {
        elector.release().await;
    }
}

/// The Ingresses in `served` that are not in `before` (both sorted).
fn newly_served(served: &[IngressId], before: &[IngressId]) -> Vec<IngressId> {
    let mut before = before.iter().peekable();
    let mut new = Vec::new();
    for id in served {
        while before.next_if(|b| *b < id).is_some() {}
        if before.peek() != Some(&id) {
            new.push(id.clone());
        }
    }
    new
}

/// Now, to the microsecond a Lease keeps (so what we sent compares equal to what we read back).
fn now_micros() -> MicroTime {
    let now = k8s_openapi::jiff::Timestamp::now();
    MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now))
}

/// Refuses a publish address that the API server would refuse in an Ingress status: each must
/// be an IP address or a DNS-1123 name (no port, no scheme, lower case).
pub fn check_publish_addresses(addresses: &[String]) -> anyhow::Result<()> {
    for address in addresses {
        if address.parse::<IpAddr>().is_err() && !dns1123_subdomain(address) {
            anyhow::bail!(
                "--publish-address {address:?} is neither an IP address nor a DNS name; give an address such as 192.0.2.10 or lb.example.com, without a port or scheme (Kubernetes refuses it in an Ingress status)"
            );
        }
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated labels of lower-case letters,
/// digits and `-`, 1 to 63 long, starting and ending with a letter or digit.
fn dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            (1..=63).contains(&bytes.len())
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
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
    /// When this instance sent its last renewal (or acquisition) that took.
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

    /// Still leading after a failed renewal, until the deadline.
    fn keep_after_failure(&self) -> bool {
        self.may_write()
    }

    /// Whether this instance may write status now: leading, and before its renew deadline.
    fn may_write(&self) -> bool {
        self.leading && self.deadline().is_some_and(|d| Instant::now() < d)
    }

    /// Until when the lease we hold is ours for sure: two thirds of the duration after we sent
    /// the last renewal that took.
    fn deadline(&self) -> Option<Instant> {
        self.renewed.map(|sent| sent + self.options.lease_duration * 2 / 3)
    }

    /// One try to acquire or renew. A leader's try is abandoned at its deadline: it then stops
    /// leading, whatever the API call was doing.
    async fn campaign(&mut self) {
        let deadline = self.deadline().filter(|_| self.leading);
        let attempt = self.try_acquire_or_renew();
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(
                        identity = %self.options.identity,
                        "could not renew the leader Lease before it would expire; stopped writing Ingress status"
                    );
                    self.leading = false;
                    return;
                }
            },
            None => attempt.await,
        };
        self.leading = match result {
            Ok(leading) => leading,
            Err(e) => {
                log_api_error("leader election", "get/create/update", "leases.coordination.k8s.io", &e);
                if self.leading && !self.keep_after_failure() {
                    tracing::warn!(
                        identity = %self.options.identity,
                        "could not renew the leader Lease before it would expire; stopped writing Ingress status"
                    );
                }
                self.keep_after_failure()
            }
        };
    }

    fn spec_for_us(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = now_micros();
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
        let sent = Instant::now();
        let name = self.options.lease_name.clone();
        let Some(lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name), ..ObjectMeta::default() },
                spec: Some(self.spec_for_us(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.renewed = Some(sent);
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
        let ours = self.spec_for_us(Some(&spec));
        renewed.spec = Some(ours.clone());
        let taken = match self.api.replace(&self.options.lease_name, &PostParams::default(), &renewed).await {
            Ok(_) => true,
            // Someone else's write, or our own that landed with its answer lost (a 504, then a
            // retry that met the new version): the Lease says which.
            Err(e) if status_code(&e) == Some(409) => self.holds(&ours).await?,
            Err(e) if matches!(status_code(&e), Some(500..)) || !matches!(e, kube::Error::Api(_)) => {
                if self.holds(&ours).await? { true } else { return Err(e) }
            }
            Err(e) => return Err(e),
        };
        if taken {
            self.renewed = Some(sent);
        }
        Ok(taken)
    }

    /// Whether the Lease now holds exactly what we wrote (our identity and renew time).
    async fn holds(&self, ours: &LeaseSpec) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.options.lease_name).await?;
        let spec = lease.and_then(|l| l.spec).unwrap_or_default();
        let landed = spec.holder_identity == ours.holder_identity && spec.renew_time == ours.renew_time;
        if landed {
            tracing::info!(identity = %self.options.identity, "the Lease renewal landed though its answer was lost");
        }
        Ok(landed)
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
        spec.renew_time = Some(now_micros());
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

    /// The status to write (`None`: leave it), from the publish addresses, else the
    /// `--publish-service` Service (`published`), else this node; read before `elector`'s
    /// deadline.
    async fn desired(
        &mut self,
        elector: &Elector,
        published: Published,
    ) -> Option<Vec<IngressLoadBalancerIngress>> {
        let deadline = elector.deadline()?;
        if self.options.publish_addresses.is_empty()
            && let Some(service) = &self.options.publish_service
        {
            if published.is_none() && !self.warned_nothing {
                tracing::warn!(
                    service = %service,
                    "the --publish-service Service is missing or has no address of its type; Ingress status is left as it is"
                );
            }
            self.warned_nothing = published.is_none();
            return published;
        }
        let addresses = tokio::time::timeout_at(deadline, self.addresses()).await.ok()?;
        if addresses.is_empty() {
            if !self.warned_nothing {
                tracing::warn!(
                    "no publish address and no node address known; Ingress status is not written (set --publish-address)"
                );
                self.warned_nothing = true;
            }
            return None;
        }
        let entry = |a: &String| match a.parse::<IpAddr>() {
            Ok(_) => IngressLoadBalancerIngress { ip: Some(a.clone()), ..Default::default() },
            Err(_) => IngressLoadBalancerIngress { hostname: Some(a.clone()), ..Default::default() },
        };
        Some(addresses.iter().map(entry).collect())
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

    /// Writes the status of every served Ingress whose status differs, while `elector` may
    /// write: no write starts after its deadline, and one in flight is abandoned at it.
    async fn publish(
        &mut self,
        elector: &Elector,
        ingresses: &Store<Ingress>,
        served: &[IngressId],
        desired: &[IngressLoadBalancerIngress],
    ) {
        let Some(deadline) = elector.deadline() else { return };
        for id in served {
            let Some(ingress) = ingresses.get(&ObjectRef::new(&id.name).within(&id.namespace)) else {
                continue;
            };
            // Compared as values, not as JSON: this visits every served Ingress after every
            // change, and serializing each status was most of the pass.
            let current = ingress
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_deref())
                .unwrap_or(&[]);
            if current == desired {
                continue;
            }
            if !elector.may_write() {
                return;
            }
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &id.namespace);
            // The version read is a precondition (see the module documentation).
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": ingress.metadata.resource_version},
                "status": {"loadBalancer": {"ingress": desired}},
            });
            let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
            let write = api.patch_status(&id.name, &params, &patch);
            match tokio::time::timeout_at(deadline, write).await {
                Ok(Ok(_)) => tracing::debug!(ingress = %id, "status written"),
                Ok(Err(e)) if status_code(&e) == Some(409) => {
                    tracing::debug!(ingress = %id, "the Ingress changed since it was read; its status is written at the next round")
                }
                Ok(Err(e)) => log_api_error("writing Ingress status", "patch", "ingresses/status", &e),
                Err(_) => {
                    tracing::warn!(ingress = %id, "Ingress status write abandoned: the leader Lease would expire");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only what `served` has and `before` has not, whatever else either holds.
    #[test]
    fn newly_served_ingresses_are_the_difference_of_two_sorted_lists() {
        let ids = |names: &[&str]| -> Vec<IngressId> {
            names.iter().map(|n| IngressId { namespace: "ns".into(), name: (*n).into() }).collect()
        };
        let new = |served: &[&str], before: &[&str]| newly_served(&ids(served), &ids(before));
        assert_eq!(new(&["a", "b", "c"], &[]), ids(&["a", "b", "c"]));
        assert_eq!(new(&["a", "b", "c"], &["a", "b", "c"]), ids(&[]));
        assert_eq!(new(&["a", "c", "e"], &["b", "c", "d"]), ids(&["a", "e"]));
        assert_eq!(new(&["b"], &["a", "c"]), ids(&["b"]));
        assert_eq!(new(&[], &["a"]), ids(&[]));
    }

    #[test]
    fn publish_addresses_must_be_what_an_ingress_status_accepts() {
        let ok = |a: &str| check_publish_addresses(&[a.to_owned()]).is_ok();
        for good in ["192.0.2.1", "2001:db8::1", "lb.example.com", "lb-1", "a.b-c.d"] {
            assert!(ok(good), "{good}");
        }
        for bad in
            ["lb:80", "http://lb.example.com", "LB.example.com", "lb_1", "-lb", "lb.", "", "192.0.2.1:80"]
        {
            assert!(!ok(bad), "{bad}");
        }
        let error = check_publish_addresses(&["lb:80".into()]).unwrap_err().to_string();
        assert!(error.contains("\"lb:80\" is neither an IP address nor a DNS name"), "{error}");
    }

    #[test]
    fn lease_times_keep_microseconds_only() {
        let now = now_micros();
        let text = serde_json::to_string(&now).unwrap();
        let back: MicroTime = serde_json::from_str(&text).unwrap();
        assert_eq!(back, now, "what we send compares equal to what we read back ({text})");
    }
}
