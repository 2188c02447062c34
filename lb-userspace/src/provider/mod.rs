//! Providers observe desired state and produce a complete, validated configuration: the file
//! provider (standalone) and the Kubernetes provider (Ingresses, Services, EndpointSlices).
//!
//! Both emit the same way: a stream of [`Update`]s, each a complete configuration to serve or a
//! refusal to count, which the command line (`cli.rs`) hands to the node in order. No provider
//! drives the node; the Kubernetes provider builds on the file provider's configurations (its
//! base) and emits its own.

pub mod file;
pub mod kube;

use std::{sync::Arc, time::Instant};

use crate::config::Config;

/// One item of a provider's stream.
#[derive(Debug)]
pub enum Update {
    /// A complete configuration to serve, swapped in whole.
    Serve(Desired),
    /// The desired state did not make a valid configuration: the node keeps serving the last
    /// one and counts the refusal.
    Refused { source: Source, error: String },
}

/// A complete configuration and where it came from.
#[derive(Debug)]
pub struct Desired {
    pub config: Arc<Config>,
    pub source: Source,
    /// When building it began: the log's `took_ms` runs from here to the node serving it.
    pub started: Instant,
    /// How many Ingresses it serves, when it is a translation of the cluster's state.
    pub ingresses: Option<usize>,
    /// How long translating and validating took, when it is a translation (the rest of
    /// `took_ms` is waiting for the node, compiling and swapping the snapshot).
    pub translated: Option<std::time::Duration>,
}

/// Which provider emitted an update and why, for the node's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration file, reloaded for `why` ("SIGHUP", "file changed").
    File { why: &'static str },
    /// The base file of Kubernetes mode, reloaded for `why`.
    Base { why: &'static str },
    /// The Kubernetes provider's translation of the cluster's state on top of the base.
    Kubernetes,
}

impl Source {
    /// Why the update was emitted, for a log line.
    pub fn why(self) -> &'static str {
        match self {
            Source::File { why } | Source::Base { why } => why,
            Source::Kubernetes => "the cluster or the base changed",
        }
    }
}
