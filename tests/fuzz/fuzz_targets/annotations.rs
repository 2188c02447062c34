//! The Ingress annotation reader (`provider/kube/annotations.rs`): every name of the table
//! (under either prefix) and unknown ones, with any value. Properties: never a panic; reading
//! is deterministic; a name ingress-nginx refuses (a snippet) always refuses the Ingress.
//!
//! Input: records separated by 0xff; in each, the first byte picks the name (a table entry
//! under `nginx.ingress.kubernetes.io/` or `sluice.dev/`, or the bytes as a raw key) and the
//! rest is the value.
#![no_main]

use std::collections::BTreeMap;

use lb_userspace::provider::kube::annotations::{self, ANNOTATIONS, Class, NGINX_PREFIX, SLUICE_PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut raw = BTreeMap::new();
    let mut refused_name = false;
    for record in data.split(|&b| b == 0xff) {
        let Some((&pick, value)) = record.split_first() else { continue };
        let value = String::from_utf8_lossy(value).into_owned();
        let index = usize::from(pick >> 1);
        let key = match ANNOTATIONS.get(index) {
            Some(annotation) => {
                refused_name |= matches!(annotation.class, Class::Refused(_));
                let prefix = if pick & 1 == 0 { NGINX_PREFIX } else { SLUICE_PREFIX };
                format!("{prefix}{}", annotation.name)
            }
            None => format!("{NGINX_PREFIX}{}", String::from_utf8_lossy(&[pick])),
        };
        raw.insert(key, value);
    }
    let reading = annotations::read(&raw);
    let again = annotations::read(&raw);
    assert_eq!(reading.refused, again.refused);
    assert_eq!(reading.warnings, again.warnings);
    assert_eq!(format!("{:?}", reading.annotations), format!("{:?}", again.annotations));
    if refused_name {
        assert!(reading.refused.is_some(), "a refused annotation did not refuse the Ingress");
    }
});
