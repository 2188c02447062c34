//! What the translator keeps from one rebuild to the next, so that what a change did not touch
//! is not worked out again: the backend groups made from Services and EndpointSlices, the
//! readings of annotation sets (with the controller ConfigMap's defaults under them), the
//! routes each Ingress's paths made, and the virtual hosts made from them. A kept group, route
//! or host is the same `Arc` in the next configuration, so what follows (validation, the
//! snapshot's compilation, freeing the old configuration) sees an unchanged one as a pointer.
//!
//! Correctness rule: an entry is used only when everything its computation read is the same.
//! Objects are compared by identity (`Arc::ptr_eq` on the stores' `Arc`s, which the entry holds
//! so they cannot be freed and their address reused): a reflector replaces an object's `Arc`
//! whenever the API server sends a new version, so the same `Arc` is the same content, and a
//! relist (new `Arc`s everywhere) only costs one full rebuild. Everything else an entry depends
//! on (names, ports, settings, the annotation map) is compared by value. Entries no rebuild
//! used are dropped at its end, so the cache holds what the cluster holds, no more.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::networking::v1::{Ingress, ServiceBackendPort};

use super::{
    IngressId,
    annotations::{self, BackendSettings, Reading},
    controller_config::ControllerConfig,
};
use crate::provider::kube::{endpoint_slice::EndpointSlice, service::Service};
use crate::{
    FastMap,
    config::{
        BackendConfig, BasicAuthConfig, HeaderOpsConfig, HostTlsConfig, MirrorConfig, RedirectConfig,
        RouteConfig, VirtualHostConfig,
    },
};

/// A backend group as made from its Service and EndpointSlices (before `proxy-ssl-*`, which
/// reads Secrets and is applied on every rebuild), with the notes its making wrote. Its name
/// (the key) spells its namespace and Service; the settings are shared with every group of
/// equal settings ([`Memo::suffixes`]).
struct GroupEntry {
    port: ServiceBackendPort,
    settings: Arc<BackendSettings>,
    service: Option<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    group: Arc<BackendConfig>,
    notes: Vec<String>,
    used: bool,
}

/// The inputs of one backend group: what [`Memo::group`] compares.
pub(super) struct GroupInputs<'a> {
    pub namespace: &'a str,
    pub service_name: &'a str,
    pub port: &'a ServiceBackendPort,
    pub settings: &'a BackendSettings,
    pub service: Option<&'a Arc<Service>>,
    pub slices: &'a [&'a Arc<EndpointSlice>],
}

impl GroupInputs<'_> {
    fn matches(&self, entry: &GroupEntry) -> bool {
        let same_service = match (self.service, &entry.service) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_service
            && self.slices.len() == entry.slices.len()
            && self.slices.iter().zip(&entry.slices).all(|(a, b)| Arc::ptr_eq(a, b))
            && entry.port == *self.port
            && *entry.settings == *self.settings
    }
}

/// The translator's cache; see the module documentation for when an entry is used.
#[derive(Default)]
pub(super) struct Memo {
    /// By group name.
    groups: FastMap<String, GroupEntry>,
    /// By annotation map: Ingresses with equal annotations share one reading.
    readings: FastMap<BTreeMap<String, String>, (Arc<Reading>, bool)>,
    /// Groups made, and groups found, since the last sweep (for tests and the debug log).
    pub(super) made: usize,
    pub(super) found: usize,
    /// Readings with the controller's defaults under them, by the address of the reading they
    /// were made from (held, so the address is not reused); valid for `controller` only.
    defaulted: FastMap<usize, (Arc<Reading>, Arc<Reading>, bool)>,
    controller: Option<(ControllerConfig, ControllerHeaders)>,
    /// The routes of each Ingress's paths, by Ingress.
    routes: FastMap<IngressId, (IngressRoutes, bool)>,
    /// The virtual hosts made, by name: one is kept when made of the same route `Arc`s.
    hosts: FastMap<String, (Arc<VirtualHostConfig>, bool)>,
    /// The route `--default-backend-service` adds to every host without a catch-all.
    default_route: Option<Arc<RouteConfig>>,
    /// Routes and hosts found, since the last sweep (for tests).
    pub(super) routes_found: usize,
    pub(super) hosts_found: usize,
    /// Group name suffixes (a pure function of the settings, [`Memo::push_group_suffix`]) of
    /// the last distinct settings seen, the latest first: a cluster has few, and every path
    /// names its group.
    suffixes: Vec<(Arc<BackendSettings>, String)>,
}

/// How many distinct settings' suffixes are kept.
const SUFFIXES_KEPT: usize = 16;

/// The controller ConfigMap's `proxy-set-headers` and `add-headers`, read.
pub(super) type ControllerHeaders = (Option<HeaderOpsConfig>, Option<HeaderOpsConfig>);

/// What a path's route reads beside the path itself, from its Ingress as a whole: the same
/// values make the same routes.
#[derive(PartialEq, Default)]
pub(super) struct RouteContext {
    pub basic_auth: Option<BasicAuthConfig>,
    pub error_group: Option<String>,
    pub redirect: Option<RedirectConfig>,
    pub mirror: Option<MirrorConfig>,
}

/// The routes one Ingress's paths made, with everything they read: the Ingress's spec (the same
/// object, or an equal spec: a status write, the leader's own after every change, is a new
/// object; its paths are told apart by their place in it), its reading and the
/// [`RouteContext`]; and per route, its host, whether that host's paths are regular
/// expressions, and the backend group chosen.
pub(super) struct IngressRoutes {
    ingress: Arc<Ingress>,
    reading: Arc<Reading>,
    /// `None` for the empty context (most Ingresses): inline it is a few hundred bytes.
    context: Option<Box<RouteContext>>,
    pub routes: Vec<PathRoute>,
}

pub(super) struct PathRoute {
    /// The path's place among the Ingress's paths, in the order of its spec.
    pub path: usize,
    pub host: String,
    pub regex: bool,
    pub backend: Option<String>,
    pub route: Arc<RouteConfig>,
}

/// What a virtual host is made from ([`Memo::host`]).
pub(super) struct HostInputs<'a> {
    pub name: &'a str,
    /// With the Ingress that claimed each (not compared).
    pub routes: &'a [(Arc<RouteConfig>, IngressId)],
    pub tls: Option<&'a HostTlsConfig>,
    /// Its domains after its name.
    pub aliases: &'a [String],
    pub deep_wildcards: bool,
}

impl Memo {
    /// The group named `name` and its notes, when it was made from exactly these inputs.
    pub(super) fn group(
        &mut self,
        name: &str,
        inputs: &GroupInputs<'_>,
    ) -> Option<(Arc<BackendConfig>, Vec<String>)> {
        let entry = self.groups.get_mut(name).filter(|e| inputs.matches(e))?;
        entry.used = true;
        self.found += 1;
        Some((Arc::clone(&entry.group), entry.notes.clone()))
    }

    /// Remembers the group made from `inputs`.
    pub(super) fn keep_group(
        &mut self,
        inputs: &GroupInputs<'_>,
        group: &Arc<BackendConfig>,
        notes: &[String],
    ) {
        let shared = self.suffixes.iter().find(|(kept, _)| **kept == *inputs.settings);
        let entry = GroupEntry {
            port: inputs.port.clone(),
            settings: shared.map_or_else(|| Arc::new(inputs.settings.clone()), |(kept, _)| Arc::clone(kept)),
            service: inputs.service.cloned(),
            slices: inputs.slices.iter().map(|s| Arc::clone(s)).collect(),
            group: Arc::clone(group),
            notes: notes.to_vec(),
            used: true,
        };
        self.made += 1;
        self.groups.insert(group.name.clone(), entry);
    }

    /// The reading of an annotation map ([`annotations::read`]), shared by every Ingress whose
    /// annotations are equal.
    pub(super) fn reading(&mut self, raw: &BTreeMap<String, String>) -> Arc<Reading> {
        if let Some((reading, used)) = self.readings.get_mut(raw) {
            *used = true;
            return Arc::clone(reading);
        }
        let reading = Arc::new(annotations::read(raw));
        self.readings.insert(raw.clone(), (Arc::clone(&reading), true));
        reading
    }

    /// Starts a translation with these controller settings: the defaulted readings made with
    /// others are dropped.
    pub(super) fn controller(&mut self, controller: &ControllerConfig, headers: &ControllerHeaders) {
        let same = self.controller.as_ref().is_some_and(|(c, h)| c == controller && h == headers);
        if !same {
            self.defaulted.clear();
            self.controller = Some((controller.clone(), headers.clone()));
        }
    }

    /// The reading `read` with the controller's defaults under it, as made before with the
    /// same controller settings ([`Memo::controller`]), if it was.
    pub(super) fn defaulted(&mut self, read: &Arc<Reading>) -> Option<Arc<Reading>> {
        let (_, defaulted, used) = self.defaulted.get_mut(&(Arc::as_ptr(read) as usize))?;
        *used = true;
        Some(Arc::clone(defaulted))
    }

    /// Keeps `defaulted`, made from `read` with the current controller settings.
    pub(super) fn keep_defaulted(&mut self, read: &Arc<Reading>, defaulted: &Arc<Reading>) {
        let entry = (Arc::clone(read), Arc::clone(defaulted), true);
        self.defaulted.insert(Arc::as_ptr(read) as usize, entry);
    }

    /// The routes the Ingress `id` made last time, when it is the same object with the same
    /// reading and context (else none), and the record to fill for this time.
    pub(super) fn routes_of(
        &mut self,
        id: &IngressId,
        ingress: &Arc<Ingress>,
        reading: &Arc<Reading>,
        context: RouteContext,
    ) -> (Vec<PathRoute>, IngressRoutes) {
        let context = (context != RouteContext::default()).then(|| Box::new(context));
        // Taken out of its slot (which `keep_routes` fills again) rather than removed: a
        // removal per Ingress per rebuild leaves the table full of tombstones to probe past.
        let kept = match self.routes.get_mut(id) {
            Some((kept, _))
                if (Arc::ptr_eq(&kept.ingress, ingress) || kept.ingress.spec == ingress.spec)
                    && Arc::ptr_eq(&kept.reading, reading)
                    && kept.context == context =>
            {
                std::mem::take(&mut kept.routes)
            }
            _ => Vec::new(),
        };
        let record = IngressRoutes {
            ingress: Arc::clone(ingress),
            reading: Arc::clone(reading),
            context,
            routes: Vec::with_capacity(kept.len()),
        };
        (kept, record)
    }

    /// Keeps the routes an Ingress made for the next translation.
    pub(super) fn keep_routes(&mut self, id: &IngressId, routes: IngressRoutes) {
        match self.routes.get_mut(id) {
            Some(slot) => *slot = (routes, true),
            None => {
                self.routes.insert(id.clone(), (routes, true));
            }
        }
    }

    /// The virtual host made from `inputs` before, if it was.
    pub(super) fn host(&mut self, inputs: &HostInputs<'_>) -> Option<Arc<VirtualHostConfig>> {
        let (host, used) = self.hosts.get_mut(inputs.name)?;
        let same = host.routes.len() == inputs.routes.len()
            && host.routes.iter().zip(inputs.routes).all(|(a, (b, _))| Arc::ptr_eq(a, b))
            && host.tls.as_ref() == inputs.tls
            && host
                .domains
                .split_first()
                .is_some_and(|(first, rest)| first == inputs.name && rest == inputs.aliases)
            && host.deep_wildcards == inputs.deep_wildcards;
        if !same {
            return None;
        }
        *used = true;
        self.hosts_found += 1;
        Some(Arc::clone(host))
    }

    /// Keeps the virtual host made from `inputs` (its name is the key).
    pub(super) fn keep_host(&mut self, host: &Arc<VirtualHostConfig>) {
        self.hosts.insert(host.name.clone(), (Arc::clone(host), true));
    }

    /// `route`, or the equal one kept from the last translation (the default backend's route,
    /// added to many hosts: the same `Arc` keeps them unchanged).
    pub(super) fn default_route(&mut self, route: RouteConfig) -> Arc<RouteConfig> {
        match &self.default_route {
            Some(kept) if **kept == route => Arc::clone(kept),
            _ => {
                let route = Arc::new(route);
                self.default_route = Some(Arc::clone(&route));
                route
            }
        }
    }

    /// Drops what the last rebuild did not use, and starts counting use again.
    pub(super) fn sweep(&mut self) {
        (self.made, self.found, self.routes_found, self.hosts_found) = (0, 0, 0, 0);
        self.groups.retain(|_, e| std::mem::take(&mut e.used));
        self.readings.retain(|_, (_, used)| std::mem::take(used));
        self.defaulted.retain(|_, (_, _, used)| std::mem::take(used));
        self.routes.retain(|_, (_, used)| std::mem::take(used));
        self.hosts.retain(|_, (_, used)| std::mem::take(used));
    }

    /// Appends to a group's name what tells groups of one Service port with other settings
    /// apart: nothing for the defaults, else `~` and a hash of the settings' text, which is
    /// made once per distinct settings rather than for every path.
    pub(super) fn push_group_suffix(&mut self, settings: &BackendSettings, name: &mut String) {
        let at = match self.suffixes.iter().position(|(kept, _)| **kept == *settings) {
            Some(at) => at,
            None => {
                let suffix = match *settings == BackendSettings::default() {
                    true => String::new(),
                    false => format!("~{:08x}", crate::numeric::fnv1a_32(settings.group_key().as_bytes())),
                };
                self.suffixes.truncate(SUFFIXES_KEPT - 1);
                self.suffixes.insert(0, (Arc::new(settings.clone()), suffix));
                0
            }
        };
        name.push_str(&self.suffixes[at].1);
    }

    /// Virtual hosts and backend groups held: about as many as the next translation makes.
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.hosts.len(), self.groups.len())
    }
}
