//! Providers observe desired state and produce a complete, validated configuration: the file
//! provider (standalone) and the Kubernetes provider (Ingresses, Services, EndpointSlices).

pub mod file;
pub mod kube;
