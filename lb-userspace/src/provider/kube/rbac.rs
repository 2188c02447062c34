//! Every Kubernetes API permission the provider uses, in one list: what `deploy/` grants (the
//! ClusterRole and the Role) must be exactly this, and what the code requests must be in it.
//!
//! - `tests/tests/deploy.rs` (lb-tests) expands the manifests' rules into (group, resource,
//!   verb, names) and compares them with [`PERMISSIONS`] both ways: a verb added to the
//!   ClusterRole fails, a permission the code needs and the manifests lack fails.
//! - The same suite runs the real binary against the fake API server through a whole life
//!   (listing, watching, electing, writing status from the node's addresses, releasing the Lease
//!   on SIGTERM) and checks that every request it made is in the list, and that every entry of
//!   the list was used.
//! - The reflectors check their kind against the list when they start (debug builds).
//!
//! The leader's Events are `events.k8s.io/v1` (created, and patched when they repeat). The admission webhook's permissions are
//! [`WEBHOOK_PERMISSIONS`], granted by `deploy/webhook/clusterrole.yaml` (checked the same way).

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Node, Secret, Service},
    discovery::v1::EndpointSlice,
    events::v1::Event,
    networking::v1::{Ingress, IngressClass},
};

/// The Lease that leader election takes (`StatusOptions::lease_name`); get and update are
/// restricted to it.
pub const LEASE_NAME: &str = "sluice-leader";

/// Where a permission applies: which RBAC object grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every namespace, or a cluster-scoped kind: the ClusterRole.
    Cluster,
    /// Only the Lease's namespace (`--lease-namespace`, by default the pod's): a Role there.
    LeaseNamespace,
}

/// An RBAC verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
}

impl Verb {
    pub const ALL: [Verb; 6] = [Verb::Get, Verb::List, Verb::Watch, Verb::Create, Verb::Update, Verb::Patch];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
        }
    }

    pub fn parse(verb: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == verb)
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One permission: a verb on a resource (or subresource) of an API group, optionally limited to
/// named objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    pub scope: Scope,
    /// The API group; `""` for the core group.
    pub group: &'static str,
    /// The resource's plural name (`ingresses`).
    pub plural: &'static str,
    /// A subresource (`status`), if the permission is on one.
    pub subresource: Option<&'static str>,
    pub verb: Verb,
    /// Only these objects (RBAC `resourceNames`); any object when empty.
    pub names: &'static [&'static str],
    /// What in the code needs it.
    pub why: &'static str,
}

impl Permission {
    const fn of<K: k8s_openapi::Resource>(scope: Scope, verb: Verb, why: &'static str) -> Permission {
        Permission {
            scope,
            group: K::GROUP,
            plural: K::URL_PATH_SEGMENT,
            subresource: None,
            verb,
            names: &[],
            why,
        }
    }

    /// A kind that k8s-openapi does not define (the Gateway API's), by group and plural.
    const fn raw(group: &'static str, plural: &'static str, verb: Verb, why: &'static str) -> Permission {
        Permission { scope: Scope::Cluster, group, plural, subresource: None, verb, names: &[], why }
    }

    const fn on(mut self, subresource: &'static str) -> Permission {
        self.subresource = Some(subresource);
        self
    }

    const fn named(mut self, names: &'static [&'static str]) -> Permission {
        self.names = names;
        self
    }

    /// The resource as RBAC rules name it: `ingresses`, `ingresses/status`.
    pub fn resource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.plural),
            None => self.plural.to_owned(),
        }
    }
}

const REFLECTOR: &str = "reflector (kube-rs watcher: paged list, then watch)";
const GATEWAY_STATUS: &str = "Gateway API status (merge patch of the status subresource)";
const GATEWAY_GROUP: &str = super::gateway_api::GROUP;

/// Everything the provider requests, and nothing more.
pub const PERMISSIONS: &[Permission] = &[
    // The reflectors (`Stores::start`), across all namespaces.
    Permission::of::<IngressClass>(Scope::Cluster, Verb::List, REFLECTOR),
    Permission::of::<IngressClass>(Scope::Cluster, Verb::Watch, REFLECTOR),
    Permission::of::<Ingress>(Scope::Cluster, Verb::List, REFLECTOR),
    Permission::of::<Ingress>(Scope::Cluster, Verb::Watch, REFLECTOR),
    Permission::of::<Service>(Scope::Cluster, Verb::List, REFLECTOR),
    Permission::of::<Service>(Scope::Cluster, Verb::Watch, REFLECTOR),
    Permission::of::<EndpointSlice>(Scope::Cluster, Verb::List, REFLECTOR),
    Permission::of::<EndpointSlice>(Scope::Cluster, Verb::Watch, REFLECTOR),
    // Field selector `type!=helm.sh/release.v1`; RBAC cannot express that restriction.
    Permission::of::<Secret>(Scope::Cluster, Verb::List, REFLECTOR),
    Permission::of::<Secret>(Scope::Cluster, Verb::Watch, REFLECTOR),
    // The controller ConfigMap and those `add-headers`, `proxy-set-headers` and the
    // `custom-headers` annotation name.
    Permission::of::<ConfigMap>(Scope::Cluster, Verb::List, REFLECTOR),
    Permission::of::<ConfigMap>(Scope::Cluster, Verb::Watch, REFLECTOR),
    // Listeners' `allowedRoutes.namespaces.selector` reads namespace labels.
    Permission::of::<Namespace>(Scope::Cluster, Verb::List, REFLECTOR),
    Permission::of::<Namespace>(Scope::Cluster, Verb::Watch, REFLECTOR),
    // The Gateway API (`gateway_api`), once its CRDs are installed.
    Permission::raw(GATEWAY_GROUP, "gatewayclasses", Verb::List, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "gatewayclasses", Verb::Watch, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "gateways", Verb::List, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "gateways", Verb::Watch, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "httproutes", Verb::List, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "httproutes", Verb::Watch, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "grpcroutes", Verb::List, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "grpcroutes", Verb::Watch, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "tlsroutes", Verb::List, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "tlsroutes", Verb::Watch, REFLECTOR),
    // TCPRoute and UDPRoute at the version served (`v1`, else `v1alpha2`), once served.
    Permission::raw(GATEWAY_GROUP, "tcproutes", Verb::List, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "tcproutes", Verb::Watch, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "udproutes", Verb::List, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "udproutes", Verb::Watch, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "referencegrants", Verb::List, REFLECTOR),
    Permission::raw(GATEWAY_GROUP, "referencegrants", Verb::Watch, REFLECTOR),
    // The leader's Gateway API status writer (`gateway_status`).
    Permission::raw(GATEWAY_GROUP, "gatewayclasses", Verb::Patch, GATEWAY_STATUS).on("status"),
    Permission::raw(GATEWAY_GROUP, "gateways", Verb::Patch, GATEWAY_STATUS).on("status"),
    Permission::raw(GATEWAY_GROUP, "httproutes", Verb::Patch, GATEWAY_STATUS).on("status"),
    Permission::raw(GATEWAY_GROUP, "grpcroutes", Verb::Patch, GATEWAY_STATUS).on("status"),
    Permission::raw(GATEWAY_GROUP, "tlsroutes", Verb::Patch, GATEWAY_STATUS).on("status"),
    Permission::raw(GATEWAY_GROUP, "tcproutes", Verb::Patch, GATEWAY_STATUS).on("status"),
    Permission::raw(GATEWAY_GROUP, "udproutes", Verb::Patch, GATEWAY_STATUS).on("status"),
    // The leader's status writer (`leader::Publisher`).
    Permission::of::<Ingress>(
        Scope::Cluster,
        Verb::Patch,
        "Ingress status (merge patch of the status subresource)",
    )
    .on("status"),
    Permission::of::<Node>(Scope::Cluster, Verb::Get, "this node's addresses, without --publish-address"),
    // The leader's Events on Ingresses (`events::Recorder`), in each Ingress's namespace.
    Permission::of::<Event>(Scope::Cluster, Verb::Create, "Events on Ingresses: the first occurrence"),
    Permission::of::<Event>(Scope::Cluster, Verb::Patch, "Events on Ingresses: a repeat raises series.count"),
    // Leader election (`leader::Elector`), in the Lease namespace.
    Permission::of::<Lease>(Scope::LeaseNamespace, Verb::Create, "leader election: the first candidate"),
    Permission::of::<Lease>(Scope::LeaseNamespace, Verb::Get, "leader election: read the holder")
        .named(&[LEASE_NAME]),
    Permission::of::<Lease>(
        Scope::LeaseNamespace,
        Verb::Update,
        "leader election: renew, take over, release",
    )
    .named(&[LEASE_NAME]),
];

const ADMISSION: &str = "the admission webhook's reflectors (sluice webhook)";

/// Everything `sluice webhook` requests (its own ClusterRole, `deploy/webhook/`): list and
/// watch on the kinds its translation reads; no Secrets, no EndpointSlices, no writes.
pub const WEBHOOK_PERMISSIONS: &[Permission] = &[
    Permission::of::<IngressClass>(Scope::Cluster, Verb::List, ADMISSION),
    Permission::of::<IngressClass>(Scope::Cluster, Verb::Watch, ADMISSION),
    Permission::of::<Ingress>(Scope::Cluster, Verb::List, ADMISSION),
    Permission::of::<Ingress>(Scope::Cluster, Verb::Watch, ADMISSION),
    Permission::of::<Service>(Scope::Cluster, Verb::List, ADMISSION),
    Permission::of::<Service>(Scope::Cluster, Verb::Watch, ADMISSION),
    Permission::of::<ConfigMap>(Scope::Cluster, Verb::List, ADMISSION),
    Permission::of::<ConfigMap>(Scope::Cluster, Verb::Watch, ADMISSION),
];

/// Whether [`PERMISSIONS`] grants `verb` on the resource (any object when `name` is `None`).
pub fn allows(scope: Scope, group: &str, resource: &str, verb: Verb, name: Option<&str>) -> bool {
    PERMISSIONS.iter().any(|p| {
        p.scope == scope
            && p.group == group
            && p.resource() == resource
            && p.verb == verb
            && (p.names.is_empty() || name.is_some_and(|n| p.names.contains(&n)))
    })
}

/// Whether a reflector (list, then watch, across all namespaces) on the resource is granted.
pub fn reflector_allowed(group: &str, plural: &str) -> bool {
    [Verb::List, Verb::Watch].into_iter().all(|verb| allows(Scope::Cluster, group, plural, verb, None))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn no_duplicates_and_every_reason_given() {
        let unique: BTreeSet<_> =
            PERMISSIONS.iter().map(|p| (p.scope, p.group, p.resource(), p.verb)).collect();
        assert_eq!(unique.len(), PERMISSIONS.len(), "a (scope, group, resource, verb) appears twice");
        assert!(PERMISSIONS.iter().all(|p| !p.why.is_empty()));
    }

    #[test]
    fn names_and_kinds_are_the_api_servers() {
        assert_eq!(super::super::leader::StatusOptions::default().lease_name, LEASE_NAME);
        let resources: BTreeSet<(&str, String)> =
            PERMISSIONS.iter().map(|p| (p.group, p.resource())).collect();
        let expected: BTreeSet<(&str, String)> = [
            ("networking.k8s.io", "ingressclasses"),
            ("networking.k8s.io", "ingresses"),
            ("networking.k8s.io", "ingresses/status"),
            ("", "services"),
            ("", "secrets"),
            ("", "configmaps"),
            ("", "nodes"),
            ("discovery.k8s.io", "endpointslices"),
            ("coordination.k8s.io", "leases"),
            ("", "namespaces"),
            ("gateway.networking.k8s.io", "gatewayclasses"),
            ("gateway.networking.k8s.io", "gatewayclasses/status"),
            ("gateway.networking.k8s.io", "gateways"),
            ("gateway.networking.k8s.io", "gateways/status"),
            ("gateway.networking.k8s.io", "httproutes"),
            ("gateway.networking.k8s.io", "httproutes/status"),
            ("gateway.networking.k8s.io", "grpcroutes"),
            ("gateway.networking.k8s.io", "grpcroutes/status"),
            ("gateway.networking.k8s.io", "tlsroutes"),
            ("gateway.networking.k8s.io", "tlsroutes/status"),
            ("gateway.networking.k8s.io", "tcproutes"),
            ("gateway.networking.k8s.io", "tcproutes/status"),
            ("gateway.networking.k8s.io", "udproutes"),
            ("gateway.networking.k8s.io", "udproutes/status"),
            ("gateway.networking.k8s.io", "referencegrants"),
            ("events.k8s.io", "events"),
        ]
        .into_iter()
        .map(|(g, r)| (g, r.to_owned()))
        .collect();
        assert_eq!(resources, expected);
    }

    #[test]
    fn allows_follows_the_list() {
        assert!(allows(Scope::Cluster, "networking.k8s.io", "ingresses", Verb::Watch, None));
        assert!(!allows(Scope::Cluster, "networking.k8s.io", "ingresses", Verb::Get, None));
        assert!(!allows(Scope::LeaseNamespace, "networking.k8s.io", "ingresses", Verb::List, None));
        assert!(allows(
            Scope::LeaseNamespace,
            "coordination.k8s.io",
            "leases",
            Verb::Update,
            Some(LEASE_NAME)
        ));
        assert!(!allows(Scope::LeaseNamespace, "coordination.k8s.io", "leases", Verb::Update, Some("other")));
        assert!(allows(Scope::LeaseNamespace, "coordination.k8s.io", "leases", Verb::Create, None));
        assert!(reflector_allowed("discovery.k8s.io", "endpointslices"));
        assert!(!reflector_allowed("", "nodes"));
        assert_eq!(Verb::parse("patch"), Some(Verb::Patch));
        assert_eq!(Verb::parse("delete"), None);
    }
}
