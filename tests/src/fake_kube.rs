//! A fake Kubernetes API server for the Kubernetes provider's suites: plain HTTP/1.1 on
//! loopback, reached through a kubeconfig like a real cluster.
//!
//! It speaks the parts of the API that controllers rely on, with their real semantics:
//!
//! - **list** with a consistent `metadata.resourceVersion`, `limit`/`continue` paging (each
//!   paged list is a snapshot), label and field selectors;
//! - **watch** (`?watch=true`) as a chunked stream of JSON lines, resumed from a
//!   `resourceVersion` (only newer events are sent), `ADDED` events for the current state when
//!   no version is given, `BOOKMARK`s when asked for, `timeoutSeconds`, and the `410 Gone`
//!   `ERROR` event (reason `Expired`) when the version asked for is older than the history kept
//!   ([`FakeKube::compact`]); selector transitions turn into `ADDED`/`DELETED` as on a real
//!   server;
//! - **get, create, replace, merge patch, delete**, with optimistic concurrency (`409
//!   Conflict` when a replace carries a stale `metadata.resourceVersion`), `AlreadyExists`, and
//!   the **status subresource** (writes to `/status` change only `.status`, other writes keep
//!   it);
//! - Leases (`coordination.k8s.io/v1`) like any other object, which is all leader election
//!   needs.
//!
//! Fault injection: the server can go down (its port refuses connections and every open
//! connection, watches included, is cut) and come back on the same port, answer every request
//! with an error status (500), answer slowly, cut the open watches, forget its history (watches
//! resuming from before get 410), and refuse chosen verbs on chosen resources with a 403 worded
//! like RBAC's.
//!
//! Tests drive it through this handle ([`FakeKube::apply`], [`FakeKube::delete`], ...) without
//! HTTP; the handle's writes are seen by watchers exactly like writes over the API.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Frame};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

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
    fn qualified(&self) -> String {
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
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status: false,
    },
];

fn resource_by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

fn resource_by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    resource: &'static ResourceType,
    namespace: String,
    name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as the history keeps it for watches to replay.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    key: Key,
    kind: EventType,
    /// The object after the change (before it, for a deletion, with the deletion's version).
    object: Value,
    /// The object before the change (modifications only), for selector transitions.
    previous: Option<Value>,
}

/// Most changes kept for watches; older versions get 410 Gone.
const MAX_HISTORY: usize = 100_000;

#[derive(Default)]
struct Store {
    /// The last resourceVersion handed out.
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// Watches may resume from any version at or after this one.
    oldest_resumable: u64,
    uid: u64,
    /// Paged lists in progress: continue token → (list version, items left).
    pages: HashMap<String, (u64, VecDeque<Value>)>,
    next_page: u64,
}

/// Injected faults; see the setters on [`FakeKube`].
#[derive(Debug, Clone, Default)]
struct Faults {
    error_status: Option<u16>,
    delay: Duration,
    /// (verb, plural) pairs answered with 403.
    forbidden: Vec<(String, String)>,
}

/// One request the server answered, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    /// The request body (JSON writes), as text.
    pub body: String,
}

struct Shared {
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<Recorded>>,
    /// The store's resourceVersion, for watches to wait on.
    changed: watch::Sender<u64>,
    /// Bumped to cut every open watch stream.
    cut_watches: watch::Sender<u64>,
    /// Bumped to cut every open connection (the server going down).
    cut_connections: watch::Sender<u64>,
    /// Whether the port accepts connections.
    up: watch::Sender<bool>,
    bookmark_interval: Mutex<Duration>,
    open_watches: std::sync::atomic::AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running fake API server; stops on drop.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKube {
    /// Starts a server on a free loopback port, on a thread of its own.
    pub fn start() -> anyhow::Result<FakeKube> {
        let (changed, _) = watch::channel(0);
        let (cut_watches, _) = watch::channel(0);
        let (cut_connections, _) = watch::channel(0);
        let (up, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store { oldest_resumable: 0, ..Store::default() }),
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
            changed,
            cut_watches,
            cut_connections,
            up,
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            open_watches: std::sync::atomic::AtomicUsize::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-kube")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(bind("127.0.0.1:0".parse()?))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("fake-kube".into()).spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        _ = serve(listener, addr, shared) => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?
        };
        Ok(FakeKube { addr, shared, stop: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that points at this server (plain HTTP, no credentials) into `dir`
    /// and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// The kubeconfig text.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    /// Creates or replaces an object (`apiVersion`, `kind`, `metadata.name` and, for
    /// namespaced kinds, `metadata.namespace`, default `default`, are needed). A
    /// `metadata.creationTimestamp` given on creation is kept, so tests can order objects by
    /// age; otherwise the server sets it. Returns the stored object.
    pub fn apply(&self, object: Value) -> Value {
        let resource = resource_of(&object).expect("apply: unknown apiVersion/kind");
        let (namespace, name) = names_of(resource, &object).expect("apply: metadata.name is needed");
        let key = Key { resource, namespace, name };
        let mut store = lock(&self.shared.store);
        let stored = match store.objects.get(&key).cloned() {
            Some(existing) => store.update(&key, existing, object, Write::Whole),
            None => store.create(key, object, true),
        };
        drop(store);
        self.shared.notify();
        stored
    }

    /// Deletes an object; false when it did not exist.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let resource = resource_by_kind(api_version, kind).expect("delete: unknown apiVersion/kind");
        let namespace = if resource.namespaced { namespace.to_owned() } else { String::new() };
        let key = Key { resource, namespace, name: name.to_owned() };
        let deleted = lock(&self.shared.store).delete(&key).is_some();
        self.shared.notify();
        deleted
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource_by_kind(api_version, kind)?;
        let namespace = if resource.namespaced { namespace.to_owned() } else { String::new() };
        lock(&self.shared.store).objects.get(&Key { resource, namespace, name: name.to_owned() }).cloned()
    }

    /// Every stored object of a kind, in key order.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(resource) = resource_by_kind(api_version, kind) else { return Vec::new() };
        let store = lock(&self.shared.store);
        store.objects.iter().filter(|(k, _)| k.resource == resource).map(|(_, v)| v.clone()).collect()
    }

    /// How many stored objects of a kind `matches` accepts, without copying them (cheap enough
    /// to poll with tens of thousands of objects stored).
    pub fn count(&self, api_version: &str, kind: &str, matches: impl Fn(&Value) -> bool) -> usize {
        let Some(resource) = resource_by_kind(api_version, kind) else { return 0 };
        let store = lock(&self.shared.store);
        store.objects.iter().filter(|(k, v)| k.resource == resource && matches(v)).count()
    }

    /// The last resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Down: the port refuses connections and every open connection (watches included) is
    /// cut. Up again: the same port accepts again; the stored objects are kept.
    pub fn set_up(&self, up: bool) {
        self.shared.up.send_replace(up);
        if !up {
            self.shared.cut_connections.send_modify(|n| *n += 1);
        }
    }

    /// Answer every request with this status (e.g. 500) and a `Status` body; `None` to stop.
    /// Open watch streams are cut when it starts, as a failing server would.
    pub fn fail_requests(&self, status: Option<u16>) {
        lock(&self.shared.faults).error_status = status;
        if status.is_some() {
            self.drop_watches();
        }
    }

    /// Delay every response by this much (zero to stop).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.faults).delay = delay;
    }

    /// Refuse `verb` (get, list, watch, create, update, patch, delete) on `plural` (e.g.
    /// `secrets`) with 403, as RBAC does.
    pub fn forbid(&self, verb: &str, plural: &str) {
        lock(&self.shared.faults).forbidden.push((verb.to_owned(), plural.to_owned()));
    }

    /// Lifts every [`FakeKube::forbid`].
    pub fn allow_all(&self) {
        lock(&self.shared.faults).forbidden.clear();
    }

    /// Cuts every open watch stream (clients resume from their last version).
    pub fn drop_watches(&self) {
        self.shared.cut_watches.send_modify(|n| *n += 1);
    }

    /// Forgets the history: watches resuming from any version before now get `410 Gone`
    /// (and must list again). Open watches are cut.
    pub fn compact(&self) {
        {
            let mut store = lock(&self.shared.store);
            store.history.clear();
            store.oldest_resumable = store.rv;
        }
        self.drop_watches();
    }

    /// How often open watches that asked for bookmarks get one (default 1 s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.shared.bookmark_interval) = interval;
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Requests whose method is `method` and whose path ends with `suffix`.
    pub fn count_requests(&self, method: &str, suffix: &str) -> usize {
        lock(&self.shared.requests).iter().filter(|r| r.method == method && r.path.ends_with(suffix)).count()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn notify(&self) {
        let rv = lock(&self.store).rv;
        self.changed.send_replace(rv);
    }
}

fn now_rfc3339() -> String {
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

fn resource_of(object: &Value) -> Option<&'static ResourceType> {
    resource_by_kind(object["apiVersion"].as_str()?, object["kind"].as_str()?)
}

fn names_of(resource: &ResourceType, object: &Value) -> Option<(String, String)> {
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
enum Write {
    /// Everything (the handle's `apply`).
    Whole,
    /// Everything but `.status` (the main resource of a kind with a status subresource).
    Main,
    /// Only `.status`.
    Status,
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// The changes after version `rv`, oldest first. The history is in version order, so this
    /// skips to them: every open watch looks after every write, and scanning a history of tens
    /// of thousands of changes each time made writes slow down as the history grew.
    fn changes_after(&self, rv: u64) -> impl Iterator<Item = &Change> {
        self.history.range(self.history.partition_point(|c| c.rv <= rv)..)
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > MAX_HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_resumable = dropped.rv;
            }
        }
    }

    /// Stores a new object; `keep_timestamp` keeps a given `creationTimestamp` (the handle).
    fn create(&mut self, key: Key, mut object: Value, keep_timestamp: bool) -> Value {
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
    fn update(&mut self, key: &Key, existing: Value, mut object: Value, write: Write) -> Value {
        let rv = self.next_rv();
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
        let generation = old_metadata.get("generation").and_then(Value::as_u64).unwrap_or(1);
        metadata.insert("generation".into(), json!(generation + u64::from(spec_changed)));
        metadata.insert("resourceVersion".into(), json!(rv.to_string()));
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

    fn delete(&mut self, key: &Key) -> Option<Value> {
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
        Some(object)
    }
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
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

/// Binds with SO_REUSEADDR, so the same port can be bound again after going down.
async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections while up; going down closes the port, coming up binds it again.
async fn serve(listener: tokio::net::TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    let mut up = shared.up.subscribe();
    loop {
        let Some(current) = listener.as_ref() else {
            // Down: wait to come up, then take the same port again.
            if up.wait_for(|up| *up).await.is_err() {
                return;
            }
            match bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        };
        tokio::select! {
            accepted = current.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut cut = shared.cut_connections.subscribe();
                    let service = {
                        let shared = shared.clone();
                        hyper::service::service_fn(move |request| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, request).await) }
                        })
                    };
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = cut.changed() => {}
                    }
                });
            }
            _ = up.wait_for(|up| !*up) => {
                listener = None;
            }
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .expect("a valid response")
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_body(code, reason, message),
    )
}

/// A request's target, parsed.
#[derive(Debug)]
struct Target {
    resource: &'static ResourceType,
    /// `None`: all namespaces (or a cluster-scoped kind).
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// The target of an API path; `None` for paths this server does not serve.
fn parse_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some((*namespace).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let resource = resource_by_path(group, version, plural)?;
    if status && !resource.status {
        return None;
    }
    if resource.namespaced != namespace.is_some() && name.is_some() {
        return None;
    }
    if !resource.namespaced && namespace.is_some() {
        return None;
    }
    Some(Target { resource, namespace, name, status })
}

fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: Arc<Shared>, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let faults = lock(&shared.faults).clone();
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let response = if let Some(code) = faults.error_status {
        status_response(
            code,
            "InternalError",
            "an error on the server (\"injected fault\") has prevented the request from succeeding",
        )
    } else {
        route(&shared, &method, &path, &query, &body, &faults)
    };
    lock(&shared.requests).push(Recorded {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    response
}

fn verb_of(method: &Method, target: &Target, query: &HashMap<String, String>) -> &'static str {
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match *method {
        Method::GET if watch => "watch",
        Method::GET if target.name.is_some() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    body: &Bytes,
    faults: &Faults,
) -> Response<Body> {
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}),
        );
    }
    let Some(target) = parse_target(path) else {
        let message = format!("the server could not find the requested resource ({path})");
        return status_response(404, "NotFound", &message);
    };
    let query = query_map(query);
    let verb = verb_of(method, &target, &query);
    if faults.forbidden.iter().any(|(v, p)| v == verb && p == target.resource.plural) {
        let scope = match &target.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let message = format!(
            "{} is forbidden: User \"system:serviceaccount:sluice:sluice\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            target.resource.qualified(),
            target.resource.plural,
            target.resource.group,
        );
        return status_response(403, "Forbidden", &message);
    }
    let subresource = if target.status { Write::Status } else { Write::Main };
    match verb {
        "watch" => watch_response(shared, &target, &query),
        "list" => list(shared, &target, &query),
        "get" => {
            let key = key_of(&target);
            match lock(&shared.store).objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => not_found(&target),
            }
        }
        "create" => {
            let Ok(object) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the body is not JSON");
            };
            let Some(name) = object["metadata"]["name"].as_str() else {
                return status_response(422, "Invalid", "metadata.name: Required value: name is required");
            };
            let key = Key {
                resource: target.resource,
                namespace: target.namespace.clone().unwrap_or_default(),
                name: name.to_owned(),
            };
            let mut store = lock(&shared.store);
            if store.objects.contains_key(&key) {
                return status_response(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{}\" already exists", target.resource.qualified(), key.name),
                );
            }
            let stored = store.create(key, object, false);
            drop(store);
            shared.notify();
            json_response(StatusCode::CREATED, &stored)
        }
        "update" => {
            let Ok(object) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the body is not JSON");
            };
            let key = key_of(&target);
            let mut store = lock(&shared.store);
            let Some(existing) = store.objects.get(&key).cloned() else {
                return not_found(&target);
            };
            if let Some(wanted) = object["metadata"]["resourceVersion"].as_str()
                && Some(wanted) != existing["metadata"]["resourceVersion"].as_str()
            {
                return status_response(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                        target.resource.qualified(),
                        key.name
                    ),
                );
            }
            let stored = store.update(&key, existing, object, subresource);
            drop(store);
            shared.notify();
            json_response(StatusCode::OK, &stored)
        }
        "patch" => {
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the body is not JSON");
            };
            let key = key_of(&target);
            let mut store = lock(&shared.store);
            let Some(existing) = store.objects.get(&key).cloned() else {
                return not_found(&target);
            };
            let mut object = existing.clone();
            merge_patch(&mut object, &patch);
            let stored = store.update(&key, existing, object, subresource);
            drop(store);
            shared.notify();
            json_response(StatusCode::OK, &stored)
        }
        "delete" => {
            let key = key_of(&target);
            let deleted = lock(&shared.store).delete(&key);
            shared.notify();
            match deleted {
                Some(object) => json_response(StatusCode::OK, &object),
                None => not_found(&target),
            }
        }
        _ => status_response(405, "MethodNotAllowed", "the server does not allow this method"),
    }
}

fn key_of(target: &Target) -> Key {
    Key {
        resource: target.resource,
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
    }
}

fn not_found(target: &Target) -> Response<Body> {
    let name = target.name.as_deref().unwrap_or("");
    status_response(404, "NotFound", &format!("{} \"{name}\" not found", target.resource.qualified()))
}

/// RFC 7386 JSON merge patch (strategic merge patches are applied the same way).
fn merge_patch(target: &mut Value, patch: &Value) {
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
struct Selector(Vec<Requirement>);

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(text: &str) -> Selector {
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

    fn matches(&self, value: impl Fn(&str) -> Option<String>) -> bool {
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
struct Filter {
    resource: &'static ResourceType,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn new(target: &Target, query: &HashMap<String, String>) -> Filter {
        Filter {
            resource: target.resource,
            namespace: target.namespace.clone(),
            labels: Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")),
            fields: Selector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or("")),
        }
    }

    fn in_scope(&self, key: &Key) -> bool {
        key.resource == self.resource && self.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
    }

    fn matches(&self, object: &Value) -> bool {
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

fn list(shared: &Arc<Shared>, target: &Target, query: &HashMap<String, String>) -> Response<Body> {
    let mut store = lock(&shared.store);
    let (rv, mut items) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match store.pages.remove(token) {
            Some(page) => page,
            None => {
                return status_response(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
        },
        None => {
            let filter = Filter::new(target, query);
            let items: VecDeque<Value> = store
                .objects
                .iter()
                .filter(|(k, v)| filter.in_scope(k) && filter.matches(v))
                .map(|(_, v)| v.clone())
                .collect();
            (store.rv, items)
        }
    };
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let page: Vec<Value> = match limit {
        Some(limit) if items.len() > limit => items.drain(..limit).collect(),
        _ => items.drain(..).collect(),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if !items.is_empty() {
        store.next_page += 1;
        let token = format!("page-{}", store.next_page);
        metadata["continue"] = json!(token.clone());
        metadata["remainingItemCount"] = json!(items.len());
        store.pages.insert(token, (rv, items));
    }
    let resource = target.resource;
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": resource.api_version(),
            "kind": format!("{}List", resource.kind),
            "metadata": metadata,
            "items": page,
        }),
    )
}

/// Starts a watch: events after the version asked for (or the current state as `ADDED`
/// events when none), then live changes, bookmarks and the timeout.
fn watch_response(shared: &Arc<Shared>, target: &Target, query: &HashMap<String, String>) -> Response<Body> {
    let filter = Filter::new(target, query);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from: Option<u64> = query.get("resourceVersion").and_then(|v| v.parse().ok()).filter(|v| *v > 0);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut first = Vec::new();
    let start_rv;
    {
        let store = lock(&shared.store);
        match from {
            Some(rv) if rv < store.oldest_resumable => {
                let event = json!({
                    "type": "ERROR",
                    "object": status_body(410, "Expired", &format!("too old resource version: {rv} ({})", store.oldest_resumable)),
                });
                first.push(line(&event));
                start_rv = None;
            }
            Some(rv) => {
                for change in store.changes_after(rv) {
                    if let Some(event) = event_for(&filter, change) {
                        first.push(line(&event));
                    }
                }
                start_rv = Some(store.rv);
            }
            None => {
                for (key, object) in &store.objects {
                    if filter.in_scope(key) && filter.matches(object) {
                        first.push(line(&json!({"type": "ADDED", "object": object})));
                    }
                }
                start_rv = Some(store.rv);
            }
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        use std::sync::atomic::Ordering;
        shared.open_watches.fetch_add(1, Ordering::Relaxed);
        for chunk in first {
            if sender.send(chunk).await.is_err() {
                shared.open_watches.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
        if let Some(mut sent_rv) = start_rv {
            let mut changed = shared.changed.subscribe();
            let mut cut = shared.cut_watches.subscribe();
            let mut cut_all = shared.cut_connections.subscribe();
            let deadline = tokio::time::Instant::now() + timeout;
            let interval = *lock(&shared.bookmark_interval);
            let mut bookmark = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                // A cut wins over changes that came after it.
                if cut.has_changed().unwrap_or(true) || cut_all.has_changed().unwrap_or(true) {
                    break;
                }
                // Send whatever happened since the last look.
                let pending: Vec<Bytes> = {
                    let store = lock(&shared.store);
                    let events = store
                        .changes_after(sent_rv)
                        .filter_map(|c| event_for(&filter, c))
                        .map(|e| line(&e))
                        .collect();
                    sent_rv = store.rv;
                    events
                };
                for chunk in pending {
                    if sender.send(chunk).await.is_err() {
                        shared.open_watches.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
                tokio::select! {
                    biased;
                    _ = cut.changed() => break,
                    _ = cut_all.changed() => break,
                    r = changed.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = bookmark.tick(), if bookmarks => {
                        let event = json!({
                            "type": "BOOKMARK",
                            "object": {
                                "apiVersion": filter.resource.api_version(),
                                "kind": filter.resource.kind,
                                "metadata": {"resourceVersion": sent_rv.to_string()},
                            },
                        });
                        if sender.send(line(&event)).await.is_err() {
                            break;
                        }
                    }
                    _ = sender.closed() => break,
                }
            }
        }
        shared.open_watches.fetch_sub(1, Ordering::Relaxed);
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), receiver))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

fn line(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// The event a watcher with `filter` sees for `change`, if any: a change that makes an object
/// match is `ADDED`, one that makes it stop matching is `DELETED`.
fn event_for(filter: &Filter, change: &Change) -> Option<Value> {
    if !filter.in_scope(&change.key) {
        return None;
    }
    let now = filter.matches(&change.object);
    let kind = match change.kind {
        EventType::Modified => {
            let before = change.previous.as_ref().is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => EventType::Modified,
                (false, true) => EventType::Added,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            }
        }
        kind if now => kind,
        _ => return None,
    };
    Some(json!({"type": kind.name(), "object": change.object}))
}

/// Builders for the objects the suites need, as JSON.
pub mod objects {
    use serde_json::{Value, json};

    /// An Ingress with one rule: `host` (empty for none), `path` (Prefix) to `service:port`.
    pub fn ingress(
        namespace: &str,
        name: &str,
        class: &str,
        host: &str,
        path: &str,
        service: &str,
        port: u16,
    ) -> Value {
        let mut rule = json!({
            "http": {"paths": [{
                "path": path,
                "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": port}}},
            }]}
        });
        if !host.is_empty() {
            rule["host"] = json!(host);
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"ingressClassName": class, "rules": [rule]},
        })
    }

    /// An IngressClass for `controller`.
    pub fn ingress_class(name: &str, controller: &str, default: bool) -> Value {
        let mut class = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": name},
            "spec": {"controller": controller},
        });
        if default {
            class["metadata"]["annotations"] = json!({"ingressclass.kubernetes.io/is-default-class": "true"});
        }
        class
    }

    /// A ClusterIP Service with one TCP port named `http`.
    pub fn service(namespace: &str, name: &str, port: u16, target_port: u16) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {
                "type": "ClusterIP",
                "ports": [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}],
            },
        })
    }

    /// One endpoint of an EndpointSlice: address and its conditions.
    #[derive(Debug, Clone)]
    pub struct SliceEndpoint {
        pub address: String,
        pub ready: bool,
        pub serving: bool,
        pub terminating: bool,
    }

    impl SliceEndpoint {
        pub fn ready(address: &str) -> SliceEndpoint {
            SliceEndpoint { address: address.to_owned(), ready: true, serving: true, terminating: false }
        }

        pub fn not_ready(address: &str) -> SliceEndpoint {
            SliceEndpoint { address: address.to_owned(), ready: false, serving: false, terminating: false }
        }

        /// Shutting down but still answering (the rolling-update drain).
        pub fn terminating(address: &str) -> SliceEndpoint {
            SliceEndpoint { address: address.to_owned(), ready: false, serving: true, terminating: true }
        }
    }

    /// An EndpointSlice of `service` with port `http` = `port`.
    pub fn endpoint_slice(
        namespace: &str,
        name: &str,
        service: &str,
        address_type: &str,
        port: u16,
        endpoints: &[SliceEndpoint],
    ) -> Value {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [e.address],
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "namespace": namespace,
                "name": name,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        })
    }

    /// A `kubernetes.io/tls` Secret from PEM text.
    pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"namespace": namespace, "name": name},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64(cert_pem.as_bytes()), "tls.key": base64(key_pem.as_bytes())},
        })
    }

    /// Standard base64 with padding.
    pub fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::TcpStream,
        sync::mpsc,
    };

    use super::{objects::*, *};

    /// One request over a new connection; (status, body as JSON).
    fn call(server: &FakeKube, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let content_type =
            if method == "PATCH" { "application/merge-patch+json" } else { "application/json" };
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// A watch whose events arrive on a channel, one JSON value each.
    struct Watch {
        events: mpsc::Receiver<Value>,
        _stream: TcpStream,
    }

    impl Watch {
        fn open(server: &FakeKube, path_and_query: &str) -> Watch {
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            write!(stream, "GET {path_and_query} HTTP/1.1\r\nHost: k\r\n\r\n").unwrap();
            let (tx, events) = mpsc::channel();
            let reader = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut line = String::new();
                // Skip the head.
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                // Chunked: size line, data, CRLF. Events are whole lines inside the data.
                let mut pending = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let Ok(size) = usize::from_str_radix(line.trim(), 16) else { return };
                    if size == 0 {
                        return;
                    }
                    let mut data = vec![0; size + 2];
                    if reader.read_exact(&mut data).is_err() {
                        return;
                    }
                    pending.push_str(&String::from_utf8_lossy(&data[..size]));
                    while let Some((event, rest)) = pending.split_once('\n') {
                        if let Ok(value) = serde_json::from_str(event) {
                            let _ = tx.send(value);
                        }
                        pending = rest.to_owned();
                    }
                }
            });
            Watch { events, _stream: stream }
        }

        fn next(&self) -> Value {
            self.events.recv_timeout(Duration::from_secs(5)).expect("a watch event within 5 s")
        }

        /// The next event that is not a bookmark.
        fn next_change(&self) -> Value {
            loop {
                let event = self.next();
                if event["type"] != "BOOKMARK" {
                    return event;
                }
            }
        }

        fn ended(&self) -> bool {
            loop {
                match self.events.recv_timeout(Duration::from_secs(5)) {
                    Ok(_) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                    Err(mpsc::RecvTimeoutError::Timeout) => return false,
                }
            }
        }
    }

    const SERVICES: &str = "/api/v1/namespaces/default/services";

    fn rv_of(value: &Value) -> u64 {
        value["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
    }

    #[test]
    fn create_get_list_and_versions() {
        let server = FakeKube::start().unwrap();
        let (status, created) = call(&server, "POST", SERVICES, Some(&service("default", "web", 80, 8080)));
        assert_eq!(status, 201);
        assert_eq!(created["metadata"]["resourceVersion"], "1");
        assert!(created["metadata"]["uid"].is_string());
        let (status, _) = call(&server, "POST", SERVICES, Some(&service("default", "web", 80, 8080)));
        assert_eq!(status, 409, "AlreadyExists");
        server.apply(service("other", "api", 80, 8080));
        let (status, list) = call(&server, "GET", "/api/v1/services", None);
        assert_eq!(status, 200);
        assert_eq!(list["kind"], "ServiceList");
        assert_eq!(list["metadata"]["resourceVersion"], "2");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        assert_eq!(server.count("v1", "Service", |s| s["metadata"]["namespace"] == "other"), 1);
        let (_, namespaced) = call(&server, "GET", SERVICES, None);
        assert_eq!(namespaced["items"].as_array().unwrap().len(), 1);
        let (status, got) = call(&server, "GET", &format!("{SERVICES}/web"), None);
        assert_eq!((status, got["spec"]["ports"][0]["port"].as_u64()), (200, Some(80)));
        let (status, missing) = call(&server, "GET", &format!("{SERVICES}/nope"), None);
        assert_eq!((status, missing["reason"].as_str()), (404, Some("NotFound")));
    }

    #[test]
    fn paged_lists_are_one_consistent_snapshot() {
        let server = FakeKube::start().unwrap();
        for i in 0..5 {
            server.apply(service("default", &format!("s{i}"), 80, 8080));
        }
        let (_, first) = call(&server, "GET", &format!("{SERVICES}?limit=2"), None);
        assert_eq!(first["items"].as_array().unwrap().len(), 2);
        let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
        // A change between pages is not in this list.
        server.apply(service("default", "s9", 80, 8080));
        let (_, second) = call(&server, "GET", &format!("{SERVICES}?limit=10&continue={token}"), None);
        assert_eq!(second["items"].as_array().unwrap().len(), 3);
        assert!(second["metadata"].get("continue").is_none());
        assert_eq!(second["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);
        let (status, _) = call(&server, "GET", &format!("{SERVICES}?limit=10&continue={token}"), None);
        assert_eq!(status, 410, "a used continue token has expired");
    }

    #[test]
    fn replace_checks_the_version_and_keeps_status() {
        let server = FakeKube::start().unwrap();
        let path = "/apis/networking.k8s.io/v1/namespaces/default/ingresses/web";
        let stored = server.apply(ingress("default", "web", "sluice", "a.test", "/", "web", 80));
        let mut stale = stored.clone();
        stale["metadata"]["resourceVersion"] = json!("0");
        assert_eq!(call(&server, "PUT", path, Some(&stale)).0, 409);
        // The status subresource changes only the status.
        let mut with_status = stored.clone();
        with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
        with_status["spec"]["ingressClassName"] = json!("ignored");
        let (status, after) = call(&server, "PUT", &format!("{path}/status"), Some(&with_status));
        assert_eq!(status, 200);
        assert_eq!(after["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
        assert_eq!(after["spec"]["ingressClassName"], "sluice");
        // A main-resource write keeps the status.
        let mut spec_change = after.clone();
        spec_change["spec"]["ingressClassName"] = json!("other");
        spec_change["status"] = json!({});
        let (_, after) = call(&server, "PUT", path, Some(&spec_change));
        assert_eq!(after["spec"]["ingressClassName"], "other");
        assert_eq!(after["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
        assert_eq!(after["metadata"]["generation"], 2);
        // A merge patch on the status.
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"hostname": "lb.test"}]}}});
        let (status, after) = call(&server, "PATCH", &format!("{path}/status"), Some(&patch));
        assert_eq!(status, 200);
        assert_eq!(after["status"]["loadBalancer"]["ingress"], json!([{"hostname": "lb.test"}]));
        assert_eq!(server.count_requests("PATCH", "/web/status"), 1);
    }

    #[test]
    fn watch_replays_from_a_version_then_streams_changes() {
        let server = FakeKube::start().unwrap();
        let a = server.apply(service("default", "a", 80, 8080));
        server.apply(service("default", "b", 80, 8080));
        let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion={}", rv_of(&a)));
        let event = watch.next_change();
        assert_eq!(
            (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some("b"))
        );
        server.apply(service("default", "a", 81, 8080));
        let event = watch.next_change();
        assert_eq!(event["type"], "MODIFIED");
        assert_eq!(event["object"]["spec"]["ports"][0]["port"], 81);
        server.delete("v1", "Service", "default", "b");
        let event = watch.next_change();
        assert_eq!(
            (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
            (Some("DELETED"), Some("b"))
        );
        assert_eq!(rv_of(&event["object"]), server.resource_version());
        // Other namespaces are not in a namespaced watch.
        server.apply(service("other", "c", 80, 8080));
        server.apply(service("default", "d", 80, 8080));
        assert_eq!(watch.next_change()["object"]["metadata"]["name"], "d");
    }

    #[test]
    fn watch_without_a_version_starts_with_the_current_state() {
        let server = FakeKube::start().unwrap();
        server.apply(service("default", "a", 80, 8080));
        let watch = Watch::open(&server, &format!("{SERVICES}?watch=1"));
        let event = watch.next_change();
        assert_eq!(
            (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some("a"))
        );
    }

    #[test]
    fn bookmarks_carry_the_current_version() {
        let server = FakeKube::start().unwrap();
        server.set_bookmark_interval(Duration::from_millis(50));
        server.apply(service("default", "a", 80, 8080));
        let watch = Watch::open(
            &server,
            &format!("{SERVICES}?watch=true&resourceVersion=1&allowWatchBookmarks=true"),
        );
        let event = watch.next();
        assert_eq!(event["type"], "BOOKMARK");
        assert_eq!(event["object"]["metadata"]["resourceVersion"], "1");
        assert_eq!(event["object"]["kind"], "Service");
    }

    #[test]
    fn an_expired_version_gets_410_gone_as_a_watch_event() {
        let server = FakeKube::start().unwrap();
        server.apply(service("default", "a", 80, 8080));
        server.apply(service("default", "b", 80, 8080));
        server.compact();
        let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=1"));
        let event = watch.next();
        assert_eq!(event["type"], "ERROR");
        assert_eq!(event["object"]["code"], 410);
        assert_eq!(event["object"]["reason"], "Expired");
        assert!(watch.ended(), "the stream ends after 410");
        // From the current version it is fine.
        let watch = Watch::open(
            &server,
            &format!("{SERVICES}?watch=true&resourceVersion={}", server.resource_version()),
        );
        server.apply(service("default", "c", 80, 8080));
        assert_eq!(watch.next_change()["object"]["metadata"]["name"], "c");
    }

    #[test]
    fn label_and_field_selectors_filter_and_transitions_become_added_and_deleted() {
        let server = FakeKube::start().unwrap();
        let slice = |service: &str| {
            endpoint_slice("default", "s1", service, "IPv4", 8080, &[SliceEndpoint::ready("10.0.0.1")])
        };
        server.apply(slice("web"));
        let path = "/apis/discovery.k8s.io/v1/endpointslices";
        let (_, list) =
            call(&server, "GET", &format!("{path}?labelSelector=kubernetes.io%2Fservice-name%3Dweb"), None);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        let (_, list) =
            call(&server, "GET", &format!("{path}?labelSelector=kubernetes.io%2Fservice-name%3Dapi"), None);
        assert_eq!(list["items"].as_array().unwrap().len(), 0);
        let watch = Watch::open(
            &server,
            &format!(
                "{path}?watch=true&resourceVersion={}&labelSelector=kubernetes.io%2Fservice-name%3Dweb",
                server.resource_version()
            ),
        );
        server.apply(slice("api"));
        assert_eq!(watch.next_change()["type"], "DELETED", "no longer matching");
        server.apply(slice("web"));
        assert_eq!(watch.next_change()["type"], "ADDED", "matching again");
        // Field selector on the Secret type.
        server.apply(tls_secret("default", "tls", "CERT", "KEY"));
        server.apply(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque"}, "type": "Opaque"}),
        );
        let (_, list) =
            call(&server, "GET", "/api/v1/secrets?fieldSelector=type%3Dkubernetes.io%2Ftls", None);
        let names: Vec<&str> =
            list["items"].as_array().unwrap().iter().filter_map(|s| s["metadata"]["name"].as_str()).collect();
        assert_eq!(names, ["tls"]);
    }

    #[test]
    fn faults_500_delay_403_and_dropped_watches() {
        let server = FakeKube::start().unwrap();
        server.fail_requests(Some(500));
        let (status, body) = call(&server, "GET", SERVICES, None);
        assert_eq!((status, body["code"].as_u64()), (500, Some(500)));
        server.fail_requests(None);
        assert_eq!(call(&server, "GET", SERVICES, None).0, 200);

        server.set_delay(Duration::from_millis(300));
        let started = std::time::Instant::now();
        call(&server, "GET", SERVICES, None);
        assert!(started.elapsed() >= Duration::from_millis(300));
        server.set_delay(Duration::ZERO);

        server.forbid("list", "secrets");
        let (status, body) = call(&server, "GET", "/api/v1/secrets", None);
        assert_eq!(status, 403);
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("cannot list resource \"secrets\""), "{message}");
        assert_eq!(
            call(&server, "GET", "/api/v1/namespaces/default/secrets/x", None).0,
            404,
            "get is allowed"
        );
        server.allow_all();
        assert_eq!(call(&server, "GET", "/api/v1/secrets", None).0, 200);

        let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=0"));
        lb_wait(|| server.open_watches() == 1);
        server.drop_watches();
        assert!(watch.ended(), "a dropped watch ends");
        lb_wait(|| server.open_watches() == 0);
    }

    #[test]
    fn down_refuses_connections_and_up_serves_again_on_the_same_port() {
        let server = FakeKube::start().unwrap();
        server.apply(service("default", "a", 80, 8080));
        let watch = Watch::open(&server, &format!("{SERVICES}?watch=true&resourceVersion=1"));
        lb_wait(|| server.open_watches() == 1);
        server.set_up(false);
        assert!(watch.ended(), "open connections are cut");
        lb_wait(|| TcpStream::connect(server.addr()).is_err());
        server.set_up(true);
        lb_wait(|| TcpStream::connect(server.addr()).is_ok());
        let (status, list) = call(&server, "GET", SERVICES, None);
        assert_eq!((status, list["items"].as_array().unwrap().len()), (200, 1), "objects are kept");
    }

    #[test]
    fn leases_support_optimistic_concurrency() {
        let server = FakeKube::start().unwrap();
        let path = "/apis/coordination.k8s.io/v1/namespaces/sluice/leases";
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "sluice"}, "spec": {"holderIdentity": "a"}});
        let (status, created) = call(&server, "POST", path, Some(&lease));
        assert_eq!(status, 201);
        let mut b = created.clone();
        b["spec"]["holderIdentity"] = json!("b");
        let mut c = created.clone();
        c["spec"]["holderIdentity"] = json!("c");
        assert_eq!(call(&server, "PUT", &format!("{path}/l"), Some(&b)).0, 200);
        assert_eq!(call(&server, "PUT", &format!("{path}/l"), Some(&c)).0, 409, "c lost the race");
        assert_eq!(
            server.get("coordination.k8s.io/v1", "Lease", "sluice", "l").unwrap()["spec"]["holderIdentity"],
            "b"
        );
    }

    #[test]
    fn timestamps_and_base64() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(base64(b"hello!"), "aGVsbG8h");
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(base64(b"h"), "aA==");
        assert_eq!(percent_decode("a%2Fb%3Dc"), "a/b=c");
    }

    fn lb_wait(mut check: impl FnMut() -> bool) {
        crate::wait_for(Duration::from_secs(5), "the fake server", || check().then_some(())).unwrap();
    }
}
