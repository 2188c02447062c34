//! The fake API server over HTTP/1.1: the listener (which can go down and come back on its
//! port), request routing by API path and verb, injected faults, and list, get, create,
//! replace, merge patch and delete answered from the store.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{
    Faults, Recorded, Shared, lock,
    store::{Filter, Key, ResourceType, Write, merge_patch, resource_by_path},
    watch::watch_response,
};

/// Binds with SO_REUSEADDR, so the same port can be bound again after going down.
pub(super) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections while up; going down closes the port, coming up binds it again.
pub(super) async fn serve(listener: tokio::net::TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    let mut up = shared.up.subscribe();
    loop {
        let Some(current) = listener.as_ref() else {
            // Down: wait to come up, then take the same port again.
            if up.wait_for(|up| *up).await.is_err() {
                return;
            }
            match bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        };
        tokio::select! {
            accepted = current.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut cut = shared.cut_connections.subscribe();
                    let service = {
                        let shared = shared.clone();
                        hyper::service::service_fn(move |request| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, request).await) }
                        })
                    };
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = cut.changed() => {}
                    }
                });
            }
            _ = up.wait_for(|up| !*up) => {
                listener = None;
            }
        }
    }
}

pub(super) type Body = BoxBody<Bytes, Infallible>;

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .expect("a valid response")
}

pub(super) fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

pub(super) fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_body(code, reason, message),
    )
}

/// A request's target, parsed.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) resource: &'static ResourceType,
    /// `None`: all namespaces (or a cluster-scoped kind).
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) status: bool,
}

/// The target of an API path; `None` for paths this server does not serve.
pub(super) fn parse_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some((*namespace).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let resource = resource_by_path(group, version, plural)?;
    if status && !resource.status {
        return None;
    }
    if resource.namespaced != namespace.is_some() && name.is_some() {
        return None;
    }
    if !resource.namespaced && namespace.is_some() {
        return None;
    }
    Some(Target { resource, namespace, name, status })
}

pub(super) fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) async fn handle(shared: Arc<Shared>, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let faults = lock(&shared.faults).clone();
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let response = if let Some(code) = faults.error_status {
        status_response(
            code,
            "InternalError",
            "an error on the server (\"injected fault\") has prevented the request from succeeding",
        )
    } else {
        route(&shared, &method, &path, &query, &body, &faults)
    };
    lock(&shared.requests).push(Recorded {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    response
}

pub(super) fn verb_of(method: &Method, target: &Target, query: &HashMap<String, String>) -> &'static str {
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match *method {
        Method::GET if watch => "watch",
        Method::GET if target.name.is_some() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

pub(super) fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    body: &Bytes,
    faults: &Faults,
) -> Response<Body> {
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}),
        );
    }
    let Some(target) = parse_target(path) else {
        let message = format!("the server could not find the requested resource ({path})");
        return status_response(404, "NotFound", &message);
    };
    let query = query_map(query);
    let verb = verb_of(method, &target, &query);
    if faults.forbidden.iter().any(|(v, p)| v == verb && p == target.resource.plural) {
        let scope = match &target.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let message = format!(
            "{} is forbidden: User \"system:serviceaccount:sluice:sluice\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            target.resource.qualified(),
            target.resource.plural,
            target.resource.group,
        );
        return status_response(403, "Forbidden", &message);
    }
    let subresource = if target.status { Write::Status } else { Write::Main };
    match verb {
        "watch" => watch_response(shared, &target, &query),
        "list" => list(shared, &target, &query),
        "get" => {
            let key = key_of(&target);
            match lock(&shared.store).objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => not_found(&target),
            }
        }
        "create" => {
            let Ok(object) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the body is not JSON");
            };
            let Some(name) = object["metadata"]["name"].as_str() else {
                return status_response(422, "Invalid", "metadata.name: Required value: name is required");
            };
            let key = Key {
                resource: target.resource,
                namespace: target.namespace.clone().unwrap_or_default(),
                name: name.to_owned(),
            };
            let mut store = lock(&shared.store);
            if store.objects.contains_key(&key) {
                return status_response(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{}\" already exists", target.resource.qualified(), key.name),
                );
            }
            let stored = store.create(key, object, false);
            drop(store);
            shared.notify();
            json_response(StatusCode::CREATED, &stored)
        }
        "update" => {
            let Ok(object) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the body is not JSON");
            };
            let key = key_of(&target);
            let mut store = lock(&shared.store);
            let Some(existing) = store.objects.get(&key).cloned() else {
                return not_found(&target);
            };
            if let Some(wanted) = object["metadata"]["resourceVersion"].as_str()
                && Some(wanted) != existing["metadata"]["resourceVersion"].as_str()
            {
                return status_response(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                        target.resource.qualified(),
                        key.name
                    ),
                );
            }
            let stored = store.update(&key, existing, object, subresource);
            drop(store);
            shared.notify();
            json_response(StatusCode::OK, &stored)
        }
        "patch" => {
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the body is not JSON");
            };
            let key = key_of(&target);
            let mut store = lock(&shared.store);
            let Some(existing) = store.objects.get(&key).cloned() else {
                return not_found(&target);
            };
            let mut object = existing.clone();
            merge_patch(&mut object, &patch);
            let stored = store.update(&key, existing, object, subresource);
            drop(store);
            shared.notify();
            json_response(StatusCode::OK, &stored)
        }
        "delete" => {
            let key = key_of(&target);
            let deleted = lock(&shared.store).delete(&key);
            shared.notify();
            match deleted {
                Some(object) => json_response(StatusCode::OK, &object),
                None => not_found(&target),
            }
        }
        _ => status_response(405, "MethodNotAllowed", "the server does not allow this method"),
    }
}

pub(super) fn key_of(target: &Target) -> Key {
    Key {
        resource: target.resource,
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
    }
}

pub(super) fn not_found(target: &Target) -> Response<Body> {
    let name = target.name.as_deref().unwrap_or("");
    status_response(404, "NotFound", &format!("{} \"{name}\" not found", target.resource.qualified()))
}

pub(super) fn list(shared: &Arc<Shared>, target: &Target, query: &HashMap<String, String>) -> Response<Body> {
    let mut store = lock(&shared.store);
    let (rv, mut items) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match store.pages.remove(token) {
            Some(page) => page,
            None => {
                return status_response(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
        },
        None => {
            let filter = Filter::new(target.resource, target.namespace.clone(), query);
            let items: VecDeque<Value> = store
                .objects
                .iter()
                .filter(|(k, v)| filter.in_scope(k) && filter.matches(v))
                .map(|(_, v)| v.clone())
                .collect();
            (store.rv, items)
        }
    };
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let page: Vec<Value> = match limit {
        Some(limit) if items.len() > limit => items.drain(..limit).collect(),
        _ => items.drain(..).collect(),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if !items.is_empty() {
        store.next_page += 1;
        let token = format!("page-{}", store.next_page);
        metadata["continue"] = json!(token.clone());
        metadata["remainingItemCount"] = json!(items.len());
        store.pages.insert(token, (rv, items));
    }
    let resource = target.resource;
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": resource.api_version(),
            "kind": format!("{}List", resource.kind),
            "metadata": metadata,
            "items": page,
        }),
    )
}
