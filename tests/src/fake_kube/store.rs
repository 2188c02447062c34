//! The fake API server's state: the kinds it knows, the stored objects with their
//! resourceVersions, the history of changes watches replay, writes with optimistic
//! concurrency and the status subresource, and the label and field selectors lists and watches
//! filter with.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{SystemTime, UNIX_EPOCH},
};

use std::sync::Arc;

use serde_json::{Map, Value, json};

/// One kind of object the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a status subresource: `/status` writes change only `.status`, other writes keep it.
    pub status: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `ingresses.networking.k8s.io`, `services`: how RBAC messages name a resource.
    pub(super) fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }
}

/// The resources served.
pub const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        status: false,
    },
    ResourceType { group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false, status: true },
    ResourceType { group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true, status: true },
    ResourceType {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        status: false,
    },
    ResourceType {
        group: "networking.k8s.io",
        version: "v1",
        plural: "ingresses",
        kind: "Ingress",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: "networking.k8s.io",
        version: "v1",
        plural: "ingressclasses",
        kind: "IngressClass",
        namespaced: false,
        status: false,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        status: false,
    },
    // Events the leader writes on Ingresses: stored and listed like any object, so tests read them.
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status: false,
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        status: true,
    },
    // The Gateway API's CRDs (served unless `FakeKube::uninstall_gateway_api`).
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1",
        plural: "gatewayclasses",
        kind: "GatewayClass",
        namespaced: false,
        status: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1",
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1",
        plural: "httproutes",
        kind: "HTTPRoute",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1",
        plural: "grpcroutes",
        kind: "GRPCRoute",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1",
        plural: "tlsroutes",
        kind: "TLSRoute",
        namespaced: true,
        status: true,
    },
    // TCPRoute and UDPRoute as the experimental channel before v1.6 serves them (v1alpha2 only).
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1alpha2",
        plural: "tcproutes",
        kind: "TCPRoute",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1alpha2",
        plural: "udproutes",
        kind: "UDPRoute",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1beta1",
        plural: "referencegrants",
        kind: "ReferenceGrant",
        namespaced: true,
        status: false,
    },
];

/// The Gateway API's group: its kinds are CRDs, which a cluster may not have.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

pub(super) fn resource_by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

pub(super) fn resource_by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) resource: &'static ResourceType,
    pub(super) namespace: String,
    pub(super) name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(super) fn name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as the history keeps it for watches to replay.
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) key: Key,
    pub(super) kind: EventType,
    /// The object after the change (before it, for a deletion, with the deletion's version).
    pub(super) object: Value,
    /// The object before the change (modifications only), for selector transitions.
    pub(super) previous: Option<Value>,
}

/// Most changes kept for watches; older versions get 410 Gone.
pub(super) const MAX_HISTORY: usize = 100_000;

#[derive(Default)]
pub(super) struct Store {
    /// The last resourceVersion handed out.
    pub(super) rv: u64,
    pub(super) objects: BTreeMap<Key, Value>,
    pub(super) history: VecDeque<Change>,
    /// Watches may resume from any version at or after this one.
    pub(super) oldest_resumable: u64,
    /// Per resource (plural): watches of it may resume only from this version on (a restarted
    /// apiserver's watch cache starts afresh for every resource).
    pub(super) resumable_from: HashMap<&'static str, u64>,
    pub(super) uid: u64,
    /// Paged lists: continue token → the page it continues. A token can be used again (as
    /// etcd serves a version until it is compacted); compaction expires every token.
    pub(super) pages: HashMap<String, Page>,
    pub(super) next_page: u64,
}

/// Where a paged list continues: its version, its whole result and the offset of the page.
#[derive(Debug, Clone)]
pub(super) struct Page {
    pub(super) rv: u64,
    pub(super) items: Arc<Vec<Value>>,
    pub(super) offset: usize,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub(super) enum Deleted {
    /// Removed; the object with the deletion's version.
    Gone(Value),
    /// Finalizers remain: marked with `deletionTimestamp` and kept until they are removed.
    Pending(Value),
}

pub(super) fn now_rfc3339() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(seconds)
}

/// `2024-05-01T12:00:00Z` for unix seconds (UTC, proleptic Gregorian).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

pub(super) fn resource_of(object: &Value) -> Option<&'static ResourceType> {
    resource_by_kind(object["apiVersion"].as_str()?, object["kind"].as_str()?)
}

pub(super) fn names_of(resource: &ResourceType, object: &Value) -> Option<(String, String)> {
    let name = object["metadata"]["name"].as_str()?.to_owned();
    let namespace = if resource.namespaced {
        object["metadata"]["namespace"].as_str().unwrap_or("default").to_owned()
    } else {
        String::new()
    };
    Some((namespace, name))
}

/// What part of an object a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// Everything (the handle's `apply`).
    Whole,
    /// Everything but `.status` (the main resource of a kind with a status subresource).
    Main,
    /// Only `.status`.
    Status,
}

impl Store {
    pub(super) fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// The changes after version `rv`, oldest first. The history is in version order, so this
    /// skips to them: every open watch looks after every write, and scanning a history of tens
    /// of thousands of changes each time made writes slow down as the history grew.
    pub(super) fn changes_after(&self, rv: u64) -> impl Iterator<Item = &Change> {
        self.history.range(self.history.partition_point(|c| c.rv <= rv)..)
    }

    /// The oldest version a watch of `resource` may resume from.
    pub(super) fn resumable(&self, resource: &ResourceType) -> u64 {
        self.oldest_resumable.max(self.resumable_from.get(resource.plural).copied().unwrap_or(0))
    }

    /// Forgets every resource's history and expires every continue token (compaction).
    pub(super) fn compact(&mut self) {
        self.history.clear();
        self.oldest_resumable = self.rv;
        self.pages.clear();
    }

    /// Forgets one resource's history: its watches resuming from before now get 410.
    pub(super) fn compact_resource(&mut self, resource: &'static ResourceType) {
        self.history.retain(|c| c.key.resource != resource);
        self.resumable_from.insert(resource.plural, self.rv);
        self.pages.retain(|_, p| p.items.first().is_none_or(|o| resource_of(o) != Some(resource)));
    }

    pub(super) fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > MAX_HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_resumable = dropped.rv;
            }
        }
    }

    /// Stores a new object; `keep_timestamp` keeps a given `creationTimestamp` (the handle).
    pub(super) fn create(&mut self, key: Key, mut object: Value, keep_timestamp: bool) -> Value {
        let rv = self.next_rv();
        self.uid += 1;
        let resource = key.resource;
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        let metadata = metadata_mut(&mut object);
        metadata.insert("name".into(), json!(key.name));
        if resource.namespaced {
            metadata.insert("namespace".into(), json!(key.namespace));
        } else {
            metadata.remove("namespace");
        }
        metadata.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{:012}", self.uid)));
        metadata.insert("resourceVersion".into(), json!(rv.to_string()));
        metadata.insert("generation".into(), json!(1));
        if !(keep_timestamp && metadata.get("creationTimestamp").is_some_and(Value::is_string)) {
            metadata.insert("creationTimestamp".into(), json!(now_rfc3339()));
        }
        self.objects.insert(key.clone(), object.clone());
        self.record(Change { rv, key, kind: EventType::Added, object: object.clone(), previous: None });
        object
    }

    /// Replaces `existing` by `object` (as `write` allows); identity fields are kept.
    /// A write that changes nothing keeps the version and records no event; removing the last
    /// finalizer of an object being deleted deletes it.
    pub(super) fn update(&mut self, key: &Key, existing: Value, mut object: Value, write: Write) -> Value {
        let resource = key.resource;
        match write {
            Write::Whole => {}
            Write::Main if resource.status => match existing.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            },
            Write::Main => {}
            Write::Status => {
                let status = object.get("status").cloned();
                object = existing.clone();
                match status {
                    Some(status) => object["status"] = status,
                    None => {
                        if let Some(map) = object.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
        }
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        let old_metadata = existing["metadata"].as_object().cloned().unwrap_or_default();
        let spec_changed = existing.get("spec") != object.get("spec");
        let metadata = metadata_mut(&mut object);
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            match old_metadata.get(field) {
                Some(value) => metadata.insert(field.into(), value.clone()),
                None => metadata.remove(field),
            };
        }
        // Deletion, once asked for, cannot be taken back.
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            match old_metadata.get(field) {
                Some(value) => metadata.insert(field.into(), value.clone()),
                None => metadata.remove(field),
            };
        }
        let generation = old_metadata.get("generation").and_then(Value::as_u64).unwrap_or(1);
        metadata.insert("generation".into(), json!(generation + u64::from(spec_changed)));
        metadata.insert("resourceVersion".into(), existing["metadata"]["resourceVersion"].clone());
        if object == existing {
            // A write that changes nothing is not a change: no new version, no event.
            return object;
        }
        let rv = self.next_rv();
        metadata_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        if object["metadata"].get("deletionTimestamp").is_some() && finalizers(&object).is_empty() {
            // The last finalizer is gone: the deletion asked for completes.
            self.objects.remove(key);
            self.record(Change {
                rv,
                key: key.clone(),
                kind: EventType::Deleted,
                object: object.clone(),
                previous: None,
            });
            return object;
        }
        self.objects.insert(key.clone(), object.clone());
        self.record(Change {
            rv,
            key: key.clone(),
            kind: EventType::Modified,
            object: object.clone(),
            previous: Some(existing),
        });
        object
    }

    /// Deletes an object, or, while it has finalizers, marks it with `deletionTimestamp` (once).
    pub(super) fn delete(&mut self, key: &Key) -> Option<Deleted> {
        let existing = self.objects.get(key)?.clone();
        if !finalizers(&existing).is_empty() {
            if existing["metadata"].get("deletionTimestamp").is_some() {
                return Some(Deleted::Pending(existing));
            }
            let mut marked = existing.clone();
            let rv = self.next_rv();
            let metadata = metadata_mut(&mut marked);
            metadata.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
            metadata.insert("resourceVersion".into(), json!(rv.to_string()));
            self.objects.insert(key.clone(), marked.clone());
            self.record(Change {
                rv,
                key: key.clone(),
                kind: EventType::Modified,
                object: marked.clone(),
                previous: Some(existing),
            });
            return Some(Deleted::Pending(marked));
        }
        let mut object = self.objects.remove(key)?;
        let rv = self.next_rv();
        metadata_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        self.record(Change {
            rv,
            key: key.clone(),
            kind: EventType::Deleted,
            object: object.clone(),
            previous: None,
        });
        Some(Deleted::Gone(object))
    }
}

fn finalizers(object: &Value) -> &[Value] {
    object["metadata"]["finalizers"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

pub(super) fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    let map = object.as_object_mut().expect("an object");
    let metadata = map.entry("metadata").or_insert_with(|| json!({}));
    if !metadata.is_object() {
        *metadata = json!({});
    }
    metadata.as_object_mut().expect("an object")
}

/// RFC 7386 JSON merge patch (strategic merge patches are applied the same way).
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A parsed label or field selector: every requirement must hold.
#[derive(Debug, Default, Clone)]
pub(super) struct Selector(Vec<Requirement>);

#[derive(Debug, Clone)]
pub(super) enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    pub(super) fn parse(text: &str) -> Selector {
        let mut requirements = Vec::new();
        // Split on commas outside parentheses.
        let mut depth = 0;
        let mut start = 0;
        let mut parts = Vec::new();
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            if let Some((k, v)) = part.split_once("!=") {
                requirements.push(Requirement::NotEquals(k.trim().into(), v.trim().into()));
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                requirements.push(Requirement::Equals(k.trim().into(), v.trim().into()));
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                requirements.push(Requirement::NotIn(k.trim().into(), set(rest)));
            } else if let Some((k, rest)) = part.split_once(" in ") {
                requirements.push(Requirement::In(k.trim().into(), set(rest)));
            } else if let Some(k) = part.strip_prefix('!') {
                requirements.push(Requirement::NotExists(k.trim().into()));
            } else {
                requirements.push(Requirement::Exists(part.into()));
            }
        }
        Selector(requirements)
    }

    pub(super) fn matches(&self, value: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => value(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => value(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => value(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => value(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => value(k).is_some(),
            Requirement::NotExists(k) => value(k).is_none(),
        })
    }
}

/// The selectors and namespace of a list or watch.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    pub(super) resource: &'static ResourceType,
    pub(super) namespace: Option<String>,
    pub(super) labels: Selector,
    pub(super) fields: Selector,
}

impl Filter {
    /// What a list or watch of `resource` in `namespace` (`None`: all) selects with the
    /// `labelSelector` and `fieldSelector` of its query.
    pub(super) fn new(
        resource: &'static ResourceType,
        namespace: Option<String>,
        query: &HashMap<String, String>,
    ) -> Filter {
        Filter {
            resource,
            namespace,
            labels: Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")),
            fields: Selector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or("")),
        }
    }

    pub(super) fn in_scope(&self, key: &Key) -> bool {
        key.resource == self.resource && self.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        let labels = |k: &str| object["metadata"]["labels"][k].as_str().map(str::to_owned);
        let fields = |k: &str| -> Option<String> {
            let mut value = object;
            for part in k.split('.') {
                value = value.get(part)?;
            }
            value.as_str().map(str::to_owned)
        };
        self.labels.matches(labels) && self.fields.matches(fields)
    }
}
