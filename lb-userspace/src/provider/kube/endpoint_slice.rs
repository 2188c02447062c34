//! An EndpointSlice as the stores keep it: what the translation reads and nothing else.
//!
//! k8s-openapi's `Endpoint` is about 350 bytes before its strings (a target reference,
//! hints, topology maps, hostname, node and zone, every one an `Option` of owned data), and a
//! cluster has ten or more endpoints for every Service: at 20,000 Services the endpoints were
//! the largest share of the process's memory. Here an endpoint is its parsed addresses and its
//! three conditions (40 bytes), and the slice's metadata keeps only the name, namespace,
//! resourceVersion and uid, with the Service label as a field of its own. The reflector
//! converts each object as it arrives, so the full one is never held longer than its event;
//! `sluice check` and the tests convert the same way (serde reads the API's shape).

use std::net::IpAddr;

use k8s_openapi::{
    api::discovery::v1::{EndpointPort, EndpointSlice as ApiEndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::translate::SERVICE_NAME_LABEL;

/// An EndpointSlice, as the translation reads it.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(from = "ApiEndpointSlice")]
pub struct EndpointSlice {
    /// Name, namespace, resourceVersion and uid (no labels: a map of one entry allocates a
    /// node of eleven, about 550 bytes per slice).
    pub metadata: ObjectMeta,
    /// The Service it belongs to: its `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// `IPv4`, `IPv6` or `FQDN` (which nothing reads).
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint: its addresses (parsed) and conditions as the API gave them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceEndpoint {
    /// The first address, `None` when it is missing or not an IP address: it is the one the
    /// HTTP backends take.
    pub first: Option<IpAddr>,
    /// The other addresses that are IP addresses (stream services take every address).
    pub rest: Box<[IpAddr]>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl SliceEndpoint {
    /// Every address that is an IP address, the first first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.first.iter().chain(self.rest.iter()).copied()
    }
}

impl From<ApiEndpointSlice> for EndpointSlice {
    fn from(slice: ApiEndpointSlice) -> EndpointSlice {
        let ApiEndpointSlice { address_type, endpoints, mut metadata, ports } = slice;
        let service = metadata.labels.take().and_then(|mut labels| labels.remove(SERVICE_NAME_LABEL));
        let metadata = super::stored_metadata(metadata);
        let endpoints = endpoints
            .into_iter()
            .flatten()
            .map(|endpoint| {
                let mut addresses = endpoint.addresses.iter();
                let first = addresses.next().and_then(|a| a.parse().ok());
                let conditions = endpoint.conditions.unwrap_or_default();
                SliceEndpoint {
                    first,
                    rest: addresses.filter_map(|a| a.parse().ok()).collect(),
                    ready: conditions.ready,
                    serving: conditions.serving,
                    terminating: conditions.terminating,
                }
            })
            .collect();
        EndpointSlice { metadata, service, address_type, ports: ports.unwrap_or_default(), endpoints }
    }
}

// The reflector keeps these in a store like any API object.
stored_as!(EndpointSlice, ApiEndpointSlice);

#[cfg(test)]
mod tests {
    use super::*;

    /// What the translation reads survives; the rest is gone.
    #[test]
    fn an_api_slice_keeps_what_the_translation_reads() {
        let api: ApiEndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-abc", "namespace": "apps", "resourceVersion": "7", "uid": "u-1",
                "labels": {"kubernetes.io/service-name": "web", "app": "web"},
                "annotations": {"a": "b"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "nodeName": "n1", "zone": "z", "targetRef": {"kind": "Pod", "name": "web-1"}},
                {"addresses": ["not-an-ip", "10.0.0.3", "also-not"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["fd00::1", "10.0.0.4"]},
            ],
        }))
        .unwrap();
        let slice = EndpointSlice::from(api);
        assert_eq!(slice.metadata.name.as_deref(), Some("web-abc"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(slice.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(slice.service.as_deref(), Some("web"), "the Service label");
        assert_eq!(slice.metadata.labels, None, "no other label, and no map");
        assert_eq!(slice.metadata.annotations, None);
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.ports.len(), 1);
        let [one, two, three] = &slice.endpoints[..] else { panic!("{:?}", slice.endpoints) };
        assert_eq!(
            (one.first, one.ready, one.serving, one.terminating),
            (Some([10, 0, 0, 1].into()), Some(true), None, None)
        );
        assert_eq!(two.first, None, "an unparsable first address");
        assert_eq!(two.addresses().collect::<Vec<_>>(), [IpAddr::from([10, 0, 0, 3])]);
        assert_eq!((two.ready, two.terminating), (Some(false), Some(true)));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(three.addresses().collect::<Vec<_>>(), [v6, IpAddr::from([10, 0, 0, 4])]);
        assert_eq!((three.ready, three.serving, three.terminating), (None, None, None));
        // serde reads the API's shape straight into the kept one.
        let read: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"}, "addressType": "IPv6", "endpoints": [{"addresses": ["fd00::2"]}],
        }))
        .unwrap();
        assert_eq!(read.endpoints[0].first, Some("fd00::2".parse().unwrap()));
        assert!(std::mem::size_of::<SliceEndpoint>() <= 40, "{}", std::mem::size_of::<SliceEndpoint>());
    }
}
