//! Sluice: an eBPF-assisted hybrid L4/L7 load balancer. The `sluice` binary is a thin entry
//! point over this library; tests drive the same modules.

pub mod admin;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod metrics;
pub mod node;
pub mod provider;
pub mod proxy;
pub mod tls;

/// A map for the request path keyed by configuration names and endpoint addresses, never by
/// client input: a fast unkeyed hash is enough there (SipHash was a visible share of a request).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
