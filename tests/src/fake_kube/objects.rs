//! Builders for the objects the suites need, as JSON.

use serde_json::{Value, json};

/// An Ingress with one rule: `host` (empty for none), `path` (Prefix) to `service:port`.
pub fn ingress(
    namespace: &str,
    name: &str,
    class: &str,
    host: &str,
    path: &str,
    service: &str,
    port: u16,
) -> Value {
    let mut rule = json!({
        "http": {"paths": [{
            "path": path,
            "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"number": port}}},
        }]}
    });
    if !host.is_empty() {
        rule["host"] = json!(host);
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"ingressClassName": class, "rules": [rule]},
    })
}

/// An IngressClass for `controller`.
pub fn ingress_class(name: &str, controller: &str, default: bool) -> Value {
    let mut class = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller},
    });
    if default {
        class["metadata"]["annotations"] = json!({"ingressclass.kubernetes.io/is-default-class": "true"});
    }
    class
}

/// A ClusterIP Service with one TCP port named `http`.
pub fn service(namespace: &str, name: &str, port: u16, target_port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}],
        },
    })
}

/// One endpoint of an EndpointSlice: address and its conditions.
#[derive(Debug, Clone)]
pub struct SliceEndpoint {
    pub address: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl SliceEndpoint {
    pub fn ready(address: &str) -> SliceEndpoint {
        SliceEndpoint { address: address.to_owned(), ready: true, serving: true, terminating: false }
    }

    pub fn not_ready(address: &str) -> SliceEndpoint {
        SliceEndpoint { address: address.to_owned(), ready: false, serving: false, terminating: false }
    }

    /// Shutting down but still answering (the rolling-update drain).
    pub fn terminating(address: &str) -> SliceEndpoint {
        SliceEndpoint { address: address.to_owned(), ready: false, serving: true, terminating: true }
    }
}

/// An EndpointSlice of `service` with port `http` = `port`.
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    address_type: &str,
    port: u16,
    endpoints: &[SliceEndpoint],
) -> Value {
    endpoint_slice_ports(namespace, name, service, address_type, &[("http", port, "TCP")], endpoints)
}

/// A ClusterIP Service with these ports: (name, port, targetPort, protocol).
pub fn service_ports(namespace: &str, name: &str, ports: &[(&str, u16, u16, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port, target, protocol)| {
            json!({"name": port_name, "port": port, "targetPort": target, "protocol": protocol})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"type": "ClusterIP", "ports": ports},
    })
}

/// A ConfigMap with this data.
pub fn config_map(namespace: &str, name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> =
        data.iter().map(|(key, value)| (key.to_string(), Value::from(*value))).collect();
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": namespace, "name": name}, "data": data})
}

/// An EndpointSlice of `service` with these ports: (name, port, protocol).
pub fn endpoint_slice_ports(
    namespace: &str,
    name: &str,
    service: &str,
    address_type: &str,
    ports: &[(&str, u16, &str)],
    endpoints: &[SliceEndpoint],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port, protocol)| json!({"name": port_name, "port": port, "protocol": protocol}))
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({
                "addresses": [e.address],
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": namespace,
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// The EndpointSlices of `service` as the EndpointSlice controller cuts them: at most
/// `per_slice` endpoints each (the controller's default is 100), named `<service>-<n>`.
pub fn endpoint_slices(
    namespace: &str,
    service: &str,
    address_type: &str,
    port: u16,
    endpoints: &[SliceEndpoint],
    per_slice: usize,
) -> Vec<Value> {
    endpoints
        .chunks(per_slice.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            endpoint_slice(namespace, &format!("{service}-{i}"), service, address_type, port, chunk)
        })
        .collect()
}

/// A `kubernetes.io/tls` Secret from PEM text.
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": namespace, "name": name},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64(cert_pem.as_bytes()), "tls.key": base64(key_pem.as_bytes())},
    })
}

/// An Opaque Secret with these keys and values (basic auth's `auth` key, or an auth-map).
pub fn opaque_secret(namespace: &str, name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> =
        data.iter().map(|(key, value)| (key.to_string(), Value::from(base64(value.as_bytes())))).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": namespace, "name": name},
        "type": "Opaque",
        "data": data,
    })
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The Gateway API's `apiVersion` for its v1 kinds.
pub const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";

/// A GatewayClass for `controller`.
pub fn gateway_class(name: &str, controller: &str) -> Value {
    json!({
        "apiVersion": GATEWAY_V1,
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller},
    })
}

/// A Gateway of `class` with these listeners (as the spec writes them).
pub fn gateway(namespace: &str, name: &str, class: &str, listeners: Value) -> Value {
    json!({
        "apiVersion": GATEWAY_V1,
        "kind": "Gateway",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"gatewayClassName": class, "listeners": listeners},
    })
}

/// An HTTPRoute with this spec.
pub fn http_route(namespace: &str, name: &str, spec: Value) -> Value {
    route("HTTPRoute", namespace, name, spec)
}

/// A GRPCRoute with this spec.
pub fn grpc_route(namespace: &str, name: &str, spec: Value) -> Value {
    route("GRPCRoute", namespace, name, spec)
}

/// A TLSRoute with this spec.
pub fn tls_route(namespace: &str, name: &str, spec: Value) -> Value {
    route("TLSRoute", namespace, name, spec)
}

/// The Gateway API's `apiVersion` for TCPRoute and UDPRoute in the fake API server (the
/// experimental channel's before v1.6).
pub const GATEWAY_V1ALPHA2: &str = "gateway.networking.k8s.io/v1alpha2";

/// A TCPRoute (`v1alpha2`) with this spec.
pub fn tcp_route(namespace: &str, name: &str, spec: Value) -> Value {
    let mut route = route("TCPRoute", namespace, name, spec);
    route["apiVersion"] = json!(GATEWAY_V1ALPHA2);
    route
}

/// A UDPRoute (`v1alpha2`) with this spec.
pub fn udp_route(namespace: &str, name: &str, spec: Value) -> Value {
    let mut route = route("UDPRoute", namespace, name, spec);
    route["apiVersion"] = json!(GATEWAY_V1ALPHA2);
    route
}

fn route(kind: &str, namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": GATEWAY_V1,
        "kind": kind,
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    })
}

/// A ReferenceGrant in `namespace` from `(kind, namespace)` of the Gateway API to `(kind, name)`
/// of the core group (`name` empty: all of that kind).
pub fn reference_grant(namespace: &str, name: &str, from: (&str, &str), to: (&str, &str)) -> Value {
    let mut target = json!({"group": "", "kind": to.0});
    if !to.1.is_empty() {
        target["name"] = json!(to.1);
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": from.0, "namespace": from.1}],
            "to": [target],
        },
    })
}

/// A Namespace with labels.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}
