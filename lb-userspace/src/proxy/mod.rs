//! The userspace L7 workers: one thread per worker, each with its own runtime and listener.

pub mod endpoint;
mod worker;

pub use worker::{Fault, WORKER_HEADER, WorkerOptions, Workers};
