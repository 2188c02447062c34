//! HTTP/1.1 bytes that Sluice's server (responses to clients) and its upstream client
//! (requests to backends) write the same way, and the one copy of a parsed head that both
//! take header values from.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// `name: value\r\n`.
pub fn put_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without allocating.
pub fn put_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[start..]);
}

/// A chunk's size line: `len` in hex and CRLF, without allocating.
pub fn put_chunk_size(buf: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut start = digits.len();
    let mut n = len;
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[start..]);
    buf.extend_from_slice(b"\r\n");
}

/// The end of a chunked body: the last chunk, the trailer fields, the empty line.
pub fn put_last_chunk(buf: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    buf.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        put_field(buf, name, value);
    }
    buf.extend_from_slice(b"\r\n");
}

/// A parsed head copied once out of its read buffer (which then stays its connection's own
/// and is reused), so that the request target and header values can share the copy instead of
/// allocating one each.
pub struct HeadCopy<'a> {
    raw: &'a [u8],
    stored: Bytes,
}

impl<'a> HeadCopy<'a> {
    /// `raw` is the head the parser's slices point into.
    pub fn new(raw: &'a [u8]) -> HeadCopy<'a> {
        HeadCopy { raw, stored: Bytes::copy_from_slice(raw) }
    }

    /// The copy of `part`, a slice of the head the parser returned.
    pub fn slice(&self, part: &[u8]) -> Bytes {
        if part.is_empty() {
            return Bytes::new();
        }
        let offset = part.as_ptr() as usize - self.raw.as_ptr() as usize;
        self.stored.slice(offset..offset + part.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_chunk_lines() {
        let mut buf = Vec::new();
        for n in [0u64, 7, 10, 18_446_744_073_709_551_615] {
            buf.clear();
            put_decimal(&mut buf, n);
            assert_eq!(buf, n.to_string().as_bytes());
        }
        for n in [0usize, 9, 10, 255, 4096, usize::MAX] {
            buf.clear();
            put_chunk_size(&mut buf, n);
            assert_eq!(buf, format!("{n:x}\r\n").as_bytes());
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        buf.clear();
        put_last_chunk(&mut buf, Some(&trailers));
        assert_eq!(buf, b"0\r\ngrpc-status: 0\r\n\r\n");
        buf.clear();
        put_last_chunk(&mut buf, None);
        assert_eq!(buf, b"0\r\n\r\n");
    }

    #[test]
    fn head_copy_slices_share_the_copy() {
        let raw = b"GET /a HTTP/1.1\r\nhost: h\r\n\r\n".to_vec();
        let copy = HeadCopy::new(&raw);
        assert_eq!(copy.slice(&raw[4..6]), "/a");
        assert_eq!(copy.slice(&raw[23..24]), "h");
        assert!(copy.slice(&raw[0..0]).is_empty());
    }
}
