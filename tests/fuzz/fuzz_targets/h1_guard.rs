//! The HTTP/1 request guard (`proxy/http1/guard.rs`) on any byte stream, as a client sends it.
//!
//! Input: one byte `n`, then `n % 8` read sizes, then the stream. Properties:
//! - the read boundaries change nothing: the stream in one read and in the fuzzed sizes gives
//!   the same bytes, the same end and the same parsed heads;
//! - what reaches the server is a prefix of the stream, then at most one substituted head (400
//!   or 431) after which the stream ends;
//! - every head handed to the server keeps the guard's promises: an HTTP/1.1 request has exactly
//!   one Host, none has two, none has Content-Length with Transfer-Encoding or two lengths.
#![no_main]

use lb_userspace::fuzzing::{self, GuardEnd, Head, REJECT_400, REJECT_431};
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 1024;
const MAX_HEADERS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let (sizes, stream) = rest.split_at(usize::from(n % 8).min(rest.len()));
    let whole = fuzzing::guard(stream, &[u8::MAX], MAX_HEAD, MAX_HEADERS);
    let split = fuzzing::guard(stream, sizes, MAX_HEAD, MAX_HEADERS);
    assert_eq!(whole, split, "the read boundaries changed what the guard did");

    let passed = &whole.passed;
    let substituted = [REJECT_400, REJECT_431].into_iter().find(|substitute| {
        passed.ends_with(substitute) && stream.starts_with(&passed[..passed.len() - substitute.len()])
    });
    assert!(
        substituted.is_some() || stream.starts_with(passed),
        "the guard passed bytes that are not the stream's: {passed:?}"
    );
    if substituted.is_some() && !stream.starts_with(passed) {
        assert_eq!(whole.end, GuardEnd::Eof, "a substituted head must end the stream");
    }

    for (_, head) in &whole.heads {
        let Head::Request(request) = head else { continue };
        let count = |name: &str| request.headers.iter().filter(|(n, _)| n == name).count();
        let hosts = count("host");
        assert!(hosts <= 1, "two Host fields passed");
        assert!(!request.http11 || hosts == 1, "an HTTP/1.1 request without Host passed");
        assert!(count("content-length") <= 1, "two Content-Length fields passed");
        assert!(
            count("content-length") == 0 || count("transfer-encoding") == 0,
            "Content-Length with Transfer-Encoding passed"
        );
    }
});
