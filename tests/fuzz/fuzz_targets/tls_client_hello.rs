//! The ClientHello/SNI parser (`tls/sni.rs`) on the first bytes of a connection. Properties:
//! never a panic; a verdict other than "more bytes" holds for every longer input (what the
//! parser decided from a prefix, more bytes do not change), and every prefix of an input whose
//! hello parsed is either incomplete or the same hello; a server name is never empty.
#![no_main]

use lb_userspace::tls::sni::{self, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    let full = sni::parse(input);
    let prefix = &input[..(usize::from(cut) * input.len() / 255).min(input.len())];
    let early = sni::parse(prefix);
    if !matches!(early, Parsed::Incomplete) {
        assert_eq!(early, full, "more bytes changed a final verdict");
    }
    if let Parsed::Hello(hello) = &full {
        assert!(hello.server_name.as_ref().is_none_or(|name| !name.is_empty()), "an empty server name");
    }
});
