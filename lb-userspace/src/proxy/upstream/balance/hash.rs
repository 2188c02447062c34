//! Consistent hashing on a Maglev table: the request's key (a header, a cookie, the client
//! address or an ingress-nginx `upstream-hash-by` template) under a fixed hash picks a slot,
//! and a missing endpoint's keys spread over the others while every other key stays put.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::HeaderMap;

use crate::{
    config::HashOn,
    maglev::{MaglevEntry, build_table},
    numeric::{FNV1A_64_START, fnv1a_64},
    proxy::upstream::endpoint::Endpoint,
};

/// Consistent-hash table sizes, all prime as Maglev requires (the builder panics otherwise;
/// a test checks each), in coarse tiers: the smallest with at least [`SLOTS_PER_ENDPOINT`]
/// slots per endpoint. Maglev's balance and minimal-disruption bounds need a table much larger
/// than the endpoint count (the paper suggests over 100x). The tiers are few and far apart on
/// purpose: a table of another size maps every key afresh, so scaling a group must not cross
/// a tier in its everyday range (1 to 64 endpoints share one size).
pub(super) const HASH_TABLE_SIZES: [u32; 3] = [16_381, 262_139, 1_048_573];
const SLOTS_PER_ENDPOINT: u64 = 255;

/// Rehash probes a consistent-hash fallback tries before walking the table.
const FALLBACK_PROBES: usize = 16;

/// The Maglev table of endpoint indices, empty when no endpoint has a weight.
///
/// Each endpoint's place in the table derives from a fixed hash of its address alone, so
/// every worker, every node and every restart builds the same table from the same endpoints
/// (whatever their order), and a client pinned to an endpoint stays on it whichever load
/// balancer instance receives it. Maglev also keeps a removed endpoint's loss from moving
/// the keys of the others (beyond about 1%).
pub(super) fn hash_table(endpoints: &[Arc<Endpoint>], weights: &[u32]) -> Box<[u32]> {
    if weights.iter().all(|&weight| weight == 0) {
        return Box::new([]);
    }
    let entries: Vec<MaglevEntry> = endpoints
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(index, (endpoint, &weight))| MaglevEntry {
            key: address_hash(endpoint.address),
            // Maglev reserves 0 for an empty slot, so values are indices + 1.
            value: u32::try_from(index + 1).expect("fewer than 2^32 endpoints"),
            weight,
        })
        .collect();
    let wanted = endpoints.len() as u64 * SLOTS_PER_ENDPOINT;
    let size = HASH_TABLE_SIZES
        .into_iter()
        .find(|&size| u64::from(size) >= wanted)
        .unwrap_or(HASH_TABLE_SIZES[HASH_TABLE_SIZES.len() - 1]);
    // Every slot is owned since some endpoint has a weight, so `value - 1` cannot underflow.
    build_table(&entries, size).into_iter().map(|value| value - 1).collect()
}

/// The endpoint owning `key`'s slot; when it is unavailable or excluded, the next endpoint
/// found walking forward from that slot. The walk depends only on the key and the table, so
/// the fallback is consistent too: a key keeps its fallback endpoint while its own is out,
/// and keys whose endpoint is fine do not move at all. Maglev interleaves the endpoints'
/// slots, so the displaced keys spread over all the others rather than landing on one.
pub(super) fn hash_pick(
    table: &[u32],
    key: u64,
    eligible: impl Fn(usize) -> bool,
    any_eligible: impl Fn() -> bool,
) -> Option<usize> {
    let size = table.len();
    if size == 0 {
        return None;
    }
    // Multiply-high maps the key onto the table using its high bits, without a division.
    let start = ((u128::from(key) * size as u128) >> 64) as usize;
    let owner = table[start] as usize;
    if eligible(owner) {
        return Some(owner);
    }
    if !any_eligible() {
        return None; // rather than walking the whole table for nothing
    }
    // Rehash the key a few times: each probe lands on a uniformly random slot, so a missing
    // endpoint's keys spread evenly over the others, and the same key always probes the same
    // slots, so its fallback is consistent.
    let mut probe = key;
    for _ in 0..FALLBACK_PROBES {
        probe = splitmix64(probe);
        let candidate = table[((u128::from(probe) * size as u128) >> 64) as usize] as usize;
        if eligible(candidate) {
            return Some(candidate);
        }
    }
    // Almost everything is out: walk the table for whatever is left.
    let mut rejected = owner;
    for step in 1..size {
        let candidate = table[(start + step) % size] as usize;
        // Runs of one endpoint are common; its verdict is already known.
        if candidate == rejected {
            continue;
        }
        if eligible(candidate) {
            return Some(candidate);
        }
        rejected = candidate;
    }
    None
}

/// The key for consistent hashing, from the request: the header's value, the cookie's value,
/// or the client's IP. `None` when the header or cookie is absent, or empty: an empty value
/// identifies nobody, and hashing it would pin every such client to one endpoint.
///
/// With a repeated header the first value counts; with a repeated cookie, the first one
/// across all `Cookie` headers (HTTP/2 clients may split cookies into several). The hash is
/// fixed (see [`stable_hash`]), so every worker and node maps a client the same way.
pub fn hash_key(on: &HashOn, headers: &HeaderMap, client: IpAddr, uri: &http::Uri) -> Option<u64> {
    let value = match on {
        HashOn::Header(name) => headers.get(name.as_str())?.as_bytes(),
        HashOn::Cookie(name) => cookie(headers, name.as_bytes())?,
        HashOn::ClientIp => return Some(ip_hash(client)),
        HashOn::Template(template) => return template_hash(template, headers, client, uri),
    };
    (!value.is_empty()).then(|| stable_hash(value))
}

/// Hashes an ingress-nginx `upstream-hash-by` template: literal text and `$variables`, fed
/// piece by piece into one hash (no string is built). `None` when every variable is empty, so
/// requests without a key fall back to round robin instead of sharing one endpoint.
fn template_hash(template: &str, headers: &HeaderMap, client: IpAddr, uri: &http::Uri) -> Option<u64> {
    let mut state = FNV1A_64_START;
    let mut any = false;
    let mut rest = template.as_bytes();
    while !rest.is_empty() {
        let Some(dollar) = rest.iter().position(|&b| b == b'$') else {
            state = fnv1a_64(state, rest);
            break;
        };
        state = fnv1a_64(state, &rest[..dollar]);
        let name_len =
            rest[dollar + 1..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
        let name = &rest[dollar + 1..dollar + 1 + name_len];
        rest = &rest[dollar + 1 + name_len..];
        let value: &[u8] = match name {
            b"remote_addr" => {
                any = true;
                state = fnv1a_64(state, &ip_hash(client).to_le_bytes());
                continue;
            }
            b"request_uri" => uri.path_and_query().map(|p| p.as_str().as_bytes()).unwrap_or(b"/"),
            b"uri" => uri.path().as_bytes(),
            b"args" => uri.query().unwrap_or("").as_bytes(),
            b"host" => headers.get(http::header::HOST).map(|h| h.as_bytes()).unwrap_or(b""),
            _ => {
                if let Some(header) = name.strip_prefix(b"http_") {
                    header_by_variable(headers, header).unwrap_or(b"")
                } else if let Some(cookie_name) = name.strip_prefix(b"cookie_") {
                    cookie(headers, cookie_name).unwrap_or(b"")
                } else {
                    b""
                }
            }
        };
        any |= !value.is_empty();
        state = fnv1a_64(state, value);
    }
    any.then(|| splitmix64(state))
}

/// The header nginx's `$http_<name>` names: lower case, `_` for `-`.
fn header_by_variable<'a>(headers: &'a HeaderMap, variable: &[u8]) -> Option<&'a [u8]> {
    headers.iter().find_map(|(name, value)| {
        let name = name.as_str().as_bytes();
        (name.len() == variable.len()
            && name.iter().zip(variable).all(|(a, b)| a == b || (*a == b'-' && *b == b'_')))
        .then(|| value.as_bytes())
    })
}

/// The value of cookie `name`, read straight from the `Cookie` headers (RFC 6265 section 5.4:
/// `name=value` pairs separated by `;`), without building a map or allocating. Names are
/// case-sensitive; a quoted value loses its quotes (they are not part of it, section 4.1.1).
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &[u8]) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|header| {
        header.as_bytes().split(|&byte| byte == b';').find_map(|pair| {
            let (key, value) = pair.split_at(pair.iter().position(|&byte| byte == b'=')?);
            (key.trim_ascii() == name).then(|| {
                let value = value[1..].trim_ascii();
                value.strip_prefix(b"\"").and_then(|value| value.strip_suffix(b"\"")).unwrap_or(value)
            })
        })
    })
}

/// Hash of a client address. IPv4-mapped IPv6 addresses (what a dual-stack listener reports
/// for IPv4 clients) hash like the IPv4 address, so a client keeps its endpoint whichever
/// listener it reached.
pub(super) fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(ip) => stable_hash(&ip.octets()),
        IpAddr::V6(ip) => stable_hash(&ip.octets()),
    }
}

/// Maglev key of an endpoint: its address's octets, then its port (big endian).
pub(super) fn address_hash(address: SocketAddr) -> u64 {
    let state = match address.ip().to_canonical() {
        IpAddr::V4(ip) => fnv1a_64(FNV1A_64_START, &ip.octets()),
        IpAddr::V6(ip) => fnv1a_64(FNV1A_64_START, &ip.octets()),
    };
    splitmix64(fnv1a_64(state, &address.port().to_be_bytes()))
}

/// A hash that is the same on every machine, process and version, unlike `std`'s randomly
/// keyed `RandomState`: FNV-1a, then SplitMix64's finaliser. FNV-1a alone mixes its last
/// bytes poorly into the high bits, which the table lookup uses.
///
/// Changing it moves every hashed client to another endpoint, so tests pin it.
pub(super) fn stable_hash(bytes: &[u8]) -> u64 {
    splitmix64(fnv1a_64(FNV1A_64_START, bytes))
}

/// SplitMix64 (Steele, Lea and Flood, OOPSLA 2014): a bijective, well-avalanching mixer
/// defined by integer arithmetic alone.
pub(super) fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
