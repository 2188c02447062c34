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
//! - **get, create, replace, patch (merge, strategic as merge, JSON patch, apply), delete**,
//!   with optimistic concurrency (`409 Conflict` when a replace or a patch carries a stale
//!   `metadata.resourceVersion`), `AlreadyExists`, and
//!   the **status subresource** (writes to `/status` change only `.status`, other writes keep
//!   it);
//! - Leases (`coordination.k8s.io/v1`) like any other object, which is all leader election
//!   needs.
//!
//! Server-side checks as kube-apiserver makes them: a status write with an `ip` that is not an
//! IP address or a `hostname` that is not a DNS-1123 name is refused with 422; an unknown patch
//! type with 415; a write that changes nothing keeps the resourceVersion; deleting an object
//! with finalizers marks it with `deletionTimestamp` and removing the last finalizer deletes
//! it; continue tokens can be used again until a compaction expires them (410).
//!
//! Fault injection: the server can go down (its port refuses connections and every open
//! connection, watches included, is cut) and come back on the same port, answer every request
//! with an error status (500), answer slowly, cut the open watches, forget its history (watches
//! resuming from before get 410), and refuse chosen verbs on chosen resources with a 403 worded
//! like RBAC's. Per request: [`FakeKube::fail_next`] (n answers with a code and `Retry-After`),
//! [`FakeKube::apply_then_fail`] (the write lands, the answer is an error),
//! [`FakeKube::black_hole`] (accepted, never answered; watches silent) and
//! [`FakeKube::restart`] (connections cut, history gone per resource, continue tokens expired,
//! 429 with `Retry-After` while it comes up). Every request is recorded with its writer (field
//! manager or user agent), so tests can assert who wrote status in which order
//! ([`FakeKube::status_writes`]).
//!
//! Tests drive it through this handle ([`FakeKube::apply`], [`FakeKube::delete`], ...) without
//! HTTP; the handle's writes are seen by watchers exactly like writes over the API.
//!
//! By concern: [`store`] keeps the objects, their versions and the history, and selects with
//! label and field selectors; [`http`] is the listener, routing, faults and the reads and
//! writes; [`watch`] is the watch stream; [`objects`] builds the objects the suites apply.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context;
use serde_json::Value;

mod http;
pub mod objects;
pub mod sluice;
mod store;
#[cfg(test)]
mod tests;
mod watch;

use http::{bind, serve};
use store::{Key, RESOURCES, Store, Write, names_of, resource_by_kind, resource_of};

/// Injected faults; see the setters on [`FakeKube`].
#[derive(Debug, Clone, Default)]
struct Faults {
    error_status: Option<u16>,
    delay: Duration,
    /// (verb, plural) pairs answered with 403.
    forbidden: Vec<(String, String)>,
    /// Answers for the next matching requests, first match first.
    rules: Vec<FaultRule>,
    /// Path globs whose requests are accepted and never answered.
    black_holes: Vec<(String, String)>,
    /// After a restart: every request answers 429 with this Retry-After (seconds) until then.
    unavailable_until: Option<(std::time::Instant, u64)>,
    /// The Gateway API's CRDs are not installed: its paths and discovery answer 404.
    gateway_api_absent: bool,
    /// These Gateway API resources (plurals) are not served, as on a cluster with the
    /// standard channel's CRDs only: their paths answer 404, discovery leaves them out.
    absent_gateway_kinds: Vec<String>,
    /// When set, only requests with `Authorization: Bearer <one of these>` are answered; the
    /// others get 401.
    tokens: Option<Vec<String>>,
}

/// The next `remaining` requests matching `method` and `glob` answer `code`; see
/// [`FakeKube::fail_next`] and [`FakeKube::apply_then_fail`].
#[derive(Debug, Clone)]
struct FaultRule {
    remaining: usize,
    method: String,
    glob: String,
    code: u16,
    /// Seconds, for the `Retry-After` header.
    retry_after: Option<u64>,
    /// Carry the write out first, then answer `code` (a write whose answer was lost).
    apply_first: bool,
    /// Only requests whose `User-Agent` contains this (one client's path to the server).
    agent: Option<String>,
}

/// Whether `method` (an HTTP method or a Kubernetes verb, any case, `*` for all) and `glob`
/// (`*` matches any run of characters, `/` included) select a request.
fn selects(method: &str, glob: &str, request_method: &str, verb: &str, path: &str) -> bool {
    let method_matches =
        method == "*" || method.eq_ignore_ascii_case(request_method) || method.eq_ignore_ascii_case(verb);
    method_matches && glob_matches(glob.as_bytes(), path.as_bytes())
}

fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_matches(rest, &text[skip..])),
        Some((c, rest)) => text.split_first().is_some_and(|(t, text)| t == c && glob_matches(rest, text)),
    }
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
    /// The request's `User-Agent` (Sluice names its identity there).
    pub user_agent: String,
    /// The `fieldManager` query parameter of a write.
    pub field_manager: Option<String>,
    /// Whether a write changed the store (also when its answer was an injected failure).
    pub applied: bool,
}

impl Recorded {
    /// Who wrote: the field manager, else the user agent.
    pub fn writer(&self) -> &str {
        self.field_manager.as_deref().unwrap_or(&self.user_agent)
    }
}

struct Shared {
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<Recorded>>,
    /// The store's resourceVersion, for watches to wait on.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped to cut every open watch stream.
    cut_watches: tokio::sync::watch::Sender<u64>,
    /// Bumped to cut every open connection (the server going down).
    cut_connections: tokio::sync::watch::Sender<u64>,
    /// Bumped when black holes are lifted, so the requests they hold end.
    lifted: tokio::sync::watch::Sender<u64>,
    /// Whether the port accepts connections.
    up: tokio::sync::watch::Sender<bool>,
    bookmark_interval: Mutex<Duration>,
    open_watches: std::sync::atomic::AtomicUsize,
    /// Requests a black hole took in, answered or not.
    held: Mutex<Vec<(String, String, String)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How often a watch that asked for bookmarks gets one, as kube-apiserver's watch cache sends
/// them (about once a minute).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// A running fake API server; stops on drop.
pub struct FakeKube {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKube {
    /// A Service `namespace/name` on port 8080 whose one ready endpoint is `backend` (an
    /// EndpointSlice `NAME-abc`), as the Gateway API suites publish their backends.
    pub fn publish_backend(&self, namespace: &str, name: &str, backend: &crate::backend::Backend) {
        let port = backend.addr().port();
        self.apply(objects::service(namespace, name, 8080, port));
        self.apply(objects::endpoint_slice(
            namespace,
            &format!("{name}-abc"),
            name,
            "IPv4",
            port,
            &[objects::SliceEndpoint::ready(&backend.addr().ip().to_string())],
        ));
    }

    /// Starts a server on a free loopback port, on a thread of its own.
    pub fn start() -> anyhow::Result<FakeKube> {
        Self::start_with(None)
    }

    /// Starts a server that speaks HTTPS with `tls` (as a real API server does, for the
    /// in-cluster configuration: a CA file and an `https://` address).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> anyhow::Result<FakeKube> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> anyhow::Result<FakeKube> {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let is_tls = acceptor.is_some();
        let (changed, _) = tokio::sync::watch::channel(0);
        let (cut_watches, _) = tokio::sync::watch::channel(0);
        let (cut_connections, _) = tokio::sync::watch::channel(0);
        let (up, _) = tokio::sync::watch::channel(true);
        let (lifted, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store { oldest_resumable: 0, ..Store::default() }),
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
            changed,
            cut_watches,
            cut_connections,
            lifted,
            up,
            bookmark_interval: Mutex::new(BOOKMARK_INTERVAL),
            open_watches: std::sync::atomic::AtomicUsize::new(0),
            held: Mutex::new(Vec::new()),
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
                        _ = serve(listener, addr, shared, acceptor) => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?
        };
        Ok(FakeKube { addr, tls: is_tls, shared, stop: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Answers only requests carrying `Authorization: Bearer <token>` for one of `tokens`
    /// (others get 401 Unauthorized, as a revoked or expired token does); `None` accepts all.
    pub fn require_tokens(&self, tokens: Option<&[&str]>) {
        lock(&self.shared.faults).tokens = tokens.map(|t| t.iter().map(|t| (*t).to_owned()).collect());
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

    /// Deletes an object (one with finalizers is only marked with `deletionTimestamp`); false
    /// when it did not exist.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let resource = resource_by_kind(api_version, kind).expect("delete: unknown apiVersion/kind");
        let namespace = if resource.namespaced { namespace.to_owned() } else { String::new() };
        let key = Key { resource, namespace, name: name.to_owned() };
        let deleted = lock(&self.shared.store).delete(&key).is_some();
        self.shared.notify();
        deleted
    }

    /// Stores many objects at once (one notification, for thousands of objects).
    pub fn apply_all(&self, objects: impl IntoIterator<Item = Value>) {
        let mut store = lock(&self.shared.store);
        for object in objects {
            let resource = resource_of(&object).expect("apply_all: unknown apiVersion/kind");
            let (namespace, name) = names_of(resource, &object).expect("apply_all: metadata.name is needed");
            let key = Key { resource, namespace, name };
            match store.objects.get(&key).cloned() {
                Some(existing) => store.update(&key, existing, object, Write::Whole),
                None => store.create(key, object, true),
            };
        }
        drop(store);
        self.shared.notify();
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
    /// Takes the Gateway API's CRDs away (404 for its kinds and its discovery), as on a
    /// cluster that never installed them; objects stored stay, unseen.
    pub fn uninstall_gateway_api(&self) {
        lock(&self.shared.faults).gateway_api_absent = true;
    }

    /// Stops serving these Gateway API resources (`tcproutes`, `udproutes`), as on a cluster
    /// without the experimental channel's CRDs; objects stored stay, unseen.
    pub fn uninstall_gateway_kinds(&self, plurals: &[&str]) {
        lock(&self.shared.faults).absent_gateway_kinds.extend(plurals.iter().map(|p| p.to_string()));
    }

    /// Serves the Gateway API's kinds again (those `uninstall_gateway_kinds` took too), as when
    /// the CRDs are applied.
    pub fn install_gateway_api(&self) {
        let mut faults = lock(&self.shared.faults);
        faults.gateway_api_absent = false;
        faults.absent_gateway_kinds.clear();
    }

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
    /// (and must list again), and every continue token expires. Open watches are cut.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
        self.drop_watches();
    }

    /// The next `n` requests whose method (an HTTP method or a verb such as `list` or
    /// `watch`; `*` for any) and path (a glob, `*` for any run of characters) match answer
    /// `code` with a `Status` body, and a `Retry-After` header when given (as kube-apiserver's
    /// throttling does). Rules are checked in the order given; each counts its own requests.
    pub fn fail_next(
        &self,
        n: usize,
        method: &str,
        path_glob: &str,
        code: u16,
        retry_after: Option<Duration>,
    ) {
        lock(&self.shared.faults).rules.push(FaultRule {
            remaining: n,
            method: method.to_owned(),
            glob: path_glob.to_owned(),
            code,
            retry_after: retry_after.map(|d| d.as_secs().max(1)),
            apply_first: false,
            agent: None,
        });
    }

    /// [`FakeKube::fail_next`] for the requests of one client only: those whose `User-Agent`
    /// contains `agent` (Sluice names its identity there), as when one node's path to the
    /// server is congested.
    pub fn fail_next_from(
        &self,
        agent: &str,
        n: usize,
        method: &str,
        path_glob: &str,
        code: u16,
        retry_after: Option<Duration>,
    ) {
        lock(&self.shared.faults).rules.push(FaultRule {
            remaining: n,
            method: method.to_owned(),
            glob: path_glob.to_owned(),
            code,
            retry_after: retry_after.map(|d| d.as_secs().max(1)),
            apply_first: false,
            agent: Some(agent.to_owned()),
        });
    }

    /// The next `n` writes (PUT, PATCH, POST) matching are carried out, then answered `code`
    /// (e.g. 504: the write landed but its answer was lost on the way back).
    pub fn apply_then_fail(&self, n: usize, method: &str, path_glob: &str, code: u16) {
        lock(&self.shared.faults).rules.push(FaultRule {
            remaining: n,
            method: method.to_owned(),
            glob: path_glob.to_owned(),
            code,
            retry_after: None,
            apply_first: true,
            agent: None,
        });
    }

    /// Requests matching `method` and `path_glob` (as in [`FakeKube::fail_next`]) are accepted
    /// and never answered; a matching watch answers its head and then stays silent (no events,
    /// no bookmarks). As a connection dropped by a load balancer or NAT on the way looks.
    pub fn black_hole(&self, method: &str, path_glob: &str) {
        lock(&self.shared.faults).black_holes.push((method.to_owned(), path_glob.to_owned()));
    }

    /// How many requests black holes have taken in whose method (or verb) and path match (as
    /// in [`FakeKube::fail_next`]); they are recorded in [`FakeKube::requests`] only if
    /// answered (when lifted).
    pub fn held_requests(&self, method: &str, path_glob: &str) -> usize {
        lock(&self.shared.held)
            .iter()
            .filter(|(m, verb, path)| selects(method, path_glob, m, verb, path))
            .count()
    }

    /// Lifts every black hole; the requests they held are closed with a 504.
    pub fn clear_black_holes(&self) {
        lock(&self.shared.faults).black_holes.clear();
        self.shared.lifted.send_modify(|n| *n += 1);
    }

    /// Lifts every [`FakeKube::fail_next`] and [`FakeKube::apply_then_fail`] rule left.
    pub fn clear_rules(&self) {
        lock(&self.shared.faults).rules.clear();
    }

    /// An apiserver restart: every open connection is cut (watches included), the watch
    /// history of every resource is gone (resuming from before now gets 410), continue tokens
    /// expire, and for `unavailable` every request answers 429 with `Retry-After:
    /// retry_after` while it comes up. The objects (etcd) are kept.
    pub fn restart(&self, unavailable: Duration, retry_after: Duration) {
        {
            let mut store = lock(&self.shared.store);
            let rv = store.rv;
            store.history.clear();
            store.pages.clear();
            for resource in RESOURCES {
                store.resumable_from.insert(resource.plural, rv);
            }
        }
        lock(&self.shared.faults).unavailable_until =
            Some((std::time::Instant::now() + unavailable, retry_after.as_secs().max(1)));
        self.shared.cut_connections.send_modify(|n| *n += 1);
    }

    /// Forgets the watch history of one kind only (its watches resuming from before now get
    /// 410 Gone); the other kinds' watches resume as before.
    pub fn compact_kind(&self, api_version: &str, kind: &str) {
        let resource = resource_by_kind(api_version, kind).expect("compact_kind: unknown apiVersion/kind");
        lock(&self.shared.store).compact_resource(resource);
        self.drop_watches();
    }

    /// The status writes (`/status` PUT and PATCH) that changed the store, in the order the
    /// server carried them out, each with its writer (see [`Recorded::writer`]).
    pub fn status_writes(&self) -> Vec<Recorded> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| {
                r.applied && r.path.ends_with("/status") && matches!(r.method.as_str(), "PUT" | "PATCH")
            })
            .cloned()
            .collect()
    }

    /// How often open watches that asked for bookmarks get one (default
    /// [`BOOKMARK_INTERVAL`]).
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
