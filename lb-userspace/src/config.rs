//! The one internal configuration model, its YAML form and its validation.
//!
//! This is the foundation's model: a listener, a worker count and the XDP settings. The
//! standalone issue grows it into listeners, virtual hosts, routes and backends.

use std::{net::SocketAddr, path::Path};

use serde::Deserialize;

use crate::dataplane::AttachMode;

/// The built-in configuration served when no file is given.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../config/default.yaml");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{source_name}: cannot read: {source}")]
    Read {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}:{line}:{column}: {message}")]
    Parse { source_name: String, line: usize, column: usize, message: String },
    #[error("{source_name}: {message}")]
    Invalid { source_name: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the workers listen on (all workers share it with SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Number of worker threads; 0 means one per CPU.
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub xdp: XdpConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Interfaces to attach the XDP program to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub mode: AttachMode,
    /// Worker `i` listens on its own port `worker_port_base + i`; XDP steers connections there.
    #[serde(default = "default_worker_port_base")]
    pub worker_port_base: u16,
    /// A worker whose heartbeat is older than this is taken out of steering.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
}

fn enabled_by_default() -> bool {
    true
}

/// Below Linux's default ephemeral range (32768-60999), so outgoing connections never hold a
/// worker's port.
fn default_worker_port_base() -> u16 {
    20000
}

fn default_heartbeat_timeout_ms() -> u64 {
    300
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            enabled: true,
            interfaces: Vec::new(),
            mode: AttachMode::Auto,
            worker_port_base: default_worker_port_base(),
            heartbeat_timeout_ms: default_heartbeat_timeout_ms(),
        }
    }
}

/// Upper bound on workers: beyond this, threads only contend.
pub const MAX_WORKERS: usize = 1024;

impl Config {
    /// Parses and validates YAML. `source_name` names the input in errors (a path or "built-in").
    pub fn from_yaml(yaml: &str, source_name: &str) -> Result<Config> {
        let config: Config = serde_yaml::from_str(yaml).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            Error::Parse { source_name: source_name.to_owned(), line, column, message: e.to_string() }
        })?;
        config.validate(source_name)?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let source_name = path.display().to_string();
        let yaml = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { source_name: source_name.clone(), source })?;
        Config::from_yaml(&yaml, &source_name)
    }

    pub fn builtin() -> Config {
        Config::from_yaml(DEFAULT_CONFIG_YAML, "built-in").expect("the built-in configuration is valid")
    }

    fn validate(&self, source_name: &str) -> Result<()> {
        let invalid = |message: String| Error::Invalid { source_name: source_name.to_owned(), message };
        if self.workers > MAX_WORKERS {
            return Err(invalid(format!("workers: {} is more than the maximum {MAX_WORKERS}", self.workers)));
        }
        if self.listen.port() == 0 {
            return Err(invalid("listen: port 0 is not a fixed port; name the port to serve on".into()));
        }
        let workers = self.worker_count() as u32;
        let base = u32::from(self.xdp.worker_port_base);
        if base == 0 || base + workers > 65536 {
            return Err(invalid(format!(
                "xdp.worker_port_base: {base} + {workers} workers does not fit in 1..=65535"
            )));
        }
        if (base..base + workers).contains(&u32::from(self.listen.port())) {
            return Err(invalid(format!(
                "xdp.worker_port_base: the worker ports {base}..{} overlap the listen port {}",
                base + workers - 1,
                self.listen.port()
            )));
        }
        if !(10..=60_000).contains(&self.xdp.heartbeat_timeout_ms) {
            return Err(invalid(format!(
                "xdp.heartbeat_timeout_ms: {} is outside 10..=60000",
                self.xdp.heartbeat_timeout_ms
            )));
        }
        for name in &self.xdp.interfaces {
            if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
                return Err(invalid(format!("xdp.interfaces: {name:?} is not a valid interface name")));
            }
        }
        Ok(())
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map(usize::from).unwrap_or(1)
        } else {
            self.workers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_config_parses() {
        let config = Config::builtin();
        assert_eq!(config.listen.port(), 8080);
        assert!(config.xdp.enabled);
    }

    #[test]
    fn unknown_field_is_an_error_with_position() {
        let err = Config::from_yaml("listen: 127.0.0.1:80\nlisten_port: 3\n", "t.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("t.yaml:2:"), "{text}");
        assert!(text.contains("listen_port"), "{text}");
    }

    #[test]
    fn bad_address_is_an_error() {
        let err = Config::from_yaml("listen: nowhere\n", "t.yaml").unwrap_err();
        assert!(matches!(err, Error::Parse { line: 1, .. }), "{err}");
    }

    #[test]
    fn port_zero_and_bad_interface_are_rejected() {
        assert!(Config::from_yaml("listen: 127.0.0.1:0\n", "t").is_err());
        let err = Config::from_yaml("listen: 127.0.0.1:80\nxdp: {interfaces: ['a/b']}\n", "t").unwrap_err();
        assert!(err.to_string().contains("not a valid interface name"), "{err}");
    }

    #[test]
    fn worker_ports_must_fit_and_not_overlap_the_listener() {
        let err = Config::from_yaml("listen: 127.0.0.1:20001\nworkers: 4\n", "t").unwrap_err();
        assert!(err.to_string().contains("overlap the listen port 20001"), "{err}");
        let err =
            Config::from_yaml("listen: 127.0.0.1:80\nworkers: 4\nxdp: {worker_port_base: 65534}\n", "t")
                .unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let err =
            Config::from_yaml("listen: 127.0.0.1:80\nxdp: {heartbeat_timeout_ms: 1}\n", "t").unwrap_err();
        assert!(err.to_string().contains("heartbeat_timeout_ms"), "{err}");
    }

    #[test]
    fn xdp_mode_parses() {
        let config = Config::from_yaml("listen: 127.0.0.1:80\nxdp: {mode: skb}\n", "t").unwrap();
        assert_eq!(config.xdp.mode, AttachMode::Skb);
        assert!(Config::from_yaml("listen: 127.0.0.1:80\nxdp: {mode: turbo}\n", "t").is_err());
    }
}
