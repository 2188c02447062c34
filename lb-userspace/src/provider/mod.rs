//! Providers observe desired state and produce a complete, validated configuration: the file
//! provider (standalone) today, the Kubernetes provider next.

pub mod file;
