//! The userspace L7 proxy: worker threads (each with its own runtime and listeners), the
//! serving snapshot they read, routing, balancing, upstream pools and health.

mod activity;
pub mod affinity;
pub mod balance;
pub mod body;
mod busy_poll;
pub mod endpoint;
pub mod forward;
pub mod h1_guard;
pub mod h1_server;
pub mod h1_upstream;
mod h1_wire;
pub mod headers;
pub mod health_check;
pub mod routing;
pub mod snapshot;
mod upstream;
mod worker;

pub use forward::WORKER_HEADER;
pub use worker::{Fault, WorkerOptions, Workers};
