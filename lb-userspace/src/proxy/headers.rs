//! Header handling between client and upstream: hop-by-hop headers stripped (RFC 9110 7.6.1),
//! forwarding headers added the way ingress-nginx sets them, and request ids.

use std::net::SocketAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue, Request,
    header::{CONNECTION, EXPECT, HOST, TE, TRANSFER_ENCODING, UPGRADE},
};

use super::header_ops::HeaderOps;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The request's host: `:authority` (HTTP/2, absolute-form) or the Host header.
pub fn request_host<B>(request: &Request<B>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

/// The hop-by-hop headers every message loses, whether or not `Connection` names them.
static FIXED_HOP_BY_HOP: [&HeaderName; 6] =
    [&CONNECTION, &KEEP_ALIVE, &PROXY_CONNECTION, &TRANSFER_ENCODING, &UPGRADE, &TE];

/// The fields a message's `Connection` header names as hop-by-hop, besides the fixed set
/// (empty, without allocating, when there is no `Connection`).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // The usual options; `keep-alive` is in the fixed set, `close` names no field.
        .filter(|token| !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| !FIXED_HOP_BY_HOP.contains(&name))
        .collect()
}

/// `TE: trailers`, the one hop-by-hop field that goes on (gRPC needs it end to end).
fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers.get(TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// Removes the hop-by-hop headers: those named in `Connection`, and the fixed set. `TE:
/// trailers` survives, because gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them, or only `Connection`: one pass over the names finds
    // which, instead of a hashed lookup per hop-by-hop name.
    let mut present = [false; FIXED_HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = FIXED_HOP_BY_HOP.iter().position(|fixed| *fixed == name) {
            present[i] = true;
        }
    }
    if present == [false; FIXED_HOP_BY_HOP.len()] {
        return;
    }
    for name in connection_named(headers) {
        headers.remove(&name);
    }
    let te_trailers = asks_for_trailers(headers);
    for (name, present) in FIXED_HOP_BY_HOP.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// The value of `Upgrade` when the request asks to switch protocols (`Connection: upgrade`).
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks { headers.get(UPGRADE).cloned() } else { None }
}

/// What the proxy tells the upstream about the client. The values are the same for every
/// request on a connection, so they are made once, when it is accepted; a request from a
/// trusted proxy gets its own ([`Forwarded::behind_proxy`]).
#[derive(Clone, Debug)]
pub struct Forwarded {
    /// The real client address: X-Real-IP, and X-Forwarded-For unless it is computed in full.
    client_ip: HeaderValue,
    /// The connection's peer, appended to the client's X-Forwarded-For in full mode.
    peer_ip: HeaderValue,
    scheme: HeaderValue,
    port: HeaderValue,
    /// Send the client's X-Forwarded-For with the peer appended (`compute-full-forwarded-for`);
    /// otherwise it is replaced by the client address, as ingress-nginx does by default.
    full_forwarded_for: bool,
    /// A trusted proxy's X-Forwarded-Proto, -Host and -Port go on instead of this hop's.
    pass_proxy_values: bool,
}

fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_canonical().to_string()).expect("an IP address is a valid header value")
}

impl Forwarded {
    pub fn new(client: SocketAddr, scheme: &'static str, port: u16) -> Forwarded {
        let client_ip = ip_value(client.ip());
        Forwarded {
            peer_ip: client_ip.clone(),
            client_ip,
            scheme: HeaderValue::from_static(scheme),
            port: HeaderValue::from(port),
            full_forwarded_for: false,
            pass_proxy_values: false,
        }
    }

    /// Appends the peer to the client's X-Forwarded-For instead of replacing it.
    pub fn with_full_forwarded_for(mut self, full: bool) -> Forwarded {
        self.full_forwarded_for = full;
        self
    }

    /// For one request from a trusted proxy: `client` is the real client address; with
    /// `pass_proxy_values`, the proxy's X-Forwarded-Proto, -Host and -Port go on.
    pub fn behind_proxy(&self, client: std::net::IpAddr, pass_proxy_values: bool) -> Forwarded {
        Forwarded { client_ip: ip_value(client), pass_proxy_values, ..self.clone() }
    }

    /// The port the request reached the first proxy on, by a trusted proxy's X-Forwarded-Port.
    pub fn proxy_port<'h>(&self, client: &'h HeaderMap) -> Option<&'h str> {
        if !self.pass_proxy_values {
            return None;
        }
        client.get(&X_FORWARDED_PORT)?.to_str().ok().map(str::trim).filter(|p| p.parse::<u16>().is_ok())
    }

    /// The scheme the request reached the first proxy with, by a trusted proxy's
    /// X-Forwarded-Proto (`None`: no trusted proxy, or it sent none).
    pub fn proxy_scheme<'h>(&self, client: &'h HeaderMap) -> Option<&'h [u8]> {
        if !self.pass_proxy_values {
            return None;
        }
        client.get(&X_FORWARDED_PROTO).map(|v| v.as_bytes())
    }

    /// The host the client asked the first proxy for, by a trusted proxy's word: the first
    /// entry of its X-Forwarded-Host (ingress-nginx's `best_http_host`).
    pub fn proxy_host<'h>(&self, client: &'h HeaderMap) -> Option<&'h str> {
        if !self.pass_proxy_values {
            return None;
        }
        let first = client.get(&X_FORWARDED_HOST)?.to_str().ok()?.split(',').next()?.trim();
        (!first.is_empty()).then_some(first)
    }
}

/// The request's header fields as they go upstream, described instead of applied: the
/// client's fields minus the hop-by-hop ones (RFC 9110 7.6.1: the fixed set and those its
/// `Connection` names; `TE: trailers` survives for gRPC), `Expect` (this hop answered it) and
/// the ones this hop sets, then the set ones: X-Request-ID (the client's when sane, else a new
/// one), X-Forwarded-For (the client address, or the client's hops with the peer appended in full mode), X-Real-IP, X-Forwarded-Proto/-Port/
/// -Host, Host when the client sent none (HTTP/2's `:authority`), and the upgrade headers.
///
/// The HTTP/1.1 upstream client writes [`UpstreamHeaders::for_each`] straight into the request
/// head, so the client's map is never edited on that path; the HTTP/2 and TLS client collects
/// the same fields into a map ([`UpstreamHeaders::to_map`]).
pub struct UpstreamHeaders<'a> {
    client: &'a HeaderMap,
    /// Fields the client's `Connection` header names, besides the fixed set.
    named: Vec<HeaderName>,
    te_trailers: bool,
    request_id: HeaderValue,
    forwarded_for: HeaderValue,
    forwarded: &'a Forwarded,
    /// Host for a client that sent none.
    host: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
    /// A trusted proxy's X-Forwarded-Proto, -Port and -Host go on (each when it sent one).
    pass_proto: bool,
    pass_port: bool,
    pass_host: bool,
    upgrade: Option<HeaderValue>,
    /// The route's configured changes: they remove or replace any field above but the
    /// connection's own (upgrade, `TE`), and add theirs last.
    changes: Option<&'a HeaderOps>,
    /// The `ssl-client-*` fields of the connection's client certificate: they replace every
    /// `ssl-client-*` field the client sent, so none can be forged.
    client_certificate: Option<&'a [(HeaderName, HeaderValue)]>,
}

impl<'a> UpstreamHeaders<'a> {
    /// `host` is the request's host (`:authority` or Host); `upgrade` the protocol the client
    /// asked to switch to, when it did.
    pub fn new(
        client: &'a HeaderMap,
        forwarded: &'a Forwarded,
        host: &str,
        upgrade: Option<HeaderValue>,
    ) -> UpstreamHeaders<'a> {
        let named = connection_named(client);
        let te_trailers = asks_for_trailers(client);
        let forwarded_for = if forwarded.full_forwarded_for && client.contains_key(&X_FORWARDED_FOR) {
            // Repeated header lines are one comma-separated list (RFC 9110 5.3): keep every hop.
            let mut hops: Vec<&[u8]> =
                client.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes).collect();
            hops.push(forwarded.peer_ip.as_bytes());
            HeaderValue::from_bytes(&hops.join(&b", "[..])).unwrap_or_else(|_| forwarded.peer_ip.clone())
        } else if forwarded.full_forwarded_for {
            forwarded.peer_ip.clone()
        } else {
            forwarded.client_ip.clone()
        };
        let pass = |name: &HeaderName| forwarded.pass_proxy_values && client.contains_key(name);
        // The Host header's own value when that is where the host came from (no copy).
        let client_host = client.get(HOST);
        let forwarded_host = match client_host {
            Some(value) if value.as_bytes() == host.as_bytes() => Some(value.clone()),
            _ if host.is_empty() => None,
            _ => HeaderValue::from_str(host).ok(),
        };
        let host = if client_host.is_none() { forwarded_host.clone() } else { None };
        UpstreamHeaders {
            client,
            named,
            te_trailers,
            request_id: request_id(client),
            forwarded_for,
            forwarded,
            host,
            forwarded_host,
            pass_proto: pass(&X_FORWARDED_PROTO),
            pass_port: pass(&X_FORWARDED_PORT),
            pass_host: pass(&X_FORWARDED_HOST),
            upgrade,
            changes: None,
            client_certificate: None,
        }
    }

    /// The client's fields and the forwarding values these were made from (a mirrored copy
    /// makes its own from the same).
    pub fn client_parts(&self) -> (&'a HeaderMap, &'a Forwarded) {
        (self.client, self.forwarded)
    }

    /// With this request id instead of the client's or a new one (a mirrored copy keeps its
    /// original's).
    pub fn with_request_id(mut self, id: HeaderValue) -> UpstreamHeaders<'a> {
        self.request_id = id;
        self
    }

    /// With the fields of the connection's client certificate (a host checking them).
    pub fn with_client_certificate(
        mut self,
        fields: Option<&'a [(HeaderName, HeaderValue)]>,
    ) -> UpstreamHeaders<'a> {
        self.client_certificate = fields;
        self
    }

    /// With the route's configured header changes.
    pub fn with_changes(mut self, changes: Option<&'a HeaderOps>) -> UpstreamHeaders<'a> {
        self.changes = changes;
        self
    }

    /// The request's id, which the response carries too.
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// Whether the upstream request has a field `name` (from the client).
    pub fn has(&self, name: &HeaderName) -> bool {
        self.client.contains_key(name) && self.keeps(name)
    }

    /// A client field this hop passes on unchanged.
    fn keeps(&self, name: &HeaderName) -> bool {
        !(FIXED_HOP_BY_HOP.contains(&name)
            || name == EXPECT
            || name == X_REQUEST_ID
            || name == X_FORWARDED_FOR
            || name == X_REAL_IP
            || (name == X_FORWARDED_PROTO && !self.pass_proto)
            || (name == X_FORWARDED_PORT && !self.pass_port)
            || (name == X_FORWARDED_HOST && self.forwarded_host.is_some() && !self.pass_host)
            || self.named.contains(name)
            || (self.client_certificate.is_some() && name.as_str().starts_with("ssl-client-"))
            || self.changed(name))
    }

    /// A field the route's changes remove or replace.
    fn changed(&self, name: &HeaderName) -> bool {
        self.changes.is_some_and(|changes| changes.drops(name))
    }

    /// Every field of the upstream request, in order: the client's kept ones, then the set ones.
    pub fn for_each(&self, mut field: impl FnMut(&HeaderName, &HeaderValue)) {
        for (name, value) in self.client {
            if self.keeps(name) {
                field(name, value);
            }
        }
        let mut own = |name: &HeaderName, value: &HeaderValue| {
            if !self.changed(name) {
                field(name, value);
            }
        };
        if let Some(host) = &self.host {
            own(&HOST, host);
        }
        own(&X_REQUEST_ID, &self.request_id);
        own(&X_FORWARDED_FOR, &self.forwarded_for);
        own(&X_REAL_IP, &self.forwarded.client_ip);
        if !self.pass_proto {
            own(&X_FORWARDED_PROTO, &self.forwarded.scheme);
        }
        if !self.pass_port {
            own(&X_FORWARDED_PORT, &self.forwarded.port);
        }
        if let Some(forwarded_host) = &self.forwarded_host
            && !self.pass_host
        {
            own(&X_FORWARDED_HOST, forwarded_host);
        }
        for (name, value) in self.client_certificate.unwrap_or_default() {
            own(name, value);
        }
        if let Some(changes) = self.changes {
            for (name, value) in changes.appended() {
                field(name, value);
            }
        }
        if self.te_trailers {
            field(&TE, &TRAILERS);
        }
        if let Some(protocol) = &self.upgrade {
            field(&CONNECTION, &UPGRADE_TOKEN);
            field(&UPGRADE, protocol);
        }
    }

    /// The same fields as a map (for hyper's client).
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.client.len() + 9);
        self.for_each(|name, value| {
            map.append(name.clone(), value.clone());
        });
        map
    }
}

static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// The client's X-Request-ID when it is sane, otherwise a new one (32 hex digits).
///
/// Marked sensitive: a value unique to one request is never worth an HPACK table entry, and
/// HTTP/2 encoders (hyper's, towards the client and to HTTP/2 backends) then send it as a
/// never-indexed literal. Indexed, every response inserted one more id into the connection's
/// table, evicting useful entries, and the encoder walked the chain of all ids still there
/// (about 50 in a 4 KiB table) comparing values: 12% of Sluice's instructions per request
/// under HTTP/2. Only HPACK reads the flag (and `Debug`, which prints `Sensitive`).
fn request_id(client: &HeaderMap) -> HeaderValue {
    let mut id = match client.get(&X_REQUEST_ID) {
        Some(existing)
            if !existing.is_empty()
                && existing.len() <= 128
                && existing.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            existing.clone()
        }
        _ => {
            let mut id = [0u8; 32];
            let mut bits = fastrand::u128(..);
            for digit in id.iter_mut().rev() {
                *digit = b"0123456789abcdef"[(bits & 0xf) as usize];
                bits >>= 4;
            }
            HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
        }
    };
    id.set_sensitive(true);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hop-by-hop fields of a client message: fixed ones, one its `Connection` names, and
    /// `TE: trailers`, which goes on.
    const HOP_BY_HOP_FIELDS: &[(&str, &str)] = &[
        ("connection", "keep-alive, x-secret"),
        ("x-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("te", "trailers"),
        ("upgrade", "websocket"),
    ];

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut headers = map(HOP_BY_HOP_FIELDS);
        headers.append("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);
        let mut gzip = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut gzip);
        assert!(gzip.is_empty());
        // `close` is an option, not a field; other names in the same list still go.
        let mut closing = map(&[("connection", "close, X-Hop"), ("x-hop", "1"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut closing);
        assert_eq!(closing.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        // Nothing hop-by-hop: nothing changes.
        let mut plain = map(&[("host", "a"), ("x-kept", "yes"), ("x-kept", "twice")]);
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 3);
    }

    fn upstream(client: &HeaderMap, forwarded: &Forwarded, host: &str) -> HeaderMap {
        UpstreamHeaders::new(client, forwarded, host, None).to_map()
    }

    #[test]
    fn configured_changes_replace_remove_and_add_client_and_forwarding_fields() {
        use crate::config::{HeaderField, HeaderOpsConfig};
        let field = |name: &str, value: &str| HeaderField { name: name.into(), value: value.into() };
        let config = HeaderOpsConfig {
            set: vec![
                field("Host", "internal.svc"),
                field("X-Forwarded-Prefix", "/api"),
                field("x-real-ip", "set"),
            ],
            add: vec![field("x-tag", "added")],
            remove: vec!["x-secret".into(), "x-forwarded-port".into()],
        };
        let changes =
            HeaderOps::compile(&[(Some(&config), "r".into())], crate::proxy::header_ops::Direction::Request)
                .unwrap()
                .unwrap();
        let client =
            map(&[("host", "a.test"), ("x-secret", "s"), ("x-tag", "client"), ("x-forwarded-prefix", "/x")]);
        let forwarded = Forwarded::new("192.0.2.1:1".parse().unwrap(), "http", 80);
        let out =
            UpstreamHeaders::new(&client, &forwarded, "a.test", None).with_changes(Some(&changes)).to_map();
        assert_eq!(out.get_all("host").iter().collect::<Vec<_>>(), ["internal.svc"]);
        assert_eq!(out["x-forwarded-host"], "a.test", "the client's host is still forwarded");
        assert_eq!(out.get_all("x-forwarded-prefix").iter().collect::<Vec<_>>(), ["/api"]);
        assert_eq!(out.get_all("x-real-ip").iter().collect::<Vec<_>>(), ["set"]);
        assert_eq!(out.get_all("x-tag").iter().collect::<Vec<_>>(), ["client", "added"]);
        assert!(out.get("x-secret").is_none() && out.get("x-forwarded-port").is_none());
        assert_eq!(out["x-forwarded-for"], "192.0.2.1");
    }

    #[test]
    fn forwarding_headers_are_this_hops_unless_a_trusted_proxy_sent_them() {
        let sent = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-host", "edge.test"),
        ]);
        let connection = Forwarded::new("10.0.0.5:1".parse().unwrap(), "http", 80);
        // By default the client's X-Forwarded-For is replaced, as ingress-nginx does.
        let out = upstream(&sent, &connection, "a.test");
        assert_eq!(out.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["10.0.0.5"]);
        assert_eq!(
            (out["x-forwarded-proto"].as_bytes(), out["x-forwarded-host"].as_bytes()),
            (&b"http"[..], &b"a.test"[..])
        );
        // In full mode the peer is appended to the client's hops.
        let full = connection.clone().with_full_forwarded_for(true);
        assert_eq!(upstream(&sent, &full, "a.test")["x-forwarded-for"], "203.0.113.9, 10.0.0.5");
        assert_eq!(upstream(&HeaderMap::new(), &full, "a.test")["x-forwarded-for"], "10.0.0.5");
        // From a trusted proxy: the real client everywhere, the proxy's values passed on.
        let trusted = connection.behind_proxy("203.0.113.9".parse().unwrap(), true);
        assert_eq!(
            (trusted.proxy_scheme(&sent), connection.proxy_scheme(&sent)),
            (Some(&b"https"[..]), None)
        );
        let out = upstream(&sent, &trusted, "a.test");
        assert_eq!(out.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["203.0.113.9"]);
        assert_eq!(out["x-real-ip"], "203.0.113.9");
        for (name, value) in
            [("x-forwarded-proto", "https"), ("x-forwarded-port", "443"), ("x-forwarded-host", "edge.test")]
        {
            assert_eq!(out.get_all(name).iter().collect::<Vec<_>>(), [value], "{name}");
        }
        // A trusted proxy that sent none gets this hop's.
        let out = upstream(&map(&[("host", "a.test")]), &trusted, "a.test");
        assert_eq!(
            (out["x-forwarded-proto"].as_bytes(), out["x-forwarded-port"].as_bytes()),
            (&b"http"[..], &b"80"[..])
        );
        // enable-real-ip: the address only.
        let real_ip_only = connection.behind_proxy("203.0.113.9".parse().unwrap(), false);
        let out = upstream(&sent, &real_ip_only, "a.test");
        assert_eq!(
            (out["x-real-ip"].as_bytes(), out["x-forwarded-proto"].as_bytes()),
            (&b"203.0.113.9"[..], &b"http"[..])
        );
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let headers = map(&[("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https")]);
        let client = "[::ffff:198.18.0.1]:5000".parse().unwrap();
        let forwarded = Forwarded::new(client, "http", 8080).with_full_forwarded_for(true);
        let headers = upstream(&headers, &forwarded, "a.test");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 198.18.0.1");
        assert_eq!(headers["x-real-ip"], "198.18.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "a.test");
        assert_eq!(headers["x-forwarded-port"], "8080");
        assert_eq!(headers["host"], "a.test");
        assert_eq!(headers.get_all("x-forwarded-proto").iter().count(), 1, "the client's value is replaced");
        // Without an incoming X-Forwarded-For, the client is the only hop; an existing Host stays.
        let headers = map(&[("host", "b.test:8080")]);
        let headers =
            upstream(&headers, &Forwarded::new("192.0.2.7:1".parse().unwrap(), "https", 443), "b.test:8080");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-host"], "b.test:8080");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-port"], "443");
        assert_eq!(headers.get_all("host").iter().count(), 1);
        // No host at all: the client's X-Forwarded-Host is all there is, and stays.
        let headers = map(&[("x-forwarded-host", "edge.test")]);
        let headers = upstream(&headers, &Forwarded::new("192.0.2.7:1".parse().unwrap(), "http", 80), "");
        assert_eq!(headers["x-forwarded-host"], "edge.test");
        assert!(headers.get("host").is_none());
    }

    #[test]
    fn upstream_requests_lose_hop_by_hop_fields_and_expect() {
        let client = map(&[
            &[("host", "a.test")],
            HOP_BY_HOP_FIELDS,
            &[("expect", "100-continue"), ("x-kept", "yes"), ("x-kept", "twice")],
        ]
        .concat());
        let forwarded = Forwarded::new("192.0.2.7:1".parse().unwrap(), "http", 80);
        let headers = UpstreamHeaders::new(&client, &forwarded, "a.test", None);
        let map = headers.to_map();
        for gone in ["connection", "x-secret", "keep-alive", "transfer-encoding", "upgrade", "expect"] {
            assert!(map.get(gone).is_none(), "{gone} is not forwarded: {map:?}");
        }
        assert_eq!(map["te"], "trailers");
        assert_eq!(map.get_all("x-kept").iter().collect::<Vec<_>>(), ["yes", "twice"]);
        assert!(!headers.has(&UPGRADE) && headers.has(&HOST));
        // The order on the wire: the client's kept fields first, then this hop's.
        let mut names = Vec::new();
        headers.for_each(|name, _| names.push(name.as_str().to_owned()));
        assert_eq!(names[..3], ["host", "x-kept", "x-kept"]);
        // An accepted upgrade request carries its own Connection and Upgrade.
        let upgrading =
            UpstreamHeaders::new(&client, &forwarded, "a.test", Some(HeaderValue::from_static("websocket")));
        let map = upgrading.to_map();
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let forwarded = Forwarded::new("192.0.2.7:1".parse().unwrap(), "http", 80);
        let client = map(&[("x-request-id", "abc-123")]);
        let headers = UpstreamHeaders::new(&client, &forwarded, "", None);
        assert_eq!(headers.request_id(), "abc-123");
        assert_eq!(headers.to_map().get_all("x-request-id").iter().count(), 1);
        let client = map(&[("x-request-id", "")]);
        let headers = UpstreamHeaders::new(&client, &forwarded, "", None);
        assert_eq!(headers.request_id().len(), 32);
        // Never indexed by HPACK (one value per request).
        assert!(headers.request_id().is_sensitive());
        assert_eq!(headers.to_map()["x-request-id"], headers.request_id());
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        assert_eq!(
            upgrade_request(&map(&[("connection", "Upgrade"), ("upgrade", "websocket")])).unwrap(),
            "websocket"
        );
        assert!(upgrade_request(&map(&[("upgrade", "websocket")])).is_none());
    }
}
