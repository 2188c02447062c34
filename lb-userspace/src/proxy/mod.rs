//! The userspace L7 proxy, in rooms by concern (lowest first; a room uses only the ones above
//! it, which `tests/tests/architecture.rs` enforces):
//!
//! - [`body`]: the body types every room passes around (no I/O);
//! - [`headers`]: HTTP header rules (hop-by-hop fields, forwarding headers, request ids);
//! - [`access`]: authentication (basic auth), decided before a request goes upstream;
//! - [`route`]: the routing table, rewrites and redirects, compiled from the configuration;
//! - [`http1`]: the client-side connection codec (Sluice's own HTTP/1 server and request guard,
//!   HTTP/2 handed to hyper) and the HTTP/1 upstream client; it takes a request handler and
//!   knows nothing of the pipeline;
//! - [`upstream`]: backend groups, endpoints, balancing, active and passive health, affinity,
//!   pooled upstream connections and TLS passthrough;
//! - [`snapshot`]: the serving snapshot compiled from one configuration and swapped whole;
//! - [`rate_limit`]: per-client request, connection and bandwidth limits, one node-wide table
//!   shared by the workers without a lock;
//! - [`pipeline`]: what happens to one request, as named phases;
//! - [`worker`]: the worker threads, their listeners and accept loops.

pub mod access;
pub mod body;
pub mod cors;
pub mod header_ops;
pub mod headers;
pub mod http1;
pub mod l4;
pub mod pipeline;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod real_client;
pub mod route;
pub mod snapshot;
pub mod upstream;
mod worker;

pub use pipeline::WORKER_HEADER;
pub use worker::{Fault, WorkerOptions, Workers};
