//! Message body framing (RFC 9112 sections 6 and 7), one implementation for both directions:
//! the `Content-Length` value parser, and the streaming `Transfer-Encoding: chunked` decoder
//! that the HTTP/1 server uses for request bodies and the upstream client for response bodies.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// How much a decoder asks the caller to read when it needs more and knows no better.
pub const READ_CHUNK: usize = 16 * 1024;
/// Chunk extensions and trailer sections are skipped or parsed up to these sizes.
const MAX_CHUNK_EXTENSION: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_TRAILERS: usize = 128;
/// Body bytes below this are copied out of the read buffer, which then stays the
/// connection's own and is reused without allocating; larger runs are handed over as they are.
const COPY_BELOW: usize = 4096;

/// A body whose framing is broken: the connection cannot carry another message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FramingError(pub &'static str);

/// A `Content-Length` value: digits only (no sign, no list, surrounding whitespace ignored),
/// `None` when it is anything else or does not fit a `u64`. The one parser for requests,
/// responses and the guard.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// `n` bytes from the front of `buffer`, copied when small (see [`COPY_BELOW`]).
pub fn take(buffer: &mut BytesMut, n: usize) -> Bytes {
    if n < COPY_BELOW {
        let data = Bytes::copy_from_slice(&buffer[..n]);
        buffer.advance(n);
        data
    } else {
        buffer.split_to(n).freeze()
    }
}

/// What the chunk decoder produced from the bytes it had.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    Done,
    /// Needs more bytes (about this many, for the read size).
    NeedMore(u64),
}

#[derive(Debug, Default)]
enum ChunkState {
    /// In the hex size (value, digits so far).
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailers,
    Done,
}

/// A streaming decoder of `Transfer-Encoding: chunked` (RFC 9112 section 7.1), strict about
/// line endings and sizes: the backend's framing decides whether the connection can be reused.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
    extension: usize,
}

impl ChunkDecoder {
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            if matches!(self.state, ChunkState::Done) {
                return Ok(Decoded::Done);
            }
            if matches!(self.state, ChunkState::Trailers) {
                return self.trailers(buffer);
            }
            if matches!(self.state, ChunkState::Data) {
                if buffer.is_empty() {
                    return Ok(Decoded::NeedMore(self.size));
                }
                let n = self.size.min(buffer.len() as u64);
                self.size -= n;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                return Ok(Decoded::Data(take(buffer, n as usize)));
            }
            let Some(&byte) = buffer.first() else { return Ok(Decoded::NeedMore(READ_CHUNK as u64)) };
            buffer.advance(1);
            self.state = match (&self.state, byte) {
                (ChunkState::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if self.digits == 16 {
                        return Err(FramingError("chunk size too large"));
                    }
                    let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self.size << 4 | digit;
                    self.digits += 1;
                    ChunkState::Size
                }
                (ChunkState::Size, b';' | b' ' | b'\t') if self.digits > 0 => {
                    self.extension = 0;
                    ChunkState::Extension
                }
                (ChunkState::Size, b'\r') if self.digits > 0 => ChunkState::SizeLf,
                (ChunkState::Extension, b'\r') => ChunkState::SizeLf,
                (ChunkState::Extension, b'\n') => {
                    return Err(FramingError("bare LF in a chunk extension"));
                }
                (ChunkState::Extension, _) => {
                    self.extension += 1;
                    if self.extension > MAX_CHUNK_EXTENSION {
                        return Err(FramingError("chunk extension too long"));
                    }
                    ChunkState::Extension
                }
                (ChunkState::SizeLf, b'\n') if self.size == 0 => ChunkState::Trailers,
                (ChunkState::SizeLf, b'\n') => ChunkState::Data,
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => {
                    self.digits = 0;
                    ChunkState::Size
                }
                _ => return Err(FramingError("malformed chunked body")),
            };
        }
    }

    /// The trailer section after the last chunk: an empty line, or header lines then one.
    fn trailers(&mut self, buffer: &mut BytesMut) -> Result<Decoded, FramingError> {
        if buffer.starts_with(b"\r\n") {
            buffer.advance(2);
            self.state = ChunkState::Done;
            return Ok(Decoded::Done);
        }
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buffer.len() > MAX_TRAILER_BYTES {
                return Err(FramingError("trailers too large"));
            }
            return Ok(Decoded::NeedMore(READ_CHUNK as u64));
        };
        let section = buffer.split_to(end + 4);
        let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        let parsed = match httparse::parse_headers(&section, &mut slots) {
            Ok(httparse::Status::Complete((_, parsed))) => parsed,
            _ => return Err(FramingError("malformed trailers")),
        };
        let mut trailers = HeaderMap::with_capacity(parsed.len());
        for header in parsed {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| FramingError("invalid trailer name"))?;
            let value =
                HeaderValue::from_bytes(header.value).map_err(|_| FramingError("invalid trailer value"))?;
            trailers.append(name, value);
        }
        self.state = ChunkState::Done;
        Ok(Decoded::Trailers(trailers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_that_fit() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 42\t"), Some(42));
        assert_eq!(parse_length(b"000000000000000000000007"), Some(7), "leading zeros are digits");
        assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b" ", b"+5", b"-1", b"5,5", b"5 5", b"0x10", b"18446744073709551616"] {
            assert_eq!(parse_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>, usize), FramingError> {
        let mut decoder = ChunkDecoder::default();
        let mut buffer = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buffer)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Trailers(map) => trailers = Some(map),
                Decoded::Done => return Ok((body, trailers, buffer.len())),
                Decoded::NeedMore(_) => {
                    if fed == input.len() {
                        return Err(FramingError("test: input ended"));
                    }
                    let end = (fed + split).min(input.len());
                    buffer.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let input = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\n\r\nNEXT";
        for split in [1, 2, 3, 7, 100] {
            let (body, trailers, rest) = decode_all(input, split).unwrap();
            assert_eq!(body, b"hello world", "split {split}");
            assert!(trailers.is_none());
            // The next response's bytes stay in the buffer (when fed in the same read).
            assert!(rest <= 4);
        }
    }

    #[test]
    fn chunked_trailers_are_kept() {
        let input = b"2\r\nok\r\n0\r\ngrpc-status: 0\r\nx-other: a\r\n\r\n";
        let (body, trailers, _) = decode_all(input, 5).unwrap();
        assert_eq!(body, b"ok");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-other"], "a");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
            b"5;ext\nhello\r\n",
        ] {
            assert!(decode_all(bad, 100).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
