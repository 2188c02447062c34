//! Translation by component: Ingresses that share a host (a rule's host, a TLS host, or the
//! default host `*` of a `defaultBackend`) can change each other's result (an older claim
//! wins, a canary attaches to a main route, TLS is set once per host), and Ingresses that share
//! none cannot: each component is translated on its own, in a builder whose hosts, groups,
//! certificates and notes start empty, and what it made is added to the configuration being
//! built. The translator keeps what each component made, with what it read ([`Component`]);
//! the next rebuild takes a component whole, without translating it, when it has the same
//! Ingresses (the same objects or equal specs, the same readings, in the same order) and every
//! Service, EndpointSlice list and Secret it looked up is the same object (or still absent).
//! A change then costs its own component, not every Ingress.
//!
//! What stays global is worked out on every rebuild, over all components: the readings,
//! which hosts are regular-expression hosts, aliases, `from-to-www-redirect` twins, the
//! controller's default backend, the Gateway API's routes (after the Ingresses) and the order.
//! Anything every component reads (the controller ConfigMap and its header ConfigMaps, the
//! controller's default backend group, whether a listener terminates TLS) drops every kept
//! component when it changes. Components are taken in the order of their oldest Ingress, so a
//! translator with kept components and a fresh one give the same configuration, notes and
//! owners (`tests::incremental` compares them after every change).

use std::{borrow::Cow, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Secret, Service},
    networking::v1::Ingress,
};

use super::{Builder, GroupNotes, HostBuild, Index, IngressId, Note, annotations::Reading, memo};
use crate::{
    FastMap,
    config::{BackendConfig, CertificateConfig},
    provider::kube::endpoint_slice::EndpointSlice,
};

/// One object a component looked up, as it found it: the next rebuild takes the component
/// whole only when each lookup finds the same object again (or again none).
pub(super) enum Read {
    Service {
        key: (String, String),
        seen: Option<Arc<Service>>,
    },
    /// A Service's EndpointSlices, by slice name.
    Slices {
        key: (String, String),
        seen: Vec<Arc<EndpointSlice>>,
    },
    Secret {
        key: (String, String),
        seen: Option<Arc<Secret>>,
    },
}

/// The same object, or both absent.
fn same<T>(seen: &Option<Arc<T>>, now: Option<&Arc<T>>) -> bool {
    match (seen, now) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl Read {
    fn key(&self) -> (&str, &str, u8) {
        match self {
            Read::Service { key, .. } => (&key.0, &key.1, 0),
            Read::Slices { key, .. } => (&key.0, &key.1, 1),
            Read::Secret { key, .. } => (&key.0, &key.1, 2),
        }
    }

    /// Whether the lookup finds what it found then.
    fn unchanged(&self, index: &Index<'_>) -> bool {
        match self {
            Read::Service { key, seen } => same(seen, index.services.get(&(&*key.0, &*key.1)).copied()),
            Read::Secret { key, seen } => same(seen, index.secrets.get(&(&*key.0, &*key.1)).copied()),
            Read::Slices { key, seen } => {
                let now = index.slices.get(&(&*key.0, &*key.1)).map(Vec::as_slice).unwrap_or(&[]);
                now.len() == seen.len() && now.iter().zip(seen).all(|(a, b)| Arc::ptr_eq(a, b))
            }
        }
    }
}

/// How many lookups a component records before it stops looking for one already recorded
/// (a large component names many objects, each about once).
const READS_DEDUPLICATED: usize = 32;

impl<'a> Index<'a> {
    /// Records a lookup while a component is being translated.
    fn record(&self, read: impl FnOnce() -> Read, key: (&str, &str, u8)) {
        let mut reads = self.reads.borrow_mut();
        let Some(reads) = reads.as_mut() else { return };
        if reads.len() < READS_DEDUPLICATED && reads.iter().any(|r| r.key() == key) {
            return;
        }
        reads.push(read());
    }

    pub(super) fn service<'k>(&self, namespace: &'k str, name: &'k str) -> Option<&'k Arc<Service>>
    where
        'a: 'k,
    {
        let found = self.services.get(&(namespace, name)).copied();
        let key = || (namespace.to_owned(), name.to_owned());
        self.record(|| Read::Service { key: key(), seen: found.cloned() }, (namespace, name, 0));
        found
    }

    /// The EndpointSlices of a Service, by slice name.
    pub(super) fn slices<'k>(&self, namespace: &'k str, service: &'k str) -> &[&'k Arc<EndpointSlice>]
    where
        'a: 'k,
    {
        let found = self.slices.get(&(namespace, service)).map(Vec::as_slice).unwrap_or(&[]);
        let key = || (namespace.to_owned(), service.to_owned());
        let seen = || found.iter().map(|s| Arc::clone(s)).collect();
        self.record(|| Read::Slices { key: key(), seen: seen() }, (namespace, service, 1));
        found
    }

    pub(super) fn secret<'k>(&self, namespace: &'k str, name: &'k str) -> Option<&'k Arc<Secret>>
    where
        'a: 'k,
    {
        let found = self.secrets.get(&(namespace, name)).copied();
        let key = || (namespace.to_owned(), name.to_owned());
        self.record(|| Read::Secret { key: key(), seen: found.cloned() }, (namespace, name, 2));
        found
    }
}

/// What has been made so far: the builder's hosts, groups, certificates, notes and `www`
/// redirects, taken out of it while a component is translated in it.
#[derive(Default)]
struct Building {
    hosts: FastMap<String, HostBuild>,
    backends: FastMap<String, (Arc<BackendConfig>, IngressId)>,
    group_notes: FastMap<String, GroupNotes>,
    certificates: std::collections::BTreeMap<String, (CertificateConfig, IngressId)>,
    notes: Vec<Note>,
    www_redirects: Vec<(String, IngressId)>,
}

/// What translating one component made, as kept (lists: most components make one host and
/// one group, and a map of one entry allocates room for several).
struct Made {
    hosts: Vec<(String, HostBuild)>,
    backends: Vec<(String, (Arc<BackendConfig>, IngressId))>,
    group_notes: Vec<(String, GroupNotes)>,
    certificates: Vec<(String, (CertificateConfig, IngressId))>,
    notes: Vec<Note>,
    www_redirects: Vec<(String, IngressId)>,
}

/// A component as translated last time ([`memo::Memo`] keeps them, by their first Ingress).
pub(super) struct Component {
    /// Its Ingresses in the order they were translated (main ones oldest first, then canaries
    /// oldest first), with their readings.
    members: Vec<(Arc<Ingress>, IngressId, Arc<Reading>)>,
    reads: Vec<Read>,
    made: Made,
    /// The earliest expiry (unix seconds) of the certificates it serves: past it, it is
    /// translated again (and the expired certificate refused).
    expires: i64,
}

impl Component {
    pub(super) fn ids(&self) -> impl Iterator<Item = &IngressId> {
        self.members.iter().map(|(_, id, _)| id)
    }

    pub(super) fn group_names(&self) -> impl Iterator<Item = &str> {
        self.made.backends.iter().map(|(name, _)| name.as_str())
    }
}

/// A served Ingress as the component pass takes it.
pub(super) type Served<'s> = (&'s Arc<Ingress>, IngressId, Arc<Reading>);

/// The hosts an Ingress can share with another: its rules' hosts (`*` for a rule without),
/// and for a main Ingress its TLS hosts and `*` when it has a `defaultBackend`. Lower-cased
/// and trimmed as [`Builder::host_of`] makes them; invalid names are kept (they only join
/// more Ingresses than needed).
fn shared_hosts<'s>(ingress: &'s Ingress, canary: bool, mut each: impl FnMut(Cow<'s, str>)) {
    let Some(spec) = ingress.spec.as_ref() else { return };
    let key = |host: Option<&'s str>| -> Cow<'s, str> {
        let host = host.unwrap_or("").trim();
        if host.is_empty() {
            Cow::Borrowed("*")
        } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        }
    };
    for rule in spec.rules.iter().flatten() {
        each(key(rule.host.as_deref()));
    }
    if canary {
        return;
    }
    for tls in spec.tls.iter().flatten() {
        for host in tls.hosts.iter().flatten() {
            each(key(Some(host)));
        }
    }
    if spec.default_backend.is_some() {
        each(Cow::Borrowed("*"));
    }
}

/// The components of `served` (oldest first): each a list of indices into it, main Ingresses
/// oldest first, then canaries oldest first; components in the order of their oldest Ingress.
pub(super) fn components(served: &[Served<'_>]) -> Vec<Vec<usize>> {
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut parent: Vec<usize> = (0..served.len()).collect();
    let mut first_with: FastMap<Cow<'_, str>, usize> =
        FastMap::with_capacity_and_hasher(served.len(), Default::default());
    for (i, (ingress, _, reading)) in served.iter().enumerate() {
        shared_hosts(ingress, reading.annotations.canary.is_some(), |host| {
            let other = *first_with.entry(host).or_insert(i);
            let (a, b) = (root(&mut parent, i), root(&mut parent, other));
            // The smaller index is the root: a component's root is its oldest Ingress.
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        });
    }
    let mut slot_of = vec![usize::MAX; served.len()];
    let mut components: Vec<Vec<usize>> = Vec::new();
    for i in 0..served.len() {
        let r = root(&mut parent, i);
        if slot_of[r] == usize::MAX {
            slot_of[r] = components.len();
            components.push(Vec::new());
        }
        components[slot_of[r]].push(i);
    }
    for members in &mut components {
        // Stable: each part stays oldest first.
        members.sort_by_key(|&i| served[i].2.annotations.canary.is_some());
    }
    components
}

impl Builder<'_> {
    /// Translates the served Ingresses component by component, taking unchanged components
    /// from the memo whole; keeps what each made for the next rebuild.
    pub(super) fn ingresses_by_component(&mut self, served: &[Served<'_>], context: memo::ComponentsContext) {
        let mut kept = self.memo.take_components(context);
        let mut next: FastMap<IngressId, Component> =
            FastMap::with_capacity_and_hasher(kept.len().max(1), Default::default());
        let now = crate::tls::now_unix();
        for members in components(served) {
            let first = served[members[0]].1.clone();
            let reused = kept.remove(&first).and_then(|mut component| {
                self.unchanged(&mut component, served, &members, now).then_some(component)
            });
            let component = match reused {
                Some(component) => {
                    self.memo.reuse_component(&component);
                    self.absorb(&component.made);
                    component
                }
                None => self.translate_component(served, &members),
            };
            next.insert(first, component);
        }
        self.memo.keep_components(next);
    }

    /// Whether `component` can be taken whole for `members` of `served`; when it can, its
    /// Ingresses are updated to the current objects (a status write is a new object with an
    /// equal spec: the old one is not held).
    fn unchanged(
        &self,
        component: &mut Component,
        served: &[Served<'_>],
        members: &[usize],
        now: i64,
    ) -> bool {
        let same_members = component.members.len() == members.len()
            && component.members.iter().zip(members).all(|((kept, kept_id, reading), &i)| {
                let (ingress, id, now_reading) = &served[i];
                Arc::ptr_eq(reading, now_reading)
                    && kept_id == id
                    && (Arc::ptr_eq(kept, ingress) || kept.spec == ingress.spec)
            });
        if !same_members
            || component.expires < now
            || !component.reads.iter().all(|r| r.unchanged(&self.index))
        {
            return false;
        }
        for ((kept, _, _), &i) in component.members.iter_mut().zip(members) {
            if !Arc::ptr_eq(kept, served[i].0) {
                *kept = Arc::clone(served[i].0);
            }
        }
        true
    }

    /// Translates one component in a builder of its own (the same one, its hosts, groups,
    /// certificates and notes set aside), then adds what it made.
    fn translate_component(&mut self, served: &[Served<'_>], members: &[usize]) -> Component {
        self.memo.components_translated += 1;
        let outer = self.take_building();
        *self.index.reads.borrow_mut() = Some(Vec::new());
        self.expires = i64::MAX;
        for &i in members {
            let (ingress, id, reading) = &served[i];
            if reading.annotations.canary.is_some() {
                self.canary(ingress, id, &reading.annotations);
            } else {
                self.ingress(ingress, id, reading);
                self.keep_routes(id);
            }
        }
        let made = self.take_building();
        self.put_building(outer);
        let made = Made {
            hosts: made.hosts.into_iter().collect(),
            backends: made.backends.into_iter().collect(),
            group_notes: made.group_notes.into_iter().collect(),
            certificates: made.certificates.into_iter().collect(),
            notes: made.notes,
            www_redirects: made.www_redirects,
        };
        self.absorb(&made);
        let member = |&i: &usize| (Arc::clone(served[i].0), served[i].1.clone(), Arc::clone(&served[i].2));
        Component {
            members: members.iter().map(member).collect(),
            reads: self.index.reads.borrow_mut().take().unwrap_or_default(),
            made,
            expires: self.expires,
        }
    }

    /// Takes out what has been made so far, leaving the builder empty of it.
    fn take_building(&mut self) -> Building {
        Building {
            hosts: std::mem::take(&mut self.hosts),
            backends: std::mem::take(&mut self.backends),
            group_notes: std::mem::take(&mut self.group_notes),
            certificates: std::mem::take(&mut self.certificates),
            notes: std::mem::take(&mut self.notes),
            www_redirects: std::mem::take(&mut self.www_redirects),
        }
    }

    /// Puts back what [`Builder::take_building`] took out.
    fn put_building(&mut self, building: Building) {
        self.hosts = building.hosts;
        self.backends = building.backends;
        self.group_notes = building.group_notes;
        self.certificates = building.certificates;
        self.notes = building.notes;
        self.www_redirects = building.www_redirects;
    }

    /// Adds what a component made. Its hosts are its own; a group or certificate another
    /// component (or the controller's default backend) made too is the same, and keeps its
    /// first owner.
    fn absorb(&mut self, made: &Made) {
        self.hosts.reserve(made.hosts.len());
        for (name, host) in &made.hosts {
            let previous = self.hosts.insert(name.clone(), host.clone());
            debug_assert!(previous.is_none(), "host {name} is in two components");
        }
        for (name, group) in &made.backends {
            if !self.backends.contains_key(name) {
                self.backends.insert(name.clone(), group.clone());
            }
        }
        for (name, notes) in &made.group_notes {
            if !self.group_notes.contains_key(name) {
                self.group_notes.insert(name.clone(), notes.clone());
            }
        }
        for (name, certificate) in &made.certificates {
            if !self.certificates.contains_key(name) {
                self.certificates.insert(name.clone(), certificate.clone());
            }
        }
        self.notes.extend(made.notes.iter().cloned());
        self.www_redirects.extend(made.www_redirects.iter().cloned());
    }
}
