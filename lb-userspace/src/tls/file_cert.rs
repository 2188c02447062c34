//! A server certificate from a certificate file and a key file that follows their rotation
//! (a Secret mounted as a volume is swapped whole by the kubelet, cert-manager renews it):
//! a handshake at most once a second looks at the files' modification times and sizes, and
//! when they changed loads them again with the same checks as any certificate. A pair that
//! does not load (a half-written rotation, an expired certificate) is logged and the last
//! good one keeps serving.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::certs::{LoadError, load_certificate};
use crate::config::CertificateConfig;

/// How often a handshake may look at the files.
const CHECK_EVERY_MS: i64 = 1_000;

/// What identifies a version of the files: (modified, length) of each.
type Stamp = [(Option<SystemTime>, u64); 2];

#[derive(Debug)]
pub struct FileCertificate {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    stamp: Mutex<Stamp>,
    /// Milliseconds since `started` of the last look.
    checked: AtomicI64,
    started: Instant,
}

impl FileCertificate {
    /// Loads the pair now: an error here is the caller's to report before serving.
    pub fn load(cert: &Path, key: &Path) -> Result<FileCertificate, LoadError> {
        let stamp = stamp_of(cert, key);
        let loaded = load(cert, key)?;
        Ok(FileCertificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::new(loaded),
            stamp: Mutex::new(stamp),
            checked: AtomicI64::new(0),
            started: Instant::now(),
        })
    }

    /// A server configuration (TLS 1.3 and 1.2) serving it, with `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// Loads the files again if they changed since the last load.
    pub fn reload_if_changed(&self) {
        let stamp = stamp_of(&self.cert, &self.key);
        let mut last = self.stamp.lock();
        if *last == stamp {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(loaded) => {
                self.current.store(loaded);
                *last = stamp;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            // Not remembered as seen: the next look tries again (the other file may be on its way).
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate files changed but do not load; the previous certificate keeps serving")
            }
        }
    }
}

impl ResolvesServerCert for FileCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = self.started.elapsed().as_millis() as i64;
        let last = self.checked.load(Ordering::Relaxed);
        if now - last >= CHECK_EVERY_MS
            && self.checked.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.reload_if_changed();
        }
        Some(self.current.load_full())
    }
}

fn stamp_of(cert: &Path, key: &Path) -> Stamp {
    let one = |path: &Path| match std::fs::metadata(path) {
        Ok(meta) => (meta.modified().ok(), meta.len()),
        Err(_) => (None, 0),
    };
    [one(cert), one(key)]
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, LoadError> {
    let config = CertificateConfig {
        name: "webhook".into(),
        cert_path: Some(cert.to_owned()),
        cert_pem: None,
        key_path: Some(key.to_owned()),
        key_pem: None,
    };
    Ok(load_certificate(&config, &super::provider(), super::now_unix())?.key)
}
