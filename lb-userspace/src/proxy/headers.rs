//! Header handling between client and upstream: hop-by-hop headers stripped (RFC 9110 7.6.1),
//! forwarding headers added the way ingress-nginx sets them, and request ids.

use std::net::SocketAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE},
};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers every message loses, whether or not `Connection` names them.
static FIXED_HOP_BY_HOP: [&HeaderName; 6] =
    [&CONNECTION, &KEEP_ALIVE, &PROXY_CONNECTION, &TRANSFER_ENCODING, &UPGRADE, &TE];

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
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // The usual options; `keep-alive` is in the fixed set, `close` names no field.
        .filter(|token| !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| !FIXED_HOP_BY_HOP.contains(&name))
        .collect();
    for name in named {
        headers.remove(&name);
    }
    let te_trailers = headers.get(TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
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
/// request on a connection, so they are made once, when it is accepted.
#[derive(Clone, Debug)]
pub struct Forwarded {
    client_ip: HeaderValue,
    scheme: HeaderValue,
    port: HeaderValue,
}

impl Forwarded {
    pub fn new(client: SocketAddr, scheme: &'static str, port: u16) -> Forwarded {
        let client_ip = client.ip().to_canonical().to_string();
        Forwarded {
            client_ip: HeaderValue::from_str(&client_ip).expect("an IP address is a valid header value"),
            scheme: HeaderValue::from_static(scheme),
            port: HeaderValue::from(port),
        }
    }
}

/// Adds X-Forwarded-For (appended), X-Real-IP, X-Forwarded-Proto/-Host/-Port (set), and makes
/// sure a Host header exists (HTTP/2 clients send `:authority` instead).
pub fn add_forwarding(headers: &mut HeaderMap, forwarded: &Forwarded, host: &str) {
    // One lookup per name: `entry` finds the slot that an insert would hash for again.
    match headers.entry(&X_FORWARDED_FOR) {
        http::header::Entry::Vacant(slot) => {
            slot.insert(forwarded.client_ip.clone());
        }
        http::header::Entry::Occupied(mut slot) => {
            // Repeated header lines are one comma-separated list (RFC 9110 5.3): keep every hop.
            let mut hops: Vec<&[u8]> = slot.iter().map(HeaderValue::as_bytes).collect();
            hops.push(forwarded.client_ip.as_bytes());
            if let Ok(xff) = HeaderValue::from_bytes(&hops.join(&b", "[..])) {
                slot.insert(xff);
            }
        }
    }
    headers.insert(X_REAL_IP.clone(), forwarded.client_ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), forwarded.scheme.clone());
    headers.insert(X_FORWARDED_PORT.clone(), forwarded.port.clone());
    // The Host header's own value when that is where the host came from (no copy).
    let host_value = match headers.entry(HOST) {
        http::header::Entry::Occupied(slot) if slot.get().as_bytes() == host.as_bytes() => {
            Some(slot.get().clone())
        }
        http::header::Entry::Occupied(_) if host.is_empty() => None,
        http::header::Entry::Occupied(_) => HeaderValue::from_str(host).ok(),
        http::header::Entry::Vacant(_) if host.is_empty() => None,
        http::header::Entry::Vacant(slot) => HeaderValue::from_str(host).ok().inspect(|value| {
            slot.insert(value.clone());
        }),
    };
    if let Some(host_value) = host_value {
        headers.insert(X_FORWARDED_HOST.clone(), host_value);
    }
}

/// Keeps a client's X-Request-ID when it is sane, otherwise makes one (32 hex digits).
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(existing) = headers.get(&X_REQUEST_ID)
        && !existing.is_empty()
        && existing.len() <= 128
        && existing.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return existing.clone();
    }
    let mut id = [0u8; 32];
    let mut bits = fastrand::u128(..);
    for digit in id.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(bits & 0xf) as usize];
        bits >>= 4;
    }
    let value = HeaderValue::from_bytes(&id).expect("hex digits are a valid header value");
    headers.insert(X_REQUEST_ID.clone(), value.clone());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
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

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut headers = map(&[("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https")]);
        let client = "[::ffff:198.18.0.1]:5000".parse().unwrap();
        add_forwarding(&mut headers, &Forwarded::new(client, "http", 8080), "a.test");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 198.18.0.1");
        assert_eq!(headers["x-real-ip"], "198.18.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "a.test");
        assert_eq!(headers["x-forwarded-port"], "8080");
        assert_eq!(headers["host"], "a.test");
        // Without an incoming X-Forwarded-For, the client is the only hop; an existing Host stays.
        let mut headers = map(&[("host", "b.test:8080")]);
        add_forwarding(
            &mut headers,
            &Forwarded::new("192.0.2.7:1".parse().unwrap(), "https", 443),
            "b.test:8080",
        );
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-host"], "b.test:8080");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-port"], "443");
        assert_eq!(headers.get_all("host").iter().count(), 1);
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut headers = map(&[("x-request-id", "abc-123")]);
        assert_eq!(ensure_request_id(&mut headers), "abc-123");
        let mut headers = map(&[("x-request-id", "")]);
        let made = ensure_request_id(&mut headers);
        assert_eq!(made.len(), 32);
        assert_eq!(headers["x-request-id"], made);
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
