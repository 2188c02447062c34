//! The standalone provider: one YAML file, reloaded when it changes (inotify, on the file's
//! directory so editors that replace the file by rename are seen) and on SIGHUP. A file that
//! does not parse or validate is refused with every error logged and counted; the running
//! configuration keeps serving.
//!
//! Files the configuration names (certificates, keys, CA bundles) are watched the same way, so
//! rotating a PEM file on disk reloads; so is a Kubernetes-style mounted volume, whose files
//! change by swapping its `..data` symlink.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Desired, Source, Update};
use crate::config::{self, AttachMode, Config};

/// Command-line settings that override the file, on every load.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub workers: Option<usize>,
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<AttachMode>,
    pub no_xdp: bool,
    /// `--shutdown-delay-ms`: replaces `limits.shutdown_delay_ms`.
    pub shutdown_delay_ms: Option<u64>,
    /// `--metrics-address`: replaces `metrics.address` (and serves metrics there when the file
    /// has no `metrics`).
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        if !self.interfaces.is_empty() {
            config.xdp.interfaces = self.interfaces.clone();
        }
        if let Some(mode) = self.xdp_mode {
            config.xdp.mode = mode;
        }
        if self.no_xdp {
            config.xdp.enabled = false;
        }
        if let Some(delay) = self.shutdown_delay_ms {
            config.limits.shutdown_delay_ms = delay;
        }
        if let Some(address) = self.metrics_address {
            match &mut config.metrics {
                Some(metrics) => metrics.address = address,
                None => config.metrics = Some(config::MetricsConfig { address, bearer_token_file: None }),
            }
        }
    }
}

/// Where the configuration comes from: a file, or the built-in one.
pub struct FileProvider {
    path: Option<PathBuf>,
    overrides: Overrides,
    referenced: Referenced,
}

/// The files the last loaded configuration names, and the watcher of their directories.
#[derive(Default)]
struct Referenced {
    /// Absolute paths; shared with the watcher's callback.
    files: Arc<parking_lot::Mutex<HashSet<PathBuf>>>,
    /// Set by `watch`; directories are added as configurations name new ones.
    watch: parking_lot::Mutex<Option<(notify::RecommendedWatcher, HashSet<PathBuf>)>>,
}

impl Referenced {
    /// Remembers the files `config` names and watches their directories (once watching).
    fn track(&self, config: &Config) {
        *self.files.lock() =
            referenced_files(config).into_iter().filter_map(|p| std::path::absolute(p).ok()).collect();
        self.watch_directories();
    }

    /// Adds a watch on each directory of a remembered file not watched yet. Directories no
    /// configuration names any more stay watched: events there are filtered out.
    fn watch_directories(&self) {
        let directories: HashSet<PathBuf> =
            self.files.lock().iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
        let mut watch = self.watch.lock();
        let Some((watcher, watched)) = watch.as_mut() else { return };
        for directory in directories {
            if watched.contains(&directory) {
                continue;
            }
            match watcher.watch(&directory, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(directory);
                }
                Err(e) => tracing::warn!(
                    directory = %directory.display(),
                    error = %e,
                    "cannot watch certificate files; reload with SIGHUP after changing them"
                ),
            }
        }
    }
}

/// Files a configuration reads when its snapshot is built: certificates, keys, CA bundles.
fn referenced_files(config: &Config) -> Vec<&Path> {
    let certificates =
        config.certificates.iter().flat_map(|c| [c.cert_path.as_deref(), c.key_path.as_deref()]);
    let client_cas =
        config.virtual_hosts.iter().map(|h| h.tls.as_ref().and_then(|t| t.client_ca_path.as_deref()));
    let backend_cas = config.backends.iter().map(|b| b.tls.as_ref().and_then(|t| t.ca_path.as_deref()));
    certificates.chain(client_cas).chain(backend_cas).flatten().collect()
}

impl FileProvider {
    pub fn new(path: Option<PathBuf>, overrides: Overrides) -> FileProvider {
        FileProvider { path, overrides, referenced: Referenced::default() }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads, parses and validates the file (or the built-in configuration), then applies the
    /// command-line overrides.
    pub fn load(&self) -> config::Result<Config> {
        let mut config = match &self.path {
            Some(path) => Config::from_file(path)?,
            None => Config::builtin(),
        };
        self.overrides.apply(&mut config);
        self.referenced.track(&config);
        Ok(config)
    }

    /// Emits the configuration again on SIGHUP and on every change `changes` notices, until
    /// the receiver of `updates` is gone. A file that does not parse or validate is emitted as
    /// a refusal.
    pub async fn run(&self, mut changes: Changes, updates: mpsc::Sender<Update>) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        loop {
            let why = tokio::select! {
                _ = hangup.recv() => "SIGHUP",
                () = changes.next() => "file changed",
            };
            if updates.send(self.update(why)).await.is_err() {
                return Ok(());
            }
        }
    }

    /// The configuration loaded now, as an update reloaded for `why`.
    fn update(&self, why: &'static str) -> Update {
        let started = std::time::Instant::now();
        let source = Source::File { why };
        match self.load() {
            Ok(config) => Update::Serve(Desired {
                config: Arc::new(config),
                source,
                started,
                ingresses: None,
                translated: None,
            }),
            Err(e) => Update::Refused { source, error: e.to_string() },
        }
    }

    /// Notices of changes to pass to [`FileProvider::run`]; when watching fails the reason is logged
    /// and only SIGHUP reloads.
    pub fn changes(&self) -> Changes {
        match self.watch() {
            Ok(Some((watcher, notices))) => Changes { _watcher: Some(watcher), notices: Some(notices) },
            Ok(None) => Changes { _watcher: None, notices: None },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
                Changes { _watcher: None, notices: None }
            }
        }
    }

    /// Watches the file; each burst of changes sends one notice. `None` for the built-in
    /// configuration. The returned watcher must be kept alive.
    pub fn watch(&self) -> notify::Result<Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)>> {
        let Some(path) = &self.path else { return Ok(None) };
        let path = std::path::absolute(path)?;
        let directory = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        let name = path.file_name().map(|n| n.to_os_string());
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
        let raw_tx_for_referenced = raw_tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            if event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name) {
                let _ = raw_tx.send(());
            }
        })?;
        watcher.watch(&directory, RecursiveMode::NonRecursive)?;
        self.watch_referenced(raw_tx_for_referenced)?;
        // Editors write in several steps: wait for the burst to settle before reloading.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while raw_rx.recv().await.is_some() {
                loop {
                    match tokio::time::timeout(Duration::from_millis(100), raw_rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_settled) => break,
                    }
                }
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
        Ok(Some((watcher, rx)))
    }
}

impl FileProvider {
    /// Starts watching the directories of referenced files; a change to one of them (or to a
    /// mounted volume's `..data` link beside them) sends on `raw_tx`.
    fn watch_referenced(&self, raw_tx: mpsc::UnboundedSender<()>) -> notify::Result<()> {
        let files = self.referenced.files.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let files = files.lock();
            let ours = event.paths.iter().any(|p| {
                files.contains(p)
                    || (p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("..data"))
                        && files.iter().any(|f| f.parent() == p.parent()))
            });
            if ours {
                let _ = raw_tx.send(());
            }
        })?;
        *self.referenced.watch.lock() = Some((watcher, HashSet::new()));
        self.referenced.watch_directories();
        Ok(())
    }
}

/// Changes of the configuration file, one notice per burst; keeps the watcher alive.
pub struct Changes {
    _watcher: Option<notify::RecommendedWatcher>,
    notices: Option<mpsc::Receiver<()>>,
}

impl Changes {
    /// The next change. Never returns when nothing is watched (the built-in configuration).
    pub async fn next(&mut self) {
        if let Some(notices) = self.notices.as_mut()
            && notices.recv().await.is_some()
        {
            return;
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const CONFIG: &str = "xdp: {enabled: false}\nlisteners: [{name: web, address: \"127.0.0.1:18480\"}]\n";

    /// A directory removed when the test ends, however it ends.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn next(updates: &mut mpsc::Receiver<Update>) -> Update {
        tokio::time::timeout(Duration::from_secs(10), updates.recv())
            .await
            .expect("an update within 10 s")
            .expect("the provider runs")
    }

    #[test]
    fn run_emits_each_change_as_a_configuration_or_a_refusal() {
        let scratch =
            Scratch(std::env::temp_dir().join(format!("sluice-file-provider-{}", std::process::id())));
        std::fs::create_dir_all(&scratch.0).unwrap();
        let path = scratch.0.join("sluice.yaml");
        std::fs::write(&path, format!("workers: 1\n{CONFIG}")).unwrap();
        let provider = FileProvider::new(Some(path.clone()), Overrides::default());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (updates_tx, mut updates) = mpsc::channel(1);
            let run = provider.run(provider.changes(), updates_tx);
            let check = async {
                std::fs::write(&path, format!("workers: 3\n{CONFIG}")).unwrap();
                let Update::Serve(desired) = next(&mut updates).await else { panic!("a configuration") };
                assert_eq!(desired.config.workers, 3);
                assert_eq!(desired.source, Source::File { why: "file changed" });
                std::fs::write(&path, format!("workers: [oops\n{CONFIG}")).unwrap();
                let Update::Refused { source, error } = next(&mut updates).await else { panic!("a refusal") };
                assert_eq!(source, Source::File { why: "file changed" });
                assert!(error.contains("sluice.yaml:1:"), "{error}");
            };
            tokio::select! {
                result = run => panic!("run returned {result:?}"),
                () = check => {}
            }
        });
    }
}
