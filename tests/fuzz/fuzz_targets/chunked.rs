//! The one chunked framing (`proxy/http1/framing.rs`): the strict state machine the request
//! guard runs and the lenient decoder the server and the upstream client run.
//!
//! Input: one byte for the read size, then a chunked body. Properties:
//! - the decoder gives the same data, trailers and verdict whatever the read boundaries, and
//!   so does the strict machine;
//! - a body the strict machine accepts, the lenient decoder decodes, ending at the same byte
//!   (the guard never lets through a body the server then frames otherwise).
#![no_main]

use bytes::BytesMut;
use lb_userspace::proxy::http1::framing::{CHUNK_START, ChunkDecoder, Decoded, Strictness};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Decoding {
    data: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    /// Bytes of the input the body took, when it ended.
    ended_at: Option<usize>,
    error: Option<&'static str>,
}

fn decode(body: &[u8], read: usize) -> Decoding {
    let mut decoder = ChunkDecoder::default();
    let mut buffer = BytesMut::new();
    let mut fed = 0;
    let mut out = Decoding { data: Vec::new(), trailers: Vec::new(), ended_at: None, error: None };
    loop {
        match decoder.decode(&mut buffer) {
            Ok(Decoded::Data(data)) => out.data.extend_from_slice(&data),
            Ok(Decoded::Trailers(map)) => {
                out.trailers =
                    map.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
            }
            Ok(Decoded::Done) => {
                out.ended_at = Some(fed - buffer.len());
                return out;
            }
            Ok(Decoded::NeedMore(_)) if fed == body.len() => return out,
            Ok(Decoded::NeedMore(_)) => {
                let n = read.min(body.len() - fed);
                buffer.extend_from_slice(&body[fed..fed + n]);
                fed += n;
            }
            Err(e) => {
                out.error = Some(e.0);
                return out;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&read, body)) = data.split_first() else { return };
    let whole = decode(body, usize::MAX);
    let split = decode(body, usize::from(read.max(1)));
    assert_eq!(whole, split, "the read boundaries changed the decoding");

    let strict = CHUNK_START.clone().advance(body, Strictness::Strict);
    let cut = usize::from(read).min(body.len());
    let mut state = CHUNK_START;
    let in_two = state.advance(&body[..cut], Strictness::Strict).and_then(|(n, done)| {
        if done {
            Ok((n, true))
        } else {
            state
                .advance(&body[cut..], Strictness::Strict)
                .map(|(m, done)| (n + m, done))
                .map_err(|(m, e)| (n + m, e))
        }
    });
    assert_eq!(strict, in_two, "the read boundaries changed the strict verdict");

    if let Ok((n, true)) = strict {
        assert_eq!(whole.error, None, "the decoder refused a body the guard accepts");
        assert_eq!(whole.ended_at, Some(n), "the decoder ends the body elsewhere than the guard");
    }
});
