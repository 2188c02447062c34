//! The real client address of a request behind trusted proxies, as nginx's realip module finds
//! it with `real_ip_recursive on`: starting from the connection's peer, while the address in
//! hand is a trusted proxy, step to the next address leftwards in the client address header;
//! the first address that is not a trusted proxy is the client (all trusted: the leftmost).
//! An entry that is not an address stops the walk at the last good one.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName};

use crate::config::ForwardedConfig;

/// The client address for a request that came from `peer`, or `None` when `peer`'s headers
/// are not believed (then the peer is the client). Allocates nothing.
pub fn from_headers(peer: IpAddr, headers: &HeaderMap, config: &ForwardedConfig) -> Option<IpAddr> {
    if !config.trusts(peer) {
        return None;
    }
    let name = HeaderName::from_bytes(config.forwarded_for_header.as_bytes()).ok()?;
    let trusted = |ip: IpAddr| config.trusted_proxies.iter().any(|cidr| cidr.contains(ip));
    let mut candidate = peer;
    // Repeated header lines are one list (RFC 9110 5.3): the last line holds the nearest hops.
    for line in headers.get_all(&name).iter().rev() {
        let Ok(line) = line.to_str() else { return Some(candidate) };
        for entry in line.rsplit(',') {
            if !trusted(candidate) {
                return Some(candidate);
            }
            match parse_entry(entry.trim()) {
                Some(ip) => candidate = ip,
                None => return Some(candidate),
            }
        }
    }
    Some(candidate)
}

/// One X-Forwarded-For entry: an address, maybe bracketed or with a port (`[2001:db8::1]:443`,
/// `192.0.2.1:5000`, which some balancers send).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(inner) = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<IpAddr>()
    {
        return Some(ip.to_canonical());
    }
    entry.parse::<SocketAddr>().ok().map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn config(trusted: &[&str]) -> ForwardedConfig {
        ForwardedConfig {
            trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect(),
            use_forwarded_headers: true,
            ..Default::default()
        }
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let lb = config(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.5");
        // The client may prepend anything: only what trusted hops appended counts.
        let h = headers(&["6.6.6.6, 203.0.113.7, 10.1.1.1"]);
        assert_eq!(from_headers(peer, &h, &lb), Some(ip("203.0.113.7")));
        // Repeated lines are one list.
        let h = headers(&["6.6.6.6", "203.0.113.7", "10.1.1.1, 10.2.2.2"]);
        assert_eq!(from_headers(peer, &h, &lb), Some(ip("203.0.113.7")));
        // Every hop trusted: the leftmost.
        assert_eq!(from_headers(peer, &headers(&["10.9.9.9, 10.1.1.1"]), &lb), Some(ip("10.9.9.9")));
        // No header: the peer.
        assert_eq!(from_headers(peer, &HeaderMap::new(), &lb), Some(peer));
        // Garbage stops the walk at the last good address.
        assert_eq!(from_headers(peer, &headers(&["203.0.113.7, junk, 10.1.1.1"]), &lb), Some(ip("10.1.1.1")));
        assert_eq!(from_headers(peer, &headers(&["nope"]), &lb), Some(peer));
    }

    #[test]
    fn an_untrusted_peer_or_a_disabled_setting_believes_nothing() {
        let h = headers(&["203.0.113.7"]);
        assert_eq!(from_headers(ip("192.0.2.1"), &h, &config(&["10.0.0.0/8"])), None);
        let off = ForwardedConfig { use_forwarded_headers: false, ..config(&["0.0.0.0/0"]) };
        assert_eq!(from_headers(ip("10.0.0.5"), &h, &off), None);
        let real_ip_only = ForwardedConfig { real_ip_from_header: true, ..off };
        assert_eq!(from_headers(ip("10.0.0.5"), &h, &real_ip_only), Some(ip("203.0.113.7")));
    }

    #[test]
    fn entries_with_ports_brackets_and_mapped_addresses_parse() {
        let lb = config(&["0.0.0.0/0", "::/0"]);
        let peer = ip("10.0.0.5");
        for (entry, want) in [
            ("192.0.2.1:5000", "192.0.2.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("::ffff:192.0.2.9", "192.0.2.9"),
        ] {
            // With every address trusted the walk ends at the leftmost entry.
            assert_eq!(from_headers(peer, &headers(&[entry]), &lb), Some(ip(want)), "{entry}");
        }
        // Another header name, as forwarded-for-header sets it.
        let mut custom = config(&["10.0.0.0/8"]);
        custom.forwarded_for_header = "X-Original-Forwarded-For".into();
        let mut h = HeaderMap::new();
        h.insert("x-original-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        assert_eq!(from_headers(peer, &h, &custom), Some(ip("203.0.113.7")));
    }
}
