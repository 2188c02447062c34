//! `--publish-service NAMESPACE/NAME`: the Ingresses' `status.loadBalancer` is the address of a
//! Service (typically the LoadBalancer Service in front of the nodes), read from the Service
//! store the translation already watches, so a change to the Service reaches the status at the
//! leader's next round without a request of its own. The addresses are ingress-nginx's
//! (`statusAddressFromService`): a LoadBalancer's `status.loadBalancer.ingress` (IP and host
//! name, ports dropped) plus its `externalIPs`, a NodePort's `externalIPs` (else its cluster
//! IP), a ClusterIP's cluster IP, an ExternalName's name; sorted by host name then IP, as
//! ingress-nginx compares them.

use k8s_openapi::api::networking::v1::IngressLoadBalancerIngress;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::provider::kube::service::Service;

/// What the Ingresses' status should say: `None` while the Service cannot be read (missing,
/// or of a type with no address), then the status is left as it is, as ingress-nginx leaves
/// it on an error; an empty list (a LoadBalancer still pending) clears it, as there.
pub type Published = Option<Vec<IngressLoadBalancerIngress>>;

/// The addresses `reference` (`NAMESPACE/NAME`) publishes, as the Service store holds it.
pub fn published(services: &Store<Service>, reference: &str) -> Published {
    let (namespace, name) = reference.split_once('/')?;
    addresses_of(&*services.get(&ObjectRef::new(name).within(namespace))?)
}

/// ingress-nginx's `statusAddressFromService`.
pub fn addresses_of(service: &Service) -> Published {
    let spec = service.spec.as_ref()?;
    let ip = |ip: &String| IngressLoadBalancerIngress { ip: Some(ip.clone()), ..Default::default() };
    let cluster_ip =
        || spec.cluster_ip.iter().filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()).map(ip).collect();
    let external_ips = spec.external_ips.as_deref().unwrap_or_default();
    let mut addresses: Vec<IngressLoadBalancerIngress> = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ExternalName" => {
            vec![IngressLoadBalancerIngress { hostname: spec.external_name.clone(), ..Default::default() }]
        }
        "ClusterIP" => cluster_ip(),
        "NodePort" if external_ips.is_empty() => cluster_ip(),
        "NodePort" => external_ips.iter().map(ip).collect(),
        "LoadBalancer" => {
            let status = service.status.as_ref().and_then(|s| s.load_balancer.as_ref());
            let mut addresses: Vec<IngressLoadBalancerIngress> = status
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .map(|entry| IngressLoadBalancerIngress {
                    ip: entry.ip.clone().filter(|ip| !ip.is_empty()),
                    hostname: entry.hostname.clone().filter(|name| !name.is_empty()),
                    ..Default::default()
                })
                .collect();
            for external in external_ips {
                let listed = |a: &IngressLoadBalancerIngress| {
                    a.ip.as_ref() == Some(external) || a.hostname.as_ref() == Some(external)
                };
                if !addresses.iter().any(listed) {
                    addresses.push(ip(external));
                }
            }
            addresses
        }
        _ => return None,
    };
    addresses.sort_by(|a, b| (&a.hostname, &a.ip).cmp(&(&b.hostname, &b.ip)));
    Some(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn text(published: Published) -> Option<Vec<String>> {
        published.map(|list| {
            list.iter()
                .map(|a| format!("{}|{}", a.hostname.as_deref().unwrap_or(""), a.ip.as_deref().unwrap_or("")))
                .collect()
        })
    }

    #[test]
    fn each_service_type_publishes_what_ingress_nginx_publishes() {
        let balancer = service(serde_json::json!({
            "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.9", "externalIPs": ["192.0.2.7", "198.51.100.1"]},
            "status": {"loadBalancer": {"ingress": [
                {"ip": "203.0.113.10", "ports": [{"port": 443, "protocol": "TCP"}]},
                {"hostname": "lb.example.com"},
                {"ip": "198.51.100.1"},
            ]}},
        }));
        // Sorted by host name then IP; an external IP already listed is not repeated.
        assert_eq!(
            text(addresses_of(&balancer)).unwrap(),
            ["|192.0.2.7", "|198.51.100.1", "|203.0.113.10", "lb.example.com|"]
        );
        let pending = service(serde_json::json!({"spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.9"}}));
        assert_eq!(text(addresses_of(&pending)), Some(vec![]));
        let node_port = serde_json::json!({"spec": {"type": "NodePort", "clusterIP": "10.0.0.9"}});
        assert_eq!(text(addresses_of(&service(node_port.clone()))).unwrap(), ["|10.0.0.9"]);
        let mut with_external = node_port;
        with_external["spec"]["externalIPs"] = serde_json::json!(["192.0.2.7"]);
        assert_eq!(text(addresses_of(&service(with_external))).unwrap(), ["|192.0.2.7"]);
        // A ClusterIP Service publishes its cluster IP only (its externalIPs are not read, as
        // there); a headless one has none.
        let cluster =
            service(serde_json::json!({"spec": {"clusterIP": "10.0.0.9", "externalIPs": ["192.0.2.7"]}}));
        assert_eq!(text(addresses_of(&cluster)).unwrap(), ["|10.0.0.9"]);
        let headless = service(serde_json::json!({"spec": {"clusterIP": "None"}}));
        assert_eq!(text(addresses_of(&headless)), Some(vec![]));
        let external = service(
            serde_json::json!({"spec": {"type": "ExternalName", "externalName": "edge.example.com"}}),
        );
        assert_eq!(text(addresses_of(&external)).unwrap(), ["edge.example.com|"]);
        assert_eq!(text(addresses_of(&service(serde_json::json!({"spec": {"type": "Other"}})))), None);
        assert_eq!(text(addresses_of(&service(serde_json::json!({})))), None);
    }
}
