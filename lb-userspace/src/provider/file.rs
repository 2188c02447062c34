//! The standalone provider: one YAML file, reloaded when it changes (inotify, on the file's
//! directory so editors that replace the file by rename are seen) and on SIGHUP. A file that
//! does not parse or validate is refused with every error logged and counted; the running
//! configuration keeps serving.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::{
    config::{self, Config},
    dataplane::AttachMode,
};

/// Command-line settings that override the file, on every load.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub workers: Option<usize>,
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<AttachMode>,
    pub no_xdp: bool,
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
    }
}

/// Reload outcomes, for metrics and status.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Unix seconds of the last successful reload (0 = none yet).
    pub last_success_unix: AtomicU64,
}

impl ReloadStats {
    pub fn record(&self, ok: bool) {
        if ok {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            self.last_success_unix.store(now, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the configuration comes from: a file, or the built-in one.
pub struct FileProvider {
    path: Option<PathBuf>,
    overrides: Overrides,
}

impl FileProvider {
    pub fn new(path: Option<PathBuf>, overrides: Overrides) -> FileProvider {
        FileProvider { path, overrides }
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
        Ok(config)
    }

    /// Watches the file; each burst of changes sends one notice. `None` for the built-in
    /// configuration. The returned watcher must be kept alive.
    pub fn watch(&self) -> notify::Result<Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)>> {
        let Some(path) = &self.path else { return Ok(None) };
        let path = std::path::absolute(path)?;
        let directory = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        let name = path.file_name().map(|n| n.to_os_string());
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
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
