//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a TCP load balancer puts
//! in front of each connection to name the client. Parsed strictly: anything that is not a
//! complete, valid header closes the connection (counted), because a listener that expects
//! one must never take a client's own bytes for it.
//!
//! The header is consumed exactly (peeked, then read to its length), so what follows (a TLS
//! ClientHello, an HTTP request) is left to the next reader untouched.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::config::ProxyProtocolVersion;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted: addresses plus room for the TLVs balancers add (AWS's VPC
/// endpoint id, Azure's link id, TLS details); more is refused rather than buffered.
const V2_MAX: usize = 16 + 2048;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address; `None` for `UNKNOWN` (v1), `LOCAL` or an address family other
    /// than TCP over IPv4/IPv6 (v2): then the connection's own peer is the client, as the
    /// spec says.
    pub source: Option<SocketAddr>,
    /// The header's length in bytes.
    pub len: usize,
}

/// Why a connection's first bytes are not a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a PROXY protocol header")]
    Signature,
    #[error("malformed PROXY protocol v1 line")]
    V1,
    #[error("malformed PROXY protocol v2 header")]
    V2,
    #[error("PROXY protocol header too long")]
    TooLong,
    #[error("connection closed before a complete PROXY protocol header")]
    Closed,
    #[error("no complete PROXY protocol header in time")]
    Timeout,
}

impl Invalid {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Timeout => "timeout",
            Invalid::Closed => "closed",
            _ => "invalid",
        }
    }
}

/// Parses the start of a connection: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    let prefix = buf.len().min(V2_SIGNATURE.len());
    if buf[..prefix] == V2_SIGNATURE[..prefix] {
        return if prefix < V2_SIGNATURE.len() { Ok(None) } else { parse_v2(buf) };
    }
    let prefix = buf.len().min(6);
    if buf[..prefix] != b"PROXY "[..prefix] {
        return Err(Invalid::Signature);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX { Err(Invalid::TooLong) } else { Ok(None) };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(Invalid::TooLong);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| Invalid::V1)?;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        // The rest of an UNKNOWN line is to be ignored.
        ["PROXY", "UNKNOWN", ..] => Ok(Some(Header { source: None, len })),
        ["PROXY", family @ ("TCP4" | "TCP6"), source, destination, source_port, destination_port] => {
            let source: IpAddr = source.parse().map_err(|_| Invalid::V1)?;
            let destination: IpAddr = destination.parse().map_err(|_| Invalid::V1)?;
            let v4 = *family == "TCP4";
            if source.is_ipv4() != v4 || destination.is_ipv4() != v4 {
                return Err(Invalid::V1);
            }
            let port = |p: &str| {
                // Decimal, no sign, no leading zero (the spec's grammar).
                let canonical = !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0'));
                canonical.then(|| p.parse::<u16>().ok()).flatten().ok_or(Invalid::V1)
            };
            let source_port = port(source_port)?;
            port(destination_port)?;
            Ok(Some(Header { source: Some(SocketAddr::new(source, source_port)), len }))
        }
        _ => Err(Invalid::V1),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(Invalid::V2);
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Invalid::V2),
    };
    let family = buf[13];
    let address_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + address_len;
    if len > V2_MAX {
        return Err(Invalid::TooLong);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let block = &buf[16..len];
    if local {
        return Ok(Some(Header { source: None, len }));
    }
    let source = match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let bytes: [u8; 12] = block.get(..12).and_then(|b| b.try_into().ok()).ok_or(Invalid::V2)?;
            let ip = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([bytes[8], bytes[9]])))
        }
        0x21 => {
            let bytes: [u8; 36] = block.get(..36).and_then(|b| b.try_into().ok()).ok_or(Invalid::V2)?;
            let octets: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be_bytes([bytes[32], bytes[33]])))
        }
        // UNSPEC, UDP, UNIX: nothing Sluice can use; the connection's peer stands.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => None,
        _ => return Err(Invalid::V2),
    };
    Ok(Some(Header { source, len }))
}

/// The header Sluice sends ahead of a connection it relays (TLS passthrough): `source` is the
/// client, `destination` the address it connected to. IPv4-mapped IPv6 addresses are written
/// as IPv4; when the two families still differ the header says so without addresses (v1
/// `UNKNOWN`, v2 `AF_UNSPEC`), which the spec tells the receiver to treat as its own peer.
pub fn encode(version: ProxyProtocolVersion, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (source, destination) = (canonical(source), canonical(destination));
    match version {
        ProxyProtocolVersion::V1 => match (source, destination) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                format!("PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                format!("PROXY TCP6 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
            }
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        ProxyProtocolVersion::V2 => {
            let mut header = V2_SIGNATURE.to_vec();
            // Version 2, command PROXY.
            header.push(0x21);
            let (family, block) = match (source, destination) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => (
                    0x11,
                    [
                        &s.ip().octets()[..],
                        &d.ip().octets(),
                        &s.port().to_be_bytes(),
                        &d.port().to_be_bytes(),
                    ]
                    .concat(),
                ),
                (SocketAddr::V6(s), SocketAddr::V6(d)) => (
                    0x21,
                    [
                        &s.ip().octets()[..],
                        &d.ip().octets(),
                        &s.port().to_be_bytes(),
                        &d.port().to_be_bytes(),
                    ]
                    .concat(),
                ),
                _ => (0x00, Vec::new()),
            };
            header.push(family);
            header.extend_from_slice(&(block.len() as u16).to_be_bytes());
            header.extend_from_slice(&block);
            header
        }
    }
}

/// Reads the header at the start of `stream` within `limit`, leaving every byte after it.
pub async fn read(stream: &mut TcpStream, limit: Duration) -> Result<Header, Invalid> {
    tokio::time::timeout(limit, read_header(stream)).await.unwrap_or(Err(Invalid::Timeout))
}

async fn read_header(stream: &mut TcpStream) -> Result<Header, Invalid> {
    let mut buf = [0u8; V2_MAX];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| Invalid::Closed)?;
        if n == 0 {
            return Err(Invalid::Closed);
        }
        if let Some(header) = parse(&buf[..n])? {
            stream.read_exact(&mut buf[..header.len]).await.map_err(|_| Invalid::Closed)?;
            return Ok(header);
        }
        if n == seen {
            // The header came in pieces (balancers send it in one write, so this is rare):
            // peeked bytes keep the socket readable, so wait a little for the rest.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(block.len() as u16).to_be_bytes());
        header.extend_from_slice(block);
        header
    }

    #[test]
    fn encoded_headers_parse_back_to_the_client() {
        let cases: [(&str, &str); 4] = [
            ("203.0.113.7:40000", "198.18.0.2:443"),
            ("[2001:db8::7]:1", "[2001:db8::2]:8443"),
            // A dual-stack listener sees IPv4 clients as mapped addresses.
            ("[::ffff:203.0.113.9]:5", "[::ffff:198.18.0.2]:443"),
            ("203.0.113.7:40000", "[2001:db8::2]:443"),
        ];
        for version in [ProxyProtocolVersion::V1, ProxyProtocolVersion::V2] {
            for (source, destination) in cases {
                let (source, destination) = (source.parse().unwrap(), destination.parse().unwrap());
                let bytes = encode(version, source, destination);
                let header = parse(&bytes).unwrap().unwrap();
                assert_eq!(header.len, bytes.len(), "{version:?} {source} {destination}");
                let expected = match (source.ip().to_canonical(), destination.ip().to_canonical()) {
                    (IpAddr::V4(_), IpAddr::V6(_)) => None,
                    (ip, _) => Some(SocketAddr::new(ip, source.port())),
                };
                assert_eq!(header.source, expected, "{version:?} {source} {destination}");
            }
        }
        let line = encode(
            ProxyProtocolVersion::V1,
            "203.0.113.7:40000".parse().unwrap(),
            "198.18.0.2:443".parse().unwrap(),
        );
        assert_eq!(line, b"PROXY TCP4 203.0.113.7 198.18.0.2 40000 443\r\n");
    }

    #[test]
    fn v1_lines_parse_and_leave_what_follows() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let header = parse(line).unwrap().unwrap();
        assert_eq!(header.source, Some("203.0.113.7:56324".parse().unwrap()));
        assert_eq!(&line[header.len..], b"GET / HTTP/1.1\r\n");
        let six = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n").unwrap().unwrap();
        assert_eq!(six.source, Some("[2001:db8::7]:1".parse().unwrap()));
        let unknown = parse(b"PROXY UNKNOWN ffff::1 whatever\r\n").unwrap().unwrap();
        assert_eq!((unknown.source, unknown.len), (None, 32));
        // Pieces: more is needed, not an error.
        for cut in [1, 5, 6, 20, 42] {
            assert_eq!(parse(&line[..cut]), Ok(None), "{cut}");
        }
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",
            b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",
            b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 056324 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 443\r\n",
            b"PROXY TCP4  203.0.113.7 192.0.2.1 1 443\r\n",
            b"PROXY UDP4 203.0.113.7 192.0.2.1 1 443\r\n",
            b"PROXY TCP4 203.0.113.777 192.0.2.1 1 443\r\n",
            b"proxy TCP4 203.0.113.7 192.0.2.1 1 443\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(parse(&long), Err(Invalid::TooLong));
    }

    #[test]
    fn v2_headers_parse_with_tlvs_and_local_commands() {
        let mut block = vec![203, 0, 113, 7, 192, 0, 2, 1];
        block.extend_from_slice(&56324u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        // A TLV (AWS's VPC endpoint id) after the addresses.
        block.extend_from_slice(&[0xEA, 0x00, 0x04, 1, b'v', b'p', b'c']);
        let mut bytes = v2(1, 0x11, &block);
        let len = bytes.len();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let header = parse(&bytes).unwrap().unwrap();
        assert_eq!((header.source, header.len), (Some("203.0.113.7:56324".parse().unwrap()), len));
        for cut in [1, 11, 12, 15, 16, len - 1] {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "{cut}");
        }
        let mut six = [0u8; 36];
        six[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        six[32..34].copy_from_slice(&8080u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &six)).unwrap().unwrap().source,
            Some("[2001:db8::7]:8080".parse().unwrap())
        );
        // LOCAL (the balancer's own health check) and UNSPEC carry no client.
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().source, None);
        assert_eq!(parse(&v2(1, 0x00, &[])).unwrap().unwrap().source, None);
    }

    #[test]
    fn malformed_v2_headers_are_refused() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert_eq!(parse(&wrong_version), Err(Invalid::V2));
        assert_eq!(parse(&v2(2, 0x11, &[0; 12])), Err(Invalid::V2), "an unknown command");
        assert_eq!(parse(&v2(1, 0x11, &[0; 8])), Err(Invalid::V2), "an address block too short");
        assert_eq!(parse(&v2(1, 0x21, &[0; 12])), Err(Invalid::V2));
        assert_eq!(parse(&v2(1, 0x77, &[0; 12])), Err(Invalid::V2), "an unknown family");
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(parse(&huge), Err(Invalid::TooLong));
    }
}
