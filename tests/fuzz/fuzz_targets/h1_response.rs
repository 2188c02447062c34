//! The upstream client's response head parser (`proxy/http1/client.rs`), on what a backend
//! may send. Properties: never a panic; the head is found whatever else follows it (the
//! verdict on a head does not depend on the bytes after it) and is not found in any shorter
//! prefix; RFC 9112 framing holds: no body after HEAD, 204 or 304 (a 101 switches protocols
//! instead, even after HEAD), one length when framed by length, and a response with both
//! Content-Length and Transfer-Encoding or without framing never leaves its connection
//! reusable.
#![no_main]

use lb_userspace::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else { return };
    let head_request = flags & 1 == 1;
    let Ok(Some((len, head))) = fuzzing::response_head(raw, head_request) else { return };
    assert!(len <= raw.len());
    assert_eq!(
        fuzzing::response_head(&raw[..len], head_request),
        Ok(Some((len, head.clone()))),
        "the bytes after the head changed it"
    );
    if len > 0 {
        assert!(
            !matches!(fuzzing::response_head(&raw[..len - 1], head_request), Ok(Some(_))),
            "a shorter prefix held a whole head"
        );
    }
    let has = |name: &str| head.headers.iter().any(|(n, _)| n == name);
    assert!(!(100..200).contains(&head.status) || head.status == 101, "an interim response was final");
    // A 101 switches the connection (its body is the new protocol's), even after a HEAD.
    if head.status != 101 && (head_request || head.status == 204 || head.status == 304) {
        assert_eq!((head.framing, head.length), ("length", Some(0)), "a body after HEAD/204/304");
    }
    if head.status != 101 && has("content-length") && has("transfer-encoding") {
        assert!(!head.reusable, "a response with both lengths left its connection reusable");
    }
    if head.framing == "until-close" {
        assert!(!head.reusable, "a response read to the close left its connection reusable");
    }
});
