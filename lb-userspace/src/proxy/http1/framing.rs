//! Message body framing (RFC 9112 sections 6 and 7), one implementation for every user: the
//! `Content-Length` value parser, and the `Transfer-Encoding: chunked` state machine
//! ([`ChunkState`], its strictness a parameter) behind both the request guard's validation and
//! the streaming [`ChunkDecoder`] that the HTTP/1 server uses for request bodies and the
//! upstream client for response bodies.

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

/// How strictly chunked syntax is held. `Strict` is the request guard's: RFC 9112 section 7.1
/// with no leniency (whitespace after the size only before a `;`, extensions and trailers of
/// field bytes only, an extension up to `MAX_CHUNK_EXTENSION`), since a request the guard lets
/// through must frame the same way for every parser behind it. `Lenient` decodes what backends
/// send: whitespace may lead into an extension, an extension may hold any byte but a bare LF
/// (up to `MAX_CHUNK_EXTENSION` too), and
/// the trailer section is checked when it is parsed whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    Strict,
    Lenient,
}

/// At most 16 hex digits: every size fits in a `u64`.
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Where a chunked body is (RFC 9112 section 7.1): the one state machine behind the request
/// guard, which validates the bytes it passes on, and the [`ChunkDecoder`], which takes the
/// data out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Reading the size's hex digits (`digits == 0`: at the start of a chunk line).
    Size {
        digits: u8,
        size: u64,
    },
    /// Whitespace after the size (strict): only more whitespace or `;` may follow.
    SizeWs {
        size: u64,
    },
    /// Inside a chunk extension, up to CR (`len` bytes of it so far, at most
    /// `MAX_CHUNK_EXTENSION`).
    Ext {
        size: u64,
        len: u32,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Chunk data with this many bytes left (never 0).
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk or a trailer line: CR (end) or a field name.
    TrailerStart(TrailerCount),
    TrailerName(TrailerCount),
    TrailerValue(TrailerCount),
    TrailerLf(TrailerCount),
    /// After the final CR.
    EndLf,
}

/// How much of a trailer section the machine has read: it holds the decoder's bounds
/// (`MAX_TRAILERS` lines, `MAX_TRAILER_BYTES`), so that a section the guard passes, the decoder
/// behind it takes (the chunked fuzz target found 200 short trailer lines passed and refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrailerCount {
    lines: u16,
    bytes: u32,
}

impl TrailerCount {
    /// One more byte of the section, or the error past its bound (room kept for the final CRLF).
    fn byte(self) -> Result<TrailerCount, ChunkError> {
        if self.bytes as usize + 2 >= MAX_TRAILER_BYTES {
            return Err(ChunkError::Trailer);
        }
        Ok(TrailerCount { bytes: self.bytes + 1, ..self })
    }

    /// A new field line begins, or the error past the most lines.
    fn line(self) -> Result<TrailerCount, ChunkError> {
        if usize::from(self.lines) >= MAX_TRAILERS {
            return Err(ChunkError::Trailer);
        }
        Ok(TrailerCount { lines: self.lines + 1, ..self.byte()? })
    }
}

/// The state at the start of a chunked body (and of each chunk line).
pub const CHUNK_START: ChunkState = ChunkState::Size { digits: 0, size: 0 };

/// What is wrong with a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    Size,
    Extension,
    DataCrlf,
    Trailer,
}

impl ChunkError {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkError::Size => "invalid chunk size line",
            ChunkError::Extension => "invalid chunk extension",
            ChunkError::DataCrlf => "chunk data not followed by CRLF",
            ChunkError::Trailer => "invalid chunked trailer section",
        }
    }
}

impl ChunkState {
    /// Runs the machine over `data`, chunk data counted rather than looked at:
    /// `Ok((consumed, message_done))` (a finished message stops the run and the state starts
    /// over), or `Err((valid_bytes_before_the_bad_one, reason))`.
    pub fn advance(
        &mut self,
        data: &[u8],
        strictness: Strictness,
    ) -> Result<(usize, bool), (usize, ChunkError)> {
        let mut i = 0;
        while i < data.len() {
            if let ChunkState::Data(left) = *self {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                *self = if take == left { ChunkState::DataCr } else { ChunkState::Data(left - take) };
                continue;
            }
            let finishing = *self == ChunkState::EndLf;
            *self = self.step(data[i], strictness).map_err(|reason| (i, reason))?;
            i += 1;
            if finishing {
                return Ok((i, true));
            }
        }
        Ok((i, false))
    }

    /// The state after one byte outside chunk data.
    fn step(self, b: u8, strictness: Strictness) -> Result<ChunkState, ChunkError> {
        use ChunkState::*;
        let strict = strictness == Strictness::Strict;
        Ok(match self {
            Size { digits, size } => match (hex_digit(b), b) {
                (Some(v), _) if digits < MAX_CHUNK_SIZE_DIGITS => {
                    Size { digits: digits + 1, size: (size << 4) | v }
                }
                (None, b';') if digits > 0 => Ext { size, len: 0 },
                (None, b' ' | b'\t') if digits > 0 && strict => SizeWs { size },
                (None, b' ' | b'\t') if digits > 0 => Ext { size, len: 0 },
                (None, b'\r') if digits > 0 => SizeLf { size },
                _ => return Err(ChunkError::Size),
            },
            SizeWs { size } => match b {
                b' ' | b'\t' => SizeWs { size },
                b';' => Ext { size, len: 0 },
                _ => return Err(ChunkError::Size),
            },
            Ext { size, .. } if b == b'\r' => SizeLf { size },
            // Bounded in both modes: hyper refuses extensions past 16 KiB per message, and an
            // unbounded one let a client keep the guard scanning one chunk line for ever.
            Ext { len, .. } if len as usize >= MAX_CHUNK_EXTENSION => return Err(ChunkError::Extension),
            Ext { size, len } if strict => match is_value_byte(b) {
                true => Ext { size, len: len + 1 },
                false => return Err(ChunkError::Extension),
            },
            Ext { size, len } => {
                if b == b'\n' {
                    return Err(ChunkError::Extension);
                }
                Ext { size, len: len + 1 }
            }
            SizeLf { size } => match b {
                b'\n' if size == 0 => TrailerStart(TrailerCount::default()),
                b'\n' => Data(size),
                _ => return Err(ChunkError::Size),
            },
            Data(_) => unreachable!("chunk data is counted, not stepped"),
            DataCr if b == b'\r' => DataLf,
            DataLf if b == b'\n' => CHUNK_START,
            DataCr | DataLf => return Err(ChunkError::DataCrlf),
            TrailerStart(count) => match b {
                b'\r' => EndLf,
                b if is_tchar(b) => TrailerName(count.line()?),
                _ => return Err(ChunkError::Trailer),
            },
            TrailerName(count) => match b {
                b':' => TrailerValue(count.byte()?),
                b if is_tchar(b) => TrailerName(count.byte()?),
                _ => return Err(ChunkError::Trailer),
            },
            TrailerValue(count) => match b {
                b'\r' => TrailerLf(count.byte()?),
                b if is_value_byte(b) => TrailerValue(count.byte()?),
                _ => return Err(ChunkError::Trailer),
            },
            TrailerLf(count) if b == b'\n' => TrailerStart(count.byte()?),
            EndLf if b == b'\n' => CHUNK_START,
            TrailerLf(_) | EndLf => return Err(ChunkError::Trailer),
        })
    }
}

/// RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field value and chunk extension bytes: HTAB, SP, VCHAR, obs-text.
pub fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

fn hex_digit(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

/// A streaming decoder of `Transfer-Encoding: chunked` bodies ([`ChunkState`], lenient): the
/// server decodes request bodies the guard already held to the strict rules, the upstream
/// client the responses of backends, whose framing decides whether the connection can be
/// reused. The trailer section is parsed whole.
#[derive(Debug)]
pub struct ChunkDecoder {
    state: ChunkState,
    done: bool,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        ChunkDecoder { state: CHUNK_START, done: false }
    }
}

impl ChunkDecoder {
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            if self.done {
                return Ok(Decoded::Done);
            }
            match self.state {
                ChunkState::TrailerStart(_) => return self.trailers(buffer),
                ChunkState::Data(left) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore(left));
                    }
                    let n = left.min(buffer.len() as u64);
                    self.state = if n == left { ChunkState::DataCr } else { ChunkState::Data(left - n) };
                    return Ok(Decoded::Data(take(buffer, n as usize)));
                }
                state => {
                    let Some(&byte) = buffer.first() else { return Ok(Decoded::NeedMore(READ_CHUNK as u64)) };
                    buffer.advance(1);
                    self.state =
                        state.step(byte, Strictness::Lenient).map_err(|e| FramingError(e.as_str()))?;
                }
            }
        }
    }

    /// The trailer section after the last chunk: an empty line, or header lines then one.
    fn trailers(&mut self, buffer: &mut BytesMut) -> Result<Decoded, FramingError> {
        if buffer.starts_with(b"\r\n") {
            buffer.advance(2);
            self.done = true;
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
        self.done = true;
        Ok(Decoded::Trailers(trailers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a whole chunked body passes the state machine at `strictness`.
    fn passes(body: &[u8], strictness: Strictness) -> bool {
        let mut state = CHUNK_START;
        matches!(state.advance(body, strictness), Ok((n, true)) if n == body.len())
    }

    #[test]
    fn one_machine_two_strictnesses() {
        // (body, strict verdict, lenient verdict)
        let cases: &[(&[u8], bool, bool)] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", true, true),
            (b"5;name=value\r\nhello\r\n0\r\n\r\n", true, true),
            (b"5 ;x\r\nhello\r\n0\r\n\r\n", true, true),
            (b"0\r\ngrpc-status: 0\r\n\r\n", true, true),
            // Whitespace straight into an extension: only backends get that leniency.
            (b"5 x\r\nhello\r\n0\r\n\r\n", false, true),
            // A control byte in an extension.
            (b"5;\x01\r\nhello\r\n0\r\n\r\n", false, true),
            // Bare LF after the size, in an extension, after the data: never.
            (b"5\nhello\r\n0\r\n\r\n", false, false),
            (b"5;a\nhello\r\n0\r\n\r\n", false, false),
            (b"5\r\nhello\n0\r\n\r\n", false, false),
            (b"x\r\n", false, false),
            (b"11111111111111111\r\n", false, false),
        ];
        for &(body, strict, lenient) in cases {
            let shown = String::from_utf8_lossy(body);
            assert_eq!(passes(body, Strictness::Strict), strict, "strict: {shown:?}");
            // The lenient decoder leaves the trailer section to its parser, so run it whole.
            assert_eq!(decode_all(body, 3).is_ok(), lenient, "lenient: {shown:?}");
        }
        let long_extension = [&b"1;"[..], &[b'x'; MAX_CHUNK_EXTENSION + 1], b"\r\na\r\n0\r\n\r\n"].concat();
        assert!(decode_all(&long_extension, 100).is_err(), "a lenient extension is bounded");
        assert!(!passes(&long_extension, Strictness::Strict), "a strict extension is bounded");
        // Trailer sections: past MAX_TRAILERS lines or MAX_TRAILER_BYTES, both machines refuse
        // (the strict one passed any number of lines before); up to them, both take it.
        let section = |lines: usize, value: usize| {
            let line = format!("t:{}\r\n", "v".repeat(value));
            [&b"1\r\na\r\n0\r\n"[..], line.repeat(lines).as_bytes(), b"\r\n"].concat()
        };
        for (body, ok) in [
            (section(MAX_TRAILERS, 1), true),
            (section(MAX_TRAILERS + 1, 1), false),
            (section(3, MAX_TRAILER_BYTES / 4), true),
            (section(5, MAX_TRAILER_BYTES / 4), false),
        ] {
            assert_eq!(passes(&body, Strictness::Strict), ok, "strict, {} bytes", body.len());
            assert_eq!(decode_all(&body, 100).is_ok(), ok, "lenient, {} bytes", body.len());
        }
        // Up to the bound (the `;` is not counted), both take it.
        let longest = [&b"1;"[..], &[b'x'; MAX_CHUNK_EXTENSION], b"\r\na\r\n0\r\n\r\n"].concat();
        assert!(decode_all(&longest, 100).is_ok() && passes(&longest, Strictness::Strict));
    }

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
