//! What the translator keeps from one rebuild to the next, so that what a change did not touch
//! is not worked out again: the backend groups made from Services and EndpointSlices, and the
//! readings of annotation sets.
//!
//! Correctness rule: an entry is used only when everything its computation read is the same.
//! Objects are compared by identity (`Arc::ptr_eq` on the stores' `Arc`s, which the entry holds
//! so they cannot be freed and their address reused): a reflector replaces an object's `Arc`
//! whenever the API server sends a new version, so the same `Arc` is the same content, and a
//! relist (new `Arc`s everywhere) only costs one full rebuild. Everything else an entry depends
//! on (names, ports, settings, the annotation map) is compared by value. Entries no rebuild
//! used are dropped at its end, so the cache holds what the cluster holds, no more.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice, networking::v1::ServiceBackendPort};

use super::annotations::{self, BackendSettings, Reading};
use crate::{FastMap, config::BackendConfig};

/// A backend group as made from its Service and EndpointSlices (before `proxy-ssl-*`, which
/// reads Secrets and is applied on every rebuild), with the notes its making wrote.
struct GroupEntry {
    namespace: String,
    service_name: String,
    port: ServiceBackendPort,
    settings: BackendSettings,
    service: Option<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    group: BackendConfig,
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
            && entry.namespace == self.namespace
            && entry.service_name == self.service_name
            && entry.port == *self.port
            && entry.settings == *self.settings
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
}

impl Memo {
    /// The group named `name` and its notes, when it was made from exactly these inputs.
    pub(super) fn group(
        &mut self,
        name: &str,
        inputs: &GroupInputs<'_>,
    ) -> Option<(BackendConfig, Vec<String>)> {
        let entry = self.groups.get_mut(name).filter(|e| inputs.matches(e))?;
        entry.used = true;
        self.found += 1;
        Some((entry.group.clone(), entry.notes.clone()))
    }

    /// Remembers the group made from `inputs`.
    pub(super) fn keep_group(&mut self, inputs: &GroupInputs<'_>, group: &BackendConfig, notes: &[String]) {
        let entry = GroupEntry {
            namespace: inputs.namespace.to_owned(),
            service_name: inputs.service_name.to_owned(),
            port: inputs.port.clone(),
            settings: inputs.settings.clone(),
            service: inputs.service.cloned(),
            slices: inputs.slices.iter().map(|s| Arc::clone(s)).collect(),
            group: group.clone(),
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

    /// Drops what the last rebuild did not use, and starts counting use again.
    pub(super) fn sweep(&mut self) {
        (self.made, self.found) = (0, 0);
        self.groups.retain(|_, e| std::mem::take(&mut e.used));
        self.readings.retain(|_, (_, used)| std::mem::take(used));
    }

    /// Groups held.
    pub(super) fn groups(&self) -> usize {
        self.groups.len()
    }
}
