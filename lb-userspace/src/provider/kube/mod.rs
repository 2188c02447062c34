//! The Kubernetes provider: reflectors keep IngressClasses, Ingresses, Services,
//! EndpointSlices and Secrets in memory; every change (debounced) rebuilds the whole
//! configuration from those stores ([`translate`]) and emits it for the node to serve. Nothing
//! is patched from single events, so the serving configuration is always a function of the
//! observed state.
//!
//! Resilience: the stores are read only once every one has listed; a watch that fails retries
//! with a growing delay and resumes from its last version (a 410 Gone lists again, which the
//! store swaps in whole); while the API server is down, slow or failing, the last configuration
//! keeps serving. RBAC refusals are logged with the verb and resource that are missing. Every
//! request is bounded in time and throttling is visible ([`api`]).
//!
//! One instance, elected through a Lease, writes the Ingresses' `status.loadBalancer` ([`leader`]).

/// Makes a trimmed type that a reflector stores in place of the API's (`endpoint_slice`,
/// `service`) a `kube::Resource`: the API type's kind, group, version and plural, and the
/// trimmed type's own `metadata`.
macro_rules! stored_as {
    ($kept:ty, $api:ty) => {
        impl kube::Resource for $kept {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                <$api as kube::Resource>::kind(&())
            }

            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                <$api as kube::Resource>::group(&())
            }

            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                <$api as kube::Resource>::version(&())
            }

            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                <$api as kube::Resource>::plural(&())
            }

            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// The metadata a trimmed stored object keeps: name, namespace, resourceVersion and uid (no
/// labels, annotations or owners: a map of one entry alone allocates room for eleven).
fn stored_metadata(
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        resource_version: metadata.resource_version,
        uid: metadata.uid,
        ..Default::default()
    }
}

pub mod admission;
pub mod annotations;
pub mod api;
pub mod controller_config;
pub mod endpoint_slice;
pub mod events;
pub mod gateway_api;
pub mod leader;
pub mod rbac;
pub mod service;
pub mod translate;

use std::{
    collections::BTreeSet,
    fmt::Debug,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Secret},
    networking::v1::{Ingress, IngressClass},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        utils::Backoff,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use self::{endpoint_slice::EndpointSlice, service::Service};
use super::{Desired, Source, Update};
use crate::config::Config;
pub use translate::{CONTROLLER, ClusterState, IngressId, Settings, Translation, Translator};

/// Everything `sluice run --kubernetes` is told.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// A kubeconfig file; without it, the in-cluster service account (or `KUBECONFIG`,
    /// `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// The IngressClass name served besides IngressClasses naming [`CONTROLLER`].
    pub ingress_class: String,
    /// Quiet time after a change before rebuilding; bursts become one rebuild.
    pub debounce: Duration,
    /// Leader election and Ingress status; `None` writes no status.
    pub status: Option<leader::StatusOptions>,
    /// Timeouts and retries of the API client.
    pub api: api::ApiSettings,
    /// ingress-nginx's controller ConfigMap, `NAMESPACE/NAME` (`--nginx-configmap`).
    pub controller_configmap: Option<String>,
    /// The Service serving what no Ingress claims, `NAMESPACE/NAME` (`--default-backend-service`).
    pub default_backend_service: Option<String>,
    /// The TLS Secret served for unknown names, `NAMESPACE/NAME` (`--default-ssl-certificate`).
    pub default_ssl_certificate: Option<String>,
    /// ingress-nginx's `tcp-services` / `udp-services` ConfigMaps, `NAMESPACE/NAME`
    /// (`--tcp-services-configmap`, `--udp-services-configmap`).
    pub tcp_services_configmap: Option<String>,
    pub udp_services_configmap: Option<String>,
    /// Balance their services in XDP (`--l4-services-in-xdp`).
    pub l4_in_xdp: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            kubeconfig: None,
            ingress_class: "sluice".into(),
            debounce: Duration::from_millis(50),
            status: Some(leader::StatusOptions::default()),
            api: api::ApiSettings::default(),
            controller_configmap: None,
            default_backend_service: None,
            default_ssl_certificate: None,
            tcp_services_configmap: None,
            udp_services_configmap: None,
            l4_in_xdp: false,
        }
    }
}

/// A client from a kubeconfig file, or in-cluster, or inferred (`KUBECONFIG`,
/// `~/.kube/config`), with the default [`api::ApiSettings`].
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    api::client(kubeconfig, &api::ApiSettings::default()).await
}

/// Watch retry delays: from 250 ms doubling to 8 s, with ±25% jitter so instances do not
/// retry in step; reset by any successful event.
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(8);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay.mul_f64(0.75 + fastrand::f64() * 0.5))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// The reflectors' stores.
#[derive(Clone)]
pub struct Stores {
    pub classes: Store<IngressClass>,
    pub ingresses: Store<Ingress>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub secrets: Store<Secret>,
    pub configmaps: Store<ConfigMap>,
    pub namespaces: Store<Namespace>,
    pub gateway_classes: Store<gateway_api::GatewayClass>,
    pub gateways: Store<gateway_api::Gateway>,
    pub http_routes: Store<gateway_api::HTTPRoute>,
    pub grpc_routes: Store<gateway_api::GRPCRoute>,
    pub tls_routes: Store<gateway_api::TLSRoute>,
    pub l4_routes: L4RouteStores,
    pub reference_grants: Store<gateway_api::ReferenceGrant>,
}

/// TCPRoutes and UDPRoutes, at the version the API serves: `v1` (the standard channel from
/// v1.6 on), else `v1alpha2` (the experimental channel); only that store is watched, the other
/// stays empty. Unlike the other Gateway API kinds, nothing watches a kind the API does not
/// serve: its discovery is asked again every 10 s, and the kind watched once it is served.
#[derive(Clone)]
pub struct L4RouteStores {
    pub tcp: Store<gateway_api::TCPRoute>,
    pub udp: Store<gateway_api::UDPRoute>,
    pub tcp_v1alpha2: Store<gateway_api::TCPRouteV1Alpha2>,
    pub udp_v1alpha2: Store<gateway_api::UDPRouteV1Alpha2>,
}

/// The writers of [`L4RouteStores`] not yet given to a reflector.
struct L4RouteWriters {
    tcp: Option<reflector::store::Writer<gateway_api::TCPRoute>>,
    udp: Option<reflector::store::Writer<gateway_api::UDPRoute>>,
    tcp_v1alpha2: Option<reflector::store::Writer<gateway_api::TCPRouteV1Alpha2>>,
    udp_v1alpha2: Option<reflector::store::Writer<gateway_api::UDPRouteV1Alpha2>>,
}

impl L4RouteStores {
    /// Empty stores that nothing fills (until `Stores::watch_l4_routes`).
    fn unwatched() -> L4RouteStores {
        L4RouteStores {
            tcp: reflector::store().0,
            udp: reflector::store().0,
            tcp_v1alpha2: reflector::store().0,
            udp_v1alpha2: reflector::store().0,
        }
    }

    /// How often the API is asked again for a kind it did not serve (three discovery GETs,
    /// which the API server answers from memory).
    const REDISCOVERY: Duration = Duration::from_secs(10);

    /// Watches the kinds `installed` says are served, and looks again for the others.
    fn start(
        client: &Client,
        installed: GatewayApiInstalled,
        changed: &watch::Sender<u64>,
        config: watcher::Config,
    ) -> L4RouteStores {
        let (tcp, tcp_writer) = reflector::store();
        let (udp, udp_writer) = reflector::store();
        let (tcp_v1alpha2, tcp_v1alpha2_writer) = reflector::store();
        let (udp_v1alpha2, udp_v1alpha2_writer) = reflector::store();
        let mut writers = L4RouteWriters {
            tcp: Some(tcp_writer),
            udp: Some(udp_writer),
            tcp_v1alpha2: Some(tcp_v1alpha2_writer),
            udp_v1alpha2: Some(udp_v1alpha2_writer),
        };
        let (client, changed) = (client.clone(), changed.clone());
        tokio::spawn(async move {
            let mut installed = installed;
            loop {
                if writers.watch(&client, &installed, &changed, &config) {
                    break;
                }
                tokio::time::sleep(Self::REDISCOVERY).await;
                installed = GatewayApiInstalled::discover(&client).await;
            }
        });
        L4RouteStores { tcp, udp, tcp_v1alpha2, udp_v1alpha2 }
    }

    /// Waits until the stores `installed` says are served have listed once.
    async fn ready(&self, installed: &GatewayApiInstalled) {
        let tcp = async {
            let _ = match installed.tcp_routes {
                Some(RouteVersion::V1) => self.tcp.wait_until_ready().await,
                Some(RouteVersion::V1Alpha2) => self.tcp_v1alpha2.wait_until_ready().await,
                None => Ok(()),
            };
        };
        let udp = async {
            let _ = match installed.udp_routes {
                Some(RouteVersion::V1) => self.udp.wait_until_ready().await,
                Some(RouteVersion::V1Alpha2) => self.udp_v1alpha2.wait_until_ready().await,
                None => Ok(()),
            };
        };
        tokio::join!(tcp, udp);
    }

    /// The TCPRoutes and the UDPRoutes, as `v1` objects.
    fn state(&self) -> (Vec<Arc<gateway_api::TCPRoute>>, Vec<Arc<gateway_api::UDPRoute>>) {
        let mut tcp = self.tcp.state();
        tcp.extend(self.tcp_v1alpha2.state().iter().map(|r| Arc::new(r.as_ref().into())));
        let mut udp = self.udp.state();
        udp.extend(self.udp_v1alpha2.state().iter().map(|r| Arc::new(r.as_ref().into())));
        (tcp, udp)
    }
}

impl L4RouteWriters {
    /// Starts a reflector for each kind `installed` serves and that has none yet; true when
    /// both kinds have one.
    fn watch(
        &mut self,
        client: &Client,
        installed: &GatewayApiInstalled,
        changed: &watch::Sender<u64>,
        config: &watcher::Config,
    ) -> bool {
        let tcp = (&mut self.tcp, &mut self.tcp_v1alpha2);
        let tcp = watch_version(tcp, installed.tcp_routes, client, changed, config);
        let udp = (&mut self.udp, &mut self.udp_v1alpha2);
        let udp = watch_version(udp, installed.udp_routes, client, changed, config);
        tcp && udp
    }
}

/// Gives the writer of the `version` served to a reflector, unless one of the two already has
/// one; true when one has.
fn watch_version<A, B>(
    (v1, v1alpha2): (&mut Option<reflector::store::Writer<A>>, &mut Option<reflector::store::Writer<B>>),
    version: Option<RouteVersion>,
    client: &Client,
    changed: &watch::Sender<u64>,
    config: &watcher::Config,
) -> bool
where
    A: WatchedRoute,
    B: WatchedRoute,
{
    if v1.is_none() || v1alpha2.is_none() {
        return true;
    }
    let kind = A::kind(&()).into_owned();
    match version {
        Some(RouteVersion::V1) => spawn_watch(client, v1.take(), config, changed),
        Some(RouteVersion::V1Alpha2) => spawn_watch(client, v1alpha2.take(), config, changed),
        None => return false,
    }
    tracing::info!(kind = %kind, ?version, "{kind}s are served; watching them");
    true
}

/// What a TCPRoute or UDPRoute type must be to be watched.
trait WatchedRoute:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + serde::Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> WatchedRoute for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// A status-ignoring reflector of every namespace's `K` into `writer`.
fn spawn_watch<K: WatchedRoute>(
    client: &Client,
    writer: Option<reflector::store::Writer<K>>,
    config: &watcher::Config,
    changed: &watch::Sender<u64>,
) {
    let Some(writer) = writer else { return };
    let mut spec_changes = SpecChanges::default();
    let matters = move |event: &watcher::Event<K>| spec_changes.matters(event);
    reflect_into(Api::all(client.clone()), config.clone(), changed.clone(), matters, writer);
}

impl Stores {
    /// Starts one reflector per kind on the current runtime; each event bumps `changed`.
    /// Watches ask the server to end them after `watch_timeout` (the client gives a silent one
    /// up 5 s later, see [`api`]).
    pub fn start(client: &Client, changed: &watch::Sender<u64>, watch_timeout: Duration) -> Stores {
        let config = watcher::Config::default().timeout(watch_timeout.as_secs().clamp(1, 290) as u32);
        Stores {
            classes: reflect(Api::all(client.clone()), config.clone(), changed.clone()),
            // The leader writes Ingress and Gateway API statuses, which the translation never
            // reads: a change to nothing else is not a reason to rebuild.
            ingresses: reflect_ignoring_status(Api::all(client.clone()), config.clone(), changed.clone()),
            // Kept trimmed to what the translation and the status writer read ([`service`]).
            services: reflect_trimmed::<k8s_openapi::api::core::v1::Service, Service>(
                Api::all(client.clone()),
                config.clone(),
                changed.clone(),
            ),
            // Kept trimmed to what the translation reads ([`endpoint_slice`]).
            slices: reflect_trimmed::<k8s_openapi::api::discovery::v1::EndpointSlice, EndpointSlice>(
                Api::all(client.clone()),
                config.clone(),
                changed.clone(),
            ),
            // Every Secret but Helm's release records (large, and never named by an Ingress):
            // TLS Secrets and the Opaque ones auth annotations name. The translation reads only
            // those an Ingress names, and checks each one's type and keys for its use.
            configmaps: reflect(Api::all(client.clone()), config.clone(), changed.clone()),
            secrets: reflect(
                Api::all(client.clone()),
                config.clone().fields("type!=helm.sh/release.v1"),
                changed.clone(),
            ),
            namespaces: reflect(Api::all(client.clone()), config.clone(), changed.clone()),
            // Started whether or not the CRDs are installed: while they are not, the list
            // fails with 404 and the watcher retries with its backoff, so Gateways are served
            // within seconds of the CRDs appearing.
            gateway_classes: reflect_ignoring_status(
                Api::all(client.clone()),
                config.clone(),
                changed.clone(),
            ),
            gateways: reflect_ignoring_status(Api::all(client.clone()), config.clone(), changed.clone()),
            http_routes: reflect_ignoring_status(Api::all(client.clone()), config.clone(), changed.clone()),
            grpc_routes: reflect_ignoring_status(Api::all(client.clone()), config.clone(), changed.clone()),
            tls_routes: reflect_ignoring_status(Api::all(client.clone()), config.clone(), changed.clone()),
            // Watched once discovery has said which version is served (`watch_l4_routes`).
            l4_routes: L4RouteStores::unwatched(),
            reference_grants: reflect(Api::all(client.clone()), config, changed.clone()),
        }
    }

    /// Waits until the Gateway API stores whose CRDs `installed` lists have listed once.
    pub async fn gateway_ready(&self, installed: &GatewayApiInstalled) {
        async fn listed<K>(installed: bool, store: &Store<K>)
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            if installed {
                let _ = store.wait_until_ready().await;
            }
        }
        tokio::join!(
            listed(installed.v1, &self.gateway_classes),
            listed(installed.v1, &self.gateways),
            listed(installed.v1, &self.http_routes),
            listed(installed.grpc_routes, &self.grpc_routes),
            listed(installed.tls_routes, &self.tls_routes),
            listed(installed.reference_grants, &self.reference_grants),
            self.l4_routes.ready(installed),
        );
    }

    /// Watches TCPRoutes and UDPRoutes at the version `installed` says is served (and looks
    /// again later for those it does not serve).
    pub fn watch_l4_routes(
        &mut self,
        client: &Client,
        installed: GatewayApiInstalled,
        changed: &watch::Sender<u64>,
        watch_timeout: Duration,
    ) {
        let config = watcher::Config::default().timeout(watch_timeout.as_secs().clamp(1, 290) as u32);
        self.l4_routes = L4RouteStores::start(client, installed, changed, config);
    }

    /// Waits until every store has listed once.
    pub async fn ready(&self) {
        let _ = tokio::join!(
            self.classes.wait_until_ready(),
            self.ingresses.wait_until_ready(),
            self.services.wait_until_ready(),
            self.slices.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.configmaps.wait_until_ready(),
            self.namespaces.wait_until_ready(),
        );
    }

    /// What the stores hold now.
    pub fn state(&self) -> ClusterState {
        let l4_routes = self.l4_routes.state();
        ClusterState {
            classes: self.classes.state(),
            ingresses: self.ingresses.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            secrets: self.secrets.state(),
            configmaps: self.configmaps.state(),
            gateway_classes: self.gateway_classes.state(),
            gateways: self.gateways.state(),
            http_routes: self.http_routes.state(),
            grpc_routes: self.grpc_routes.state(),
            tls_routes: self.tls_routes.state(),
            tcp_routes: l4_routes.0,
            udp_routes: l4_routes.1,
            reference_grants: self.reference_grants.state(),
            namespaces: self.namespaces.state(),
        }
    }
}

/// Which Gateway API CRDs the API server serves, from its discovery documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayApiInstalled {
    /// `gateway.networking.k8s.io/v1`: GatewayClass, Gateway, HTTPRoute.
    pub v1: bool,
    /// `v1` GRPCRoute and TLSRoute (TLSRoute is `v1` from the v1.5 CRDs on).
    pub grpc_routes: bool,
    pub tls_routes: bool,
    /// `v1beta1` ReferenceGrant.
    pub reference_grants: bool,
    /// TCPRoute and UDPRoute: the version read (`v1` when served, else `v1alpha2`), if any.
    pub tcp_routes: Option<RouteVersion>,
    pub udp_routes: Option<RouteVersion>,
}

/// A version of TCPRoute and UDPRoute (the same schema in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteVersion {
    V1,
    V1Alpha2,
}

impl RouteVersion {
    /// The version to read `plural` at, given each version's resources.
    fn of(v1: &[String], v1alpha2: &[String], plural: &str) -> Option<RouteVersion> {
        if v1.iter().any(|r| r == plural) {
            Some(RouteVersion::V1)
        } else if v1alpha2.iter().any(|r| r == plural) {
            Some(RouteVersion::V1Alpha2)
        } else {
            None
        }
    }
}

impl GatewayApiInstalled {
    /// Asks discovery; a group or version that is not served (404) or cannot be read counts
    /// as not installed, which only means the start does not wait for those stores.
    pub async fn discover(client: &Client) -> GatewayApiInstalled {
        let served = |version: &'static str| {
            let client = client.clone();
            async move {
                let api_version = format!("{}/{version}", gateway_api::GROUP);
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    client.list_api_group_resources(&api_version),
                )
                .await
                {
                    Ok(Ok(list)) => list.resources.into_iter().map(|r| r.name).collect(),
                    _ => Vec::new(),
                }
            }
        };
        let (v1, v1beta1, v1alpha2) = tokio::join!(served("v1"), served("v1beta1"), served("v1alpha2"));
        let serves = |list: &[String], plural: &str| list.iter().any(|r| r == plural);
        GatewayApiInstalled {
            v1: serves(&v1, "httproutes"),
            grpc_routes: serves(&v1, "grpcroutes"),
            tls_routes: serves(&v1, "tlsroutes"),
            reference_grants: serves(&v1beta1, "referencegrants"),
            tcp_routes: RouteVersion::of(&v1, &v1alpha2, "tcproutes"),
            udp_routes: RouteVersion::of(&v1, &v1alpha2, "udproutes"),
        }
    }
}

/// One reflector: a watcher with backoff feeding a store, driven by a task of its own; every
/// event bumps `changed`.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: watch::Sender<u64>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    reflect_with(api, config, changed, |_| true)
}

/// A reflector whose events bump `changed` only when the object changed outside its status
/// (see [`SpecChanges`]).
fn reflect_ignoring_status<K>(api: Api<K>, config: watcher::Config, changed: watch::Sender<u64>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug
        + Send
        + Sync
        + 'static,
{
    let mut spec_changes = SpecChanges::default();
    reflect_with(api, config, changed, move |event| spec_changes.matters(event))
}

fn reflect_with<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: watch::Sender<u64>,
    matters: impl FnMut(&watcher::Event<K>) -> bool + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    reflect_into(api, config, changed, matters, writer);
    reader
}

/// Drives a reflector of `api` into `writer` on a task of its own.
fn reflect_into<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: watch::Sender<u64>,
    matters: impl FnMut(&watcher::Event<K>) -> bool + Send + 'static,
    writer: reflector::store::Writer<K>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let resource = resource_name::<K>();
    // What a reflector requests must be in the one list that deploy/ grants.
    debug_assert!(
        rbac::reflector_allowed(&K::group(&()), &K::plural(&())),
        "{resource}: list and watch are missing from rbac::PERMISSIONS"
    );
    let events = watcher(api, config).modify(trim);
    drive(resource, events, changed, matters, writer);
}

/// `kubectl apply`'s copy of the whole object, in its annotations.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reader of the stores reads and what can be large: the managed fields, and
/// `kubectl apply`'s copy of the object (an object's size again, on every object applied with
/// kubectl). Without that copy, Ingresses with equal annotations have equal annotation maps,
/// so they also share one reading of them in the translation's cache.
fn trim<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    if let Some(annotations) = object.meta_mut().annotations.as_mut()
        && annotations.remove(LAST_APPLIED).is_some()
        && annotations.is_empty()
    {
        object.meta_mut().annotations = None;
    }
}

/// A reflector that converts each object of the API's type `A` to the trimmed `K` that the
/// readers need ([`EndpointSlice`], [`Service`]) as it arrives, and stores only that.
pub(crate) fn reflect_trimmed<A, K>(
    api: Api<A>,
    config: watcher::Config,
    changed: watch::Sender<u64>,
) -> Store<K>
where
    A: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    K: Resource<DynamicType = ()> + From<A> + Clone + Debug + Send + Sync + 'static,
{
    use futures::TryStreamExt;
    let resource = resource_name::<K>();
    debug_assert!(
        rbac::reflector_allowed(&K::group(&()), &K::plural(&())),
        "{resource}: list and watch are missing from rbac::PERMISSIONS"
    );
    let (reader, writer) = reflector::store();
    let events = watcher(api, config).map_ok(|event| match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(K::from(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(K::from(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(K::from(object)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    });
    drive(resource, events, changed, |_| true, writer);
    reader
}

/// Feeds a watcher's events (with backoff) into `writer` on a task of its own; an event that
/// `matters` bumps `changed`.
fn drive<K>(
    resource: String,
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    changed: watch::Sender<u64>,
    mut matters: impl FnMut(&watcher::Event<K>) -> bool + Send + 'static,
    writer: reflector::store::Writer<K>,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    let stream = events.backoff(WatchBackoff::default()).reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if failing {
                        tracing::info!(resource, "watch resumed");
                        failing = false;
                    }
                    if matters(&event) {
                        changed.send_modify(|n| *n += 1);
                    } else {
                        crate::metrics::KUBE_API.status_only_change();
                    }
                }
                Err(e) => {
                    log_watch_error(&resource, &e, failing);
                    failing = true;
                }
            }
        }
    });
}

/// Tells status-only changes apart: remembers a fingerprint of each object without its
/// status and resourceVersion (what the translation reads), and says an event matters when
/// that fingerprint is new or changed, or the object went.
#[derive(Default)]
struct SpecChanges {
    seen: std::collections::HashMap<(String, String), u64>,
    /// During a relist: the objects listed so far, to drop the rest at its end.
    relisted: Option<BTreeSet<(String, String)>>,
}

impl SpecChanges {
    fn matters<K: Resource + serde::Serialize>(&mut self, event: &watcher::Event<K>) -> bool {
        let key = |object: &K| (object.namespace().unwrap_or_default(), object.name_any());
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                if let (watcher::Event::InitApply(_), Some(relisted)) = (event, &mut self.relisted) {
                    relisted.insert(key(object));
                }
                // An object that cannot be fingerprinted always matters.
                let Some(fingerprint) = spec_fingerprint(object) else { return true };
                self.seen.insert(key(object), fingerprint) != Some(fingerprint)
            }
            watcher::Event::Delete(object) => {
                self.seen.remove(&key(object));
                true
            }
            watcher::Event::Init => {
                self.relisted = Some(BTreeSet::new());
                true
            }
            watcher::Event::InitDone => {
                if let Some(relisted) = self.relisted.take() {
                    self.seen.retain(|key, _| relisted.contains(key));
                }
                true
            }
        }
    }
}

/// A hash of `object` without `status`, `metadata.resourceVersion` and `managedFields`.
fn spec_fingerprint<K: serde::Serialize>(object: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut value = serde_json::to_value(object).ok()?;
    let map = value.as_object_mut()?;
    map.remove("status");
    if let Some(metadata) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.remove("resourceVersion");
        metadata.remove("managedFields");
    }
    let mut hasher = std::hash::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    Some(hasher.finish())
}

/// `ingresses.networking.k8s.io`, `services`: as RBAC rules name resources.
fn resource_name<K: Resource<DynamicType = ()>>() -> String {
    let group = K::group(&());
    let plural = K::plural(&());
    if group.is_empty() { plural.into_owned() } else { format!("{plural}.{group}") }
}

/// The API status inside a client error, if the server answered one.
fn api_status(error: &kube::Error) -> Option<&kube::core::Status> {
    match error {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

fn log_watch_error(resource: &str, error: &watcher::Error, already_failing: bool) {
    let (verb, status) = match error {
        watcher::Error::InitialListFailed(e) => ("list", api_status(e)),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", api_status(e)),
        watcher::Error::WatchError(status) => ("watch", Some(status.as_ref())),
        watcher::Error::NoResourceVersion => ("watch", None),
    };
    match status {
        Some(status) if status.code == 403 => tracing::error!(
            resource,
            verb,
            message = %status.message,
            "RBAC: sluice may not {verb} {resource}; grant list and watch on it (see deploy/base/clusterrole.yaml)"
        ),
        Some(status) if status.code == 404 && !already_failing => tracing::info!(
            resource,
            "{resource} is not served (404; its CRD is not installed); watching for it"
        ),
        Some(status) if status.code == 410 => {
            tracing::info!(resource, "watch version expired (410 Gone); listing again")
        }
        _ if already_failing => {
            tracing::debug!(resource, verb, error = %error, "Kubernetes API still failing; retrying")
        }
        _ => tracing::warn!(
            resource,
            verb,
            error = %error,
            "Kubernetes API request failed; the last configuration keeps serving, retrying with backoff"
        ),
    }
}

/// What the provider is told about stopping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stop {
    #[default]
    Running,
    /// This process stops serving: the leader releases its Lease, so that another instance
    /// takes over at its next try instead of after the lease duration.
    Shutdown,
    /// An upgrade handed the node to a new process started with the same arguments, so the
    /// same identity, which renews the Lease as its own. Releasing it would empty the holder
    /// under the successor: another instance could then take it and write status beside the
    /// successor until the successor's next renewal told it otherwise.
    HandedOver,
}

impl Stop {
    pub fn stopping(&self) -> bool {
        *self != Stop::Running
    }
}

/// The provider: a client and the translation settings.
pub struct KubeProvider {
    client: Client,
    options: KubeOptions,
    translator: Arc<Translator>,
}

impl KubeProvider {
    /// Checks the options (a publish address must be an IP address or a DNS name) and builds
    /// the client; the instance's identity is in its user agent.
    pub async fn connect(options: KubeOptions) -> anyhow::Result<KubeProvider> {
        let mut api = options.api.clone();
        if let Some(status) = &options.status {
            leader::check_publish_addresses(&status.publish_addresses)?;
            api.user_agent = format!("{} ({})", api.user_agent, status.identity);
        }
        let client = api::client(options.kubeconfig.as_deref(), &api).await?;
        crate::metrics::KUBE_API.enable();
        let translator = Arc::new(Translator::new(Settings {
            ingress_class: options.ingress_class.clone(),
            controller_configmap: options.controller_configmap.clone(),
            default_backend_service: options.default_backend_service.clone(),
            default_ssl_certificate: options.default_ssl_certificate.clone(),
            tcp_services_configmap: options.tcp_services_configmap.clone(),
            udp_services_configmap: options.udp_services_configmap.clone(),
            l4_in_xdp: options.l4_in_xdp,
        }));
        Ok(KubeProvider { client, options, translator })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Watches the cluster and emits on `updates` its translation on top of the latest base
    /// configuration (the `--config` file), whenever either changes, until `shutdown` says to
    /// stop or the receiver of `updates` is gone. Returns after the status writer has released
    /// its Lease (or, after a handover, left it to the new process).
    pub async fn run(
        &self,
        mut base: watch::Receiver<Arc<Config>>,
        updates: mpsc::Sender<Update>,
        mut shutdown: watch::Receiver<Stop>,
    ) -> anyhow::Result<()> {
        let (changed_tx, mut changed) = watch::channel(0u64);
        let mut stores = Stores::start(&self.client, &changed_tx, self.options.api.watch_timeout);
        tracing::info!(ingress_class = %self.options.ingress_class, controller = CONTROLLER, "watching Kubernetes");
        let gateway_api = GatewayApiInstalled::discover(&self.client).await;
        stores.watch_l4_routes(&self.client, gateway_api, &changed_tx, self.options.api.watch_timeout);
        if gateway_api.v1 {
            tracing::info!(
                reference_grants = gateway_api.reference_grants,
                "Gateway API installed; serving Gateways whose class names {}",
                translate::GATEWAY_CONTROLLER
            );
        } else {
            tracing::info!(
                "Gateway API CRDs are not installed; serving Ingresses, and Gateways once the CRDs appear"
            );
        }
        tokio::select! {
            _ = async { tokio::join!(stores.ready(), stores.gateway_ready(&gateway_api)) } => {}
            _ = shutdown.wait_for(Stop::stopping) => return Ok(()),
        }
        tracing::info!("Kubernetes state listed; serving Ingresses");
        let (served_tx, served_rx) = watch::channel(Vec::<IngressId>::new());
        let (gateway_tx, gateway_rx) = watch::channel(translate::GatewayStatuses::default());
        let (notes_tx, notes_rx) = watch::channel(Arc::new(Vec::new()));
        let publish_service = self.options.status.as_ref().and_then(|s| s.publish_service.clone());
        let published =
            |stores: &Stores| publish_service.as_deref().and_then(|r| leader::published(&stores.services, r));
        let (published_tx, published_rx) = watch::channel(published(&stores));
        let status = self.options.status.clone().map(|options| {
            let gateway = leader::GatewayStatusWriter {
                client: self.client.clone(),
                statuses: gateway_rx,
                classes: stores.gateway_classes.clone(),
                gateways: stores.gateways.clone(),
                http_routes: stores.http_routes.clone(),
                grpc_routes: stores.grpc_routes.clone(),
                tls_routes: stores.tls_routes.clone(),
                l4_routes: stores.l4_routes.clone(),
            };
            let inputs = leader::StatusInputs {
                ingresses: stores.ingresses.clone(),
                served: served_rx,
                notes: notes_rx,
                published: published_rx,
            };
            tokio::spawn(leader::run(self.client.clone(), options, inputs, gateway, shutdown.clone()))
        });
        let mut emitted = Emitted::new(served_tx, gateway_tx, notes_tx);
        loop {
            changed.borrow_and_update();
            let update = self.rebuild(&stores, &mut base, &mut emitted).await?;
            published_tx.send_if_modified(|current| {
                let now = published(&stores);
                let changed = *current != now;
                *current = now;
                changed
            });
            if let Some(update) = update {
                tokio::select! {
                    sent = updates.send(update) => if sent.is_err() { break },
                    _ = shutdown.wait_for(Stop::stopping) => break,
                }
            }
            let rebuilt_at = Instant::now();
            if !self.next_change(&mut changed, &mut base, &mut shutdown, rebuilt_at).await {
                break;
            }
        }
        if let Some(status) = status {
            match tokio::time::timeout(Duration::from_secs(5), status).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the status writer failed"),
                Err(_) => tracing::warn!("the status writer did not stop in time"),
            }
        }
        Ok(())
    }

    /// Translates what the stores hold on top of the latest base: the update to emit, if any.
    async fn rebuild(
        &self,
        stores: &Stores,
        base: &mut watch::Receiver<Arc<Config>>,
        emitted: &mut Emitted,
    ) -> anyhow::Result<Option<Update>> {
        let state = stores.state();
        let base_config = base.borrow_and_update().clone();
        let translator = self.translator.clone();
        let started = Instant::now();
        crate::metrics::KUBE_API.translated();
        let result = tokio::task::spawn_blocking(move || translator.build(&base_config, &state))
            .await
            .context("the translation task panicked")?;
        Ok(match result {
            Ok(translation) => emitted.next(translation, started, started.elapsed()),
            Err(e) => Some(Update::Refused { source: Source::Kubernetes, error: e.to_string() }),
        })
    }

    /// Waits for a change of the cluster or the base, then for a quiet moment (at most a
    /// second) so a burst is one rebuild. The quiet time is the debounce when the last rebuild
    /// ended less than a debounce before the change (a burst is under way), and a tenth of it
    /// when the provider was idle: an isolated change is served at once, objects written
    /// together (an Ingress and its Secret) still make one rebuild, and a burst costs at most
    /// one rebuild more than with the full debounce. False when it is time to stop.
    async fn next_change(
        &self,
        changed: &mut watch::Receiver<u64>,
        base: &mut watch::Receiver<Arc<Config>>,
        shutdown: &mut watch::Receiver<Stop>,
        rebuilt_at: Instant,
    ) -> bool {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return false },
            r = base.changed() => if r.is_err() { return false },
            _ = shutdown.wait_for(Stop::stopping) => return false,
        }
        let idle = rebuilt_at.elapsed() >= self.options.debounce;
        let quiet_time = if idle { self.options.debounce / 10 } else { self.options.debounce };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let quiet = tokio::time::sleep(quiet_time);
            tokio::select! {
                _ = quiet => return true,
                _ = tokio::time::sleep_until(deadline) => return true,
                r = changed.changed() => if r.is_err() { return true },
            }
        }
    }
}

/// What the provider has emitted so far: translations are emitted only when they differ from
/// the last, notes logged only when new, and the served Ingresses passed to the status writer.
struct Emitted {
    last: Option<Arc<Config>>,
    reported: BTreeSet<String>,
    served: watch::Sender<Vec<IngressId>>,
    gateway: watch::Sender<translate::GatewayStatuses>,
    /// The notes, for the leader's Events.
    notes: watch::Sender<Arc<Vec<translate::Note>>>,
}

impl Emitted {
    fn new(
        served: watch::Sender<Vec<IngressId>>,
        gateway: watch::Sender<translate::GatewayStatuses>,
        notes: watch::Sender<Arc<Vec<translate::Note>>>,
    ) -> Emitted {
        Emitted { last: None, reported: BTreeSet::new(), served, gateway, notes }
    }

    /// Logs the translation's new notes, tells the status writer what is served, and returns
    /// the update to emit when the configuration changed. An unchanged configuration is not
    /// emitted again, whether the node applied the last one or not.
    fn next(&mut self, translation: Translation, started: Instant, translated: Duration) -> Option<Update> {
        let notes_changed = self.notes.send_if_modified(|notes| {
            let modified = **notes != translation.notes;
            if modified {
                *notes = Arc::new(translation.notes.clone());
            }
            modified
        });
        // Written out only when they changed: a migrated cluster can carry a note on most of
        // its Ingresses, and most rebuilds change none.
        if notes_changed || self.reported.is_empty() {
            let notes: BTreeSet<String> = translation
                .notes
                .iter()
                .map(|n| match &n.ingress {
                    // Gateway API objects are named `KIND/NAME` (see `translate::http_route_id`).
                    Some(id) if id.name.contains('/') => format!("{id}: {}", n.message),
                    Some(id) => format!("Ingress {id}: {}", n.message),
                    None => n.message.clone(),
                })
                .collect();
            for note in notes.difference(&self.reported) {
                tracing::warn!(note = %note, "Kubernetes");
            }
            crate::metrics::KUBE_API.noted(notes.len());
            self.reported = notes;
        }
        self.served.send_if_modified(|served| {
            let modified = *served != translation.served;
            if modified {
                served.clone_from(&translation.served);
            }
            modified
        });
        self.gateway.send_if_modified(|gateway| {
            let modified = *gateway != translation.gateway;
            if modified {
                gateway.clone_from(&translation.gateway);
            }
            modified
        });
        // The translator hands back the `Arc` of the last configuration that validated when the
        // new one equals it, and every translation that validated comes here, so another `Arc`
        // is another configuration.
        if self.last.as_ref().is_some_and(|last| Arc::ptr_eq(last, &translation.config)) {
            return None;
        }
        let config = translation.config;
        self.last = Some(config.clone());
        Some(Update::Serve(Desired {
            config,
            source: Source::Kubernetes,
            started,
            ingresses: Some(translation.served.len()),
            translated: Some(translated),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::RouteVersion;

    /// `kubectl apply`'s copy of the object goes, the other annotations stay; an object left
    /// with none has none, rather than an empty map.
    #[test]
    fn stored_objects_lose_kubectls_copy_and_managed_fields() {
        use k8s_openapi::api::networking::v1::Ingress;
        let mut ingress: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web",
                "annotations": {
                    super::LAST_APPLIED: "{\"apiVersion\":\"networking.k8s.io/v1\"}",
                    "nginx.ingress.kubernetes.io/rewrite-target": "/",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
        }))
        .unwrap();
        super::trim(&mut ingress);
        let annotations = ingress.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["nginx.ingress.kubernetes.io/rewrite-target"]);
        assert_eq!(ingress.metadata.managed_fields, Some(Vec::new()));
        let mut only: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "only", "annotations": {super::LAST_APPLIED: "{}"}},
        }))
        .unwrap();
        super::trim(&mut only);
        assert_eq!(only.metadata.annotations, None);
        let mut none: Ingress =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "none"}})).unwrap();
        super::trim(&mut none);
        assert_eq!(none.metadata.annotations, None, "no map made where there was none");
    }

    /// TCPRoute and UDPRoute are read at `v1` when served (the standard channel from v1.6,
    /// and the experimental channel, which serves both), else at `v1alpha2` (the experimental
    /// channel before v1.6), else not at all.
    #[test]
    fn l4_routes_are_read_at_the_version_served() {
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let v1 = list(&["httproutes", "tcproutes", "tcproutes/status"]);
        let v1alpha2 = list(&["tcproutes", "udproutes", "udproutes/status"]);
        assert_eq!(RouteVersion::of(&v1, &v1alpha2, "tcproutes"), Some(RouteVersion::V1));
        assert_eq!(RouteVersion::of(&v1, &v1alpha2, "udproutes"), Some(RouteVersion::V1Alpha2));
        assert_eq!(RouteVersion::of(&v1, &[], "udproutes"), None);
        assert_eq!(RouteVersion::of(&[], &[], "tcproutes"), None);
    }
}
