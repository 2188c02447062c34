//! The configuration model: one-to-one with the YAML file, and what every provider produces.

use std::{net::SocketAddr, sync::Arc};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The schema's shape of an `address`: an IPv4 literal or a bracketed IPv6 literal, and a port
/// (the loader parses it exactly; host names are never resolved).
const SOCKET_ADDRESS: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.%]+\]):[0-9]{1,5}$";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Number of worker threads; 0 means one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// After its last network work, a worker keeps polling for events this long (µs) before it
    /// sleeps (HAProxy's `busy-polling`): events in that window need no wake-up, which the CPU
    /// that received them pays with an inter-processor interrupt (a VM exit inside a VM). Costs
    /// the worker's CPU for up to the window after each burst; for nodes whose cores belong to
    /// Sluice. 0 (the default) sleeps at once. Read at start.
    #[serde(default)]
    pub busy_poll_us: u64,
    /// Where clients connect. Every worker serves every listener.
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub xdp: XdpConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Virtual hosts, matched by the request's host; one may be the default (`"*"`). Shared
    /// (`Arc`) so that a rebuild keeps an unchanged host as a pointer: copied, compared and
    /// freed as one (issue #21).
    #[serde(default)]
    pub virtual_hosts: Vec<Arc<VirtualHostConfig>>,
    /// Backend groups that routes send requests to; shared as the virtual hosts are.
    #[serde(default)]
    pub backends: Vec<Arc<BackendConfig>>,
    /// Add `x-sluice-worker: <id>` to every response: which worker answered (tests, demos).
    #[serde(default)]
    pub worker_id_header: bool,
    /// The admin server (probes, status, metrics); none when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// A listener that serves only `/metrics`, for Prometheus off the node's loopback; none
    /// when absent (the admin server serves `/metrics` too).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Also export ingress-nginx's request series (`nginx_ingress_controller_requests`,
    /// `..._request_duration_seconds`, `..._request_size`, `..._response_size`, ...) on
    /// `/metrics`, labelled as ingress-nginx labels them (each route's [`RouteIngressConfig`]),
    /// so dashboards and alerts built on them keep working.
    #[serde(default)]
    pub nginx_metrics: bool,
    /// Certificates with their private keys, named so listeners and virtual hosts can refer to
    /// them.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Which peers' forwarding headers are believed, and what goes upstream in X-Forwarded-*
    /// (ingress-nginx's `use-forwarded-headers`, `proxy-real-ip-cidr`, ...).
    #[serde(default)]
    pub forwarded: ForwardedConfig,
    /// The key that authenticates session-affinity cookies. Every node of a cluster needs the
    /// same one, so that a cookie issued by one node is honoured by the others. Without it a
    /// random key per process is used: cookies then survive neither restarts nor other nodes.
    #[serde(default)]
    pub affinity_key: Option<SecretString>,
    /// Raw TCP and UDP services (ingress-nginx's `tcp-services` / `udp-services`): balanced
    /// in XDP over their healthy endpoints when the kernel path is on, proxied by the workers
    /// otherwise.
    #[serde(default)]
    pub l4_services: Vec<L4ServiceConfig>,
}

/// The real client address and the forwarding headers, as ingress-nginx sets them. By default
/// nothing a client sends is believed: the client address is the connection's peer (or its
/// PROXY protocol source), X-Forwarded-For is replaced by it, and X-Forwarded-Proto/-Host/-Port
/// are Sluice's own. Behind trusted proxies, `use_forwarded_headers` takes the client address
/// from their X-Forwarded-For (the rightmost address that is not itself a trusted proxy, as
/// nginx's `real_ip_recursive on`) and passes their X-Forwarded-Proto/-Host/-Port on. The real
/// client address is what source ranges, client-address hashing and the access log use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardedConfig {
    /// Peers whose forwarding headers are believed (`proxy-real-ip-cidr`). Needed by
    /// `use_forwarded_headers` and `real_ip_from_header`; `0.0.0.0/0` and `::/0` trust every
    /// peer, as ingress-nginx's default does.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Believe a trusted peer's client address header and its X-Forwarded-Proto, -Host and
    /// -Port (`use-forwarded-headers`).
    #[serde(default)]
    pub use_forwarded_headers: bool,
    /// Take only the client address from a trusted peer's header (`enable-real-ip`).
    #[serde(default)]
    pub real_ip_from_header: bool,
    /// The header that carries the client address (`forwarded-for-header`).
    #[serde(default = "default_forwarded_for_header")]
    pub forwarded_for_header: String,
    /// Send the client's X-Forwarded-For with the peer appended, instead of the client address
    /// alone (`compute-full-forwarded-for`).
    #[serde(default)]
    pub compute_full_forwarded_for: bool,
}

impl Default for ForwardedConfig {
    fn default() -> ForwardedConfig {
        ForwardedConfig {
            trusted_proxies: Vec::new(),
            use_forwarded_headers: false,
            real_ip_from_header: false,
            forwarded_for_header: default_forwarded_for_header(),
            compute_full_forwarded_for: false,
        }
    }
}

impl ForwardedConfig {
    /// Whether `peer`'s forwarding headers are believed at all.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        (self.use_forwarded_headers || self.real_ip_from_header)
            && self.trusted_proxies.iter().any(|cidr| cidr.contains(peer))
    }
}

fn default_forwarded_for_header() -> String {
    "X-Forwarded-For".to_owned()
}

/// One line per request through `tracing` (target `sluice::access`), in the log format chosen
/// with `--log-format` (JSON lines or text).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// Share of requests logged, from 0.0 to 1.0.
    pub sample_rate: f64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig { enabled: true, sample_rate: 1.0 }
    }
}

// The sample rate is validated to be a number in 0..=1, never NaN.
impl Eq for AccessLogConfig {}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where Prometheus scrapes, e.g. `0.0.0.0:10254` (ingress-nginx's metrics port). It shows
    /// no configuration, only the metrics.
    #[schemars(pattern(SOCKET_ADDRESS))]
    pub address: SocketAddr,
    /// A file holding the token a scraper must send as `Authorization: Bearer TOKEN` (surrounding
    /// whitespace ignored); read at start. Without it anyone who reaches the address may scrape.
    #[serde(default)]
    pub bearer_token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Keep it on loopback unless a trusted network needs it: it exposes the configuration.
    #[schemars(pattern(SOCKET_ADDRESS))]
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// Address and port, e.g. `0.0.0.0:80` or `"[::]:80"` (dual stack).
    #[schemars(pattern(SOCKET_ADDRESS))]
    pub address: SocketAddr,
    /// Terminate TLS on this listener (HTTPS); plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as a cloud TCP load
    /// balancer sends it; ingress-nginx's `use-proxy-protocol`), read before TLS and HTTP: the
    /// client address is the header's source. A connection without a valid header within
    /// `limits.header_read_timeout_ms` is closed and counted. Only for listeners that nothing
    /// but the balancer can reach: whoever connects states the client address.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// TLS on a listener. The client's SNI picks the virtual host the way the Host header does
/// (exact domain, then `*.wildcard`, then `"*"`; no SNI picks `"*"`), and that host's `tls`
/// says which certificate to serve. TLS 1.2 and 1.3 only; ALPN offers `h2` and `http/1.1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// The certificate (a `certificates` name) served when the SNI is missing or picks no
    /// virtual host with `tls`.
    #[serde(default)]
    pub default_certificate: Option<String>,
    /// A missing or unknown SNI: `default` serves `default_certificate`; `reject` fails the
    /// handshake with the `unrecognized_name` alert. Default: `default` when
    /// `default_certificate` is set, `reject` otherwise.
    #[serde(default)]
    pub unknown_sni: Option<UnknownSni>,
    /// Issue session tickets (stateless resumption) whose keys all workers share and rotate
    /// every 6 hours. Without them, sessions still resume from the node's session cache.
    #[serde(default = "default_true")]
    pub session_tickets: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSni {
    /// Serve the listener's `default_certificate`.
    Default,
    /// Fail the handshake with the `unrecognized_name` alert.
    Reject,
}

/// A certificate chain and its private key, in PEM: from files (`*_path`, re-read on every
/// reload, and a change to a watched file reloads) or inline (`*_pem`, as from a
/// `kubernetes.io/tls` Secret). A certificate that does not parse, does not match its key, or
/// has expired is refused with the reload, and the previous configuration keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub name: String,
    /// PEM file with the certificate chain, leaf first. Exactly one of `cert_path` and
    /// `cert_pem`.
    #[serde(default)]
    pub cert_path: Option<std::path::PathBuf>,
    /// The certificate chain as inline PEM, leaf first.
    #[serde(default)]
    pub cert_pem: Option<String>,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC). Exactly one of
    /// `key_path` and `key_pem`.
    #[serde(default)]
    pub key_path: Option<std::path::PathBuf>,
    /// The private key as inline PEM.
    #[serde(default)]
    pub key_pem: Option<SecretString>,
}

/// A string that is never printed: `Debug` shows `<redacted>`, so private keys stay out of
/// logs and error messages.
#[derive(Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Serialized (the admin API shows the configuration) as `<redacted>` too.
impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// Limits that protect the workers; every one has a safe default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    pub max_headers: usize,
    /// A client must send its whole request head within this (slowloris guard); on TLS
    /// listeners, it must also finish the TLS handshake within this.
    pub header_read_timeout_ms: u64,
    /// A client connection idle this long between requests is closed.
    pub idle_timeout_ms: u64,
    /// A client that takes no byte of what is written to it for this long (it stopped reading)
    /// is closed, with the request in progress and its upstream connection (nginx's
    /// `send_timeout`, 60 s there too).
    pub send_timeout_ms: u64,
    /// Largest request body unless a route says otherwise; larger gets 413. 0 = unlimited.
    pub max_body_bytes: u64,
    /// HTTP/2 streams a client may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Client connections one worker holds at once; more wait in the accept queue.
    pub max_connections_per_worker: usize,
    /// On shutdown, in-flight requests and open WebSockets get this long to finish after the
    /// listeners close.
    pub shutdown_grace_ms: u64,
    /// On SIGTERM, `/readyz` answers 503 at once and the listeners keep serving this long
    /// before they close, so a load balancer that follows readiness stops sending new
    /// connections first (ingress-nginx's `--shutdown-grace-period`, 0 there too). Read when the
    /// signal comes, so a reload changes it.
    pub shutdown_delay_ms: u64,
    /// Leave each new connection with the kernel until the client sends its first bytes
    /// (`TCP_DEFER_ACCEPT`, nginx's `deferred`), for up to `header_read_timeout_ms`. HTTP and
    /// TLS clients speak first, so a worker then wakes once per new connection instead of
    /// twice, and connections that never send cost the workers nothing; one still silent after
    /// that is accepted and cut by the header timeout. Set when the listeners open.
    pub defer_accept: bool,
    /// Status for a request over a route's `rate_limit` requests per second or minute
    /// (ingress-nginx's `limit-req-status-code`).
    pub rate_limit_status: u16,
    /// Status for a request over a route's `rate_limit.connections` (ingress-nginx's
    /// `limit-conn-status-code`).
    pub connection_limit_status: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            max_body_bytes: 64 * 1024 * 1024,
            h2_max_concurrent_streams: 100,
            max_connections_per_worker: 10_000,
            shutdown_grace_ms: 30_000,
            shutdown_delay_ms: 0,
            defer_accept: true,
            rate_limit_status: 503,
            connection_limit_status: 503,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostConfig {
    pub name: String,
    /// Host names: exact (`api.example.com`), wildcard (`*.example.com`: exactly one more
    /// label, as in Kubernetes Ingress), or `"*"` for the default virtual host.
    pub domains: Vec<String>,
    /// A wildcard domain takes any number of labels (`*.example.com` matches
    /// `a.b.example.com`), as Gateway API hostnames do; a more specific domain still wins.
    #[serde(default)]
    pub deep_wildcards: bool,
    /// Shared (`Arc`) as the hosts are: a host made again from unchanged routes copies
    /// pointers.
    #[serde(default)]
    pub routes: Vec<Arc<RouteConfig>>,
    /// HTTPS for this host: its certificate (or TLS passthrough), redirects from plain HTTP,
    /// HSTS and client certificates.
    #[serde(default)]
    pub tls: Option<HostTlsConfig>,
    /// Which client addresses may use this host's routes (a route's own `source_ranges`
    /// replaces this).
    #[serde(default)]
    pub source_ranges: Option<Box<SourceRangesConfig>>,
    /// Header changes on requests as they go upstream, for every route of the host (applied
    /// before a route's own).
    #[serde(default)]
    pub request_headers: Option<Box<HeaderOpsConfig>>,
    /// Header changes on every response of the host's routes, Sluice's own answers included
    /// (applied before a route's own).
    #[serde(default)]
    pub response_headers: Option<Box<HeaderOpsConfig>>,
    /// Cross-origin resource sharing for every route of the host (a route's own replaces it).
    #[serde(default)]
    pub cors: Option<Box<CorsConfig>>,
    /// HTTP basic authentication for this host's routes (a route's own `basic_auth` replaces
    /// this).
    #[serde(default)]
    pub basic_auth: Option<Box<BasicAuthConfig>>,
    /// Per-client limits for this host's routes (a route's own `rate_limit` replaces this).
    #[serde(default)]
    pub rate_limit: Option<Box<RateLimitConfig>>,
    /// External authentication for this host's routes (a route's own `external_auth`
    /// replaces this).
    #[serde(default)]
    pub external_auth: Option<Box<ExternalAuthConfig>>,
    /// Error pages for this host's routes (a route's own `error_pages` replaces this).
    #[serde(default)]
    pub error_pages: Option<Box<ErrorPagesConfig>>,
}

/// Error pages (ingress-nginx's `custom-http-errors` with its default backend): when the
/// backend answers one of `statuses` (or Sluice's own 502, 503 or 504 when forwarding fails
/// and that status is listed), that answer is dropped and the request is asked again of
/// `backend`, as nginx's `error_page CODE = @custom_...`: the same method, path `/`, no body,
/// the client's fields and `X-Code` (the status), `X-Format` (the client's `Accept`),
/// `X-Original-URI` (the request target as sent) and `X-Request-ID` (the request's id), plus
/// `headers`. The error backend's answer goes to the client as it is, status included (the
/// backend is expected to answer with the status it was told in `X-Code`); it is never
/// intercepted again.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorPagesConfig {
    /// The statuses that go to the error backend, 400 to 599.
    pub statuses: Vec<u16>,
    /// The backend group that answers them.
    pub backend: String,
    /// More fields for the error backend (the Kubernetes provider sends ingress-nginx's
    /// `X-Namespace`, `X-Ingress-Name`, `X-Service-Name` and `X-Service-Port`).
    #[serde(default)]
    pub headers: Vec<HeaderField>,
}

/// Header changes, in this order: `remove` the named fields, `set` (replacing every field of
/// that name), then `add` (appending). Names are case-insensitive. Hop-by-hop and framing
/// fields (`Connection`, `Transfer-Encoding`, `Content-Length`, ...) cannot be changed: the
/// proxy owns them on each hop.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    #[serde(default)]
    pub set: Vec<HeaderField>,
    #[serde(default)]
    pub add: Vec<HeaderField>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderField {
    pub name: String,
    pub value: String,
}

/// Cross-origin resource sharing, as ingress-nginx's `enable-cors` serves it: an `OPTIONS`
/// request from an allowed origin is answered `204` by Sluice (before source ranges and auth,
/// as nginx's rewrite phase comes before its access phase); other responses to an allowed
/// origin carry the `Access-Control-*` headers, replacing the backend's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins: `*` (any, answered `Access-Control-Allow-Origin: *`), `null`, or
    /// `scheme://host[:port]` where the host may start with `*.` (exactly one more label).
    /// A matching origin is echoed back.
    #[serde(default = "default_cors_origins")]
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default = "default_cors_headers")]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default = "default_true")]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
    #[serde(default = "default_cors_max_age")]
    pub max_age_seconds: u64,
}

impl Default for CorsConfig {
    fn default() -> CorsConfig {
        CorsConfig {
            allow_origins: default_cors_origins(),
            allow_methods: default_cors_methods(),
            allow_headers: default_cors_headers(),
            expose_headers: Vec::new(),
            allow_credentials: true,
            max_age_seconds: default_cors_max_age(),
        }
    }
}

fn default_cors_origins() -> Vec<String> {
    vec!["*".to_owned()]
}

/// ingress-nginx's defaults.
pub fn default_cors_methods() -> Vec<String> {
    ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"].map(String::from).to_vec()
}

pub fn default_cors_headers() -> Vec<String> {
    [
        "DNT",
        "Keep-Alive",
        "User-Agent",
        "X-Requested-With",
        "If-Modified-Since",
        "Cache-Control",
        "Content-Type",
        "Range",
        "Authorization",
    ]
    .map(String::from)
    .to_vec()
}

fn default_cors_max_age() -> u64 {
    1_728_000
}

/// External authentication (ingress-nginx `auth-url`, nginx's `auth_request`): before a request
/// goes upstream, a subrequest with its method and header fields (no body) asks the auth
/// service; 2xx lets it through, 401 and 403 are the answer (401 with `signin`: a 302 to the
/// sign-in page), anything else or no answer in `timeout_ms` is a 500.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthConfig {
    /// `http://` or `https://` URL of the auth service's check (`https://auth.example/oauth2/auth`).
    pub url: String,
    /// The subrequest's method (`auth-method`); default: the request's own.
    #[serde(default)]
    pub method: Option<String>,
    /// Where a 401 sends the client (`auth-signin`), with the original URL in
    /// `signin_redirect_param`.
    #[serde(default)]
    pub signin: Option<String>,
    #[serde(default = "default_signin_redirect_param")]
    pub signin_redirect_param: String,
    /// Fields of the auth service's 2xx answer copied to the upstream request
    /// (`auth-response-headers`).
    #[serde(default)]
    pub response_headers: Vec<String>,
    /// The `X-Auth-Request-Redirect` value (`auth-request-redirect`); default: the request URI.
    #[serde(default)]
    pub request_redirect: Option<String>,
    /// What a cached answer is keyed by (`auth-cache-key`): text with `$http_NAME`,
    /// `$cookie_NAME`, `$remote_addr`, `$remote_user`, `$host`, `$request_uri`, `$uri`,
    /// `$request_method` or `$scheme`. Without it nothing is cached.
    #[serde(default)]
    pub cache_key: Option<String>,
    /// How long answers are cached (`auth-cache-duration`): comma-separated `[codes...] time`,
    /// as nginx's `proxy_cache_valid` (`200 202 401 5m`).
    #[serde(default = "default_auth_cache_duration")]
    pub cache_duration: String,
    /// Pass the auth service's `Set-Cookie` on every response (`auth-always-set-cookie`);
    /// otherwise only on 2xx and 3xx responses of the backend.
    #[serde(default)]
    pub always_set_cookie: bool,
    /// How long the auth service may take (connect and answer).
    #[serde(default = "default_auth_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a pooled connection to the auth service stays idle (`auth-keepalive-timeout`).
    #[serde(default = "default_auth_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// TLS towards an `https` URL. Default: encrypted but not verified, as ingress-nginx's.
    #[serde(default)]
    pub tls: Option<BackendTlsConfig>,
}

pub(super) fn default_signin_redirect_param() -> String {
    "rd".into()
}

pub(super) fn default_auth_cache_duration() -> String {
    "200 202 401 5m".into()
}

pub(super) fn default_auth_timeout_ms() -> u64 {
    5_000
}

pub(super) fn default_auth_keepalive_timeout_ms() -> u64 {
    60_000
}

/// HTTP basic authentication (ingress-nginx `auth-type: basic`): a request without valid
/// credentials gets `401 Unauthorized` with `WWW-Authenticate: Basic realm="<realm>"` and never
/// reaches a backend. Credentials are htpasswd lines, `user:hash`, with bcrypt (`$2a$`, `$2b$`,
/// `$2y$`), Apache MD5 (`$apr1$`) or `{SHA}` hashes; any other hash is an error naming the user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The realm browsers show in their login prompt.
    #[serde(default)]
    pub realm: String,
    /// htpasswd lines, inline. Exactly one of `htpasswd` and `htpasswd_file`.
    #[serde(default)]
    pub htpasswd: Option<String>,
    /// An htpasswd file, read when the configuration is loaded (again on every reload).
    #[serde(default)]
    pub htpasswd_file: Option<String>,
    /// The credentials could not be read (the Kubernetes provider sets this for a missing or
    /// malformed auth Secret): every request gets `503`, as ingress-nginx denies the location.
    #[serde(skip)]
    #[schemars(skip)]
    pub unavailable: bool,
}

/// Which client addresses may use a route (ingress-nginx `allowlist-source-range` and
/// `denylist-source-range`): a client inside `deny` is refused; when `allow` is not empty, a
/// client outside it is refused too. Refused requests get `403 Forbidden` and never reach a
/// backend. The client's address is the connection's peer: a client-sent X-Forwarded-For never
/// opens an allow list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceRangesConfig {
    /// Networks allowed in (every other client is refused); empty: everyone not denied.
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// Networks refused, whatever `allow` says.
    #[serde(default)]
    pub deny: Vec<Cidr>,
}

impl SourceRangesConfig {
    /// Whether a client at `client` may use the route.
    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|cidr| cidr.contains(client))
            && (self.allow.is_empty() || self.allow.iter().any(|cidr| cidr.contains(client)))
    }
}

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`,
/// `/32` or `/128`). Bits past the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`), as nginx
/// and ingress-nginx read them. An IPv4 network also matches IPv4-mapped IPv6 clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network as written (bits past the prefix included).
    pub fn network(&self) -> std::net::IpAddr {
        self.network
    }

    /// The prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: std::net::IpAddr =
            address.parse().map_err(|_| format!("`{text}` is not an IP address or CIDR network"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(digits) => match digits.parse::<u8>() {
                Ok(prefix) if prefix <= bits && digits.bytes().all(|b| b.is_ascii_digit()) => prefix,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {bits}")),
            },
        };
        // An IPv4-mapped network (`::ffff:192.0.2.0/120`) is the IPv4 network it maps, as clients
        // are compared canonically.
        match network.to_canonical() {
            v4 @ std::net::IpAddr::V4(_) if network.is_ipv6() && prefix >= 96 => {
                Ok(Cidr { network: v4, prefix: prefix - 96 })
            }
            _ => Ok(Cidr { network, prefix }),
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Cidr, String> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        format!("{}/{}", cidr.network, cidr.prefix)
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An IPv4 or IPv6 network (`10.0.0.0/8`, `2001:db8::/32`) or one address.",
            "pattern": "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$",
        })
    }
}

/// A PROXY protocol header version (HAProxy's spec): `v1` is a text line, `v2` binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

/// TLS for one virtual host, selected by SNI on TLS listeners (see [`ListenerTlsConfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostTlsConfig {
    /// The certificate to serve (a `certificates` name). Exactly one of `certificate` and
    /// `passthrough`.
    #[serde(default)]
    pub certificate: Option<String>,
    /// Do not terminate TLS: connections whose SNI picks this host are spliced, still
    /// encrypted, to this backend group (ingress-nginx `ssl-passthrough`). `routes` then only
    /// apply to plain-HTTP requests.
    #[serde(default)]
    pub passthrough: Option<String>,
    /// With `passthrough`: each spliced connection starts with a PROXY protocol header of this
    /// version naming the client (HAProxy's `send-proxy` / `send-proxy-v2`), so the backend
    /// that terminates TLS still knows who connected. The backend must expect it.
    #[serde(default)]
    pub passthrough_proxy_protocol: Option<ProxyProtocolVersion>,
    /// Requests for this host on plain-HTTP listeners get `308` to the same URL on the first
    /// TLS listener (ACME `/.well-known/acme-challenge/` requests excepted).
    #[serde(default = "default_true")]
    pub redirect_http: bool,
    /// How that redirect writes its `Location`.
    #[serde(default)]
    pub redirect: HttpsRedirectConfig,
    /// Send `Strict-Transport-Security` on HTTPS responses for this host.
    #[serde(default)]
    pub hsts: Option<HstsConfig>,
    /// Require a client certificate issued by a CA in this PEM bundle (mTLS). At most one of
    /// `client_ca_path` and `client_ca_pem`; clients of other hosts are not asked.
    #[serde(default)]
    pub client_ca_path: Option<std::path::PathBuf>,
    /// The client CA bundle as inline PEM.
    #[serde(default)]
    pub client_ca_pem: Option<String>,
    /// How the client certificate is checked (ingress-nginx `auth-tls-verify-client`).
    #[serde(default)]
    pub client_verify: ClientVerify,
    /// Longest chain from the client certificate to a CA of the bundle (nginx
    /// `ssl_verify_depth`; 1: issued by a CA of the bundle directly).
    #[serde(default = "default_client_verify_depth")]
    pub client_verify_depth: u8,
    /// Certificate revocation lists (PEM) the client certificate is checked against.
    #[serde(default)]
    pub client_crl_pem: Option<String>,
    /// Where a client whose certificate is missing or fails goes instead of the 400 (a `302`).
    #[serde(default)]
    pub client_error_page: Option<String>,
    /// Send the client certificate to the backends as `ssl-client-cert` (URL-encoded PEM).
    #[serde(default)]
    pub pass_client_certificate: bool,
    /// A regular expression the certificate's subject DN (`CN=client,O=Example`) must match,
    /// else `403` (ingress-nginx `auth-tls-match-cn`).
    #[serde(default)]
    pub client_match_cn: Option<String>,
}

/// How a redirect from plain HTTP to HTTPS writes its `Location`: `https://`, the request's
/// host without its port (a trusted proxy's `X-Forwarded-Host` when `forwarded` passes its
/// values on), the port as `port` says, and the request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpsRedirectConfig {
    #[serde(default)]
    pub port: RedirectPort,
    /// Drop one trailing `/` of the request target, as ingress-nginx does unless
    /// `preserve-trailing-slash` (`/a/` goes to `https://host/a`, `/` to `https://host`).
    #[serde(default)]
    pub strip_trailing_slash: bool,
}

/// The port a redirect to HTTPS names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedirectPort {
    /// The first TLS listener's, left out when it is 443 (or there is none).
    #[default]
    Listener,
    /// The first TLS listener's, 443 included (ingress-nginx `use-port-in-redirects`).
    Always,
    /// None: clients reach HTTPS on 443 wherever TLS ends (ingress-nginx's default).
    Never,
}

/// When and how a client certificate is required (nginx's `ssl_verify_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientVerify {
    /// A client without a valid certificate fails the TLS handshake.
    #[default]
    Handshake,
    /// The handshake finishes; a request without a certificate, or with one that fails, gets
    /// `400` (nginx `on`).
    On,
    /// A certificate is asked for but not required; one that fails gets `400`.
    Optional,
    /// As `optional`, and a certificate from an unknown CA is let through (marked FAILED).
    OptionalNoCa,
    /// No certificate is asked for.
    Off,
}

fn default_client_verify_depth() -> u8 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// How long browsers keep to HTTPS for this host. Default: one year.
    #[serde(default = "default_hsts_max_age")]
    pub max_age_seconds: u64,
    /// Also for every subdomain.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Add `preload` (for browsers' preload lists; needs a long max-age and subdomains).
    #[serde(default)]
    pub preload: bool,
}

fn default_hsts_max_age() -> u64 {
    31_536_000
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Shown in metrics and logs; defaults to `<virtual host>/<index>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// The backend group to proxy to. Exactly one of `backend`, `redirect` and
    /// `direct_response`.
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub redirect: Option<Box<RedirectConfig>>,
    /// Answers every request with this status (400..=599) and an empty body, without a
    /// backend: what the Gateway API asks of a rule whose backends or filters cannot be used.
    #[serde(default)]
    pub direct_response: Option<u16>,
    #[serde(default)]
    pub rewrite: Option<Box<RewriteConfig>>,
    /// Overrides the backend's request timeout for this route.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Overrides `limits.max_body_bytes` for this route (0 = unlimited).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Which client addresses may use this route; replaces the virtual host's.
    #[serde(default)]
    pub source_ranges: Option<Box<SourceRangesConfig>>,
    /// Header changes on requests as they go upstream (after the virtual host's).
    #[serde(default)]
    pub request_headers: Option<Box<HeaderOpsConfig>>,
    /// Header changes on this route's responses (after the virtual host's).
    #[serde(default)]
    pub response_headers: Option<Box<HeaderOpsConfig>>,
    /// Cross-origin resource sharing; replaces the virtual host's.
    #[serde(default)]
    pub cors: Option<Box<CorsConfig>>,
    /// HTTP basic authentication for this route; replaces the virtual host's.
    #[serde(default)]
    pub basic_auth: Option<Box<BasicAuthConfig>>,
    /// Per-client limits for this route; replaces the virtual host's.
    #[serde(default)]
    pub rate_limit: Option<Box<RateLimitConfig>>,
    /// External authentication for this route; replaces the virtual host's.
    #[serde(default)]
    pub external_auth: Option<Box<ExternalAuthConfig>>,
    /// Error pages for this route; replaces the virtual host's.
    #[serde(default)]
    pub error_pages: Option<Box<ErrorPagesConfig>>,
    /// Plain-HTTP requests on this route are redirected (`308`) to HTTPS even where this host
    /// has no `tls` here, for TLS that ends at an outer balancer (ingress-nginx
    /// `force-ssl-redirect`); ACME challenges are not; behind a trusted proxy (`forwarded`) its
    /// `X-Forwarded-Proto` decides instead of the connection (`http` is redirected).
    #[serde(default)]
    pub https_redirect: Option<HttpsRedirectConfig>,
    /// Copies of the route's requests sent to other backend groups, fire and forget: their
    /// answers are dropped and never delay the client's (Gateway API `RequestMirror`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorConfig>,
    /// The Ingress path this route serves (set by the Kubernetes provider): the `namespace`,
    /// `ingress`, `service` and `path` labels of the ingress-nginx series (`nginx_metrics`).
    /// Without it they are empty, the route's name, its backend and its path.
    #[serde(default)]
    pub ingress: Option<RouteIngressConfig>,
    /// With `redirect`: the `Location` names the port the request came in on (a trusted
    /// proxy's `X-Forwarded-Port`, else the listener's) even when it is the scheme's default,
    /// the scheme a trusted proxy's `X-Forwarded-Proto` names (else the connection's), and the
    /// request target without one trailing `/`, as ingress-nginx's `from-to-www-redirect`
    /// writes it (`http://example.com:80/foo`).
    #[serde(default)]
    pub redirect_keeps_port: bool,
}

/// One request mirror of a route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The backend group that gets the copies.
    pub backend: String,
    /// The share of requests copied: `numerator` in `denominator` (default: all).
    #[serde(default)]
    pub fraction: Option<FractionConfig>,
    /// The copies carry the request body. Only a body the route holds whole is copied: one
    /// within the route backend's `buffering.request_bytes`; a longer one goes without its
    /// copy (counted).
    #[serde(default = "default_true")]
    pub body: bool,
    /// The copies' `Host` header; default: the original request's (ingress-nginx's
    /// `mirror-target` sends the target's host name, or `mirror-host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `numerator` in `denominator` (Gateway API `fraction`; `percent: P` is `P` in 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FractionConfig {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

fn hundred() -> u32 {
    100
}

/// Where a route comes from in Kubernetes terms.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteIngressConfig {
    pub namespace: String,
    /// The Ingress's name.
    pub name: String,
    /// The Service's name.
    pub service: String,
    /// The Ingress path as written (`/api`).
    pub path: String,
}

/// Per-client-address limits (ingress-nginx's `limit-*` annotations), kept per node: a
/// cluster-wide limit is the per-node limit times the nodes. The budget is per route name, so
/// routes sharing a name (every path of one Ingress) share it. Every limit is off at 0.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second from one client address (`limit-rps`); over it (after the burst),
    /// `limits.rate_limit_status`.
    #[serde(default)]
    pub rps: u32,
    /// Requests per minute from one client address (`limit-rpm`).
    #[serde(default)]
    pub rpm: u32,
    /// The burst a client may send at once is `rps` (or `rpm`) times this
    /// (`limit-burst-multiplier`), as nginx's `limit_req burst=... nodelay`.
    #[serde(default = "default_burst_multiplier")]
    pub burst_multiplier: u32,
    /// Requests one client address may have in progress at once (`limit-connections`); over
    /// it, `limits.connection_limit_status`.
    #[serde(default)]
    pub connections: u32,
    /// Response bandwidth of each request, bytes per second (`limit-rate`, in KiB there).
    #[serde(default)]
    pub response_bytes_per_second: u64,
    /// The first bytes of each response that go unthrottled (`limit-rate-after`).
    #[serde(default)]
    pub response_rate_after_bytes: u64,
    /// Clients these networks hold are never limited by `rps`, `rpm` or `connections`
    /// (`limit-allowlist`).
    #[serde(default)]
    pub allowlist: Vec<Cidr>,
}

fn default_burst_multiplier() -> u32 {
    5
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            rps: 0,
            rpm: 0,
            burst_multiplier: default_burst_multiplier(),
            connections: 0,
            response_bytes_per_second: 0,
            response_rate_after_bytes: 0,
            allowlist: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Default: prefix `/` (everything).
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Only these methods (any when empty).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Every listed header must match.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Every listed query parameter must match (Gateway API `queryParams`).
    #[serde(default)]
    pub query_params: Vec<QueryParamMatch>,
    /// Only requests that arrived on these listeners (names from `listeners`); any when empty.
    /// A Gateway API route is answered only on the node listeners of the Gateway listeners
    /// it is attached to. Not a constraint for precedence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
}

/// A query parameter match: the first parameter of that name (case-sensitive, as the Gateway
/// API says), compared as sent (not percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryParamMatch {
    pub name: String,
    /// The value equals this. Exactly one of `exact` and `regex`.
    #[serde(default)]
    pub exact: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
}

/// Path matching with the Kubernetes Ingress semantics. In YAML: `{prefix: /api}`,
/// `{exact: /x}` or `{regex: "^/v[0-9]+/"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "OneOf")]
pub enum PathMatch {
    /// The path equals this, case-sensitively.
    Exact(String),
    /// Element-wise prefix: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// A regular expression matched against the path, anchored at its start.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    /// The value equals this. At most one of `exact`, `regex`, `present`.
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// The header is present (`true`) or absent (`false`).
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Replaces the part of the path that the route's prefix matched.
    #[serde(default)]
    pub prefix: Option<String>,
    /// A regular expression over the path; with `replacement` (`$1`, `${name}` capture groups).
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub replacement: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// `http` or `https`; default: the request's.
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Replaces the whole path; default: the request's (after any rewrite).
    #[serde(default)]
    pub path: Option<String>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_code")]
    pub code: u16,
}

fn default_redirect_code() -> u16 {
    302
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    #[serde(default)]
    pub protocol: BackendProtocol,
    #[serde(default)]
    pub balance: Balance,
    /// What `balance: hash` hashes; required then, refused otherwise.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub outlier: OutlierConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Connections one worker opens to one endpoint at most; requests beyond wait for one.
    #[serde(default = "default_max_connections_per_endpoint")]
    pub max_connections_per_endpoint: usize,
    #[serde(default)]
    pub retries: RetryConfig,
    /// Cookie session affinity (ingress-nginx `affinity: cookie`).
    #[serde(default)]
    pub cookie_affinity: Option<Box<CookieAffinityConfig>>,
    /// Speak TLS to the endpoints (HTTPS; with `protocol: h2c`, HTTP/2 over TLS via ALPN `h2`,
    /// as gRPC over TLS).
    #[serde(default)]
    pub tls: Option<Box<BackendTlsConfig>>,
    /// How much of request and response bodies is held before they go on (nginx's
    /// `proxy_request_buffering` and `proxy_buffering`); by default both stream.
    #[serde(default)]
    pub buffering: BufferingConfig,
}

/// Request and response buffering: `0` streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BufferingConfig {
    /// The request body is read up to this many bytes (all of a shorter one) before an
    /// endpoint is chosen; the rest streams. A body held whole may go again to another
    /// endpoint after an attempt sent it (`retries.on`).
    pub request_bytes: u64,
    /// The response body is read up to this many bytes (all of a shorter one) before the
    /// response goes to the client; the rest streams.
    pub response_bytes: u64,
}

/// TLS towards a backend's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// PEM bundle of the CAs that may issue the endpoints' certificates. Exactly one of
    /// `ca_path` and `ca_pem`, unless `insecure_skip_verify`.
    #[serde(default)]
    pub ca_path: Option<std::path::PathBuf>,
    /// The CA bundle as inline PEM.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Accept any certificate from the endpoints (still encrypted, but anyone in the path can
    /// impersonate them). For backends with self-signed certificates only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The name sent as SNI and checked against the endpoints' certificates. Default: the
    /// endpoint's IP address (no SNI is sent then).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Send `server_name` as SNI (default). With `false` it is still the name verified, but the
    /// ClientHello names no server (ingress-nginx `proxy-ssl-server-name: off`).
    #[serde(default = "default_true")]
    pub sni: bool,
    /// The client certificate chain presented to the endpoints (mutual TLS), inline PEM; with
    /// `client_key_pem` (ingress-nginx `proxy-ssl-secret`'s `tls.crt` and `tls.key`).
    #[serde(default)]
    pub client_cert_pem: Option<String>,
    #[serde(default)]
    pub client_key_pem: Option<SecretString>,
    /// The longest chain accepted, as OpenSSL's verify depth: 1 = the endpoint's certificate
    /// signed by a CA of the bundle, each more allows one intermediate (ingress-nginx
    /// `proxy-ssl-verify-depth`). Default: no limit.
    #[serde(default)]
    pub verify_depth: Option<u8>,
    /// TLS versions offered: `["1.2", "1.3"]` (the default, both).
    #[serde(default = "default_upstream_tls_versions")]
    pub versions: Vec<TlsVersion>,
    /// TLS 1.2 cipher suites offered, by their IANA names as rustls spells them
    /// (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`...); default: all of rustls' (ECDHE with AES-GCM
    /// or ChaCha20-Poly1305). TLS 1.3's suites are always offered.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

fn default_upstream_tls_versions() -> Vec<TlsVersion> {
    vec![TlsVersion::Tls12, TlsVersion::Tls13]
}

fn default_max_connections_per_endpoint() -> usize {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendProtocol {
    /// HTTP/1.1 to the backend, whatever the client spoke.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (cleartext); what gRPC backends speak.
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency times in-flight requests (ingress-nginx `ewma`).
    Ewma,
    /// Consistent hashing on `hash_on`.
    Hash,
}

/// In YAML: `{header: X-User}`, `{cookie: session}`, `{client_ip: true}`, or
/// `{template: "$remote_addr$request_uri"}` (ingress-nginx `upstream-hash-by`: the variables
/// `$remote_addr`, `$request_uri`, `$uri`, `$args`, `$host`, `$http_<header>`, `$cookie_<name>`,
/// and literal text between them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "OneOf")]
pub enum HashOn {
    Header(String),
    Cookie(String),
    ClientIp,
    Template(String),
}

/// The YAML form of a one-key choice (`{prefix: /api}`): serde spells enums as YAML tags
/// (`!Prefix /api`), which nobody writes by hand, so the choices are read as a map with exactly
/// one key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct OneOf {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    header: Option<String>,
    cookie: Option<String>,
    client_ip: Option<bool>,
    template: Option<String>,
}

impl OneOf {
    fn set(&self) -> usize {
        [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
            self.header.is_some(),
            self.cookie.is_some(),
            self.client_ip.is_some(),
            self.template.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count()
    }
}

/// The schema of a one-key choice: a mapping with exactly one of `choices` (key, schema of its
/// value, description).
fn one_key_choice(description: &str, choices: &[(&str, Schema, &str)]) -> Schema {
    let branches: Vec<Schema> = choices
        .iter()
        .map(|(key, value, about)| {
            let mut properties = serde_json::Map::new();
            properties.insert((*key).to_owned(), value.clone().to_value());
            json_schema!({
                "type": "object",
                "description": about,
                "properties": properties,
                "required": [key],
                "additionalProperties": false,
            })
        })
        .collect();
    json_schema!({ "description": description, "type": "object", "oneOf": branches })
}

impl JsonSchema for PathMatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PathMatch".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let string = || json_schema!({ "type": "string" });
        one_key_choice(
            "Path matching with the Kubernetes Ingress semantics: one of `exact`, `prefix`, `regex`.",
            &[
                ("exact", string(), "The path equals this, case-sensitively."),
                (
                    "prefix",
                    string(),
                    "Element-wise prefix: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.",
                ),
                ("regex", string(), "A regular expression matched against the path, anchored at its start."),
            ],
        )
    }
}

impl JsonSchema for HashOn {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HashOn".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let string = || json_schema!({ "type": "string" });
        one_key_choice(
            "What `balance: hash` hashes: one of `header`, `cookie`, `client_ip`, `template`.",
            &[
                ("header", string(), "A request header's value."),
                ("cookie", string(), "A cookie's value."),
                ("client_ip", json_schema!({ "type": "boolean", "const": true }), "The client's IP address."),
                (
                    "template",
                    string(),
                    "ingress-nginx `upstream-hash-by`: `$remote_addr`, `$request_uri`, `$uri`, `$args`, \
                     `$host`, `$http_<header>`, `$cookie_<name>` and literal text.",
                ),
            ],
        )
    }
}

impl TryFrom<OneOf> for PathMatch {
    type Error = String;
    fn try_from(one: OneOf) -> Result<Self, String> {
        let choice = match (one.set(), one.exact, one.prefix, one.regex) {
            (1, Some(p), None, None) => PathMatch::Exact(p),
            (1, None, Some(p), None) => PathMatch::Prefix(p),
            (1, None, None, Some(p)) => PathMatch::Regex(p),
            _ => return Err("a path match is one of {exact: ...}, {prefix: ...} or {regex: ...}".into()),
        };
        Ok(choice)
    }
}

impl TryFrom<OneOf> for HashOn {
    type Error = String;
    fn try_from(one: OneOf) -> Result<Self, String> {
        let choice = match (one.set(), one.header, one.cookie, one.client_ip, one.template) {
            (1, Some(h), None, None, None) => HashOn::Header(h),
            (1, None, Some(c), None, None) => HashOn::Cookie(c),
            (1, None, None, Some(true), None) => HashOn::ClientIp,
            (1, None, None, None, Some(t)) => HashOn::Template(t),
            _ => {
                return Err("hash_on is one of {header: NAME}, {cookie: NAME}, {client_ip: true} or \
                            {template: \"$remote_addr$request_uri\"}"
                    .into());
            }
        };
        Ok(choice)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    #[schemars(pattern(SOCKET_ADDRESS))]
    pub address: SocketAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Readiness from the provider (a Kubernetes EndpointSlice condition); not ready gets no
    /// traffic.
    #[serde(default = "default_true")]
    pub ready: bool,
}

fn default_weight() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive passes that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/".into(),
            interval_ms: 5_000,
            timeout_ms: 1_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Passive health: endpoints that keep failing real requests are ejected for a while.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Consecutive 5xx responses or connect failures that eject an endpoint (0 = never).
    pub consecutive_failures: u32,
    /// First ejection; each further one lasts longer (times the number of ejections).
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig { consecutive_failures: 5, base_ejection_ms: 30_000, max_ejection_ms: 300_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect_ms: u64,
    /// From sending the request to the end of the response head.
    pub request_ms: u64,
    /// A pooled upstream connection idle this long is closed.
    pub idle_ms: u64,
    /// The longest wait between two reads from the endpoint, as nginx's `proxy_read_timeout`:
    /// for the response head once the request is sent, then between response body bytes. When
    /// set, it replaces `request_ms` (and a route's `timeout_ms`) as the head's bound, so a long
    /// upload or a long streamed response is not cut while data keeps flowing.
    pub read_ms: Option<u64>,
    /// The longest wait between two writes of the request body to the endpoint, as nginx's
    /// `proxy_send_timeout` (a client that stops sending counts too). Default: no bound.
    pub send_ms: Option<u64>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect_ms: 5_000, request_ms: 60_000, idle_ms: 60_000, read_ms: None, send_ms: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt: on connect failure always, and for idempotent
    /// requests without a body when the backend fails before answering.
    pub attempts: u32,
    /// Retries may add at most this share of requests (a retry budget, as in Envoy/linkerd)...
    pub budget_percent: u32,
    /// ...but this many retries per second are always allowed.
    pub min_retries_per_second: u32,
    /// When a request goes to the next endpoint (nginx's `proxy_next_upstream`): `error` (a
    /// connection failure, or a failure before the response head), `timeout` (the head or the
    /// connect timed out), `invalid_header` (a malformed response), `http_500`, `http_502`,
    /// `http_503`, `http_504`, `http_403`, `http_404`, `http_429` (that status: the response is
    /// dropped and the next endpoint asked; when none is left, the last response is the
    /// answer), `non_idempotent` (POST, PATCH and other non-idempotent requests may go again
    /// too; without it they only go again when they never reached an endpoint). A request whose
    /// body an attempt started sending never goes again.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// No attempt starts this long after the first one began (nginx's
    /// `proxy_next_upstream_timeout`). Default: no bound.
    pub timeout_ms: Option<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            budget_percent: 20,
            min_retries_per_second: 10,
            on: default_retry_on(),
            timeout_ms: None,
        }
    }
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Error]
}

/// A condition on which a request goes to the next endpoint (`retries.on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    Error,
    Timeout,
    InvalidHeader,
    #[serde(rename = "http_500")]
    Http500,
    #[serde(rename = "http_502")]
    Http502,
    #[serde(rename = "http_503")]
    Http503,
    #[serde(rename = "http_504")]
    Http504,
    #[serde(rename = "http_403")]
    Http403,
    #[serde(rename = "http_404")]
    Http404,
    #[serde(rename = "http_429")]
    Http429,
    NonIdempotent,
}

impl RetryOn {
    /// The response status this condition retries, if it is one.
    pub fn status(self) -> Option<u16> {
        Some(match self {
            RetryOn::Http500 => 500,
            RetryOn::Http502 => 502,
            RetryOn::Http503 => 503,
            RetryOn::Http504 => 504,
            RetryOn::Http403 => 403,
            RetryOn::Http404 => 404,
            RetryOn::Http429 => 429,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
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
    /// Deny and allow lists and per-source rate limits, enforced by XDP on every service port.
    /// The one part of `xdp` that a reload applies.
    #[serde(default)]
    pub guard: XdpGuardConfig,
    /// The node address XDP puts as the source of `l4_services` traffic towards endpoints
    /// (their replies then come back through this node). Default: the first IPv4 address of
    /// the first of `interfaces`.
    #[serde(default)]
    pub snat_address: Option<std::net::Ipv4Addr>,
}

impl XdpConfig {
    /// Whether `other` differs in a field that only a restart applies (all but `guard`).
    pub fn differs_at_start(&self, other: &XdpConfig) -> bool {
        XdpConfig { guard: other.guard.clone(), ..self.clone() } != *other
    }
}

/// `xdp.guard`: what XDP drops before any socket sees it. The lists judge connection openings
/// (TCP SYN without ACK) and UDP datagrams by their source address; established TCP
/// connections are never cut by them, also when a reload denies their source. A source in
/// `deny` is dropped whatever `allow` says (as ingress-nginx renders its denylist before its
/// allowlist, and as Cilium's deny policies win over allows); when `allow` has entries, a
/// source in none of them is dropped too; empty `allow` admits every source not denied.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XdpGuardConfig {
    /// Networks whose new connections and datagrams are dropped.
    #[serde(default)]
    pub deny: Vec<Cidr>,
    /// When not empty, the only networks whose new connections and datagrams are admitted.
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// New TCP connections (SYNs) per source address; none: no limit.
    #[serde(default)]
    pub syn_rate_limit: Option<GuardRateLimit>,
    /// UDP datagrams per source address; none: no limit.
    #[serde(default)]
    pub udp_rate_limit: Option<GuardRateLimit>,
}

/// Networks per `xdp.guard` list: the size of each LPM trie (`lb_common::GUARD_CIDRS`, checked
/// by the dataplane's tests).
pub const GUARD_LIST_MAX: usize = 16_384;

/// A token bucket per source: `burst` packets at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardRateLimit {
    /// Sustained packets per second, 1 to 1000000000.
    pub per_second: u64,
    /// Packets admitted at once from a full bucket, 1 to 1000000.
    pub burst: u64,
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
            guard: XdpGuardConfig::default(),
            snat_address: None,
        }
    }
}

/// How the XDP program is attached to an interface (`xdp.mode`, `--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver (native) mode where the NIC driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native XDP in the driver; fails on drivers without XDP support.
    Driver,
    /// Generic XDP in the stack; works on every interface, slower.
    Skb,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        })
    }
}

/// The command line's spelling (`--xdp-mode`), which also takes the kernel's names.
impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "driver" | "native" => Ok(AttachMode::Driver),
            "skb" | "generic" => Ok(AttachMode::Skb),
            other => Err(format!("unknown XDP mode {other:?}; expected auto, driver or skb")),
        }
    }
}

/// Cookie session affinity: the first response sets a cookie naming the endpoint (opaquely);
/// later requests carrying it go to that endpoint. The ingress-nginx `session-cookie-*` set.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CookieAffinityConfig {
    /// Cookie name (`session-cookie-name`).
    pub name: String,
    /// `balanced`: when the pinned endpoint is unavailable (ejected, failing checks, not ready)
    /// the client is re-pinned; `persistent`: the client stays unless the endpoint is gone.
    pub mode: AffinityMode,
    pub path: String,
    pub domain: Option<String>,
    pub max_age_seconds: Option<u64>,
    pub expires_seconds: Option<u64>,
    pub samesite: Option<SameSite>,
    /// Leave out `SameSite=None` for browsers known to mishandle it.
    pub conditional_samesite_none: bool,
    pub secure: bool,
    /// When a request to the pinned endpoint fails, send it elsewhere and re-pin the client
    /// with a new cookie.
    pub change_on_failure: bool,
    /// Carry the token in this header instead of a cookie (Gateway API header session
    /// persistence): read from the request's, set on the response's; `name` and the cookie
    /// attributes are then unused.
    pub header: Option<String>,
}

/// By hand: the Kubernetes translation hashes this text into backend group names, which
/// affinity cookies hold, so a field added after the first release shows only when set and
/// the names of existing groups stay.
impl std::fmt::Debug for CookieAffinityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("CookieAffinityConfig");
        out.field("name", &self.name)
            .field("mode", &self.mode)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("max_age_seconds", &self.max_age_seconds)
            .field("expires_seconds", &self.expires_seconds)
            .field("samesite", &self.samesite)
            .field("conditional_samesite_none", &self.conditional_samesite_none)
            .field("secure", &self.secure)
            .field("change_on_failure", &self.change_on_failure);
        if let Some(header) = &self.header {
            out.field("header", header);
        }
        out.finish()
    }
}

impl Default for CookieAffinityConfig {
    fn default() -> Self {
        CookieAffinityConfig {
            name: "INGRESSCOOKIE".into(),
            mode: AffinityMode::Balanced,
            path: "/".into(),
            domain: None,
            max_age_seconds: None,
            expires_seconds: None,
            samesite: None,
            conditional_samesite_none: false,
            secure: false,
            change_on_failure: false,
            header: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum AffinityMode {
    #[default]
    Balanced,
    Persistent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
// The lower-case aliases are read too.
#[schemars(extend("enum" = ["Lax", "lax", "Strict", "strict", "None", "none"]))]
pub enum SameSite {
    #[serde(alias = "lax")]
    Lax,
    #[serde(alias = "strict")]
    Strict,
    #[serde(alias = "none")]
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_networks_contain_their_addresses() {
        let cidr = |text: &str| text.parse::<Cidr>().unwrap();
        assert!(cidr("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(cidr("10.1.2.3/8").contains(ip("10.9.9.9")), "bits past the prefix are ignored");
        assert!(cidr("192.0.2.7").contains(ip("192.0.2.7")) && !cidr("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")), "an IPv4 network holds no IPv6 client");
        assert!(cidr("::/0").contains(ip("2001:db8::1")) && !cidr("::/0").contains(ip("192.0.2.1")));
        assert!(cidr("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!cidr("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(cidr("192.0.2.0/24").contains(ip("::ffff:192.0.2.1")), "an IPv4-mapped client is IPv4");
        assert!(cidr("::ffff:192.0.2.0/120").contains(ip("192.0.2.1")));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0/8",
            "host.example",
            "1.2.3.4/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        assert_eq!(String::from(cidr(" 2001:DB8::/32 ")), "2001:db8::/32");
    }

    #[test]
    fn deny_wins_then_the_allow_list_decides() {
        let ranges = |allow: &[&str], deny: &[&str]| SourceRangesConfig {
            allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
            deny: deny.iter().map(|c| c.parse().unwrap()).collect(),
        };
        let office = ranges(&["192.0.2.0/24", "2001:db8::/32"], &["192.0.2.66"]);
        assert!(office.admits(ip("192.0.2.1")) && office.admits(ip("2001:db8::5")));
        assert!(!office.admits(ip("192.0.2.66")), "denied inside the allow list");
        assert!(!office.admits(ip("198.51.100.1")) && !office.admits(ip("2001:db9::1")));
        let blocklist = ranges(&[], &["198.51.100.0/24"]);
        assert!(blocklist.admits(ip("192.0.2.1")) && !blocklist.admits(ip("198.51.100.9")));
        assert!(ranges(&["0.0.0.0/0", "::/0"], &[]).admits(ip("2001:db8::1")));
    }
}

/// One raw TCP or UDP service (`l4_services[]`). Packets to `address` are balanced by Maglev
/// over the endpoints that pass their health check; XDP rewrites them to the endpoint (and the
/// source to the node, so that replies come back through it) without any socket on the path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct L4ServiceConfig {
    pub name: String,
    /// The address and port clients send to, e.g. `198.18.0.2:5432`. XDP matches it exactly
    /// (an unspecified address matches every local address of its family).
    #[schemars(pattern(SOCKET_ADDRESS))]
    pub address: SocketAddr,
    #[serde(default)]
    pub protocol: L4Protocol,
    /// Where the traffic goes, `address:port` each; at most 256.
    pub endpoints: Vec<SocketAddr>,
    #[serde(default)]
    pub health_check: L4HealthCheck,
    /// A flow with no packet from its client for this long is forgotten; its next packet is
    /// placed again. Default 3600000 (one hour) for TCP, 30000 for UDP.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// What happens to established flows of an endpoint that leaves (failed check, removed
    /// from the configuration): `drain` lets them follow it until they end or idle out;
    /// `reset` places their next packet again, so a TCP client gets a reset from the new
    /// endpoint at once.
    #[serde(default)]
    pub on_endpoint_removal: L4Removal,
    /// Send a PROXY protocol header (v1 or v2) to the endpoint first. XDP cannot add bytes
    /// to a flow's first payload, so such services are always proxied by the workers.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// TCP only: every connection starts with a PROXY protocol header (v1 or v2) from a
    /// balancer in front; it is read and taken off, its source is the client (for the choice
    /// of endpoint and for `proxy_protocol` towards the endpoint). A connection without a
    /// valid header is closed and counted. XDP cannot take bytes off a flow either, so such
    /// services are always proxied by the workers (ingress-nginx's third `PROXY` field).
    #[serde(default)]
    pub accept_proxy_protocol: bool,
    /// Balance it in XDP when the kernel path is on (the default). `false` has the workers'
    /// side proxy it in user space: for endpoints whose replies do not come back through an
    /// interface XDP is attached to (pods behind veths on this node, an overlay network), which
    /// XDP's source NAT needs.
    #[serde(default = "enabled_by_default")]
    pub xdp: bool,
}

impl L4ServiceConfig {
    /// The idle timeout with the protocol's default.
    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.idle_timeout_ms.unwrap_or(match self.protocol {
            L4Protocol::Tcp => 3_600_000,
            L4Protocol::Udp => 30_000,
        }))
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum L4Protocol {
    #[default]
    Tcp,
    Udp,
}

impl std::fmt::Display for L4Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            L4Protocol::Tcp => "tcp",
            L4Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum L4Removal {
    #[default]
    Drain,
    Reset,
}

/// Active checks of an L4 service's endpoints, from user space: a TCP connect for TCP
/// services; for UDP services a request/response probe when `udp_send` is set, else none (the
/// endpoints count as healthy).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct L4HealthCheck {
    /// Time between checks of one endpoint, 50 to 3600000 ms; a failed endpoint leaves the
    /// Maglev table within one interval.
    #[serde(default = "default_l4_check_interval_ms")]
    pub interval_ms: u64,
    /// A check not answered within this fails, 10 ms up to the interval.
    #[serde(default = "default_l4_check_timeout_ms")]
    pub timeout_ms: u64,
    /// UDP only: the datagram sent as a probe; any answer within the timeout passes.
    #[serde(default)]
    pub udp_send: Option<String>,
    /// UDP only: when set, the answer must start with these bytes.
    #[serde(default)]
    pub udp_expect: Option<String>,
}

fn default_l4_check_interval_ms() -> u64 {
    1000
}

fn default_l4_check_timeout_ms() -> u64 {
    500
}

impl Default for L4HealthCheck {
    fn default() -> Self {
        L4HealthCheck {
            interval_ms: default_l4_check_interval_ms(),
            timeout_ms: default_l4_check_timeout_ms(),
            udp_send: None,
            udp_expect: None,
        }
    }
}

/// Endpoints per L4 service: the stride of the kernel's endpoint table (`lb_common::
/// MAX_L4_BACKENDS`, checked by the dataplane's tests).
pub const L4_ENDPOINTS_MAX: usize = 256;
/// L4 services per node (`lb_common::MAX_L4_SERVICES`).
pub const L4_SERVICES_MAX: usize = 16;
/// The node ports XDP takes as the source of L4 flows towards their endpoints
/// (`lb_common::L4_SNAT_PORT_MIN..=L4_SNAT_PORT_MAX`, checked by the dataplane's tests).
pub const L4_SNAT_PORTS: std::ops::RangeInclusive<u16> = 61_000..=65_535;
