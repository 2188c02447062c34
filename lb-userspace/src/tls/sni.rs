//! Reads the server name and offered versions from a TLS ClientHello without terminating TLS:
//! for passthrough (the bytes are kept and later replayed to the backend unchanged), and to
//! answer clients that only speak TLS 1.1 or older with the `protocol_version` alert (rustls
//! would answer a hello without `signature_algorithms` with `handshake_failure` first). It also
//! notes whether the client offers a session to resume, which sets how many tickets it gets.
//!
//! Bounded: at most [`MAX_HELLO`] bytes of handshake data are collected, across as many
//! handshake records as the client split the ClientHello into. Anything that is not a
//! well-formed ClientHello is reported, never panics, and reads nothing out of bounds.

/// Largest ClientHello accepted for SNI inspection (the handshake message, header included).
/// Real ones are well under 2 KiB; post-quantum key shares push them to about 2 KiB.
pub const MAX_HELLO: usize = 16 * 1024;

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole ClientHello.
    Hello(Hello),
    /// So far a valid prefix: read more bytes.
    Incomplete,
    /// Not a TLS handshake (the first record is not a handshake record, or the first message is
    /// not a ClientHello).
    NotTls,
    /// Looks like TLS but breaks its own framing or exceeds [`MAX_HELLO`].
    Malformed,
}

/// What the server needs from a ClientHello before rustls sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The SNI host name; `None` when the client sends none.
    pub server_name: Option<String>,
    /// The client offers TLS 1.2 or 1.3 (in `supported_versions`, or as its legacy version
    /// when it sends no `supported_versions`).
    pub modern: bool,
    /// The client offers a TLS 1.3 session to resume (a `pre_shared_key` extension).
    pub offers_resumption: bool,
}

const HANDSHAKE_RECORD: u8 = 22;
const SUPPORTED_VERSIONS_EXTENSION: u16 = 43;
const PRE_SHARED_KEY_EXTENSION: u16 = 41;
const TLS12: u16 = 0x0303;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME_EXTENSION: u16 = 0;
const HOST_NAME: u8 = 0;

/// Parses the ClientHello at the start of `input` (the bytes read from the client so far).
pub fn parse(input: &[u8]) -> Parsed {
    // Collect the handshake bytes out of the records: record header = type, version (2),
    // length (2).
    let mut handshake = Vec::new();
    let mut rest = input;
    loop {
        if rest.len() < 5 {
            return match rest.first() {
                None | Some(&HANDSHAKE_RECORD) => Parsed::Incomplete,
                Some(_) if handshake.is_empty() => Parsed::NotTls,
                Some(_) => Parsed::Malformed,
            };
        }
        if rest[0] != HANDSHAKE_RECORD || rest[1] != 3 {
            return if handshake.is_empty() { Parsed::NotTls } else { Parsed::Malformed };
        }
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if length == 0 || length > 16 * 1024 {
            return Parsed::Malformed;
        }
        let Some(fragment) = rest.get(5..5 + length) else {
            // Part of this record is still on the way; what arrived may already hold the hello.
            handshake.extend_from_slice(&rest[5..]);
            return match hello(&handshake) {
                Parsed::Incomplete if handshake.len() > MAX_HELLO => Parsed::Malformed,
                parsed => parsed,
            };
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + length..];
        match hello(&handshake) {
            Parsed::Incomplete if handshake.len() > MAX_HELLO => return Parsed::Malformed,
            Parsed::Incomplete => {}
            parsed => return parsed,
        }
    }
}

/// A cursor over a byte slice whose reads fail (`None`) instead of going out of bounds.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `width`-byte length prefix.
    fn vector(&mut self, width: usize) -> Option<&'a [u8]> {
        let length = self.take(width)?.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        self.take(length)
    }
}

/// Parses a handshake message that should be a ClientHello.
fn hello(handshake: &[u8]) -> Parsed {
    let Some(&kind) = handshake.first() else { return Parsed::Incomplete };
    if kind != CLIENT_HELLO {
        return Parsed::NotTls;
    }
    if handshake.len() < 4 {
        return Parsed::Incomplete;
    }
    let length =
        (usize::from(handshake[1]) << 16) | (usize::from(handshake[2]) << 8) | usize::from(handshake[3]);
    if length + 4 > MAX_HELLO {
        return Parsed::Malformed;
    }
    let Some(body) = handshake.get(4..4 + length) else { return Parsed::Incomplete };
    match client_hello(body) {
        Some(hello) => Parsed::Hello(hello),
        None => Parsed::Malformed,
    }
}

/// The parts of a complete ClientHello body we need; `None` when the body is malformed.
fn client_hello(body: &[u8]) -> Option<Hello> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    let _random = r.take(32)?;
    let session_id = r.vector(1)?;
    let suites = r.vector(2)?;
    let compression = r.vector(1)?;
    if session_id.len() > 32 || suites.is_empty() || suites.len() % 2 != 0 || compression.is_empty() {
        return None;
    }
    if r.0.is_empty() {
        // No extensions at all (very old clients): no SNI.
        return Some(Hello { server_name: None, modern: legacy_version >= TLS12, offers_resumption: false });
    }
    let mut extensions = Reader(r.vector(2)?);
    if !r.0.is_empty() {
        return None;
    }
    let mut server_name = None;
    let mut supported_versions: Option<bool> = None;
    let mut offers_resumption = false;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vector(2)?;
        if kind == PRE_SHARED_KEY_EXTENSION {
            // Its contents are rustls' to check; whether the session resumes is decided there.
            offers_resumption = true;
            continue;
        }
        if kind == SUPPORTED_VERSIONS_EXTENSION {
            let mut versions = Reader(data);
            let list = versions.vector(1)?;
            if supported_versions.is_some() || list.len() % 2 != 0 || !versions.0.is_empty() {
                return None;
            }
            // TLS 1.2 (0x0303) or 1.3 (0x0304); GREASE values are ignored like any other.
            let modern = list.chunks(2).any(|v| matches!(u16::from_be_bytes([v[0], v[1]]), 0x0303 | 0x0304));
            supported_versions = Some(modern);
            continue;
        }
        if kind != SERVER_NAME_EXTENSION {
            continue;
        }
        if server_name.is_some() {
            // The same extension twice is illegal (RFC 8446 4.2).
            return None;
        }
        let mut names = Reader(data);
        let mut list = Reader(names.vector(2)?);
        if !names.0.is_empty() {
            return None;
        }
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vector(2)?;
            if name_type == HOST_NAME && server_name.is_none() {
                if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                    return None;
                }
                server_name = Some(String::from_utf8(name.to_vec()).ok()?);
            }
        }
    }
    Some(Hello {
        server_name,
        modern: supported_versions.unwrap_or(legacy_version >= TLS12),
        offers_resumption,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello body with the given extensions.
    fn hello_body(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        body
    }

    fn sni_extension(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![HOST_NAME];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        let mut ext = SERVER_NAME_EXTENSION.to_be_bytes().to_vec();
        ext.extend((data.len() as u16).to_be_bytes());
        ext.extend(data);
        ext
    }

    fn handshake(body: &[u8]) -> Vec<u8> {
        let mut message = vec![CLIENT_HELLO];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    /// Wraps a handshake message into records of at most `fragment` bytes each.
    fn records(message: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(fragment) {
            out.extend([HANDSHAKE_RECORD, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    fn hello(name: Option<&str>, modern: bool) -> Parsed {
        Parsed::Hello(Hello { server_name: name.map(str::to_owned), modern, offers_resumption: false })
    }

    fn versions_extension(versions: &[u16]) -> Vec<u8> {
        let mut ext = SUPPORTED_VERSIONS_EXTENSION.to_be_bytes().to_vec();
        ext.extend(((versions.len() * 2 + 1) as u16).to_be_bytes());
        ext.push((versions.len() * 2) as u8);
        for v in versions {
            ext.extend(v.to_be_bytes());
        }
        ext
    }

    #[test]
    fn old_protocol_versions_are_recognised() {
        let with_version = |legacy: u16, extensions: &[u8]| {
            let mut body = hello_body(extensions);
            body[..2].copy_from_slice(&legacy.to_be_bytes());
            parse(&records(&handshake(&body), 1000))
        };
        assert_eq!(with_version(0x0301, &[]), hello(None, false), "TLS 1.0");
        assert_eq!(with_version(0x0302, &sni_extension(b"a.test")), hello(Some("a.test"), false), "TLS 1.1");
        assert_eq!(with_version(0x0303, &[]), hello(None, true), "TLS 1.2 without supported_versions");
        assert_eq!(
            with_version(0x0303, &versions_extension(&[0x0a0a, 0x0304])),
            hello(None, true),
            "TLS 1.3"
        );
        assert_eq!(with_version(0x0303, &versions_extension(&[0x0302, 0x0301])), hello(None, false));
        let mut twice = versions_extension(&[0x0304]);
        twice.extend(versions_extension(&[0x0304]));
        assert_eq!(with_version(0x0303, &twice), Parsed::Malformed);
    }

    fn other_extension() -> Vec<u8> {
        vec![0x00, 0x10, 0x00, 0x05, 0x00, 0x03, 0x02, b'h', b'2'] // ALPN h2
    }

    #[test]
    fn finds_the_server_name() {
        let mut extensions = other_extension();
        extensions.extend(sni_extension(b"api.example.com"));
        let wire = records(&handshake(&hello_body(&extensions)), 16 * 1024);
        assert_eq!(parse(&wire), hello(Some("api.example.com"), true));
    }

    #[test]
    fn an_offered_session_is_noticed() {
        // pre_shared_key: one identity (4 bytes, obfuscated age) and one 32-byte binder.
        let mut psk = PRE_SHARED_KEY_EXTENSION.to_be_bytes().to_vec();
        psk.extend([0, 47, 0, 10, 0, 4, 1, 2, 3, 4, 0, 0, 0, 0, 0, 33, 32]);
        psk.extend([9u8; 32]);
        let mut extensions = sni_extension(b"a.test");
        extensions.extend(&psk);
        let wire = records(&handshake(&hello_body(&extensions)), 16 * 1024);
        let Parsed::Hello(parsed) = parse(&wire) else { panic!("not parsed: {:?}", parse(&wire)) };
        assert!(parsed.offers_resumption);
        assert_eq!(parsed.server_name.as_deref(), Some("a.test"));
        let wire = records(&handshake(&hello_body(&sni_extension(b"a.test"))), 16 * 1024);
        assert_eq!(parse(&wire), hello(Some("a.test"), true), "no session offered");
    }

    #[test]
    fn no_sni_and_no_extensions() {
        let wire = records(&handshake(&hello_body(&other_extension())), 16 * 1024);
        assert_eq!(parse(&wire), hello(None, true));
        let mut body = hello_body(&[]);
        body.truncate(body.len() - 2); // drop the empty extensions block entirely
        assert_eq!(parse(&records(&handshake(&body), 100)), hello(None, true));
    }

    #[test]
    fn every_prefix_is_incomplete_and_fragments_reassemble() {
        let wire = records(&handshake(&hello_body(&sni_extension(b"a.test"))), 16 * 1024);
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        for fragment in [1, 3, 17, 50] {
            let wire = records(&handshake(&hello_body(&sni_extension(b"a.test"))), fragment);
            assert_eq!(parse(&wire), hello(Some("a.test"), true), "fragment {fragment}");
        }
    }

    #[test]
    fn garbage_is_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Parsed::NotTls);
        assert_eq!(parse(b"\x16\x02\x00\x00\x05hello"), Parsed::NotTls, "SSLv2-ish version");
        let server_hello = [HANDSHAKE_RECORD, 3, 3, 0, 4, 2, 0, 0, 0];
        assert_eq!(parse(&server_hello), Parsed::NotTls);
        assert_eq!(parse(b"\x17"), Parsed::NotTls);
    }

    #[test]
    fn broken_framing_is_malformed() {
        // A record length of zero, or over the limit.
        assert_eq!(parse(&[HANDSHAKE_RECORD, 3, 1, 0, 0]), Parsed::Malformed);
        assert_eq!(parse(&[HANDSHAKE_RECORD, 3, 1, 0x48, 1]), Parsed::Malformed);
        // A hello claiming more than MAX_HELLO.
        assert_eq!(parse(&records(&[CLIENT_HELLO, 0, 0x50, 0], 100)), Parsed::Malformed);
        // The extensions block overruns the message.
        let mut body = hello_body(&sni_extension(b"a.test"));
        let at = body.len() - sni_extension(b"a.test").len() - 2;
        body[at + 1] = body[at + 1].wrapping_add(1);
        assert_eq!(parse(&records(&handshake(&body), 1000)), Parsed::Malformed);
        // Two SNI extensions.
        let mut twice = sni_extension(b"a.test");
        twice.extend(sni_extension(b"b.test"));
        assert_eq!(parse(&records(&handshake(&hello_body(&twice)), 1000)), Parsed::Malformed);
        // A name with a control byte, or empty.
        assert_eq!(
            parse(&records(&handshake(&hello_body(&sni_extension(b"a\nb"))), 1000)),
            Parsed::Malformed
        );
        assert_eq!(parse(&records(&handshake(&hello_body(&sni_extension(b""))), 1000)), Parsed::Malformed);
        // A record of another type after the first handshake fragment.
        let mut wire = records(&handshake(&hello_body(&sni_extension(b"a.test"))), 10)[..15].to_vec();
        wire.extend([23, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&wire), Parsed::Malformed);
    }

    #[test]
    fn fuzzed_inputs_never_panic() {
        let good = records(&handshake(&hello_body(&sni_extension(b"fuzz.example.com"))), 40);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                input[at] = next() as u8;
            }
            input.truncate((next() as usize) % (input.len() + 1));
            let _ = parse(&input);
        }
    }
}
