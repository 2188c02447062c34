//! A Service as the stores keep it: what the translation and the status writer read.
//!
//! k8s-openapi's `Service` is about a kilobyte before its strings (its spec alone has some
//! thirty optional fields: selectors, IP families, traffic policies, session affinity...),
//! and a cluster has a Service for every backend: at 20,000 Ingresses the Services were the
//! second largest share of the stored objects. Here a Service keeps its name, namespace,
//! resourceVersion and uid, its type, ports, cluster IP, external IPs and external name, and
//! its load balancer's status (`--publish-service`). The reflector converts each object as it
//! arrives, so the full one is never held longer than its event; `sluice check` and the tests
//! convert the same way (serde reads the API's shape).

use k8s_openapi::{
    api::core::v1::{LoadBalancerStatus, Service as ApiService, ServicePort},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// A Service, as the translation and the status writer read it.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(from = "ApiService")]
pub struct Service {
    /// Name, namespace, resourceVersion and uid (no labels, annotations or owners: nothing
    /// reads them).
    pub metadata: ObjectMeta,
    pub spec: Option<ServiceSpec>,
    pub status: Option<ServiceStatus>,
}

/// The part of a Service's spec that is read; the fields keep the API's names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceSpec {
    /// `ClusterIP` when absent.
    pub type_: Option<String>,
    pub ports: Option<Vec<ServicePort>>,
    pub cluster_ip: Option<String>,
    pub external_ips: Option<Vec<String>>,
    pub external_name: Option<String>,
}

/// The part of a Service's status that is read: its load balancer's addresses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceStatus {
    pub load_balancer: Option<LoadBalancerStatus>,
}

impl From<ApiService> for Service {
    fn from(service: ApiService) -> Service {
        let ApiService { metadata, spec, status } = service;
        let metadata = super::stored_metadata(metadata);
        let spec = spec.map(|spec| ServiceSpec {
            type_: spec.type_,
            ports: spec.ports,
            cluster_ip: spec.cluster_ip,
            external_ips: spec.external_ips,
            external_name: spec.external_name,
        });
        let status = status.map(|status| ServiceStatus { load_balancer: status.load_balancer });
        Service { metadata, spec, status }
    }
}

// The reflector keeps these in a store like any API object.
stored_as!(Service, ApiService);

#[cfg(test)]
mod tests {
    use super::*;

    /// What is read survives; the rest is gone.
    #[test]
    fn an_api_service_keeps_what_is_read() {
        let api: ApiService = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "web", "namespace": "apps", "resourceVersion": "7", "uid": "u-1",
                "labels": {"app": "web", "app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "web"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u-2"}],
            },
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "web"},
                "clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"],
                "externalIPs": ["192.0.2.7"],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
            "status": {
                "loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]},
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "r", "message": "m"}],
            },
        }))
        .unwrap();
        let service = Service::from(api);
        assert_eq!(service.metadata.name.as_deref(), Some("web"));
        assert_eq!(service.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(service.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(service.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(service.metadata.labels, None);
        assert_eq!(service.metadata.annotations, None);
        assert_eq!(service.metadata.owner_references, None);
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.7"));
        assert_eq!(spec.external_ips.as_deref(), Some(&["192.0.2.7".to_owned()][..]));
        let ports = spec.ports.as_deref().unwrap();
        assert_eq!((ports[0].name.as_deref(), ports[0].port), (Some("http"), 80));
        let balancer = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).unwrap();
        assert_eq!(balancer.ingress.as_ref().unwrap()[0].ip.as_deref(), Some("203.0.113.9"));
        // serde reads the API's shape straight into the kept one.
        let read: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "db.example"},
        }))
        .unwrap();
        assert_eq!(read.spec.unwrap().external_name.as_deref(), Some("db.example"));
        // A third smaller than the API's type before any string or map (the object metadata
        // the store needs is most of what is left).
        let (kept, api) = (std::mem::size_of::<Service>(), std::mem::size_of::<ApiService>());
        assert!(kept * 3 < api * 2, "{kept} against {api}");
    }
}
