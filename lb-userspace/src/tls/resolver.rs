//! SNI selection. The server name picks a virtual host exactly as the Host header does in
//! routing (exact domain, then a `*.wildcard` taking one label, then `"*"`; a missing SNI picks
//! `"*"`); that host's certificate is served. A name no TLS host claims gets the listener's
//! default certificate, or the handshake fails, per `unknown_sni`.

use std::{collections::HashMap, sync::Arc};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::config::VirtualHostConfig;

/// Virtual host lookup by name, with routing's precedence.
#[derive(Debug, Default)]
pub struct HostTable {
    exact: HashMap<String, usize>,
    /// `*.foo.com` is stored as `foo.com`.
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
}

/// Longest host name looked up; longer names only match `"*"` (DNS names are at most 253).
const MAX_NAME: usize = 255;

impl HostTable {
    /// Indexes every virtual host's domains (the first claim wins; validation refuses clashes).
    pub fn build<H: std::borrow::Borrow<VirtualHostConfig>>(hosts: &[H]) -> HostTable {
        let mut table = HostTable::default();
        for (i, host) in hosts.iter().enumerate() {
            for domain in &host.borrow().domains {
                let lower = domain.to_ascii_lowercase();
                let lower = lower.strip_suffix('.').unwrap_or(&lower);
                if lower == "*" {
                    table.default.get_or_insert(i);
                } else if let Some(parent) = lower.strip_prefix("*.") {
                    table.wildcard.entry(parent.to_owned()).or_insert(i);
                } else {
                    table.exact.entry(lower.to_owned()).or_insert(i);
                }
            }
        }
        table
    }

    /// The virtual host for `name` (an SNI, or a Host header with or without a port), or the
    /// `"*"` host, or none.
    pub fn find(&self, name: Option<&str>) -> Option<usize> {
        let name = name.map(strip_port).unwrap_or("");
        let name = name.strip_suffix('.').unwrap_or(name);
        if !name.is_empty() && name.len() <= MAX_NAME {
            let mut buf = [0u8; MAX_NAME];
            let lower = &mut buf[..name.len()];
            lower.copy_from_slice(name.as_bytes());
            lower.make_ascii_lowercase();
            if let Ok(lower) = std::str::from_utf8(lower) {
                if let Some(&i) = self.exact.get(lower) {
                    return Some(i);
                }
                if let Some((label, parent)) = lower.split_once('.')
                    && !label.is_empty()
                    && let Some(&i) = self.wildcard.get(parent)
                {
                    return Some(i);
                }
            }
        }
        self.default
    }
}

/// `host:port` -> `host`; `[v6]:port` and `[v6]` -> `[v6]`; a bare IPv6 address stays whole.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

/// What the SNI selected on one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// This virtual host (it has `tls`).
    Host(usize),
    /// No TLS host claims the name: the listener's default certificate.
    Default,
    /// No TLS host claims the name and the listener rejects unknown names.
    Reject,
}

/// One listener's certificate resolver: SNI -> virtual host -> certificate, else the default.
#[derive(Debug)]
pub struct ListenerResolver {
    hosts: Arc<HostTable>,
    /// By virtual host index: the certificate of hosts that terminate TLS here. Hosts without
    /// `tls`, and passthrough hosts, have none.
    certificates: Arc<Vec<Option<Arc<CertifiedKey>>>>,
    /// By virtual host index: whether the host has `tls` (a certificate or passthrough).
    tls_hosts: Arc<Vec<bool>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ListenerResolver {
    pub fn new(
        hosts: Arc<HostTable>,
        certificates: Arc<Vec<Option<Arc<CertifiedKey>>>>,
        tls_hosts: Arc<Vec<bool>>,
        default: Option<Arc<CertifiedKey>>,
    ) -> ListenerResolver {
        ListenerResolver { hosts, certificates, tls_hosts, default }
    }

    pub fn select(&self, server_name: Option<&str>) -> Selection {
        match self.hosts.find(server_name) {
            Some(host) if self.tls_hosts.get(host).copied().unwrap_or(false) => Selection::Host(host),
            _ if self.default.is_some() => Selection::Default,
            _ => Selection::Reject,
        }
    }

    /// The certificate for a server name; `None` fails the handshake.
    pub fn certificate(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        match self.select(server_name) {
            Selection::Host(host) => self.certificates.get(host).cloned().flatten(),
            Selection::Default => self.default.clone(),
            Selection::Reject => None,
        }
    }
}

impl ResolvesServerCert for ListenerResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certificate(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(yaml: &str) -> Vec<VirtualHostConfig> {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn exact_beats_wildcard_beats_default() {
        let table = HostTable::build(&hosts(
            "
- {name: wild, domains: ['*.example.com']}
- {name: api, domains: [api.example.com, API2.Example.com.]}
- {name: dflt, domains: ['*']}
",
        ));
        assert_eq!(table.find(Some("api.example.com")), Some(1));
        assert_eq!(table.find(Some("API2.example.COM")), Some(1));
        assert_eq!(table.find(Some("api.example.com:8443")), Some(1));
        assert_eq!(table.find(Some("api.example.com.")), Some(1));
        assert_eq!(table.find(Some("www.example.com")), Some(0));
        assert_eq!(table.find(Some("a.b.example.com")), Some(2), "a wildcard takes one label");
        assert_eq!(table.find(Some("example.com")), Some(2));
        assert_eq!(table.find(None), Some(2));
        assert_eq!(table.find(Some(&"a".repeat(300))), Some(2));
        assert_eq!(HostTable::build(&hosts("- {name: a, domains: [a.test]}")).find(None), None);
    }

    #[test]
    fn ports_and_ipv6_are_stripped() {
        assert_eq!(strip_port("a.test:443"), "a.test");
        assert_eq!(strip_port("a.test"), "a.test");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("10.0.0.1:80"), "10.0.0.1");
    }
}
