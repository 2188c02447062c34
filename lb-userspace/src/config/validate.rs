//! Everything serde cannot check, reported all at once. Each rule names the field it is about.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{
    BackendConfig, Balance, BasicAuthConfig, Config, CorsConfig, HeaderOpsConfig, MAX_WORKERS, PathMatch,
    Problem, RouteConfig, VirtualHostConfig,
};

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let message = message.into();
        // One line per problem: multi-line messages (regex errors) are joined.
        let message = if message.contains('\n') {
            message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
        } else {
            message
        };
        self.0.push(Problem { path: path.into(), message, line: 0, column: 0 });
    }
}

/// The header changes and CORS of a virtual host or a route.
fn policy(
    (request_headers, response_headers): (Option<&HeaderOpsConfig>, Option<&HeaderOpsConfig>),
    cors: Option<&CorsConfig>,
    at: &str,
    found: &mut Problems,
) {
    use super::policy::HeaderDirection;
    let mut problems = Vec::new();
    if let Some(ops) = request_headers {
        problems.extend(ops.problems(HeaderDirection::Request, &format!("{at}.request_headers")));
    }
    if let Some(ops) = response_headers {
        problems.extend(ops.problems(HeaderDirection::Response, &format!("{at}.response_headers")));
    }
    if let Some(cors) = cors {
        problems.extend(cors.problems(&format!("{at}.cors")));
    }
    for (path, message) in problems {
        found.add(path, message);
    }
}

pub fn problems(config: &Config) -> Vec<Problem> {
    problems_since(config, None)
}

/// [`problems`] of `config`, given `valid`, an earlier configuration that has none: a virtual
/// host or backend group equal to `valid`'s of the same name has no problem of its own (every
/// rule about it reads only it), so only what it shares with the rest is checked again: the
/// backends its routes name and its domains against the other hosts'. The result is the same.
pub fn problems_since(config: &Config, valid: Option<&Config>) -> Vec<Problem> {
    let mut found = Problems(Vec::new());
    top_level(config, &mut found);
    // Hashed, not ordered: looked up for every route of the cluster on every rebuild.
    let backends: BackendNames = config.backends.iter().map(|b| b.name.as_str()).collect();
    let unchanged = Unchanged::new(valid);
    virtual_hosts(&config.virtual_hosts, &backends, &unchanged, &mut found);
    for (i, backend) in config.backends.iter().enumerate() {
        if !unchanged.backend(backend) {
            backend_group(backend, &format!("backends[{i}]"), &mut found);
        }
    }
    duplicates(config.backends.iter().map(|b| b.name.as_str()), "backends", "backend", &mut found);
    tls(config, &backends, &mut found);
    route_listeners(config, &mut found);
    l4_services(config, &mut found);
    let mut problems = found.0;
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    problems
}

/// The names of a configuration's backend groups.
type BackendNames<'a> = crate::FastSet<&'a str>;

fn duplicates<'a>(names: impl Iterator<Item = &'a str>, list: &str, what: &str, found: &mut Problems) {
    // Hashed, not ordered: this visits every host and group of the cluster on every rebuild.
    let mut seen = crate::FastMap::with_capacity_and_hasher(names.size_hint().0, Default::default());
    for (i, name) in names.enumerate() {
        if let Some(first) = seen.insert(name, i) {
            found.add(
                format!("{list}[{i}].name"),
                format!("duplicate {what} name {name:?} (first at {list}[{first}])"),
            );
        }
    }
}

fn top_level(config: &Config, found: &mut Problems) {
    let forwarded = &config.forwarded;
    if (forwarded.use_forwarded_headers || forwarded.real_ip_from_header)
        && forwarded.trusted_proxies.is_empty()
    {
        found.add(
            "forwarded.trusted_proxies",
            "forwarding headers are believed only from trusted proxies: list their networks (0.0.0.0/0 and ::/0 trust every peer, as ingress-nginx's default)",
        );
    }
    if http::HeaderName::from_bytes(forwarded.forwarded_for_header.as_bytes()).is_err() {
        found.add(
            "forwarded.forwarded_for_header",
            format!("{:?} is not a header name", forwarded.forwarded_for_header),
        );
    }
    if config.workers > MAX_WORKERS {
        found.add("workers", format!("{} is more than the maximum {MAX_WORKERS}", config.workers));
    }
    if config.listeners.is_empty() {
        found.add("listeners", "at least one listener is needed");
    }
    let mut addresses = BTreeMap::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        if listener.address.port() == 0 {
            found.add(
                format!("listeners[{i}].address"),
                "port 0 is not a fixed port; name the port to serve on",
            );
        }
        if let Some(first) = addresses.insert(listener.address, i) {
            found.add(
                format!("listeners[{i}].address"),
                format!("{} is already used by listeners[{first}]", listener.address),
            );
        }
    }
    duplicates(config.listeners.iter().map(|l| l.name.as_str()), "listeners", "listener", found);

    let ports = (config.listeners.len() * config.worker_count().min(MAX_WORKERS)) as u32;
    let base = u32::from(config.xdp.worker_port_base);
    if base == 0 || base + ports > 65536 {
        found.add("xdp.worker_port_base", format!("{base} + {ports} worker ports does not fit in 1..=65535"));
    } else if let Some(listener) =
        config.listeners.iter().find(|l| (base..base + ports).contains(&u32::from(l.address.port())))
    {
        found.add(
            "xdp.worker_port_base",
            format!(
                "the worker ports {base}..{} overlap the listener port {}",
                base + ports - 1,
                listener.address.port()
            ),
        );
    }
    if !(10..=60_000).contains(&config.xdp.heartbeat_timeout_ms) {
        found.add(
            "xdp.heartbeat_timeout_ms",
            format!("{} is outside 10..=60000", config.xdp.heartbeat_timeout_ms),
        );
    }
    for (i, name) in config.xdp.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            found.add(format!("xdp.interfaces[{i}]"), format!("{name:?} is not a valid interface name"));
        }
    }
    guard(&config.xdp.guard, found);

    if !(0.0..=1.0).contains(&config.access_log.sample_rate) {
        found.add("access_log.sample_rate", "must be between 0.0 and 1.0");
    }
    if config.busy_poll_us > 1_000_000 {
        found.add("busy_poll_us", "must be at most 1000000 (one second)");
    }
    let limits = &config.limits;
    if limits.max_header_bytes < 8192 {
        found.add("limits.max_header_bytes", "must be at least 8192");
    }
    for (value, name) in [
        (limits.max_headers as u64, "max_headers"),
        (limits.header_read_timeout_ms, "header_read_timeout_ms"),
        (limits.idle_timeout_ms, "idle_timeout_ms"),
        (limits.send_timeout_ms, "send_timeout_ms"),
        (u64::from(limits.h2_max_concurrent_streams), "h2_max_concurrent_streams"),
        (limits.max_connections_per_worker as u64, "max_connections_per_worker"),
    ] {
        if value == 0 {
            found.add(format!("limits.{name}"), "must be greater than 0");
        }
    }
    for (status, name) in [
        (limits.rate_limit_status, "rate_limit_status"),
        (limits.connection_limit_status, "connection_limit_status"),
    ] {
        if !(400..=599).contains(&status) {
            found.add(format!("limits.{name}"), format!("{status} is not an error status (400 to 599)"));
        }
    }
}

/// The nginx-style client certificate settings: they need a client CA, and their values parse.
fn client_certificates(tls: &super::HostTlsConfig, at: &str, found: &mut Problems) {
    let has_ca = tls.client_ca_path.is_some() || tls.client_ca_pem.is_some();
    let nginx_style = tls.client_verify != super::ClientVerify::Handshake;
    let extras = [
        (tls.client_error_page.is_some(), "client_error_page"),
        (tls.pass_client_certificate, "pass_client_certificate"),
        (tls.client_match_cn.is_some(), "client_match_cn"),
        (tls.client_crl_pem.is_some(), "client_crl_pem"),
        (nginx_style, "client_verify"),
    ];
    for (set, name) in extras {
        if set && !has_ca {
            found.add(format!("{at}.{name}"), "needs a client CA (client_ca_path or client_ca_pem)");
        }
    }
    if tls.client_verify_depth == 0 {
        found.add(format!("{at}.client_verify_depth"), "must be at least 1");
    }
    if let Some(re) = &tls.client_match_cn
        && let Err(e) = regex::Regex::new(re)
    {
        found.add(format!("{at}.client_match_cn"), format!("not a valid regular expression: {e}"));
    }
    let valid_page = |p: &str| {
        (p.starts_with("http://") || p.starts_with("https://") || p.starts_with('/'))
            && http::HeaderValue::from_str(p).is_ok()
    };
    if tls.client_error_page.as_deref().is_some_and(|p| !valid_page(p)) {
        found.add(format!("{at}.client_error_page"), "must be an http(s) URL or a path starting with /");
    }
}

/// Bounds that keep the limiter's arithmetic exact (microsecond intervals, 48-bit times).
fn rate_limit(limit: &super::RateLimitConfig, at: &str, found: &mut Problems) {
    for (value, most, name) in [
        (limit.rps, 1_000_000, "rps"),
        (limit.rpm, 60_000_000, "rpm"),
        (limit.burst_multiplier, 1_000, "burst_multiplier"),
    ] {
        if value > most {
            found.add(format!("{at}.rate_limit.{name}"), format!("{value} is more than {most}"));
        }
    }
}

/// A host name as a domain entry: letters, digits, `-`, `.`, optionally `*.` in front.
pub(crate) fn valid_domain(domain: &str) -> bool {
    if domain == "*" {
        return true;
    }
    let name = domain.strip_prefix("*.").unwrap_or(domain);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        })
}

/// `match.listeners` name listeners that exist (the router keeps them as bits of a `u64`).
fn route_listeners(config: &Config, found: &mut Problems) {
    let names: BTreeSet<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    for (h, host) in config.virtual_hosts.iter().enumerate() {
        for (r, route) in host.routes.iter().enumerate() {
            if route.matcher.listeners.is_empty() {
                continue;
            }
            let at = format!("virtual_hosts[{h}].routes[{r}].match.listeners");
            if config.listeners.len() > 64 {
                found.add(at.clone(), "routes can name listeners only when there are at most 64");
            }
            for (l, name) in route.matcher.listeners.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    found.add(format!("{at}[{l}]"), format!("no listener named {name:?}"));
                }
            }
        }
    }
}

/// The virtual hosts and backend groups of a configuration known to be valid, by address: a
/// rebuild keeps what did not change as the same `Arc`, and an address is hashed without
/// reading the object (a name would be read from memory, a cache miss per entry). One that is
/// equal but another `Arc` is checked in full, with the same result.
struct Unchanged {
    hosts: crate::FastSet<*const VirtualHostConfig>,
    backends: crate::FastSet<*const BackendConfig>,
}

impl Unchanged {
    /// `valid` outlives the value: its `Arc`s hold the addresses.
    fn new(valid: Option<&Config>) -> Unchanged {
        let hosts = valid.into_iter().flat_map(|c| c.virtual_hosts.iter()).map(Arc::as_ptr).collect();
        let backends = valid.into_iter().flat_map(|c| c.backends.iter()).map(Arc::as_ptr).collect();
        Unchanged { hosts, backends }
    }

    fn host(&self, host: &Arc<VirtualHostConfig>) -> bool {
        self.hosts.contains(&Arc::as_ptr(host))
    }

    fn backend(&self, backend: &Arc<BackendConfig>) -> bool {
        self.backends.contains(&Arc::as_ptr(backend))
    }
}

/// What can be wrong with a virtual host that was valid before: a backend it names is gone,
/// a domain another host now claims first.
fn unchanged_host(
    (i, host): (usize, &VirtualHostConfig),
    backends: &BackendNames,
    claimed: &mut crate::FastMap<String, usize>,
    found: &mut Problems,
) {
    let at = || format!("virtual_hosts[{i}]");
    for (d, domain) in host.domains.iter().enumerate() {
        if let Some(first) = claimed.insert(domain.to_ascii_lowercase(), i) {
            found.add(format!("{}.domains[{d}]", at()), claimed_message(domain, first));
        }
    }
    if let Some(pages) = &host.error_pages
        && !backends.contains(pages.backend.as_str())
    {
        error_pages(pages, &format!("{}.error_pages", at()), backends, found);
    }
    for (r, route) in host.routes.iter().enumerate() {
        let named = route.backend.iter().chain(route.mirrors.iter().map(|m| &m.backend));
        let pages = route.error_pages.iter().map(|p| &p.backend);
        if named.chain(pages).any(|b| !backends.contains(b.as_str())) {
            route_backends(route, &format!("{}.routes[{r}]", at()), backends, found);
        }
    }
}

fn claimed_message(domain: &str, first: usize) -> String {
    let what = if domain == "*" { "the default virtual host".to_owned() } else { format!("{domain:?}") };
    format!("{what} is already claimed by virtual_hosts[{first}]")
}

fn virtual_hosts(
    hosts: &[Arc<VirtualHostConfig>],
    backends: &BackendNames,
    unchanged: &Unchanged,
    found: &mut Problems,
) {
    duplicates(hosts.iter().map(|h| h.name.as_str()), "virtual_hosts", "virtual host", found);
    let mut claimed = crate::FastMap::with_capacity_and_hasher(hosts.len(), Default::default());
    for (i, host) in hosts.iter().enumerate() {
        if unchanged.host(host) {
            unchanged_host((i, host), backends, &mut claimed, found);
            continue;
        }
        let at = format!("virtual_hosts[{i}]");
        if host.domains.is_empty() {
            found.add(
                format!("{at}.domains"),
                "at least one domain is needed (\"*\" for the default virtual host)",
            );
        }
        for (d, domain) in host.domains.iter().enumerate() {
            let lower = domain.to_ascii_lowercase();
            if !valid_domain(&lower) {
                found.add(
                    format!("{at}.domains[{d}]"),
                    format!("{domain:?} is not a host name, a *.wildcard or \"*\""),
                );
            } else if let Some(first) = claimed.insert(lower, i) {
                found.add(format!("{at}.domains[{d}]"), claimed_message(domain, first));
            }
        }
        let headers = (host.request_headers.as_deref(), host.response_headers.as_deref());
        policy(headers, host.cors.as_deref(), &at, found);
        if let Some(auth) = &host.basic_auth {
            basic_auth(auth, &format!("{at}.basic_auth"), found);
        }
        if let Some(limit) = &host.rate_limit {
            rate_limit(limit, &at, found);
        }
        if let Some(auth) = &host.external_auth {
            external_auth(auth, &format!("{at}.external_auth"), found);
        }
        if let Some(pages) = &host.error_pages {
            error_pages(pages, &format!("{at}.error_pages"), backends, found);
        }
        let mut matchers = BTreeMap::new();
        for (r, route) in host.routes.iter().enumerate() {
            let route_at = format!("{at}.routes[{r}]");
            self::route(route, &route_at, backends, found);
            if let Some(limit) = &route.rate_limit {
                rate_limit(limit, &route_at, found);
            }
            let key = format!("{:?}", route.matcher);
            if let Some(first) = matchers.insert(key, r) {
                found.add(
                    format!("{route_at}.match"),
                    format!("duplicate route: the same match as {at}.routes[{first}]"),
                );
            }
        }
    }
}

/// Exactly one source of credentials; inline lines must all be usable (a file's are checked
/// when it is read).
fn basic_auth(auth: &BasicAuthConfig, at: &str, found: &mut Problems) {
    match (&auth.htpasswd, &auth.htpasswd_file) {
        (Some(text), None) => {
            for rejected in super::htpasswd::parse(text).rejected {
                found.add(format!("{at}.htpasswd"), rejected.to_string());
            }
        }
        (None, Some(_)) => {}
        _ if auth.unavailable => {}
        _ => found.add(at.to_owned(), "needs exactly one of htpasswd and htpasswd_file"),
    }
    if auth.realm.contains(['"', '\\']) || auth.realm.chars().any(char::is_control) {
        found.add(format!("{at}.realm"), "may not contain quotes, backslashes or control characters");
    }
}

fn external_auth(auth: &super::ExternalAuthConfig, at: &str, found: &mut Problems) {
    if let Err(problem) = super::external_auth::check(auth) {
        match problem.split_once(": ") {
            Some((field, message)) => found.add(format!("{at}.{field}"), message),
            None => found.add(at.to_owned(), problem),
        }
    }
}

/// Statuses 400 to 599, a known backend, fields that are header fields (and not ones the proxy
/// owns on each hop).
fn error_pages(pages: &super::ErrorPagesConfig, at: &str, backends: &BackendNames, found: &mut Problems) {
    if pages.statuses.is_empty() {
        found.add(format!("{at}.statuses"), "at least one status is needed");
    }
    for (i, status) in pages.statuses.iter().enumerate() {
        if !(400..=599).contains(status) {
            found.add(format!("{at}.statuses[{i}]"), format!("{status} is not an error status (400 to 599)"));
        }
    }
    if !backends.contains(pages.backend.as_str()) {
        found.add(format!("{at}.backend"), format!("no backend named {:?}", pages.backend));
    }
    let fields = super::HeaderOpsConfig { set: pages.headers.clone(), ..Default::default() };
    for (path, message) in fields.problems(super::policy::HeaderDirection::Request, at) {
        found.add(path.replace(".set[", ".headers["), message);
    }
}

fn route(route: &RouteConfig, at: &str, backends: &BackendNames, found: &mut Problems) {
    let headers = (route.request_headers.as_deref(), route.response_headers.as_deref());
    policy(headers, route.cors.as_deref(), at, found);
    if let Some(auth) = &route.basic_auth {
        basic_auth(auth, &format!("{at}.basic_auth"), found);
    }
    if let Some(auth) = &route.external_auth {
        external_auth(auth, &format!("{at}.external_auth"), found);
    }
    if let Some(pages) = &route.error_pages {
        error_pages(pages, &format!("{at}.error_pages"), backends, found);
    }
    for (m, mirror) in route.mirrors.iter().enumerate() {
        let mirror_at = format!("{at}.mirrors[{m}]");
        if !backends.contains(mirror.backend.as_str()) {
            found.add(format!("{mirror_at}.backend"), format!("no backend named {:?}", mirror.backend));
        }
        if let Some(host) = &mirror.host
            && (host.is_empty() || http::HeaderValue::from_str(host).is_err())
        {
            found.add(format!("{mirror_at}.host"), "must be a valid, non-empty header value");
        }
        if let Some(fraction) = mirror.fraction
            && (fraction.denominator == 0 || fraction.numerator > fraction.denominator)
        {
            found.add(
                format!("{mirror_at}.fraction"),
                "needs 0 <= numerator <= denominator and denominator > 0",
            );
        }
    }
    if !route.mirrors.is_empty() && route.backend.is_none() {
        found.add(format!("{at}.mirrors"), "only a route with a backend mirrors its requests");
    }
    let actions = [route.backend.is_some(), route.redirect.is_some(), route.direct_response.is_some()];
    if actions.iter().filter(|a| **a).count() != 1 {
        found.add(at.to_owned(), "needs exactly one of backend, redirect and direct_response");
    } else if let Some(backend) = &route.backend
        && !backends.contains(backend.as_str())
    {
        found.add(format!("{at}.backend"), format!("no backend named {backend:?}"))
    }
    if let Some(status) = route.direct_response
        && !(400..=599).contains(&status)
    {
        found.add(format!("{at}.direct_response"), format!("{status} is not an error status (400..=599)"));
    }
    let path = route.matcher.path.as_ref();
    match path {
        Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) if !p.starts_with('/') => {
            found.add(format!("{at}.match.path"), format!("{p:?} must start with /"))
        }
        Some(PathMatch::Regex(re)) => {
            if let Err(e) = regex::Regex::new(re) {
                found.add(format!("{at}.match.path.regex"), format!("not a valid regular expression: {e}"));
            }
        }
        _ => {}
    }
    for (m, method) in route.matcher.methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            found.add(
                format!("{at}.match.methods[{m}]"),
                format!("{method:?} is not an HTTP method (upper case, e.g. GET)"),
            );
        }
    }
    for (h, header) in route.matcher.headers.iter().enumerate() {
        let header_at = format!("{at}.match.headers[{h}]");
        if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
            found.add(format!("{header_at}.name"), format!("{:?} is not a header name", header.name));
        }
        let set = [header.exact.is_some(), header.regex.is_some(), header.present.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            found.add(header_at.clone(), "needs exactly one of exact, regex and present");
        }
        if let Some(re) = &header.regex
            && let Err(e) = regex::Regex::new(re)
        {
            found.add(format!("{header_at}.regex"), format!("not a valid regular expression: {e}"));
        }
    }
    for (q, query) in route.matcher.query_params.iter().enumerate() {
        let query_at = format!("{at}.match.query_params[{q}]");
        if query.name.is_empty() {
            found.add(format!("{query_at}.name"), "must not be empty");
        }
        match (&query.exact, &query.regex) {
            (Some(_), None) => {}
            (None, Some(re)) => {
                if let Err(e) = regex::Regex::new(re) {
                    found.add(format!("{query_at}.regex"), format!("not a valid regular expression: {e}"));
                }
            }
            _ => found.add(query_at, "needs exactly one of exact and regex"),
        }
    }
    if let Some(rewrite) = &route.rewrite {
        let rewrite_at = format!("{at}.rewrite");
        match (&rewrite.prefix, &rewrite.regex, &rewrite.replacement) {
            (Some(prefix), None, None) => {
                if !matches!(path, None | Some(PathMatch::Prefix(_))) {
                    found.add(format!("{rewrite_at}.prefix"), "a prefix rewrite needs a prefix path match");
                }
                if !prefix.starts_with('/') {
                    found.add(format!("{rewrite_at}.prefix"), format!("{prefix:?} must start with /"));
                }
            }
            (None, Some(re), Some(_)) => {
                if let Err(e) = regex::Regex::new(re) {
                    found.add(format!("{rewrite_at}.regex"), format!("not a valid regular expression: {e}"));
                }
            }
            _ => found.add(rewrite_at, "needs either prefix, or regex with replacement"),
        }
    }
    if let Some(redirect) = &route.redirect {
        if ![301, 302, 303, 307, 308].contains(&redirect.code) {
            found.add(
                format!("{at}.redirect.code"),
                format!("{} is not a redirect code (301, 302, 303, 307, 308)", redirect.code),
            );
        }
        if let Some(scheme) = &redirect.scheme
            && scheme != "http"
            && scheme != "https"
        {
            found.add(format!("{at}.redirect.scheme"), format!("{scheme:?} is neither http nor https"));
        }
        if let Some(path) = &redirect.path
            && !path.starts_with('/')
        {
            found.add(format!("{at}.redirect.path"), format!("{path:?} must start with /"));
        }
    }
    if route.timeout_ms == Some(0) {
        found.add(format!("{at}.timeout_ms"), "must be greater than 0");
    }
}

/// The backends a route names exist (its error pages', its mirrors', its own): the checks of
/// [`route`] that read more than the route, for a route known to be valid otherwise.
fn route_backends(route: &RouteConfig, at: &str, backends: &BackendNames, found: &mut Problems) {
    if let Some(pages) = &route.error_pages {
        error_pages(pages, &format!("{at}.error_pages"), backends, found);
    }
    for (m, mirror) in route.mirrors.iter().enumerate() {
        if !backends.contains(mirror.backend.as_str()) {
            found.add(format!("{at}.mirrors[{m}].backend"), format!("no backend named {:?}", mirror.backend));
        }
    }
    if let Some(backend) = &route.backend
        && !backends.contains(backend.as_str())
    {
        found.add(format!("{at}.backend"), format!("no backend named {backend:?}"))
    }
}

fn backend_group(backend: &BackendConfig, at: &str, found: &mut Problems) {
    match (backend.balance, &backend.hash_on) {
        (Balance::Hash, None) => {
            found.add(format!("{at}.hash_on"), "balance: hash needs hash_on (header, cookie or client_ip)")
        }
        (Balance::Hash, Some(_)) | (_, None) => {}
        (_, Some(_)) => found.add(format!("{at}.hash_on"), "hash_on only applies to balance: hash"),
    }
    let mut seen = BTreeMap::new();
    for (e, endpoint) in backend.endpoints.iter().enumerate() {
        if endpoint.address.port() == 0 || endpoint.address.ip().is_unspecified() {
            found.add(
                format!("{at}.endpoints[{e}].address"),
                format!("{} is not a reachable address", endpoint.address),
            );
        }
        if endpoint.weight > 10_000 {
            found.add(format!("{at}.endpoints[{e}].weight"), "must be at most 10000");
        }
        if let Some(first) = seen.insert(endpoint.address, e) {
            found.add(
                format!("{at}.endpoints[{e}].address"),
                format!("{} is already endpoints[{first}]", endpoint.address),
            );
        }
    }
    if let Some(check) = &backend.health_check {
        let check_at = format!("{at}.health_check");
        if !check.path.starts_with('/') {
            found.add(format!("{check_at}.path"), format!("{:?} must start with /", check.path));
        }
        for (value, name) in [
            (check.interval_ms, "interval_ms"),
            (check.timeout_ms, "timeout_ms"),
            (u64::from(check.healthy_threshold), "healthy_threshold"),
            (u64::from(check.unhealthy_threshold), "unhealthy_threshold"),
        ] {
            if value == 0 {
                found.add(format!("{check_at}.{name}"), "must be greater than 0");
            }
        }
    }
    let timeouts = &backend.timeouts;
    for (value, name) in [
        (timeouts.connect_ms, "connect_ms"),
        (timeouts.request_ms, "request_ms"),
        (timeouts.idle_ms, "idle_ms"),
        (timeouts.read_ms.unwrap_or(1), "read_ms"),
        (timeouts.send_ms.unwrap_or(1), "send_ms"),
    ] {
        if value == 0 {
            found.add(format!("{at}.timeouts.{name}"), "must be greater than 0");
        }
    }
    if backend.max_connections_per_endpoint == 0 {
        found.add(format!("{at}.max_connections_per_endpoint"), "must be greater than 0");
    }
    if backend.outlier.max_ejection_ms < backend.outlier.base_ejection_ms {
        found.add(format!("{at}.outlier.max_ejection_ms"), "must be at least base_ejection_ms");
    }
    if let Some(affinity) = &backend.cookie_affinity {
        let valid_name = !affinity.name.is_empty()
            && affinity.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
        if !valid_name {
            found.add(
                format!("{at}.cookie_affinity.name"),
                format!("{:?} is not a cookie name", affinity.name),
            );
        }
        if !affinity.path.starts_with('/') || affinity.path.contains(';') {
            found.add(
                format!("{at}.cookie_affinity.path"),
                format!("{:?} must start with / and have no ;", affinity.path),
            );
        }
        if let Some(domain) = &affinity.domain
            && (domain.is_empty() || domain.contains([';', ' ', ',']))
        {
            found.add(format!("{at}.cookie_affinity.domain"), format!("{domain:?} is not a cookie domain"));
        }
        if let Some(header) = &affinity.header
            && http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            found.add(format!("{at}.cookie_affinity.header"), format!("{header:?} is not a header name"));
        }
    }
    if backend.retries.timeout_ms == Some(0) {
        found.add(format!("{at}.retries.timeout_ms"), "must be greater than 0");
    }
    if backend.retries.budget_percent > 100 {
        found.add(format!("{at}.retries.budget_percent"), "must be at most 100");
    }
    if let Some(tls) = &backend.tls {
        backend_tls(tls, &format!("{at}.tls"), found);
    }
}

fn backend_tls(tls: &super::BackendTlsConfig, at: &str, found: &mut Problems) {
    if tls.versions.is_empty() {
        found.add(format!("{at}.versions"), "must name at least one version");
    }
    if tls.client_cert_pem.is_some() != tls.client_key_pem.is_some() {
        found.add(at.to_owned(), "client_cert_pem and client_key_pem go together");
    }
    if tls.verify_depth == Some(0) {
        found.add(format!("{at}.verify_depth"), "must be greater than 0");
    }
    if tls.verify_depth.is_some() && tls.insecure_skip_verify {
        found.add(format!("{at}.verify_depth"), "means nothing with insecure_skip_verify");
    }
}

/// `Some(true)` when exactly one of two alternative fields is set, `Some(false)` when neither,
/// `None` when both.
fn one_of<A, B>(a: &Option<A>, b: &Option<B>) -> Option<bool> {
    match (a.is_some(), b.is_some()) {
        (true, true) => None,
        (set, _) => Some(set || b.is_some()),
    }
}

/// TLS rules: certificate sources, references between listeners, hosts, certificates and
/// backends. Whether the PEM itself is good is checked when the snapshot is built (it names the
/// certificate and its file).
fn tls(config: &Config, backends: &BackendNames, found: &mut Problems) {
    let certificates: BTreeSet<&str> = config.certificates.iter().map(|c| c.name.as_str()).collect();
    duplicates(config.certificates.iter().map(|c| c.name.as_str()), "certificates", "certificate", found);
    for (i, certificate) in config.certificates.iter().enumerate() {
        let at = format!("certificates[{i}]");
        if certificate.name.is_empty() {
            found.add(format!("{at}.name"), "must not be empty");
        }
        if one_of(&certificate.cert_path, &certificate.cert_pem) != Some(true) {
            found.add(at.clone(), "needs exactly one of cert_path and cert_pem");
        }
        if one_of(&certificate.key_path, &certificate.key_pem) != Some(true) {
            found.add(at, "needs exactly one of key_path and key_pem");
        }
    }
    let known_certificate = |name: &str, at: String, found: &mut Problems| {
        if !certificates.contains(name) {
            found.add(at, format!("no certificate named {name:?} (see certificates)"));
        }
    };
    let mut terminating = false;
    for (i, listener) in config.listeners.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        terminating = true;
        let at = format!("listeners[{i}].tls");
        if let Some(name) = &tls.default_certificate {
            known_certificate(name, format!("{at}.default_certificate"), found);
        } else if tls.unknown_sni == Some(crate::config::UnknownSni::Default) {
            found.add(format!("{at}.unknown_sni"), "unknown_sni: default needs default_certificate");
        }
    }
    for (i, host) in config.virtual_hosts.iter().enumerate() {
        let Some(tls) = &host.tls else { continue };
        let at = format!("virtual_hosts[{i}].tls");
        if tls.passthrough.is_none() && tls.passthrough_proxy_protocol.is_some() {
            found.add(
                format!("{at}.passthrough_proxy_protocol"),
                "only with passthrough (a terminated connection's client is named in X-Forwarded-For)",
            );
        }
        match (&tls.certificate, &tls.passthrough) {
            (Some(name), None) => known_certificate(name, format!("{at}.certificate"), found),
            (None, Some(backend)) => {
                if !backends.contains(backend.as_str()) {
                    found.add(format!("{at}.passthrough"), format!("no backend named {backend:?}"));
                }
                if tls.client_ca_path.is_some() || tls.client_ca_pem.is_some() {
                    found.add(
                        format!("{at}.passthrough"),
                        "a passthrough host cannot check client certificates (the backend terminates TLS)",
                    );
                }
                if tls.hsts.is_some() {
                    found.add(
                        format!("{at}.hsts"),
                        "a passthrough host's HTTPS responses come from the backend; set HSTS there",
                    );
                }
            }
            _ => found.add(at.clone(), "needs exactly one of certificate and passthrough"),
        }
        if one_of(&tls.client_ca_path, &tls.client_ca_pem).is_none() {
            found.add(at.clone(), "at most one of client_ca_path and client_ca_pem");
        }
        client_certificates(tls, &at, found);
        if !terminating {
            found
                .add(at, "no listener has tls, so nothing serves HTTPS for this host; add tls to a listener");
        }
    }
    for (i, backend) in config.backends.iter().enumerate() {
        let Some(tls) = &backend.tls else { continue };
        let at = format!("backends[{i}].tls");
        match (tls.insecure_skip_verify, one_of(&tls.ca_path, &tls.ca_pem)) {
            (false, Some(true)) | (true, Some(false)) => {}
            (false, _) => found
                .add(at.clone(), "needs exactly one of ca_path and ca_pem (or insecure_skip_verify: true)"),
            (true, _) => found.add(
                format!("{at}.insecure_skip_verify"),
                "skipping verification and naming a CA contradict each other; drop one",
            ),
        }
        if let Some(name) = &tls.server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            found.add(format!("{at}.server_name"), format!("{name:?} is not a DNS name or IP address"));
        }
    }
}

fn guard(guard: &super::XdpGuardConfig, found: &mut Problems) {
    for (list, name) in [(&guard.deny, "deny"), (&guard.allow, "allow")] {
        if list.len() > super::GUARD_LIST_MAX {
            found.add(
                format!("xdp.guard.{name}"),
                format!("{} networks; at most {}", list.len(), super::GUARD_LIST_MAX),
            );
        }
    }
    for (limit, name) in
        [(&guard.syn_rate_limit, "syn_rate_limit"), (&guard.udp_rate_limit, "udp_rate_limit")]
    {
        let Some(limit) = limit else { continue };
        if !(1..=1_000_000_000).contains(&limit.per_second) {
            found.add(
                format!("xdp.guard.{name}.per_second"),
                format!("{} is outside 1..=1000000000", limit.per_second),
            );
        }
        if !(1..=1_000_000).contains(&limit.burst) {
            found.add(format!("xdp.guard.{name}.burst"), format!("{} is outside 1..=1000000", limit.burst));
        }
    }
}

fn l4_services(config: &Config, found: &mut Problems) {
    let services = &config.l4_services;
    if services.len() > super::L4_SERVICES_MAX {
        found.add("l4_services", format!("{} services; at most {}", services.len(), super::L4_SERVICES_MAX));
    }
    duplicates(services.iter().map(|s| s.name.as_str()), "l4_services", "L4 service", found);
    let mut seen = BTreeMap::new();
    for (i, service) in services.iter().enumerate() {
        let at = format!("l4_services[{i}]");
        if service.address.port() == 0 {
            found.add(format!("{at}.address"), "port 0 is not a fixed port; name the port clients use");
        }
        // XDP takes these ports as the sources of L4 flows towards endpoints and reads a
        // packet to one of them as an endpoint's reply first.
        if config.xdp.enabled && service.xdp && super::L4_SNAT_PORTS.contains(&service.address.port()) {
            found.add(
                format!("{at}.address"),
                format!(
                    "port {} is among the node ports XDP takes for L4 flows ({}..={}); use another port or set xdp: false",
                    service.address.port(),
                    super::L4_SNAT_PORTS.start(),
                    super::L4_SNAT_PORTS.end()
                ),
            );
        }
        if let Some(first) = seen.insert((service.address, service.protocol), i) {
            found.add(
                format!("{at}.address"),
                format!("{} {} is already used by l4_services[{first}]", service.protocol, service.address),
            );
        }
        if service.protocol == super::L4Protocol::Tcp
            && let Some(listener) = config.listeners.iter().find(|l| l.address == service.address)
        {
            found.add(
                format!("{at}.address"),
                format!("{} is also the address of listener {:?}", service.address, listener.name),
            );
        }
        if service.endpoints.is_empty() {
            found.add(format!("{at}.endpoints"), "at least one endpoint is needed");
        }
        if service.endpoints.len() > super::L4_ENDPOINTS_MAX {
            found.add(
                format!("{at}.endpoints"),
                format!("{} endpoints; at most {}", service.endpoints.len(), super::L4_ENDPOINTS_MAX),
            );
        }
        let mut endpoints = BTreeSet::new();
        for (j, endpoint) in service.endpoints.iter().enumerate() {
            if endpoint.port() == 0 || endpoint.ip().is_unspecified() {
                found.add(format!("{at}.endpoints[{j}]"), format!("{endpoint} is not an address to send to"));
            }
            if endpoint.is_ipv4() != service.address.is_ipv4() {
                found.add(
                    format!("{at}.endpoints[{j}]"),
                    format!("{endpoint} is not of the service address's family ({})", service.address),
                );
            }
            if !endpoints.insert(endpoint) {
                found.add(format!("{at}.endpoints[{j}]"), format!("{endpoint} is listed twice"));
            }
        }
        let check = &service.health_check;
        if !(50..=3_600_000).contains(&check.interval_ms) {
            found.add(
                format!("{at}.health_check.interval_ms"),
                format!("{} is outside 50..=3600000", check.interval_ms),
            );
        }
        if check.timeout_ms < 10 || check.timeout_ms > check.interval_ms {
            found.add(
                format!("{at}.health_check.timeout_ms"),
                format!("{} is outside 10..=interval_ms ({})", check.timeout_ms, check.interval_ms),
            );
        }
        if service.protocol == super::L4Protocol::Tcp
            && (check.udp_send.is_some() || check.udp_expect.is_some())
        {
            found.add(format!("{at}.health_check"), "udp_send and udp_expect are for UDP services only");
        }
        if check.udp_expect.is_some() && check.udp_send.is_none() {
            found.add(format!("{at}.health_check.udp_expect"), "needs udp_send: the probe to answer");
        }
        if let Some(ms) = service.idle_timeout_ms
            && !(1_000..=604_800_000).contains(&ms)
        {
            found
                .add(format!("{at}.idle_timeout_ms"), format!("{ms} is outside 1000..=604800000 (one week)"));
        }
        if service.protocol == super::L4Protocol::Udp && service.proxy_protocol.is_some() {
            found.add(format!("{at}.proxy_protocol"), "the PROXY protocol is for TCP services only");
        }
        if service.protocol == super::L4Protocol::Udp && service.accept_proxy_protocol {
            found.add(format!("{at}.accept_proxy_protocol"), "the PROXY protocol is for TCP services only");
        }
    }
}
