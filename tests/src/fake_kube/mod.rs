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
mod store;
#[cfg(test)]
mod tests;
mod watch;

use http::{bind, serve};
use store::{Key, Store, Write, names_of, resource_by_kind, resource_of};

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
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped to cut every open watch stream.
    cut_watches: tokio::sync::watch::Sender<u64>,
    /// Bumped to cut every open connection (the server going down).
    cut_connections: tokio::sync::watch::Sender<u64>,
    /// Whether the port accepts connections.
    up: tokio::sync::watch::Sender<bool>,
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
        let (changed, _) = tokio::sync::watch::channel(0);
        let (cut_watches, _) = tokio::sync::watch::channel(0);
        let (cut_connections, _) = tokio::sync::watch::channel(0);
        let (up, _) = tokio::sync::watch::channel(true);
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
