//! Everything on the backend side of a request: the backend groups a snapshot holds
//! ([`group`]), endpoints with their load and passive health ([`endpoint`]), the balancing
//! algorithms ([`balance`]), active health checks ([`health_check`]), cookie affinity
//! ([`affinity`]), the request body shared between attempts ([`request_body`]), the pooled
//! upstream connections ([`pool`]) and TLS passthrough ([`passthrough`]).

pub mod affinity;
pub mod balance;
pub mod endpoint;
pub mod group;
pub mod health_check;
pub mod passthrough;
pub mod pool;
pub mod request_body;

pub use group::{BackendGroup, RetryBudget};
