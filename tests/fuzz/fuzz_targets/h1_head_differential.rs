//! Differential: the guard's and the server's reading of one request head against httparse's.
//!
//! Where the guard accepts a head, httparse accepts the same bytes as one head of the same
//! length, with the same method, version and fields, and the server's own parser (used when no
//! guard parsed the head) makes the same request of it. The guard never accepts what httparse
//! refuses. The intended differences, where httparse accepts and the guard refuses (each a
//! documented rule of `guard.rs`, RFC 9112): bare LF or bare CR line endings, obs-fold,
//! Content-Length with Transfer-Encoding, two Content-Length fields, a length that is not plain
//! digits, Transfer-Encoding not ending in one `chunked` (or in HTTP/1.0), a missing (HTTP/1.1),
//! repeated or malformed Host, and a head longer than the limit. A head both accept may still
//! be answered 400 by the server when the `http` crate refuses its method, target or a field
//! (stricter than httparse): that refusal must then be the same from both paths.
#![no_main]

use lb_userspace::fuzzing::{self, Head, MAX_HEADERS};
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let verdict = fuzzing::guard_head(data, MAX_HEAD, MAX_HEADERS);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut theirs = httparse::Request::new(&mut slots);
    let parsed = theirs.parse(data);
    match verdict {
        Ok(Some((len, head))) => {
            let Ok(httparse::Status::Complete(n)) = parsed else {
                panic!("the guard accepted a head httparse does not: {parsed:?}")
            };
            assert_eq!(n, len, "the guard and httparse end the head at different bytes");
            let server = fuzzing::server_head(&data[..len]);
            assert_eq!(server, Some((len, head.clone())), "the server parses the head otherwise");
            if let Head::Request(request) = head {
                assert_eq!(Some(request.method.as_str()), theirs.method);
                assert_eq!(request.http11, theirs.version == Some(1));
                // The same fields; only the order of lines with one name is kept (the request's
                // header map groups a name's lines, which RFC 9110 5.3 allows).
                let by_name = |fields: &mut dyn Iterator<Item = (String, Vec<u8>)>| {
                    let mut lines: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
                    for (name, value) in fields {
                        match lines.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, values)) => values.push(value),
                            None => lines.push((name, vec![value])),
                        }
                    }
                    lines.sort_by(|a, b| a.0.cmp(&b.0));
                    lines
                };
                let ours = by_name(&mut request.headers.iter().cloned());
                let httparse = by_name(
                    &mut theirs.headers.iter().map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec())),
                );
                assert_eq!(ours, httparse, "the fields differ from httparse's");
            }
        }
        Ok(None) => assert!(
            !matches!(parsed, Ok(httparse::Status::Complete(_))) || data.contains(&b'\n'),
            "httparse found a whole head where the guard wants more bytes"
        ),
        Err((reason, httparse_refused)) => {
            if httparse_refused && let Ok(httparse::Status::Complete(n)) = parsed {
                // The guard parsed a different span only if a bare LF ends httparse's head.
                let bare_lf = data[..n]
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'\n' && (i == 0 || data[i - 1] != b'\r'));
                assert!(bare_lf, "the guard says httparse refused ({reason}) a head httparse accepts");
            }
        }
    }
});
