//! The compiled routing table: which virtual host a request's host selects, which route of that
//! virtual host its path, method and headers select, and how the route rewrites the upstream path
//! or builds a redirect.
//!
//! The semantics follow the Kubernetes Ingress spec and ingress-nginx, which Sluice's users come
//! from:
//!
//! - Hosts: exact domain, then `*.example.com` (exactly one extra label, as the Ingress spec
//!   says), then the default virtual host `"*"`. Once a virtual host is chosen, only its routes
//!   are tried; a miss there is a miss (ingress-nginx answers 404, it does not fall through to the
//!   default server).
//! - Paths: `Exact` compares strings; `Prefix` matches whole `/`-separated elements; `Regex` is
//!   anchored at the start of the path.
//! - Precedence: an exact path first; then the longest path (ingress-nginx orders its locations
//!   by path length); on equal length a prefix before a regex; then more header/method
//!   constraints first; then declaration order. The order is computed once in
//!   [`RouteTable::build`], so [`RouteTable::find`] is a scan that stops at the first match and
//!   allocates nothing.

use std::{borrow::Cow, collections::HashMap, net::Ipv6Addr, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, Method, StatusCode};
use regex::Regex;

pub use self::error_pages::ErrorPages;
use super::access::Access;
use super::{
    cors::Cors,
    header_ops::{Direction, HeaderOps},
};
use crate::config::{
    Config, HeaderMatch, HeaderOpsConfig, MirrorConfig, PathMatch, RateLimitConfig, RedirectConfig,
    RewriteConfig, RouteConfig, SourceRangesConfig, VirtualHostConfig,
};

/// The longest host name DNS allows; longer hosts cannot equal any configured domain, so they only
/// ever reach the default virtual host. It also bounds the stack buffer that lets `find` compare
/// hosts case-insensitively without allocating.
const MAX_HOST_LEN: usize = 253;

/// Every virtual host of a configuration, compiled.
#[derive(Debug)]
pub struct RouteTable {
    /// Shared with the previous table where nothing a virtual host's compilation reads changed
    /// ([`RouteTable::build_on`]).
    hosts: Vec<Arc<VirtualHost>>,
    /// Lower-case domain → index into `hosts`.
    exact: HashMap<String, usize>,
    /// Lower-case parent domain of `*.parent` → index into `hosts`.
    wildcard: HashMap<String, usize>,
    /// The same for virtual hosts whose wildcards take any number of labels
    /// (`deep_wildcards`, Gateway API hostnames).
    deep_wildcard: HashMap<String, usize>,
    /// The virtual host with the domain `"*"`.
    default: Option<usize>,
}

#[derive(Debug)]
struct VirtualHost {
    /// In declaration order, which is what `routes()` shows.
    routes: Vec<Route>,
    /// Indexes into `routes` in precedence order: `find` returns the first that matches.
    order: Vec<usize>,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// `RouteConfig.name`, or `<virtual host name>/<index in its routes>`.
    pub name: String,
    /// Metric and log labels, shared so recording a request never allocates.
    pub labels: RouteLabels,
    pub action: RouteAction,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    /// As configured: 0 means unlimited, `None` means the `limits.max_body_bytes` default.
    pub max_body_bytes: Option<u64>,
    /// The client addresses that may use the route (its own, else its virtual host's).
    pub source_ranges: Option<Arc<SourceRangesConfig>>,
    /// Changes to the request as it goes upstream (the virtual host's, then the route's).
    pub request_headers: Option<HeaderOps>,
    /// Changes to every response (the virtual host's, then the route's).
    pub response_headers: Option<HeaderOps>,
    /// Cross-origin resource sharing (the route's own, else its virtual host's).
    pub cors: Option<Box<Cors>>,
    /// Authentication (its own, else its virtual host's). Boxed, as `cors`: most routes have
    /// neither, and inline they made every compiled route 2,176 bytes (576 boxed).
    pub access: Option<Box<Access>>,
    /// Per-client limits (its own, else its virtual host's).
    pub rate_limit: Option<Arc<RateLimitConfig>>,
    /// Error pages (its own, else its virtual host's).
    pub error_pages: Option<ErrorPages>,
    /// Plain HTTP goes to HTTPS whatever the host's TLS (`force-ssl-redirect`).
    pub https_redirect: Option<crate::config::HttpsRedirectConfig>,
    /// Where copies of its requests go (sent by the pipeline's `mirror`).
    pub mirrors: Vec<Mirror>,
    /// Its labels in ingress-nginx's series.
    pub nginx: Arc<crate::metrics::nginx::RouteSeries>,
    /// `redirect_keeps_port`: the redirect is written as ingress-nginx's from-to-www-redirect.
    pub redirect_keeps_port: bool,
    matcher: Matcher,
}

/// The names a request is counted and logged under.
#[derive(Debug, Clone)]
pub struct RouteLabels {
    pub virtual_host: std::sync::Arc<str>,
    pub route: std::sync::Arc<str>,
}

#[derive(Debug)]
pub enum RouteAction {
    /// Index into `Config::backends`.
    Backend(usize),
    Redirect(Redirect),
    /// Answer with this status and an empty body (`direct_response`).
    Respond(StatusCode),
}

/// A compiled `RedirectConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    status: StatusCode,
}

/// How the upstream path is rewritten.
#[derive(Debug)]
pub enum Rewrite {
    /// The route's prefix `from` (normalised: without a trailing slash, `""` for `/`) is replaced
    /// by `to`.
    Prefix { from: String, to: String },
    /// The first match of `regex` in the path is replaced by `replacement` (`$1`, `${name}`).
    Regex { regex: Regex, replacement: String },
}

/// One request mirror of a route: the backend group that gets copies, and how many.
#[derive(Debug)]
pub struct Mirror {
    /// Index into the snapshot's backend groups.
    pub backend: usize,
    /// Copies per million requests (1,000,000: every request).
    pub per_million: u32,
    /// The copies carry the body.
    pub body: bool,
    /// The copies' `Host`, when not the original's.
    pub host: Option<Arc<str>>,
}

impl Mirror {
    fn compile(
        mirror: &MirrorConfig,
        backends: &crate::FastMap<&str, usize>,
        at: &str,
    ) -> Result<Mirror, String> {
        let backend = *backends
            .get(mirror.backend.as_str())
            .ok_or_else(|| format!("{at}.backend: no backend named {:?}", mirror.backend))?;
        let per_million = match mirror.fraction {
            None => 1_000_000,
            Some(f) if f.denominator > 0 && f.numerator <= f.denominator => {
                (u64::from(f.numerator) * 1_000_000 / u64::from(f.denominator)) as u32
            }
            Some(_) => return Err(format!("{at}.fraction: needs numerator <= denominator, denominator > 0")),
        };
        Ok(Mirror { backend, per_million, body: mirror.body, host: mirror.host.as_deref().map(Arc::from) })
    }

    /// Whether this request is copied: always, never, or by a draw.
    pub fn draws(&self) -> bool {
        match self.per_million {
            1_000_000.. => true,
            0 => false,
            share => fastrand::u32(0..1_000_000) < share,
        }
    }
}

#[derive(Debug)]
struct Matcher {
    path: PathMatcher,
    /// Any method when empty.
    methods: Vec<Method>,
    headers: Vec<HeaderMatcher>,
    query_params: Vec<QueryParamMatcher>,
    /// Bit `i`: requests on `config.listeners[i]` match; all ones when any listener does.
    listeners: u64,
}

#[derive(Debug)]
struct QueryParamMatcher {
    name: String,
    value: QueryValue,
}

#[derive(Debug)]
enum QueryValue {
    Exact(String),
    /// Compiled as `^(?:pattern)$`.
    Regex(Regex),
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Normalised without trailing slashes; `""` is the prefix `/` and matches every path.
    Prefix(String),
    /// Compiled as `^(?:pattern)`; `len` is the pattern's length as written, for precedence.
    Regex {
        regex: Regex,
        len: usize,
    },
}

#[derive(Debug)]
struct HeaderMatcher {
    name: HeaderName,
    kind: HeaderKind,
}

#[derive(Debug)]
enum HeaderKind {
    Exact(Vec<u8>),
    /// Compiled as `^(?:pattern)$`: the whole value must match. Bytes, because header values need
    /// not be UTF-8.
    Regex(regex::bytes::Regex),
    Present(bool),
}

impl RouteTable {
    /// Compiles the virtual hosts of a configuration. Assumes it passed validation, but reports
    /// anything that would not compile (a bad regex, an unknown backend, a clashing domain) as an
    /// error naming the offending field rather than panicking.
    pub fn build(config: &Config) -> Result<RouteTable, String> {
        Self::build_on(config, &name_index(config.backends.iter().map(|b| b.name.as_str())), None)
    }

    /// [`RouteTable::build`], sharing with `previous` (the table compiled from the configuration
    /// given with it) every virtual host whose compilation would read the same: its
    /// configuration is equal, the backends it names have the same indexes, the listeners are
    /// the same, and it reads no file (an htpasswd file may change behind an equal
    /// configuration). The result is the same as a fresh build's. `backends`: the index of each
    /// backend group in the snapshot, by name (and the previous table's, with `previous`).
    pub fn build_on(
        config: &Config,
        backends: &crate::FastMap<&str, usize>,
        previous: Option<PreviousTable<'_>>,
    ) -> Result<RouteTable, String> {
        let listeners = name_index(config.listeners.iter().map(|l| l.name.as_str()));
        let reusable = previous.and_then(|previous| Reusable::new(previous, config));
        let mut table = RouteTable {
            hosts: Vec::with_capacity(config.virtual_hosts.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            deep_wildcard: HashMap::new(),
            default: None,
        };
        for (h, host) in config.virtual_hosts.iter().enumerate() {
            for (d, domain) in host.domains.iter().enumerate() {
                let mut lower = domain.to_ascii_lowercase();
                if lower.ends_with('.') {
                    lower.pop();
                }
                let previous = if lower == "*" {
                    table.default.replace(h)
                } else if let Some(parent) = lower.strip_prefix("*.") {
                    let previous = table.wildcard.get(parent).or(table.deep_wildcard.get(parent)).copied();
                    let map =
                        if host.deep_wildcards { &mut table.deep_wildcard } else { &mut table.wildcard };
                    map.insert(parent.to_owned(), h);
                    previous
                } else {
                    table.exact.insert(lower, h)
                };
                if let Some(first) = previous {
                    return Err(format!(
                        "virtual_hosts[{h}].domains[{d}]: {domain:?} is already claimed by virtual_hosts[{first}]"
                    ));
                }
            }
            if let Some(kept) = reusable.as_ref().and_then(|r| r.host(host, backends)) {
                table.hosts.push(kept);
                continue;
            }
            let at = format!("virtual_hosts[{h}]");
            let mut routes = Vec::with_capacity(host.routes.len());
            for (r, route) in host.routes.iter().enumerate() {
                let route_at = format!("{at}.routes[{r}]");
                let name = route.name.clone().unwrap_or_else(|| format!("{}/{r}", host.name));
                let labels =
                    RouteLabels { virtual_host: host.name.as_str().into(), route: name.as_str().into() };
                let access = Access::compile(route, host, &route_at)?;
                let mut compiled =
                    compile_route(route, name, labels, host, access, (&at, &route_at), backends)?;
                compiled.matcher.listeners = listener_bits(&route.matcher.listeners, &listeners, &route_at)?;
                routes.push(compiled);
            }
            let mut order: Vec<usize> = (0..routes.len()).collect();
            // A stable sort keeps declaration order as the last tie-breaker.
            order.sort_by_key(|&i| routes[i].matcher.precedence());
            table.hosts.push(Arc::new(VirtualHost { routes, order }));
        }
        Ok(table)
    }

    /// Where the compiled virtual host `index` (in configuration order) is, to tell one shared
    /// with another table.
    #[cfg(test)]
    pub(crate) fn compiled_host_address(&self, index: usize) -> usize {
        Arc::as_ptr(&self.hosts[index]) as usize
    }

    /// The route for a request, or `None` (a 404) when no virtual host takes `host` or no route
    /// of the one that does matches.
    ///
    /// `listener`: the index in `config.listeners` of the listener the request came in on.
    /// `host`: the request's host (Host header or `:authority`), maybe with a port, any case.
    /// `path`: the request path WITHOUT the query string; `query`: the query string, if any.
    pub fn find(
        &self,
        listener: usize,
        host: &str,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        let vhost = self.virtual_host(host)?;
        let listener = 1u64.checked_shl(listener as u32).unwrap_or(0);
        vhost.order.iter().map(|&i| &vhost.routes[i]).find(|route| {
            route.matcher.listeners & listener != 0 && route.matcher.matches(method, path, query, headers)
        })
    }

    /// Every route of every virtual host: virtual hosts in configuration order, each one's routes
    /// in declaration order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.hosts.iter().flat_map(|h| h.routes.iter())
    }

    fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let (name, _port) = split_host_port(host);
        // A fully qualified `example.com.` names the same host as `example.com` (nginx strips
        // the dot too).
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut buf = [0u8; MAX_HOST_LEN];
        if !name.is_empty() && name.len() <= MAX_HOST_LEN {
            let lower = &mut buf[..name.len()];
            lower.copy_from_slice(name.as_bytes());
            lower.make_ascii_lowercase();
            // Lower-casing ASCII bytes leaves UTF-8 valid, so this never fails; the `if let` only
            // avoids a panic path.
            if let Ok(lower) = std::str::from_utf8(lower) {
                if let Some(&i) = self.exact.get(lower) {
                    return Some(&*self.hosts[i]);
                }
                // `*.foo.com` takes exactly one label in front of `foo.com`: split off the first
                // label and look the rest up, so `a.b.foo.com` looks for `b.foo.com`.
                if let Some((label, parent)) = lower.split_once('.')
                    && !label.is_empty()
                {
                    if let Some(&i) = self.wildcard.get(parent) {
                        return Some(&*self.hosts[i]);
                    }
                    // A deep wildcard takes any number of labels: the longest parent wins.
                    if !self.deep_wildcard.is_empty() {
                        let mut parent = parent;
                        loop {
                            if let Some(&i) = self.deep_wildcard.get(parent) {
                                return Some(&*self.hosts[i]);
                            }
                            match parent.split_once('.') {
                                Some((_, rest)) if !rest.is_empty() => parent = rest,
                                _ => break,
                            }
                        }
                    }
                }
            }
        }
        self.default.map(|i| &*self.hosts[i])
    }
}

/// Each name by its place in `names` (the last place, for a name given twice).
pub fn name_index<'a>(names: impl IntoIterator<Item = &'a str>) -> crate::FastMap<&'a str, usize> {
    names.into_iter().enumerate().map(|(i, name)| (name, i)).collect()
}

/// The table a new one is compiled on: the table, the configuration it was compiled from, and
/// the index of each backend group in its snapshot, by name.
pub type PreviousTable<'a> = (&'a RouteTable, &'a Config, &'a crate::FastMap<&'a str, usize>);

/// What [`RouteTable::build_on`] may take from the previous table.
struct Reusable<'a> {
    table: &'a RouteTable,
    config: &'a Config,
    /// The previous configuration's virtual hosts by name.
    hosts: crate::FastMap<&'a str, usize>,
    /// The previous snapshot's backend indexes by name.
    backends: &'a crate::FastMap<&'a str, usize>,
}

impl<'a> Reusable<'a> {
    /// `None` when nothing can be shared: the listeners changed (routes keep their indexes).
    fn new((table, previous, backends): PreviousTable<'a>, config: &Config) -> Option<Reusable<'a>> {
        let same_listeners =
            previous.listeners.iter().map(|l| &l.name).eq(config.listeners.iter().map(|l| &l.name));
        if !same_listeners || table.hosts.len() != previous.virtual_hosts.len() {
            return None;
        }
        Some(Reusable {
            table,
            config: previous,
            hosts: name_index(previous.virtual_hosts.iter().map(|h| h.name.as_str())),
            backends,
        })
    }

    /// The compiled `host` of the previous table, when compiling it again would give the same.
    fn host(
        &self,
        host: &Arc<VirtualHostConfig>,
        backends: &crate::FastMap<&str, usize>,
    ) -> Option<Arc<VirtualHost>> {
        let &index = self.hosts.get(host.name.as_str())?;
        // `Arc`s: the same one (a host the translation kept) is equal without a comparison.
        if self.config.virtual_hosts[index] != *host || reads_files(host) {
            return None;
        }
        let same_index = |name: &str| backends.get(name).is_some_and(|i| self.backends.get(name) == Some(i));
        let route_backends = host.routes.iter().flat_map(|r| {
            let pages = r.error_pages.iter().map(|p| p.backend.as_str());
            r.backend.as_deref().into_iter().chain(r.mirrors.iter().map(|m| m.backend.as_str())).chain(pages)
        });
        let mut named = route_backends.chain(host.error_pages.iter().map(|p| p.backend.as_str()));
        named.all(same_index).then(|| Arc::clone(&self.table.hosts[index]))
    }
}

/// Whether compiling `host` reads a file (an htpasswd file).
fn reads_files(host: &VirtualHostConfig) -> bool {
    let file =
        |auth: Option<&crate::config::BasicAuthConfig>| auth.is_some_and(|a| a.htpasswd_file.is_some());
    file(host.basic_auth.as_deref()) || host.routes.iter().any(|r| file(r.basic_auth.as_deref()))
}

impl Route {
    /// The upstream path-and-query after this route's rewrite (`path_and_query` is the original,
    /// with its query kept as is).
    pub fn rewrite_path_and_query<'a>(&self, path_and_query: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.rewrite {
            Some(rewrite) => rewrite.apply(path_and_query).into(),
            None => path_and_query.into(),
        }
    }
}

impl Rewrite {
    /// Rewrites the path of `path_and_query` and keeps its query. A path that does not match (the
    /// route did not match this path; a caller mistake) is left as is.
    pub fn apply(&self, path_and_query: &str) -> String {
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let new_path: Cow<'_, str> = match self {
            Rewrite::Prefix { from, to } => match prefix_rest(from, path) {
                Some(rest) => Cow::Owned(join_prefix(to, rest)),
                None => Cow::Borrowed(path),
            },
            Rewrite::Regex { regex, replacement } => regex.replace(path, replacement.as_str()),
        };
        let mut out = String::with_capacity(new_path.len() + query.map_or(0, |q| q.len() + 2));
        // An upstream request target must be an absolute path; a replacement such as `$2` that
        // yields `users` or nothing would otherwise make an invalid request line.
        if !new_path.starts_with('/') {
            out.push('/');
        }
        out.push_str(&new_path);
        if let Some(query) = query {
            // A replacement may bring its own query (`/search?q=$1`); like nginx's `rewrite`, the
            // original arguments are then appended after it with `&`.
            out.push(if new_path.contains('?') { '&' } else { '?' });
            out.push_str(query);
        }
        out
    }
}

impl Redirect {
    fn compile(config: &RedirectConfig, at: &str) -> Result<Redirect, String> {
        let status = StatusCode::from_u16(config.code)
            .ok()
            // The codes validation allows: 300, 304 and 305 are 3xx but redirect nowhere.
            .filter(|status| matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308))
            .ok_or_else(|| format!("{at}.redirect.code: {} is not a redirect code", config.code))?;
        // A configured IPv6 literal needs its brackets in a URL.
        let host = config.host.as_ref().map(|host| match host.parse::<Ipv6Addr>() {
            Ok(_) => format!("[{host}]"),
            Err(_) => host.clone(),
        });
        Ok(Redirect {
            scheme: config.scheme.clone(),
            host,
            port: config.port,
            path: config.path.clone(),
            status,
        })
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The configured host, if any.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The Location value: scheme (configured or the request's), host (configured or the request's
    /// host without its port), port, path (configured, or the request's path-and-query after the
    /// route's rewrite). `request_host` is the Host header as received (may include a port).
    ///
    /// The port is the configured one; without one, a redirect that configures a scheme goes to
    /// that scheme's default port (Gateway API `RequestRedirect`: an `http` → `https` redirect
    /// must not carry `:80` or `:8080` over to TLS); otherwise the request's port is kept. A port
    /// that is the default for the resulting scheme (80 for http, 443 for https) is omitted.
    ///
    /// A configured path replaces the whole path and query, like ingress-nginx's
    /// `permanent-redirect`.
    pub fn location(
        &self,
        request_scheme: &str,
        request_host: &str,
        rewritten_path_and_query: &str,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(request_scheme);
        let (request_name, request_port) = split_host_port(request_host);
        let host = self.host.as_deref().unwrap_or(request_name);
        let port = match (self.port, &self.scheme) {
            (Some(port), _) => Some(port),
            (None, Some(_)) => None,
            (None, None) => request_port.and_then(|p| p.parse::<u16>().ok()),
        };
        let port = port.filter(|&p| Some(p) != default_port(scheme));
        let path = self.path.as_deref().unwrap_or(rewritten_path_and_query);
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port {
            location.push(':');
            location.push_str(&port.to_string());
        }
        if !path.starts_with('/') {
            location.push('/');
        }
        location.push_str(path);
        location
    }
}

impl Matcher {
    fn matches(&self, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
        self.path.matches(path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|h| h.matches(headers))
            && self.query_params.iter().all(|q| q.matches(query.unwrap_or("")))
    }

    /// Sort key, smallest first: exact paths before all others; then the longest path; on equal
    /// length a prefix before a regex; then more constraints; the stable sort adds declaration
    /// order.
    fn precedence(&self) -> (u8, std::cmp::Reverse<usize>, u8, std::cmp::Reverse<usize>) {
        use std::cmp::Reverse;
        // A method list is one constraint however many methods it names: `[GET]` is narrower
        // than `[GET, POST]`, so counting methods would rank them the wrong way round.
        let constraints =
            self.headers.len() + self.query_params.len() + usize::from(!self.methods.is_empty());
        match &self.path {
            // Two exact paths only both match when they are equal, so length does not matter.
            PathMatcher::Exact(_) => (0, Reverse(0), 0, Reverse(constraints)),
            PathMatcher::Prefix(prefix) => (1, Reverse(prefix.len()), 0, Reverse(constraints)),
            PathMatcher::Regex { len, .. } => (1, Reverse(*len), 1, Reverse(constraints)),
        }
    }
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(exact) => path == exact,
            PathMatcher::Prefix(prefix) => prefix_rest(prefix, path).is_some(),
            PathMatcher::Regex { regex, .. } => regex.is_match(path),
        }
    }
}

impl QueryParamMatcher {
    /// The first parameter of this name decides, as the Gateway API says; `a=1&b&c=` has the
    /// parameters `a` (`1`), `b` (empty) and `c` (empty).
    fn matches(&self, query: &str) -> bool {
        let value = query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(name, _)| *name == self.name)
            .map(|(_, value)| value);
        match (value, &self.value) {
            (None, _) => false,
            (Some(value), QueryValue::Exact(exact)) => value == exact,
            (Some(value), QueryValue::Regex(regex)) => regex.is_match(value),
        }
    }
}

impl HeaderMatcher {
    fn matches(&self, headers: &HeaderMap) -> bool {
        // A header sent several times matches when any one of its values does: joining them with
        // commas (as Envoy does) would allocate on the request path.
        let mut values = headers.get_all(&self.name).iter();
        match &self.kind {
            HeaderKind::Present(present) => headers.contains_key(&self.name) == *present,
            HeaderKind::Exact(exact) => values.any(|v| v.as_bytes() == exact.as_slice()),
            HeaderKind::Regex(regex) => values.any(|v| regex.is_match(v.as_bytes())),
        }
    }
}

/// The route's labels in ingress-nginx's series: its Ingress's, else empty, its name, its
/// backend and its path.
fn nginx_series(route: &RouteConfig, name: &str, labels: &RouteLabels) -> crate::metrics::nginx::RouteSeries {
    use crate::metrics::nginx::RouteSeries;
    match &route.ingress {
        Some(i) => RouteSeries::new(&i.namespace, &i.name, &i.service, &i.path, &labels.virtual_host),
        None => {
            let path = match &route.matcher.path {
                Some(PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Regex(p)) => p.as_str(),
                None => "/",
            };
            let backend = route.backend.as_deref().unwrap_or("");
            RouteSeries::new("", name, backend, path, &labels.virtual_host)
        }
    }
}

/// `host` is the route's virtual host, whose source ranges and CORS the route's own replace,
/// and whose header changes come before the route's; `(host_at, at)` their positions.
fn compile_route(
    route: &RouteConfig,
    name: String,
    labels: RouteLabels,
    host: &VirtualHostConfig,
    access: Option<Access>,
    (host_at, at): (&str, &str),
    backends: &crate::FastMap<&str, usize>,
) -> Result<Route, String> {
    let matcher = compile_matcher(route, at)?;
    let action = match (&route.backend, &route.redirect, route.direct_response) {
        (Some(backend), None, None) => match backends.get(backend.as_str()) {
            Some(&index) => RouteAction::Backend(index),
            None => return Err(format!("{at}.backend: no backend named {backend:?}")),
        },
        (None, Some(redirect), None) => RouteAction::Redirect(Redirect::compile(redirect, at)?),
        (None, None, Some(status)) => RouteAction::Respond(
            StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .ok_or_else(|| {
                    format!("{at}.direct_response: {status} is not an error status (400..=599)")
                })?,
        ),
        _ => return Err(format!("{at}: needs exactly one of backend, redirect and direct_response")),
    };
    let rewrite = match &route.rewrite {
        Some(rewrite) => Some(compile_rewrite(rewrite, &matcher.path, at)?),
        None => None,
    };
    // Basic auth's credentials stay here, as ingress-nginx's `proxy_set_header Authorization ""`.
    let strip_credentials = access
        .as_ref()
        .is_some_and(Access::has_basic_auth)
        .then(|| HeaderOpsConfig { remove: vec!["Authorization".into()], ..Default::default() });
    let request_headers = HeaderOps::compile(
        &[
            (strip_credentials.as_ref(), format!("{at}.basic_auth")),
            (host.request_headers.as_deref(), format!("{host_at}.request_headers")),
            (route.request_headers.as_deref(), format!("{at}.request_headers")),
        ],
        Direction::Request,
    )?;
    let response_headers = HeaderOps::compile(
        &[
            (host.response_headers.as_deref(), format!("{host_at}.response_headers")),
            (route.response_headers.as_deref(), format!("{at}.response_headers")),
        ],
        Direction::Response,
    )?;
    let cors = match (&route.cors, &host.cors) {
        (Some(cors), _) => Some(Cors::compile(cors, &format!("{at}.cors"))?),
        (None, Some(cors)) => Some(Cors::compile(cors, &format!("{host_at}.cors"))?),
        (None, None) => None,
    };
    let error_pages = match (&route.error_pages, &host.error_pages) {
        (Some(pages), _) => Some(ErrorPages::compile(pages, backends, &format!("{at}.error_pages"))?),
        (None, Some(pages)) => Some(ErrorPages::compile(pages, backends, &format!("{host_at}.error_pages"))?),
        (None, None) => None,
    };
    let nginx = Arc::new(nginx_series(route, &name, &labels));
    Ok(Route {
        name,
        labels,
        action,
        rewrite,
        timeout: route.timeout_ms.map(Duration::from_millis),
        max_body_bytes: route.max_body_bytes,
        source_ranges: route
            .source_ranges
            .as_deref()
            .or(host.source_ranges.as_deref())
            .cloned()
            .map(Arc::new),
        request_headers,
        response_headers,
        cors: cors.map(Box::new),
        access: access.map(Box::new),
        rate_limit: route.rate_limit.as_deref().or(host.rate_limit.as_deref()).cloned().map(Arc::new),
        error_pages,
        https_redirect: route.https_redirect,
        mirrors: route
            .mirrors
            .iter()
            .enumerate()
            .map(|(m, mirror)| Mirror::compile(mirror, backends, &format!("{at}.mirrors[{m}]")))
            .collect::<Result<_, _>>()?,
        nginx,
        redirect_keeps_port: route.redirect_keeps_port,
        matcher,
    })
}

fn compile_matcher(route: &RouteConfig, at: &str) -> Result<Matcher, String> {
    let path = match &route.matcher.path {
        None => PathMatcher::Prefix(String::new()),
        Some(PathMatch::Exact(exact)) => PathMatcher::Exact(exact.clone()),
        Some(PathMatch::Prefix(prefix)) => PathMatcher::Prefix(prefix.trim_end_matches('/').to_owned()),
        Some(PathMatch::Regex(pattern)) => PathMatcher::Regex {
            regex: compile_wrapped(pattern, "^(?:", ")", &format!("{at}.match.path.regex"))?,
            len: pattern.len(),
        },
    };
    let methods = route
        .matcher
        .methods
        .iter()
        .enumerate()
        .map(|(m, method)| {
            Method::from_bytes(method.as_bytes())
                .map_err(|_| format!("{at}.match.methods[{m}]: {method:?} is not an HTTP method"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let headers = route
        .matcher
        .headers
        .iter()
        .enumerate()
        .map(|(h, header)| compile_header(header, &format!("{at}.match.headers[{h}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let query_params = route
        .matcher
        .query_params
        .iter()
        .enumerate()
        .map(|(q, query)| {
            let query_at = format!("{at}.match.query_params[{q}]");
            let value = match (&query.exact, &query.regex) {
                (Some(exact), None) => QueryValue::Exact(exact.clone()),
                (None, Some(pattern)) => {
                    QueryValue::Regex(compile_wrapped(pattern, "^(?:", ")$", &format!("{query_at}.regex"))?)
                }
                _ => return Err(format!("{query_at}: needs exactly one of exact and regex")),
            };
            Ok(QueryParamMatcher { name: query.name.clone(), value })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Matcher { path, methods, headers, query_params, listeners: u64::MAX })
}

/// The listener bits of a route's `match.listeners` (all when it names none).
fn listener_bits(names: &[String], listeners: &crate::FastMap<&str, usize>, at: &str) -> Result<u64, String> {
    if names.is_empty() {
        return Ok(u64::MAX);
    }
    names.iter().enumerate().try_fold(0u64, |bits, (l, name)| match listeners.get(name.as_str()) {
        Some(&i) if i < 64 => Ok(bits | 1 << i),
        _ => Err(format!("{at}.match.listeners[{l}]: no listener named {name:?} among the first 64")),
    })
}

fn compile_header(header: &HeaderMatch, at: &str) -> Result<HeaderMatcher, String> {
    let name = HeaderName::from_bytes(header.name.as_bytes())
        .map_err(|_| format!("{at}.name: {:?} is not a header name", header.name))?;
    let kind = match (&header.exact, &header.regex, header.present) {
        (Some(exact), None, None) => HeaderKind::Exact(exact.as_bytes().to_vec()),
        (None, Some(pattern), None) => {
            let regex_at = format!("{at}.regex");
            // Checked unwrapped first: see `compile_wrapped`.
            Regex::new(pattern).map_err(|e| format!("{regex_at}: not a valid regular expression: {e}"))?;
            let regex = regex::bytes::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| format!("{regex_at}: not a valid regular expression: {e}"))?;
            HeaderKind::Regex(regex)
        }
        (None, None, Some(present)) => HeaderKind::Present(present),
        _ => return Err(format!("{at}: needs exactly one of exact, regex and present")),
    };
    Ok(HeaderMatcher { name, kind })
}

fn compile_rewrite(rewrite: &RewriteConfig, path: &PathMatcher, at: &str) -> Result<Rewrite, String> {
    match (&rewrite.prefix, &rewrite.regex, &rewrite.replacement) {
        (Some(to), None, None) => match path {
            PathMatcher::Prefix(from) => Ok(Rewrite::Prefix { from: from.clone(), to: to.clone() }),
            _ => Err(format!("{at}.rewrite.prefix: a prefix rewrite needs a prefix path match")),
        },
        (None, Some(pattern), Some(replacement)) => Ok(Rewrite::Regex {
            regex: Regex::new(pattern)
                .map_err(|e| format!("{at}.rewrite.regex: not a valid regular expression: {e}"))?,
            replacement: replacement.clone(),
        }),
        _ => Err(format!("{at}.rewrite: needs either prefix, or regex with replacement")),
    }
}

/// Compiles `before + pattern + after`. The pattern is compiled on its own first: only a pattern
/// that is valid by itself has balanced groups, and an unbalanced one such as `a)|(b` would
/// otherwise compile once wrapped, with the anchors applying to only one alternative.
fn compile_wrapped(pattern: &str, before: &str, after: &str, at: &str) -> Result<Regex, String> {
    let invalid = |e: regex::Error| format!("{at}: not a valid regular expression: {e}");
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("{before}{pattern}{after}")).map_err(invalid)
}

/// What follows an element-wise prefix match: `None` when `prefix` (normalised without trailing
/// slash) does not match `path`, otherwise the rest of the path, empty or starting with `/`. The
/// empty prefix (`/`) matches every path.
fn prefix_rest<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    // `/foo` must not match `/foobar`: the match has to end at an element boundary.
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Joins a rewrite prefix and the rest of the path with exactly one slash between them:
/// `/` + `/users` → `/users`, `/v2/` + `/users` → `/v2/users`, `/v2` + `` → `/v2`.
fn join_prefix(to: &str, rest: &str) -> String {
    if rest.is_empty() {
        return to.to_owned();
    }
    let base = to.trim_end_matches('/');
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    format!("{base}/{rest}")
}

/// Splits a Host header or authority into host and port text: `a.com:80` → (`a.com`, `80`),
/// `[::1]:80` → (`[::1]`, `80`) with the brackets kept (a URL needs them). A bare IPv6 address
/// (several colons, no brackets; not valid in a Host header) is taken whole as the host.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => {
                let (name, rest) = host.split_at(end + 1);
                (name, rest.strip_prefix(':').filter(|p| !p.is_empty()))
            }
            None => (host, None),
        };
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => (name, Some(port).filter(|p| !p.is_empty())),
        _ => (host, None),
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    }
}

mod error_pages;
#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const PRELUDE: &str = "\
listeners: [{name: a, address: \"0.0.0.0:80\"}]
backends:
  - {name: b0, endpoints: [{address: \"10.0.0.1:80\"}]}
  - {name: b1, endpoints: [{address: \"10.0.0.2:80\"}]}
virtual_hosts:
";

    /// A table from the `virtual_hosts` list in YAML (indented by two spaces).
    fn table(virtual_hosts: &str) -> RouteTable {
        let config = Config::from_yaml(&format!("{PRELUDE}{virtual_hosts}"), "t.yaml")
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        RouteTable::build(&config).unwrap()
    }

    /// One default virtual host with a route `r<i>` per `(kind, path)`.
    fn paths(routes: &[(&str, &str)]) -> RouteTable {
        let mut yaml = String::from("  - name: v\n    domains: [\"*\"]\n    routes:\n");
        for (i, (kind, path)) in routes.iter().enumerate() {
            yaml.push_str(&format!(
                "      - {{name: r{i}, backend: b0, match: {{path: {{{kind}: \"{path}\"}}}}}}\n"
            ));
        }
        table(&yaml)
    }

    fn get(table: &RouteTable, host: &str, path: &str) -> Option<String> {
        request(table, host, &Method::GET, path, &[])
    }

    fn request(
        table: &RouteTable,
        host: &str,
        method: &Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        table.find(0, host, method, path, query, &map).map(|r| r.name.clone())
    }

    fn route<'a>(table: &'a RouteTable, name: &str) -> &'a Route {
        table.routes().find(|r| r.name == name).unwrap()
    }

    fn redirect<'a>(table: &'a RouteTable, name: &str) -> &'a Redirect {
        match &route(table, name).action {
            RouteAction::Redirect(redirect) => redirect,
            other => panic!("{name} is not a redirect: {other:?}"),
        }
    }

    /// Path kind and path of each route, in declaration order.
    type Paths = &'static [(&'static str, &'static str)];

    /// https://kubernetes.io/docs/concepts/services-networking/ingress/#examples, row by row;
    /// the expected value is the index of the matching path (`None`: no match, default backend).
    #[test]
    fn ingress_spec_examples() {
        let rows: &[(Paths, &str, Option<usize>)] = &[
            (&[("prefix", "/")], "/", Some(0)),
            (&[("prefix", "/")], "/anything/at/all", Some(0)),
            (&[("exact", "/foo")], "/foo", Some(0)),
            (&[("exact", "/foo")], "/bar", None),
            (&[("exact", "/foo")], "/foo/", None),
            (&[("exact", "/foo/")], "/foo", None),
            (&[("prefix", "/foo")], "/foo", Some(0)),
            (&[("prefix", "/foo")], "/foo/", Some(0)),
            (&[("prefix", "/foo/")], "/foo", Some(0)),
            (&[("prefix", "/foo/")], "/foo/", Some(0)),
            (&[("prefix", "/aaa/bb")], "/aaa/bbb", None),
            (&[("prefix", "/aaa/bbb")], "/aaa/bbb", Some(0)),
            (&[("prefix", "/aaa/bbb/")], "/aaa/bbb", Some(0)),
            (&[("prefix", "/aaa/bbb")], "/aaa/bbb/", Some(0)),
            (&[("prefix", "/aaa/bbb")], "/aaa/bbb/ccc", Some(0)),
            (&[("prefix", "/aaa/bbb")], "/aaa/bbbxyz", None),
            (&[("prefix", "/"), ("prefix", "/aaa")], "/aaa/ccc", Some(1)),
            (&[("prefix", "/"), ("prefix", "/aaa"), ("prefix", "/aaa/bbb")], "/aaa/bbb", Some(2)),
            (&[("prefix", "/"), ("prefix", "/aaa"), ("prefix", "/aaa/bbb")], "/ccc", Some(0)),
            (&[("prefix", "/aaa")], "/ccc", None),
            (&[("prefix", "/foo"), ("exact", "/foo")], "/foo", Some(1)),
        ];
        for (routes, path, expected) in rows {
            let table = paths(routes);
            let expected = expected.map(|i| format!("r{i}"));
            assert_eq!(get(&table, "any.host", path), expected, "paths {routes:?}, request {path}");
        }
    }

    #[test]
    fn exact_beats_a_longer_prefix_and_prefix_takes_the_rest() {
        let table = paths(&[("prefix", "/foo/bar/baz"), ("exact", "/foo/bar/baz"), ("prefix", "/foo")]);
        assert_eq!(get(&table, "h", "/foo/bar/baz").as_deref(), Some("r1"));
        assert_eq!(get(&table, "h", "/foo/bar/baz/").as_deref(), Some("r0"));
        assert_eq!(get(&table, "h", "/foo/bar").as_deref(), Some("r2"));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_declaration_order() {
        let table = paths(&[("prefix", "/a"), ("prefix", "/a/b/c"), ("prefix", "/a/b"), ("prefix", "/")]);
        assert_eq!(get(&table, "h", "/a/b/c/d").as_deref(), Some("r1"));
        assert_eq!(get(&table, "h", "/a/b/x").as_deref(), Some("r2"));
        assert_eq!(get(&table, "h", "/a/bc").as_deref(), Some("r0"));
        assert_eq!(get(&table, "h", "/b").as_deref(), Some("r3"));
    }

    #[test]
    fn paths_are_case_sensitive() {
        let table = paths(&[("exact", "/Foo"), ("prefix", "/Bar")]);
        assert_eq!(get(&table, "h", "/Foo").as_deref(), Some("r0"));
        assert_eq!(get(&table, "h", "/foo"), None);
        assert_eq!(get(&table, "h", "/Bar/x").as_deref(), Some("r1"));
        assert_eq!(get(&table, "h", "/bar/x"), None);
    }

    #[test]
    fn a_route_without_a_path_is_prefix_root_and_gets_a_default_name() {
        let table = table("  - {name: site, domains: [\"*\"], routes: [{backend: b1}]}\n");
        assert_eq!(get(&table, "h", "/").as_deref(), Some("site/0"));
        assert_eq!(get(&table, "h", "/deep/path").as_deref(), Some("site/0"));
        assert!(matches!(route(&table, "site/0").action, RouteAction::Backend(1)));
    }

    #[test]
    fn wildcard_host_takes_exactly_one_label() {
        let table = table("  - {name: w, domains: [\"*.foo.com\"], routes: [{name: w, backend: b0}]}\n");
        assert_eq!(get(&table, "bar.foo.com", "/").as_deref(), Some("w"));
        assert_eq!(get(&table, "baz.bar.foo.com", "/"), None);
        assert_eq!(get(&table, "foo.com", "/"), None);
        assert_eq!(get(&table, ".foo.com", "/"), None);
        assert_eq!(get(&table, "barfoo.com", "/"), None);
    }

    #[test]
    fn exact_host_beats_wildcard_beats_default() {
        let table = table(
            "
  - {name: wild, domains: [\"*.example.com\"], routes: [{name: wild, backend: b0}]}
  - {name: api, domains: [api.example.com, API2.example.com], routes: [{name: api, backend: b0}]}
  - {name: dflt, domains: [\"*\"], routes: [{name: dflt, backend: b1}]}
",
        );
        assert_eq!(get(&table, "api.example.com", "/").as_deref(), Some("api"));
        assert_eq!(get(&table, "api2.example.com", "/").as_deref(), Some("api"));
        assert_eq!(get(&table, "www.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(get(&table, "a.b.example.com", "/").as_deref(), Some("dflt"));
        assert_eq!(get(&table, "example.com", "/").as_deref(), Some("dflt"));
        assert_eq!(get(&table, "other.org", "/").as_deref(), Some("dflt"));
        assert_eq!(get(&table, "", "/").as_deref(), Some("dflt"));
        let long = format!("{}.example.com", "a".repeat(300));
        assert_eq!(get(&table, &long, "/").as_deref(), Some("dflt"));
    }

    #[test]
    fn host_port_case_trailing_dot_and_ipv6() {
        let table = table(
            "
  - {name: api, domains: [api.example.com], routes: [{name: api, backend: b0}]}
  - {name: wild, domains: [\"*.Example.org\"], routes: [{name: wild, backend: b0}]}
  - {name: dflt, domains: [\"*\"], routes: [{name: dflt, backend: b1}]}
",
        );
        for host in [
            "api.example.com",
            "API.Example.COM",
            "api.example.com:8080",
            "Api.Example.Com:443",
            "api.example.com.",
        ] {
            assert_eq!(get(&table, host, "/").as_deref(), Some("api"), "{host}");
        }
        assert_eq!(get(&table, "WWW.EXAMPLE.ORG:80", "/").as_deref(), Some("wild"));
        for host in ["[::1]:80", "[::1]", "::1", "10.0.0.1:80", "api.example.com.evil"] {
            assert_eq!(get(&table, host, "/").as_deref(), Some("dflt"), "{host}");
        }
    }

    #[test]
    fn no_default_virtual_host_means_no_route() {
        let table =
            table("  - {name: api, domains: [api.example.com], routes: [{name: api, backend: b0}]}\n");
        assert_eq!(get(&table, "other.example.com", "/"), None);
        assert_eq!(get(&table, "api.example.com", "/").as_deref(), Some("api"));
    }

    #[test]
    fn a_matched_virtual_host_does_not_fall_through_to_the_default() {
        let table = table(
            "
  - {name: api, domains: [api.example.com], routes: [{name: api, backend: b0, match: {path: {prefix: /v1}}}]}
  - {name: dflt, domains: [\"*\"], routes: [{name: dflt, backend: b1}]}
",
        );
        assert_eq!(get(&table, "api.example.com", "/v1/x").as_deref(), Some("api"));
        assert_eq!(get(&table, "api.example.com", "/v2/x"), None);
        assert_eq!(get(&table, "other", "/v2/x").as_deref(), Some("dflt"));
    }

    #[test]
    fn regex_paths_are_anchored_at_the_start_and_case_sensitive() {
        let table = paths(&[("regex", "/api/v[0-9]+")]);
        assert_eq!(get(&table, "h", "/api/v1").as_deref(), Some("r0"));
        // Anchored at the start only: the rest of the path may follow.
        assert_eq!(get(&table, "h", "/api/v12/users").as_deref(), Some("r0"));
        assert_eq!(get(&table, "h", "/x/api/v1"), None);
        assert_eq!(get(&table, "h", "/API/v1"), None);
    }

    #[test]
    fn regex_and_prefix_order_by_length_then_prefix_first() {
        // The regex pattern `/api/.+/items` (13 characters) is longer than the prefix `/api/v1`.
        let table = paths(&[("prefix", "/api/v1"), ("regex", "/api/.+/items"), ("prefix", "/api")]);
        assert_eq!(get(&table, "h", "/api/v1/items").as_deref(), Some("r1"));
        assert_eq!(get(&table, "h", "/api/v1/users").as_deref(), Some("r0"));
        assert_eq!(get(&table, "h", "/api/v2/users").as_deref(), Some("r2"));
        // Equal length (`/abc/` normalises to 4, like the regex `/a.c`): the prefix wins, even
        // declared after.
        let table = paths(&[("regex", "/a.c"), ("prefix", "/abc/")]);
        assert_eq!(get(&table, "h", "/abc/d").as_deref(), Some("r1"));
        assert_eq!(get(&table, "h", "/axc/d").as_deref(), Some("r0"));
        // An exact path beats a longer regex.
        let table = paths(&[("regex", "/status/.*/details"), ("exact", "/status/x/details")]);
        assert_eq!(get(&table, "h", "/status/x/details").as_deref(), Some("r1"));
        assert_eq!(get(&table, "h", "/status/y/details").as_deref(), Some("r0"));
    }

    #[test]
    fn header_matches() {
        let table = table(
            "
  - name: v
    domains: [\"*\"]
    routes:
      - {name: exact, backend: b0, match: {headers: [{name: X-Canary, exact: always}]}}
      - {name: regex, backend: b0, match: {headers: [{name: x-version, regex: \"v[0-9]+\"}]}}
      - {name: absent, backend: b0, match: {headers: [{name: x-internal, present: false}]}}
      - {name: present, backend: b0, match: {headers: [{name: x-internal, present: true}]}}
",
        );
        let get = |headers: &[(&str, &str)]| request(&table, "h", &Method::GET, "/", headers);
        assert_eq!(get(&[("x-canary", "always")]).as_deref(), Some("exact"));
        // Exact values are case-sensitive.
        assert_eq!(get(&[("x-canary", "Always")]).as_deref(), Some("absent"));
        assert_eq!(get(&[("x-version", "v12")]).as_deref(), Some("regex"));
        // The header regex must match the whole value.
        assert_eq!(get(&[("x-version", "xv12")]).as_deref(), Some("absent"));
        assert_eq!(get(&[("x-version", "v12x")]).as_deref(), Some("absent"));
        // Any one of a repeated header's values may match.
        assert_eq!(get(&[("x-canary", "never"), ("x-canary", "always")]).as_deref(), Some("exact"));
        assert_eq!(get(&[("x-internal", "1")]).as_deref(), Some("present"));
        assert_eq!(get(&[("x-internal", "")]).as_deref(), Some("present"));
    }

    #[test]
    fn method_matches_and_more_constraints_win() {
        let table = table(
            "
  - name: v
    domains: [\"*\"]
    routes:
      - {name: any, backend: b0, match: {path: {prefix: /x}}}
      - {name: read, backend: b0, match: {path: {prefix: /x}, methods: [GET, HEAD]}}
      - {name: read-canary, backend: b0, match: {path: {prefix: /x/}, methods: [GET], headers: [{name: x-c, present: true}]}}
      - {name: write, backend: b1, match: {path: {prefix: /x}, methods: [POST, PUT]}}
",
        );
        let m = |method: Method, headers: &[(&str, &str)]| request(&table, "h", &method, "/x/1", headers);
        assert_eq!(m(Method::GET, &[]).as_deref(), Some("read"));
        assert_eq!(m(Method::HEAD, &[]).as_deref(), Some("read"));
        assert_eq!(m(Method::GET, &[("x-c", "1")]).as_deref(), Some("read-canary"));
        assert_eq!(m(Method::HEAD, &[("x-c", "1")]).as_deref(), Some("read"));
        assert_eq!(m(Method::PUT, &[]).as_deref(), Some("write"));
        assert_eq!(m(Method::DELETE, &[]).as_deref(), Some("any"));
        assert_eq!(m(Method::from_bytes(b"PURGE").unwrap(), &[]).as_deref(), Some("any"));
    }

    #[test]
    fn declaration_order_breaks_remaining_ties() {
        let table = table(
            "
  - name: v
    domains: [\"*\"]
    routes:
      - {name: first, backend: b0, match: {path: {prefix: /x}, headers: [{name: a, present: true}]}}
      - {name: second, backend: b0, match: {path: {prefix: /x}, headers: [{name: b, present: true}]}}
",
        );
        let headers = [("a", "1"), ("b", "1")];
        assert_eq!(request(&table, "h", &Method::GET, "/x", &headers).as_deref(), Some("first"));
        assert_eq!(request(&table, "h", &Method::GET, "/x", &headers[1..]).as_deref(), Some("second"));
    }

    #[test]
    fn prefix_rewrites() {
        let table = table(
            "
  - name: v
    domains: [\"*\"]
    routes:
      - {name: root, backend: b0, match: {path: {prefix: /api}}, rewrite: {prefix: /}}
      - {name: v2, backend: b0, match: {path: {prefix: /old/}}, rewrite: {prefix: /v2}}
      - {name: v3, backend: b0, match: {path: {prefix: /older}}, rewrite: {prefix: /v3/}}
      - {name: all, backend: b0, rewrite: {prefix: /base}}
      - {name: plain, backend: b0, match: {path: {prefix: /plain}}}
",
        );
        let rewrite = |name: &str, pq: &str| route(&table, name).rewrite_path_and_query(pq).into_owned();
        assert_eq!(rewrite("root", "/api/users?x=1"), "/users?x=1");
        assert_eq!(rewrite("root", "/api"), "/");
        assert_eq!(rewrite("root", "/api/"), "/");
        assert_eq!(rewrite("root", "/api?x=1&y=/api"), "/?x=1&y=/api");
        assert_eq!(rewrite("v2", "/old/users"), "/v2/users");
        assert_eq!(rewrite("v2", "/old"), "/v2");
        assert_eq!(rewrite("v2", "/old/"), "/v2/");
        assert_eq!(rewrite("v3", "/older/users?q"), "/v3/users?q");
        assert_eq!(rewrite("v3", "/older"), "/v3/");
        assert_eq!(rewrite("all", "/users"), "/base/users");
        assert_eq!(rewrite("plain", "/plain/x?y=1"), "/plain/x?y=1");
        // The route found for a request rewrites as its prefix says.
        let found = table.find(0, "h", &Method::GET, "/api/users", None, &HeaderMap::new()).unwrap();
        assert_eq!(found.rewrite_path_and_query("/api/users?x=1"), "/users?x=1");
    }

    #[test]
    fn regex_rewrites() {
        let table = table(
            "
  - name: v
    domains: [\"*\"]
    routes:
      - name: nginx
        backend: b0
        match: {path: {regex: \"/something(/|$)(.*)\"}}
        rewrite: {regex: \"/something(/|$)(.*)\", replacement: \"/$2\"}
      - name: named
        backend: b0
        match: {path: {regex: \"/users/[0-9]+\"}}
        rewrite: {regex: \"/users/(?P<id>[0-9]+)\", replacement: \"/u/${id}/profile\"}
      - name: query
        backend: b0
        match: {path: {regex: \"/s/\"}}
        rewrite: {regex: \"^/s/(.*)\", replacement: \"/search?q=$1\"}
",
        );
        let rewrite = |name: &str, pq: &str| route(&table, name).rewrite_path_and_query(pq).into_owned();
        assert_eq!(rewrite("nginx", "/something"), "/");
        assert_eq!(rewrite("nginx", "/something/"), "/");
        assert_eq!(rewrite("nginx", "/something/new?a=1"), "/new?a=1");
        assert_eq!(rewrite("named", "/users/42?tab=x"), "/u/42/profile?tab=x");
        // Only the first match is replaced.
        assert_eq!(rewrite("named", "/users/42/users/7"), "/u/42/profile/users/7");
        assert_eq!(rewrite("query", "/s/rust"), "/search?q=rust");
        assert_eq!(rewrite("query", "/s/rust?page=2"), "/search?q=rust&page=2");
    }

    #[test]
    fn redirect_locations() {
        let table = table(
            "
  - name: v
    domains: [\"*\"]
    routes:
      - {name: https, match: {path: {prefix: /secure}}, redirect: {scheme: https, code: 308}}
      - {name: full, match: {path: {prefix: /full}}, redirect: {scheme: https, host: new.example.com, port: 8443, path: /landing, code: 301}}
      - {name: same, match: {path: {prefix: /same}}, redirect: {}}
      - {name: host, match: {path: {prefix: /host}}, redirect: {host: other.example.com}}
      - {name: port, match: {path: {prefix: /port}}, redirect: {port: 80}}
      - {name: v6, match: {path: {prefix: /v6}}, redirect: {host: \"::1\", port: 8080}}
      - {name: moved, match: {path: {prefix: /old}}, rewrite: {prefix: /new}, redirect: {code: 303}}
",
        );
        let https = redirect(&table, "https");
        assert_eq!(https.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(https.location("http", "example.com", "/secure?a=1"), "https://example.com/secure?a=1");
        // A scheme change does not carry the plain-text port over to TLS.
        assert_eq!(https.location("http", "Example.com:8080", "/secure"), "https://Example.com/secure");
        assert_eq!(https.location("http", "[::1]:80", "/secure"), "https://[::1]/secure");

        let full = redirect(&table, "full");
        assert_eq!(full.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            full.location("http", "example.com:8080", "/full/x?y=1"),
            "https://new.example.com:8443/landing"
        );

        let same = redirect(&table, "same");
        assert_eq!(same.status(), StatusCode::FOUND);
        assert_eq!(same.location("http", "example.com:8080", "/same?q"), "http://example.com:8080/same?q");
        assert_eq!(same.location("http", "example.com:80", "/same"), "http://example.com/same");
        assert_eq!(same.location("https", "example.com:443", "/same"), "https://example.com/same");
        assert_eq!(same.location("https", "example.com:80", "/same"), "https://example.com:80/same");
        assert_eq!(same.location("https", "[2001:db8::1]:8443", "/same"), "https://[2001:db8::1]:8443/same");
        assert_eq!(same.location("http", "example.com", ""), "http://example.com/");

        let host = redirect(&table, "host");
        assert_eq!(
            host.location("https", "example.com:8443", "/host/a"),
            "https://other.example.com:8443/host/a"
        );
        let port = redirect(&table, "port");
        assert_eq!(port.location("http", "example.com:8080", "/port"), "http://example.com/port");
        assert_eq!(port.location("https", "example.com", "/port"), "https://example.com:80/port");
        let v6 = redirect(&table, "v6");
        assert_eq!(v6.location("http", "example.com", "/v6"), "http://[::1]:8080/v6");

        // A redirect route's rewrite shapes the path the caller passes in.
        let moved = route(&table, "moved");
        let rewritten = moved.rewrite_path_and_query("/old/page?x=1");
        let RouteAction::Redirect(r) = &moved.action else { panic!("not a redirect") };
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.location("https", "example.com", &rewritten), "https://example.com/new/page?x=1");
    }

    #[test]
    fn route_fields_and_listing() {
        let table = table(
            "
  - name: one
    domains: [a.example.com]
    routes:
      - {backend: b1, timeout_ms: 1500, max_body_bytes: 0, match: {path: {prefix: /b}}}
      - {name: named, backend: b0, match: {path: {prefix: /a/long/prefix}}}
  - {name: two, domains: [\"*\"], routes: [{backend: b0}]}
",
        );
        let names: Vec<&str> = table.routes().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["one/0", "named", "two/0"]);
        let first = route(&table, "one/0");
        assert!(matches!(first.action, RouteAction::Backend(1)));
        assert_eq!(first.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(first.max_body_bytes, Some(0));
        let named = route(&table, "named");
        assert!(matches!(named.action, RouteAction::Backend(0)));
        assert_eq!((named.timeout, named.max_body_bytes), (None, None));
    }

    /// Routes for some listeners only (Gateway API listener isolation): each listener finds its
    /// own, whatever the precedence; a route for none in particular is found on all; an
    /// unknown listener name is refused.
    #[test]
    fn routes_answer_only_on_their_listeners() {
        let yaml = "\
listeners: [{name: plain, address: \"0.0.0.0:80\"}, {name: other, address: \"0.0.0.0:81\"}, {name: secure, address: \"0.0.0.0:443\"}]
backends:
  - {name: b0, endpoints: [{address: \"10.0.0.1:80\"}]}
virtual_hosts:
  - name: v
    domains: [\"*\"]
    routes:
      - {name: redirect, redirect: {scheme: https, code: 301}, match: {path: {exact: /x}, listeners: [plain]}}
      - {name: tls-only, backend: b0, match: {path: {prefix: /}, listeners: [secure]}}
      - {name: everywhere, backend: b0, match: {path: {prefix: /}}}
";
        let config = Config::from_yaml(yaml, "t.yaml").unwrap();
        let table = RouteTable::build(&config).unwrap();
        let find = |listener: usize, path: &str| {
            table.find(listener, "h", &Method::GET, path, None, &HeaderMap::new()).map(|r| r.name.clone())
        };
        assert_eq!(find(0, "/x").as_deref(), Some("redirect"));
        assert_eq!(find(2, "/x").as_deref(), Some("tls-only"), "the exact path is not for this listener");
        assert_eq!(find(0, "/y").as_deref(), Some("everywhere"));
        assert_eq!(find(1, "/x").as_deref(), Some("everywhere"));
        assert_eq!(find(2, "/y").as_deref(), Some("tls-only"));
        let unknown = yaml.replace("listeners: [secure]", "listeners: [secure, nowhere]");
        let error = Config::from_yaml(&unknown, "t.yaml").unwrap_err().to_string();
        assert!(error.contains("routes[1].match.listeners[1]: no listener named \"nowhere\""), "{error}");
    }

    /// Mirrors compile to a backend index and a share per million; validation refuses a share
    /// that is not a fraction, an unknown backend, and a mirror on a route with no backend.
    #[test]
    fn mirrors_compile_and_bad_ones_are_refused() {
        let table = table(
            "  - name: v
    domains: [\"*\"]
    routes:
      - name: m
        backend: b0
        mirrors: [{backend: b1}, {backend: b0, fraction: {numerator: 1, denominator: 3}, body: false}]
",
        );
        let mirrors = &route(&table, "m").mirrors;
        assert_eq!((mirrors[0].backend, mirrors[0].per_million, mirrors[0].body), (1, 1_000_000, true));
        assert_eq!((mirrors[1].backend, mirrors[1].per_million, mirrors[1].body), (0, 333_333, false));
        assert!(mirrors[0].draws());
        let never = Mirror { backend: 0, per_million: 0, body: true, host: None };
        assert!(!(0..1000).any(|_| never.draws()));
        let bad = format!(
            "{PRELUDE}  - name: v
    domains: [\"*\"]
    routes:
      - {{backend: b0, mirrors: [{{backend: nope}}, {{backend: b1, fraction: {{numerator: 3, denominator: 2}}}}]}}
      - {{direct_response: 500, mirrors: [{{backend: b1}}]}}
"
        );
        let error = Config::from_yaml(&bad, "t.yaml").unwrap_err().to_string();
        for expected in [
            "routes[0].mirrors[0].backend: no backend named \"nope\"",
            "routes[0].mirrors[1].fraction: needs 0 <= numerator <= denominator",
            "routes[1].mirrors: only a route with a backend mirrors its requests",
        ] {
            assert!(error.contains(expected), "{expected} in {error}");
        }
    }

    /// What validation refuses must still be an error here, not a panic.
    /// Gateway API additions: query parameter matches (the first parameter of a name decides,
    /// they count as constraints), wildcards of any depth, and direct responses.
    #[test]
    fn query_params_deep_wildcards_and_direct_responses() {
        let table = table(
            r#"  - name: deep
    domains: ["*.deep.test"]
    deep_wildcards: true
    routes:
      - {name: q, backend: b0, match: {query_params: [{name: a, exact: "1"}]}}
      - {name: rx, backend: b0, match: {query_params: [{name: c, regex: "x+"}]}}
      - {name: all, direct_response: 500}
  - name: shallow
    domains: ["*.shallow.test"]
    routes:
      - {name: s, backend: b0}
  - name: specific
    domains: ["*.b.deep.test"]
    deep_wildcards: true
    routes:
      - {name: specific, backend: b0}
"#,
        );
        assert_eq!(get(&table, "x.deep.test", "/?a=1").as_deref(), Some("q"));
        assert_eq!(get(&table, "x.y.z.deep.test", "/?b=2&a=1").as_deref(), Some("q"));
        assert_eq!(get(&table, "x.deep.test", "/?a=2&a=1").as_deref(), Some("all"), "the first a decides");
        assert_eq!(get(&table, "x.deep.test", "/?c=xxx").as_deref(), Some("rx"));
        assert_eq!(get(&table, "x.deep.test", "/?c=xy").as_deref(), Some("all"), "the whole value matches");
        assert_eq!(get(&table, "x.deep.test", "/").as_deref(), Some("all"));
        assert_eq!(get(&table, "deep.test", "/"), None, "a wildcard needs a label");
        assert_eq!(get(&table, "a.b.deep.test", "/").as_deref(), Some("specific"), "the longest parent wins");
        assert_eq!(get(&table, "a.shallow.test", "/").as_deref(), Some("s"));
        assert_eq!(get(&table, "a.b.shallow.test", "/"), None, "an Ingress wildcard takes one label");
        let all = route(&table, "all");
        assert!(matches!(all.action, RouteAction::Respond(s) if s == StatusCode::INTERNAL_SERVER_ERROR));
    }

    /// The table as a fresh build would make it: its compiled hosts and host maps.
    fn same_as_fresh(table: &RouteTable, config: &Config) {
        let fresh = RouteTable::build(config).unwrap();
        assert_eq!(format!("{:?}", table.hosts), format!("{:?}", fresh.hosts));
        assert_eq!(
            (&table.exact, &table.wildcard, &table.deep_wildcard, table.default),
            (&fresh.exact, &fresh.wildcard, &fresh.deep_wildcard, fresh.default)
        );
    }

    /// Compiled virtual hosts are shared with the previous table when nothing their compilation
    /// reads changed; whatever changed (a route, a backend index that shifts, the listeners, an
    /// htpasswd file behind an equal configuration), the table is what a fresh build makes.
    #[test]
    fn unchanged_virtual_hosts_are_shared_with_the_previous_table() {
        let htpasswd = std::env::temp_dir().join(format!("sluice-route-reuse-{}", std::process::id()));
        std::fs::write(&htpasswd, "alice:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n").unwrap();
        let yaml = |first_backend: &str, timeout: u64, listener: &str| {
            Config::from_yaml(
                &format!(
                    "listeners: [{{name: {listener}, address: \"0.0.0.0:80\"}}]
backends:
{first_backend}  - {{name: b0, endpoints: [{{address: \"10.0.0.1:80\"}}]}}
  - {{name: b1, endpoints: [{{address: \"10.0.0.2:80\"}}]}}
virtual_hosts:
  - {{name: a, domains: [a.test], routes: [{{backend: b0, timeout_ms: {timeout}}}]}}
  - {{name: b, domains: [\"*.b.test\"], routes: [{{backend: b1, mirrors: [{{backend: b0}}]}}]}}
  - {{name: c, domains: [c.test], routes: [{{redirect: {{scheme: https, code: 301}}}}]}}
  - {{name: d, domains: [\"*\"], basic_auth: {{htpasswd_file: {}}}, routes: [{{redirect: {{scheme: https, code: 301}}}}]}}
",
                    htpasswd.display()
                ),
                "t.yaml",
            )
            .unwrap()
        };
        let shared = |next: &RouteTable, previous: &RouteTable| -> Vec<bool> {
            (0..4).map(|i| Arc::ptr_eq(&next.hosts[i], &previous.hosts[i])).collect()
        };
        // Groups numbered in configuration order, as `RouteTable::build` numbers them.
        fn index(config: &Config) -> crate::FastMap<&str, usize> {
            name_index(config.backends.iter().map(|b| b.name.as_str()))
        }
        let build_on = |config: &Config, previous: &RouteTable, previous_config: &Config| {
            let before = index(previous_config);
            RouteTable::build_on(config, &index(config), Some((previous, previous_config, &before))).unwrap()
        };
        let first = yaml("", 1_000, "web");
        let one = RouteTable::build(&first).unwrap();
        let again = build_on(&first, &one, &first);
        same_as_fresh(&again, &first);
        assert_eq!(shared(&again, &one), [true, true, true, false], "d reads a file");

        let second = yaml("", 2_000, "web");
        let two = build_on(&second, &one, &first);
        same_as_fresh(&two, &second);
        assert_eq!(shared(&two, &one), [false, true, true, false], "a's route changed");

        std::fs::write(&htpasswd, "bob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n").unwrap();
        let third = yaml("  - {name: a0, endpoints: [{address: \"10.0.0.3:80\"}]}\n", 2_000, "web");
        let three = build_on(&third, &two, &second);
        same_as_fresh(&three, &third);
        assert_eq!(shared(&three, &two), [false, false, true, false], "b0 and b1 moved");
        assert!(matches!(route(&three, "a/0").action, RouteAction::Backend(1)));

        let fourth = yaml("  - {name: a0, endpoints: [{address: \"10.0.0.3:80\"}]}\n", 2_000, "other");
        let four = build_on(&fourth, &three, &third);
        same_as_fresh(&four, &fourth);
        assert_eq!(shared(&four, &three), [false; 4], "the listeners changed");
        std::fs::remove_file(&htpasswd).unwrap();
    }

    #[test]
    fn invalid_input_is_an_error_not_a_panic() {
        let base = Config::from_yaml(
            &format!(
                "{PRELUDE}  - {{name: v, domains: [\"*\"], routes: [{{backend: b0, match: {{path: {{regex: /a}}}}}}]}}\n"
            ),
            "t.yaml",
        )
        .unwrap();
        assert!(RouteTable::build(&base).is_ok());
        fn route0(c: &mut Config) -> &mut RouteConfig {
            Arc::make_mut(&mut Arc::make_mut(&mut c.virtual_hosts[0]).routes[0])
        }
        let broken = |change: &dyn Fn(&mut Config)| {
            let mut config = base.clone();
            change(&mut config);
            RouteTable::build(&config).unwrap_err()
        };
        let err = broken(&|c| route0(c).matcher.path = Some(PathMatch::Regex("(".into())));
        assert!(err.starts_with("virtual_hosts[0].routes[0].match.path.regex: not a valid"), "{err}");
        // Unbalanced but valid once wrapped: still refused.
        let err = broken(&|c| route0(c).matcher.path = Some(PathMatch::Regex("a)|(b".into())));
        assert!(err.contains("match.path.regex"), "{err}");
        let err = broken(&|c| {
            route0(c).matcher.headers =
                vec![HeaderMatch { name: "x".into(), exact: None, regex: Some("[".into()), present: None }]
        });
        assert!(err.starts_with("virtual_hosts[0].routes[0].match.headers[0].regex"), "{err}");
        let err = broken(&|c| {
            route0(c).matcher.headers = vec![HeaderMatch {
                name: "bad name".into(),
                exact: Some("1".into()),
                regex: None,
                present: None,
            }]
        });
        assert!(err.contains("headers[0].name"), "{err}");
        let err = broken(&|c| {
            route0(c).matcher.headers = vec![HeaderMatch {
                name: "x".into(),
                exact: Some("1".into()),
                regex: None,
                present: Some(true),
            }]
        });
        assert!(err.contains("exactly one of exact, regex and present"), "{err}");
        let err = broken(&|c| route0(c).matcher.methods = vec!["G T".into()]);
        assert!(err.contains("methods[0]"), "{err}");
        let err = broken(&|c| route0(c).backend = Some("nope".into()));
        assert!(err.contains("no backend named \"nope\""), "{err}");
        let err = broken(&|c| route0(c).backend = None);
        assert!(err.contains("exactly one of backend, redirect and direct_response"), "{err}");
        let err = broken(&|c| route0(c).direct_response = Some(200));
        assert!(err.contains("exactly one of"), "{err}");
        let err = broken(&|c| {
            route0(c).rewrite =
                Some(Box::new(RewriteConfig { prefix: Some("/x".into()), regex: None, replacement: None }))
        });
        assert!(err.contains("needs a prefix path match"), "{err}");
        let err = broken(&|c| {
            route0(c).rewrite = Some(Box::new(RewriteConfig {
                prefix: None,
                regex: Some("(".into()),
                replacement: Some("/".into()),
            }))
        });
        assert!(err.contains("rewrite.regex"), "{err}");
        for code in [200, 304] {
            let err = broken(&|c| {
                route0(c).backend = None;
                route0(c).redirect =
                    Some(Box::new(RedirectConfig { scheme: None, host: None, port: None, path: None, code }));
            });
            assert!(err.contains("redirect.code"), "{code}: {err}");
        }
        let err = broken(&|c| {
            let mut copy = VirtualHostConfig::clone(&c.virtual_hosts[0]);
            copy.name = "w".into();
            c.virtual_hosts.push(Arc::new(copy));
        });
        assert!(err.starts_with("virtual_hosts[1].domains[0]"), "{err}");
    }
}
