//! The YAML configuration loader (`config`, `Config::from_yaml`) on any text. Properties:
//! never a panic; every error points into the text (line and column from 1, the line within
//! the text); a configuration it accepts compiles into a route table, and into a serving
//! snapshot unless it uses TLS (certificates are read only then). The seeded property test
//! `tests/tests/config_fuzz.rs` generates structured documents; this target lets coverage
//! find its own.
#![no_main]

use lb_userspace::{
    config::{Config, Error},
    proxy::{route::RouteTable, snapshot::Snapshot, upstream::endpoint::EndpointRegistry},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Lines as the loader counts them: LF, CRLF or a lone CR end a line.
    let lines = text.split('\n').flat_map(|l| l.split('\r')).count().max(1);
    match Config::from_yaml(text, "fuzz.yaml") {
        Ok(config) => {
            RouteTable::build(&config).expect("accepted by validation, refused by the route compiler");
            let uses_tls = !config.certificates.is_empty()
                || config.listeners.iter().any(|l| l.tls.is_some())
                || config.virtual_hosts.iter().any(|h| h.tls.is_some())
                || config.backends.iter().any(|b| b.tls.is_some());
            let built = Snapshot::build(&config, &EndpointRegistry::default(), 1);
            assert!(uses_tls || built.is_ok(), "accepted by validation, refused by the snapshot");
        }
        Err(Error::Parse { line, column, .. }) => {
            assert!(line >= 1 && column >= 1 && line <= lines + 1, "a parse error at {line}:{column}");
        }
        Err(Error::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            for p in &problems {
                assert!(
                    p.line >= 1 && p.column >= 1 && p.line <= lines + 1,
                    "a problem at {}:{}",
                    p.line,
                    p.column
                );
            }
        }
        Err(Error::Read { .. }) => unreachable!("nothing is read from disk"),
    }
});
