//! The PROXY protocol v1/v2 parser (`proxy/proxy_protocol.rs`) on the first bytes of a
//! connection. Properties: never a panic; a header found is self-delimiting (it lies within
//! the input, parses the same on its own and from any longer input) and every shorter prefix
//! asks for more bytes; a refusal holds for every longer input.
#![no_main]

use lb_userspace::proxy::proxy_protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    let full = proxy_protocol::parse(input);
    let prefix = &input[..(usize::from(cut) * input.len() / 255).min(input.len())];
    let early = proxy_protocol::parse(prefix);
    match full {
        Ok(Some(header)) => {
            assert!(header.len <= input.len(), "a header longer than the input");
            assert_eq!(proxy_protocol::parse(&input[..header.len]), Ok(Some(header)));
            if prefix.len() < header.len {
                assert_eq!(early, Ok(None), "a prefix of a header was decided");
            } else {
                assert_eq!(early, Ok(Some(header)), "bytes after the header changed it");
            }
        }
        Ok(None) => assert_eq!(early, Ok(None), "a prefix was decided where the whole input needs more"),
        Err(_) => assert!(
            early == Ok(None) || early == full,
            "more bytes changed a refusal: {early:?} then {full:?}"
        ),
    }
});
