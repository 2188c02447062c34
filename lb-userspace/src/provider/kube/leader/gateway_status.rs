//! The Gateway API statuses the leader writes: GatewayClass and Gateway conditions (the
//! Gateway's listeners and addresses too), and each route's (HTTPRoute, GRPCRoute, TLSRoute,
//! TCPRoute, UDPRoute at the version read)
//! `parents` entries for Sluice's Gateways. The translation computes what they should be ([`GatewayStatuses`]); this writes
//! the difference, under the same rules as the Ingress status: only while the Lease is ours,
//! through the status subresource, each write conditional on the object's resourceVersion as
//! read.
//!
//! A condition keeps its `lastTransitionTime` while its status stays the same (as
//! apimachinery's `SetStatusCondition`), so an unchanged state writes nothing. Route parents of
//! other controllers are kept; Sluice's entries for Gateways a route no longer names are
//! removed.

use std::net::IpAddr;

use kube::{
    Client, Resource,
    api::{Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use serde::Serialize;
use tokio::sync::watch;

use super::{Elector, log_api_error, status_code};
use crate::provider::kube::{
    gateway_api::{
        Condition, GRPCRoute, Gateway, GatewayAddress, GatewayClass, HTTPRoute, ListenerStatus,
        RouteParentStatus, RouteStatus, TCPRoute, TCPRouteV1Alpha2, TLSRoute, UDPRoute, UDPRouteV1Alpha2,
    },
    translate::{GATEWAY_CONTROLLER, GatewayStatuses, RouteKind},
};

/// What the writer reads: the desired statuses and the objects as the reflectors hold them.
pub struct GatewayStatusWriter {
    pub client: Client,
    pub statuses: watch::Receiver<GatewayStatuses>,
    pub classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub http_routes: Store<HTTPRoute>,
    pub grpc_routes: Store<GRPCRoute>,
    pub tls_routes: Store<TLSRoute>,
    pub l4_routes: crate::provider::kube::L4RouteStores,
}

/// The route kinds, for the writer: their status is the same `parents` list.
trait RouteObject:
    Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug
{
    const KIND: RouteKind;
    fn route_status(&self) -> Option<&RouteStatus>;
}

macro_rules! route_object {
    ($type:ty, $kind:expr) => {
        impl RouteObject for $type {
            const KIND: RouteKind = $kind;
            fn route_status(&self) -> Option<&RouteStatus> {
                self.status.as_ref()
            }
        }
    };
}
route_object!(HTTPRoute, RouteKind::Http);
route_object!(GRPCRoute, RouteKind::Grpc);
route_object!(TLSRoute, RouteKind::Tls);
route_object!(TCPRoute, RouteKind::Tcp);
route_object!(UDPRoute, RouteKind::Udp);
route_object!(TCPRouteV1Alpha2, RouteKind::Tcp);
route_object!(UDPRouteV1Alpha2, RouteKind::Udp);

/// Conditions as `desired` says, with the transition times of `current` kept where the
/// status did not change (and now where it did).
fn with_times(desired: &[Condition], current: &[Condition], now: &str) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let kept = current
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == d.status && !c.last_transition_time.is_empty());
            Condition {
                last_transition_time: kept.map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone()),
                ..d.clone()
            }
        })
        .collect()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Addresses as a Gateway status lists them.
fn gateway_addresses(addresses: &[String]) -> Vec<GatewayAddress> {
    addresses
        .iter()
        .map(|a| GatewayAddress {
            type_: Some(if a.parse::<IpAddr>().is_ok() { "IPAddress" } else { "Hostname" }.to_owned()),
            value: a.clone(),
        })
        .collect()
}

impl GatewayStatusWriter {
    /// Resolves when the desired statuses change.
    pub async fn changed(&mut self) -> bool {
        self.statuses.changed().await.is_ok()
    }

    /// Writes every status that differs, while `elector` may write.
    pub(super) async fn publish(&mut self, elector: &Elector, addresses: &[String]) {
        let desired = self.statuses.borrow_and_update().clone();
        let now = now();
        for ((_, name), status) in &desired.classes {
            let Some(class) = self.classes.get(&ObjectRef::new(name)) else { continue };
            let current = class.status.clone().unwrap_or_default();
            let conditions = with_times(&status.conditions, &current.conditions, &now);
            if conditions != current.conditions {
                let patch = serde_json::json!({"conditions": conditions});
                if !self.write(elector, class.as_ref(), patch).await {
                    return;
                }
            }
        }
        for ((namespace, name), status) in &desired.gateways {
            let Some(gateway) = self.gateways.get(&ObjectRef::new(name).within(namespace)) else { continue };
            let current = gateway.status.clone().unwrap_or_default();
            let listeners: Vec<ListenerStatus> = status
                .listeners
                .iter()
                .map(|l| {
                    let before = current.listeners.iter().find(|c| c.name == l.name);
                    let conditions =
                        with_times(&l.conditions, before.map_or(&[][..], |b| &b.conditions), &now);
                    ListenerStatus { conditions, ..l.clone() }
                })
                .collect();
            let next = crate::provider::kube::gateway_api::GatewayStatus {
                addresses: gateway_addresses(addresses),
                conditions: with_times(&status.conditions, &current.conditions, &now),
                listeners,
            };
            if next != current {
                let patch = serde_json::to_value(&next).unwrap_or_default();
                if !self.write(elector, gateway.as_ref(), patch).await {
                    return;
                }
            }
        }
        let _ = self.publish_routes(&self.http_routes, elector, &desired, &now).await
            && self.publish_routes(&self.grpc_routes, elector, &desired, &now).await
            && self.publish_routes(&self.tls_routes, elector, &desired, &now).await
            && self.publish_routes(&self.l4_routes.tcp, elector, &desired, &now).await
            && self.publish_routes(&self.l4_routes.udp, elector, &desired, &now).await
            && self.publish_routes(&self.l4_routes.tcp_v1alpha2, elector, &desired, &now).await
            && self.publish_routes(&self.l4_routes.udp_v1alpha2, elector, &desired, &now).await;
    }

    /// Writes the `parents` of one kind's routes where they differ; other controllers' parents
    /// are kept. False when the leader must stop writing.
    async fn publish_routes<K: RouteObject>(
        &self,
        store: &Store<K>,
        elector: &Elector,
        desired: &GatewayStatuses,
        now: &str,
    ) -> bool {
        for route in store.state() {
            let meta = route.meta();
            let key = (
                K::KIND,
                (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default()),
            );
            let ours = desired.routes.get(&key).map_or(&[][..], Vec::as_slice);
            let current = route.route_status().cloned().unwrap_or_default().parents;
            let mut parents: Vec<RouteParentStatus> =
                current.iter().filter(|p| p.controller_name != GATEWAY_CONTROLLER).cloned().collect();
            for parent in ours {
                let before = current
                    .iter()
                    .find(|c| c.controller_name == GATEWAY_CONTROLLER && c.parent_ref == parent.parent_ref);
                let conditions =
                    with_times(&parent.conditions, before.map_or(&[][..], |b| &b.conditions), now);
                parents.push(RouteParentStatus { conditions, ..parent.clone() });
            }
            if parents != current {
                let patch = serde_json::json!({"parents": parents});
                if !self.write(elector, route.as_ref(), patch).await {
                    return false;
                }
            }
        }
        true
    }

    /// One status write, conditional on the version read. False when the leader must stop
    /// writing (its deadline passed).
    async fn write<K>(&self, elector: &Elector, object: &K, status: serde_json::Value) -> bool
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let Some(deadline) = elector.deadline() else { return false };
        if !elector.may_write() {
            return false;
        }
        let meta = object.meta();
        let name = meta.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": meta.resource_version},
            "status": status,
        });
        let kind = K::kind(&());
        let resource = format!("{}/status", K::plural(&()));
        // The typed `Api` needs a scope known at compile time; the request builder does not.
        let request = kube::core::Request::new(K::url_path(&(), meta.namespace.as_deref()))
            .patch_subresource("status", &name, &PatchParams::default(), &Patch::Merge(&patch));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(%kind, name, error = %e, "cannot build the status request");
                return true;
            }
        };
        let client = self.client.clone();
        let sent = async move { client.request::<serde_json::Value>(request).await };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(_)) => tracing::debug!(%kind, name, "status written"),
            Ok(Err(e)) if status_code(&e) == Some(409) => {
                tracing::debug!(%kind, name, "changed since it was read; its status is written at the next round")
            }
            Ok(Err(e)) => log_api_error(&format!("writing {kind} status"), "patch", &resource, &e),
            Err(_) => {
                tracing::warn!(%kind, name, "status write abandoned: the leader Lease would expire");
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_stay_while_the_status_does() {
        let old = Condition {
            last_transition_time: "2026-01-01T00:00:00Z".into(),
            ..Condition::new("Accepted", true, "Accepted", "", 1)
        };
        let same = with_times(
            &[Condition::new("Accepted", true, "Accepted", "", 2)],
            std::slice::from_ref(&old),
            "later",
        );
        assert_eq!(same[0].last_transition_time, "2026-01-01T00:00:00Z");
        assert_eq!(same[0].observed_generation, 2);
        let flipped =
            with_times(&[Condition::new("Accepted", false, "NoMatchingParent", "", 2)], &[old], "later");
        assert_eq!(flipped[0].last_transition_time, "later");
        assert_eq!(
            gateway_addresses(&["192.0.2.1".into(), "lb.example".into()])[1].type_.as_deref(),
            Some("Hostname")
        );
    }
}
