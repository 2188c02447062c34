//! TLS: termination on listeners (rustls, TLS 1.2 and 1.3, SNI selection per virtual host,
//! ALPN `h2`/`http/1.1`, session tickets and a session cache shared by every worker of the
//! node), client certificates per host, the passthrough decision by SNI, and TLS towards
//! backends. The HTTP-facing policy (HSTS, 421, HTTP to HTTPS redirects) and the passthrough
//! splice live on the proxy side (`proxy::pipeline::tls_policy`, `proxy::upstream::passthrough`):
//! this module knows nothing of requests or backend groups.
//!
//! Everything that can fail is compiled into a [`TlsSnapshot`] when the serving snapshot is
//! built, off the accept path: certificates are read, parsed, matched with their keys and
//! checked for expiry there, so a broken certificate refuses the whole reload (with an error
//! naming the certificate and its file) and the previous snapshot, certificates included,
//! keeps serving. New handshakes load the current snapshot, so a rotated certificate applies
//! to the next handshake; established connections keep the session they negotiated.
//!
//! What lives longer than a snapshot is process-wide ([`shared`]): the session ticket keys
//! (rotated every 6 hours; resumption survives reloads) and the session cache, plus the
//! handshake counters exported as metrics. A node is one process in production.

mod accept;
pub mod certs;
pub mod client_cert;
pub mod file_cert;
pub mod resolver;
pub mod sni;
pub mod upstream;

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use ::http::HeaderValue;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::pem::PemObject,
    server::{
        ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier, danger::ClientCertVerifier,
    },
    sign::CertifiedKey,
};

pub use accept::{Accepted, Rewind, Session, accept};
pub use certs::{LoadError, LoadedCertificate};
use resolver::{HostTable, ListenerResolver, Selection};

use crate::config::{Config, UnknownSni};

/// ALPN protocols the listeners offer, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Sessions the node-wide cache holds (stateful resumption, and TLS 1.3 without tickets).
const SESSION_CACHE_ENTRIES: usize = 16 * 1024;

/// The crypto provider: aws-lc-rs, with its default suites (TLS 1.3 AES-GCM and
/// ChaCha20-Poly1305; TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305: forward secret AEAD
/// suites only) and key exchange groups in its default order without `prefer-post-quantum`:
/// X25519, P-256, P-384, then the X25519MLKEM768 hybrid. A client's first key share that the
/// server takes decides, so browsers that send both a hybrid and an X25519 share get X25519, as
/// with nginx on OpenSSL 3.0; the hybrid cost 45% more server CPU per full handshake
/// (docs/BENCHMARKS.md). It replaced *ring*: a full handshake costs the server about a quarter
/// less (aws-lc's X25519 is faster, and its random numbers come from a user-space generator
/// instead of nine `getrandom` calls per handshake).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// TLS state that outlives snapshots: one per process (a node is one process).
pub struct Shared {
    /// Session ticket keys, shared by all workers and every snapshot so resumption survives
    /// reloads; rotated every 6 hours (the previous key still decrypts). `None` if the system
    /// could not give randomness for a key (logged; tickets are then off).
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    sessions: Arc<dyn StoresServerSessions>,
    counters: Counters,
}

/// The process-wide TLS state.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()
            .inspect_err(
                |e| tracing::error!(error = %e, "cannot create session ticket keys; tickets are off"),
            )
            .ok(),
        sessions: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
        counters: Counters::default(),
    })
}

/// Why a handshake failed; each reason is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not TLS, or a broken TLS message (garbage instead of a ClientHello, a corrupt record).
    Malformed,
    /// The client closed or reset the connection before the handshake finished.
    Truncated,
    /// The handshake did not finish within `limits.header_read_timeout_ms`.
    Timeout,
    /// The SNI names no TLS host and the listener rejects unknown names.
    UnknownSni,
    /// The client offers only protocol versions older than TLS 1.2.
    UnsupportedVersion,
    /// No cipher suite, key exchange group, signature scheme or ALPN protocol in common.
    Incompatible,
    /// A missing client certificate, or one that does not verify against the host's CA.
    ClientCertificate,
    /// The client aborted with an alert (for example it does not trust our certificate).
    ClientAlert,
    /// Anything else.
    Other,
}

impl Failure {
    pub const ALL: [Failure; 9] = [
        Failure::Malformed,
        Failure::Truncated,
        Failure::Timeout,
        Failure::UnknownSni,
        Failure::UnsupportedVersion,
        Failure::Incompatible,
        Failure::ClientCertificate,
        Failure::ClientAlert,
        Failure::Other,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::Truncated => "truncated",
            Failure::Timeout => "timeout",
            Failure::UnknownSni => "unknown_sni",
            Failure::UnsupportedVersion => "unsupported_version",
            Failure::Incompatible => "incompatible",
            Failure::ClientCertificate => "client_certificate",
            Failure::ClientAlert => "client_alert",
            Failure::Other => "other",
        }
    }
}

/// Handshake counters (relaxed atomics; only ever added to).
#[derive(Default)]
pub struct Counters {
    failures: [AtomicU64; Failure::ALL.len()],
    completed: AtomicU64,
    resumed: AtomicU64,
    passthrough: AtomicU64,
    passthrough_failed: AtomicU64,
}

impl Counters {
    fn fail(&self, reason: Failure) {
        self.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a passthrough connection: spliced to an endpoint (`true`) or dropped because no
/// endpoint could be reached.
pub fn count_passthrough(spliced: bool) {
    let counters = &shared().counters;
    let counter = if spliced { &counters.passthrough } else { &counters.passthrough_failed };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Failed handshakes per reason, for metrics: `(reason, count)` for every reason.
pub fn handshake_failures() -> Vec<(&'static str, u64)> {
    let counters = &shared().counters;
    Failure::ALL.iter().map(|f| (f.name(), counters.failures[*f as usize].load(Ordering::Relaxed))).collect()
}

/// Completed handshakes and passthrough connections, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    /// Handshakes that completed (resumed ones included).
    pub completed: u64,
    /// Of those, resumed sessions (ticket or cache).
    pub resumed: u64,
    /// Connections spliced to a passthrough backend.
    pub passthrough: u64,
    /// Passthrough connections that found no endpoint or could not connect.
    pub passthrough_failed: u64,
}

pub fn handshake_counts() -> HandshakeCounts {
    let c = &shared().counters;
    HandshakeCounts {
        completed: c.completed.load(Ordering::Relaxed),
        resumed: c.resumed.load(Ordering::Relaxed),
        passthrough: c.passthrough.load(Ordering::Relaxed),
        passthrough_failed: c.passthrough_failed.load(Ordering::Relaxed),
    }
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// TLS of one virtual host.
#[derive(Debug)]
pub struct HostTls {
    pub name: String,
    /// Splice connections for this host to this backend group (index in the snapshot).
    pub passthrough: Option<usize>,
    /// Start each spliced connection with a PROXY protocol header of this version.
    pub passthrough_proxy_protocol: Option<crate::config::ProxyProtocolVersion>,
    pub redirect_http: bool,
    /// How that redirect writes its `Location`.
    pub redirect: crate::config::HttpsRedirectConfig,
    /// The `Strict-Transport-Security` value, when configured.
    pub hsts: Option<HeaderValue>,
    /// Clients must present a certificate from the host's CA bundle; this identifies the
    /// bundle's content (it changes when the CA does).
    pub client_ca: Option<u64>,
    /// nginx-style client certificate checks (`client_verify` other than `handshake`),
    /// answered on each request.
    pub client_policy: Option<Arc<client_cert::ClientPolicy>>,
}

/// What a host's client CA makes of the handshake: the verifier the handshake uses (none
/// when `client_verify: off`), the CA's fingerprint, and the nginx-style policy.
type ClientVerification = (Option<Arc<dyn ClientCertVerifier>>, u64, Option<Arc<client_cert::ClientPolicy>>);

/// The client certificate verification of a host with a client CA.
fn client_verification(
    host: &crate::config::VirtualHostConfig,
    tls: &crate::config::HostTlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<ClientVerification>, String> {
    use client_cert::{ClientPolicy, ClientVerify, Deferred};
    if tls.client_ca_path.is_none() && tls.client_ca_pem.is_none() {
        return Ok(None);
    }
    let what = format!("virtual host {:?} client CA", host.name);
    let (roots, pem) = certs::load_ca_bundle(
        &what,
        tls.client_ca_path.as_deref(),
        tls.client_ca_pem.as_deref(),
        "client_ca_pem",
    )
    .map_err(|e| e.to_string())?;
    let crls = match &tls.client_crl_pem {
        Some(pem) => rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("virtual host {:?} client CRL: {e}", host.name))?,
        None => Vec::new(),
    };
    let strict = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| format!("{what}: {e}"))?;
    let fingerprint = certs::fingerprint(&pem);
    if tls.client_verify == ClientVerify::Handshake {
        return Ok(Some((Some(strict), fingerprint, None)));
    }
    let match_cn = match &tls.client_match_cn {
        Some(re) => Some(
            regex::Regex::new(re)
                .map_err(|e| format!("virtual host {:?} client_match_cn: {e}", host.name))?,
        ),
        None => None,
    };
    let error_page = match &tls.client_error_page {
        Some(page) => Some(
            HeaderValue::from_str(page)
                .map_err(|_| format!("virtual host {:?} client_error_page is not a valid URL", host.name))?,
        ),
        None => None,
    };
    let handshake: Option<Arc<dyn ClientCertVerifier>> = match tls.client_verify {
        ClientVerify::Off => None,
        _ => Some(Arc::new(Deferred(strict.clone()))),
    };
    let policy = ClientPolicy::new(
        tls.client_verify,
        strict,
        tls.client_verify_depth,
        tls.pass_client_certificate,
        match_cn,
        error_page,
    );
    Ok(Some((handshake, fingerprint, Some(Arc::new(policy)))))
}

/// TLS of one listener.
pub struct ListenerTls {
    resolver: Arc<ListenerResolver>,
    /// For every host without client certificates.
    config: TicketCounts,
    /// By virtual host index: hosts that require client certificates.
    client_auth: HashMap<usize, TicketCounts>,
    /// Some host is passed through: look the SNI up for passthrough before rustls reads on.
    passthrough: bool,
}

impl ListenerTls {
    /// The configuration to finish a handshake with, for what the SNI selected and whether the
    /// client offers a session to resume.
    fn config_for(&self, selection: Selection, offers_resumption: bool) -> Option<Arc<ServerConfig>> {
        let configs = match selection {
            Selection::Host(host) => self.client_auth.get(&host).unwrap_or(&self.config),
            Selection::Default => &self.config,
            Selection::Reject => return None,
        };
        Some(configs.for_hello(offers_resumption))
    }
}

/// TLS 1.3 tickets issued after a full handshake: a client may open a second connection that
/// resumes while the first is still open (tickets are single use).
const FULL_HANDSHAKE_TICKETS: usize = 2;
/// After a resumption: one ticket replaces the one the client spent. Each ticket costs the
/// server an encryption and the client a stored session, so a client that reconnects once per
/// request (and resumes) pays for one, as with OpenSSL's defaults (nginx, HAProxy).
const RESUMPTION_TICKETS: usize = 1;

/// One server configuration in the two ticket counts above (rustls fixes the count per
/// configuration). The ClientHello tells which one a handshake needs: a client that offers a
/// session most likely resumes; if the session is not accepted, it gets one fresh ticket.
struct TicketCounts {
    full: Arc<ServerConfig>,
    resuming: Arc<ServerConfig>,
}

impl TicketCounts {
    fn new(mut config: ServerConfig) -> TicketCounts {
        // The clone shares the session cache and the ticket keys (both behind `Arc`).
        let mut resuming = config.clone();
        config.send_tls13_tickets = FULL_HANDSHAKE_TICKETS;
        resuming.send_tls13_tickets = RESUMPTION_TICKETS;
        TicketCounts { full: Arc::new(config), resuming: Arc::new(resuming) }
    }

    fn for_hello(&self, offers_resumption: bool) -> Arc<ServerConfig> {
        if offers_resumption { self.resuming.clone() } else { self.full.clone() }
    }
}

/// TLS compiled from one configuration; part of the serving snapshot.
#[derive(Default)]
pub struct TlsSnapshot {
    /// By listener index (configuration order); `None` for plain-HTTP listeners.
    listeners: Vec<Option<Arc<ListenerTls>>>,
    /// By virtual host index; `None` for hosts without `tls`.
    hosts: Vec<Option<Arc<HostTls>>>,
    /// Some host has `tls` (when none has, plain requests need no host lookup).
    any_host: bool,
    table: Arc<HostTable>,
    /// The port of the first TLS listener: where plain-HTTP requests are redirected.
    https_port: Option<u16>,
    /// Every configured certificate: (name, not_after in unix seconds).
    expiry: Vec<(String, i64)>,
    /// The certificates loaded, by name: the next snapshot takes those whose configuration is
    /// unchanged from here rather than parse them again ([`TlsSnapshot::build_on`]).
    loaded: HashMap<String, LoadedCertificate>,
}

impl TlsSnapshot {
    /// Loads every certificate and CA bundle and builds the rustls configurations. `backends`
    /// maps backend names to their index in the snapshot. Errors name the certificate and file.
    pub fn build(config: &Config, backends: &crate::FastMap<&str, usize>) -> Result<TlsSnapshot, String> {
        Self::build_on(config, backends, None)
    }

    /// [`TlsSnapshot::build`], taking from `previous` (a snapshot and the configuration it was
    /// built from) every certificate whose configuration is equal and inline (a file can change
    /// behind an equal path) and that has not expired since: a rebuild then parses only the
    /// certificates that changed, not every Secret of the cluster again.
    pub fn build_on(
        config: &Config,
        backends: &crate::FastMap<&str, usize>,
        previous: Option<(&TlsSnapshot, &Config)>,
    ) -> Result<TlsSnapshot, String> {
        let provider = provider();
        let now = now_unix();
        let before: crate::FastMap<&str, &crate::config::CertificateConfig> = previous
            .map(|(_, config)| config.certificates.iter().map(|c| (c.name.as_str(), c)).collect())
            .unwrap_or_default();
        let mut loaded: HashMap<String, LoadedCertificate> =
            HashMap::with_capacity(config.certificates.len());
        for certificate in &config.certificates {
            let inline = certificate.cert_path.is_none() && certificate.key_path.is_none();
            let kept = previous
                .filter(|_| inline && before.get(certificate.name.as_str()) == Some(&certificate))
                .and_then(|(tls, _)| tls.loaded.get(&certificate.name))
                .filter(|kept| kept.not_after >= now);
            let certificate_loaded = match kept {
                Some(kept) => kept.clone(),
                None => certs::load_certificate(certificate, &provider, now).map_err(|e| e.to_string())?,
            };
            loaded.insert(certificate.name.clone(), certificate_loaded);
        }
        let key_of = |name: &str| -> Result<Arc<CertifiedKey>, String> {
            loaded.get(name).map(|c| c.key.clone()).ok_or_else(|| format!("no certificate named {name:?}"))
        };

        let table = Arc::new(HostTable::build(&config.virtual_hosts));
        let mut hosts = Vec::with_capacity(config.virtual_hosts.len());
        let mut host_keys = Vec::with_capacity(config.virtual_hosts.len());
        let mut verifiers = HashMap::new();
        for (i, host) in config.virtual_hosts.iter().enumerate() {
            let Some(tls) = &host.tls else {
                hosts.push(None);
                host_keys.push(None);
                continue;
            };
            host_keys.push(tls.certificate.as_deref().map(key_of).transpose()?);
            let passthrough = match &tls.passthrough {
                Some(name) => Some(*backends.get(name.as_str()).ok_or_else(|| {
                    format!("virtual_hosts[{i}].tls.passthrough: no backend named {name:?}")
                })?),
                None => None,
            };
            let client_policy = match client_verification(host, tls, &provider)? {
                Some((handshake_verifier, fingerprint, policy)) => {
                    if let Some(verifier) = handshake_verifier {
                        verifiers.insert(i, (verifier, fingerprint));
                    }
                    policy
                }
                None => None,
            };
            let hsts = tls.hsts.as_ref().map(|h| {
                let mut value = format!("max-age={}", h.max_age_seconds);
                if h.include_subdomains {
                    value.push_str("; includeSubDomains");
                }
                if h.preload {
                    value.push_str("; preload");
                }
                HeaderValue::from_str(&value).expect("digits and ASCII words make a valid header value")
            });
            hosts.push(Some(Arc::new(HostTls {
                name: host.name.clone(),
                passthrough,
                passthrough_proxy_protocol: tls.passthrough_proxy_protocol,
                redirect_http: tls.redirect_http,
                redirect: tls.redirect,
                hsts,
                client_ca: verifiers.get(&i).map(|(_, fingerprint)| *fingerprint),
                client_policy,
            })));
        }
        let certificates = Arc::new(host_keys);
        let tls_hosts = Arc::new(hosts.iter().map(Option::is_some).collect::<Vec<_>>());
        let any_passthrough = hosts.iter().flatten().any(|h| h.passthrough.is_some());

        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let Some(tls) = &listener.tls else {
                listeners.push(None);
                continue;
            };
            let unknown = tls.unknown_sni.unwrap_or(if tls.default_certificate.is_some() {
                UnknownSni::Default
            } else {
                UnknownSni::Reject
            });
            let default = match (unknown, &tls.default_certificate) {
                (UnknownSni::Default, Some(name)) => Some(key_of(name)?),
                _ => None,
            };
            let resolver = Arc::new(ListenerResolver::new(
                table.clone(),
                certificates.clone(),
                tls_hosts.clone(),
                default,
            ));
            let config =
                TicketCounts::new(server_config(&provider, None, resolver.clone(), tls.session_tickets)?);
            let client_auth = verifiers
                .iter()
                .map(|(&host, (verifier, _))| {
                    Ok((
                        host,
                        TicketCounts::new(server_config(
                            &provider,
                            Some(verifier.clone()),
                            resolver.clone(),
                            false,
                        )?),
                    ))
                })
                .collect::<Result<_, String>>()?;
            listeners.push(Some(Arc::new(ListenerTls {
                resolver,
                config,
                client_auth,
                passthrough: any_passthrough,
            })));
        }
        let https_port = config.listeners.iter().find(|l| l.tls.is_some()).map(|l| l.address.port());
        let mut expiry: Vec<(String, i64)> = loaded.values().map(|c| (c.name.clone(), c.not_after)).collect();
        expiry.sort();
        let any_host = hosts.iter().any(Option::is_some);
        Ok(TlsSnapshot { listeners, hosts, any_host, table, https_port, expiry, loaded })
    }

    /// The TLS settings of listener `index`, when it terminates TLS.
    pub fn listener(&self, index: usize) -> Option<&Arc<ListenerTls>> {
        self.listeners.get(index).and_then(Option::as_ref)
    }

    /// The TLS host a name (SNI or Host header) selects, if that host has `tls`.
    pub fn host(&self, name: Option<&str>) -> Option<(usize, &Arc<HostTls>)> {
        // Every plain-HTTP request asks (for redirects): without TLS hosts there is no answer
        // to look up.
        if !self.any_host {
            return None;
        }
        let index = self.table.find(name)?;
        Some((index, self.hosts.get(index)?.as_ref()?))
    }

    /// Every configured certificate with its expiry: `(name, not_after unix seconds)`, by name.
    /// For the `sluice_tls_certificate_expiry_seconds` metric.
    pub fn certificate_expiry(&self) -> &[(String, i64)] {
        &self.expiry
    }

    /// Where plain-HTTP requests for TLS hosts are redirected.
    pub fn https_port(&self) -> Option<u16> {
        self.https_port
    }
}

/// A server configuration: TLS 1.3 and 1.2, ALPN, the node's session cache and ticket keys.
///
/// Hosts with client certificates get their own session store and ticket key (`tickets`
/// false, fresh per snapshot): rustls does not re-check a client certificate when a session
/// resumes, so a session from before a CA change, or from before client certificates were
/// required, must not resume there.
fn server_config(
    provider: &Arc<CryptoProvider>,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    resolver: Arc<ListenerResolver>,
    shared_tickets: bool,
) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let client_auth = client_verifier.is_some();
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    let shared = shared();
    if client_auth {
        config.session_storage = ServerSessionMemoryCache::new(1024);
        if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
            config.ticketer = ticketer;
        }
    } else {
        // Without tickets, sessions still resume from the cache (TLS 1.3 by session id).
        config.session_storage = shared.sessions.clone();
        if shared_tickets && let Some(ticketer) = &shared.ticketer {
            config.ticketer = ticketer.clone();
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
