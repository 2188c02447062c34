//! The fake API server over HTTP/1.1: the listener (which can go down and come back on its
//! port), request routing by API path and verb, injected faults, and list, get, create,
//! replace, merge patch and delete answered from the store.

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{
    FaultRule, Faults, Recorded, Shared, lock, selects,
    store::{Deleted, Filter, Key, Page, RESOURCES, ResourceType, Write, merge_patch, resource_by_path},
    watch::watch_response,
};

/// Binds with SO_REUSEADDR, so the same port can be bound again after going down.
pub(super) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections while up (over TLS with `tls`); going down closes the port, coming up
/// binds it again.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
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
                let (shared, tls) = (shared.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                connection(stream, shared).await;
                            }
                        }
                        None => connection(stream, shared).await,
                    }
                });
            }
            _ = up.wait_for(|up| !*up) => {
                listener = None;
            }
        }
    }
}

/// Serves one connection until it ends or connections are cut.
async fn connection<IO>(stream: IO, shared: Arc<Shared>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
    let header = |name: &str| -> String {
        request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    let (user_agent, content_type) = (header("user-agent"), header("content-type"));
    let authorization = header("authorization");
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let faults = lock(&shared.faults).clone();
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let parsed = query_map(&query);
    let verb = match parse_target(&path) {
        Some(target) => verb_of(&method, &target, &parsed),
        None => "get",
    };
    let request = ApiRequest {
        method: &method,
        path: &path,
        query: &query,
        body: &body,
        content_type: &content_type,
        user_agent: &user_agent,
        authorization: &authorization,
    };
    let (response, applied) = answer(&shared, &faults, verb, &request).await;
    let field_manager = parsed.get("fieldManager").cloned();
    lock(&shared.requests).push(Recorded {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        user_agent,
        field_manager,
        applied,
    });
    response
}

/// One request as routing needs it.
pub(super) struct ApiRequest<'a> {
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    pub(super) query: &'a str,
    pub(super) body: &'a Bytes,
    pub(super) content_type: &'a str,
    pub(super) user_agent: &'a str,
    pub(super) authorization: &'a str,
}

/// The answer to a request after the injected faults, and whether it changed the store.
async fn answer(
    shared: &Arc<Shared>,
    faults: &Faults,
    verb: &str,
    request: &ApiRequest<'_>,
) -> (Response<Body>, bool) {
    if let Some(tokens) = &faults.tokens {
        let bearer = request.authorization.strip_prefix("Bearer ").unwrap_or("");
        if !tokens.iter().any(|t| t == bearer) {
            return (status_response(401, "Unauthorized", "Unauthorized"), false);
        }
    }
    if let Some((until, retry_after)) = faults.unavailable_until
        && std::time::Instant::now() < until
    {
        return (throttled(429, Some(retry_after)), false);
    }
    let method = request.method.as_str();
    if faults.black_holes.iter().any(|(m, glob)| selects(m, glob, method, verb, request.path)) {
        lock(&shared.held).push((method.to_owned(), verb.to_owned(), request.path.to_owned()));
        if verb == "watch" {
            let silent = parse_target(request.path).map(|target| super::watch::silent_watch(shared, &target));
            if let Some(response) = silent {
                return (response, false);
            }
        }
        return (black_hole(shared).await, false);
    }
    let rule = take_rule(shared, method, verb, request);
    match rule {
        Some(rule) if !rule.apply_first => (throttled(rule.code, rule.retry_after), false),
        Some(rule) => {
            let (response, applied) = route(shared, request, faults);
            if response.status().is_success() {
                (throttled(rule.code, rule.retry_after), applied)
            } else {
                (response, applied)
            }
        }
        None => match faults.error_status {
            Some(code) => (
                status_response(
                    code,
                    "InternalError",
                    "an error on the server (\"injected fault\") has prevented the request from succeeding",
                ),
                false,
            ),
            None => route(shared, request, faults),
        },
    }
}

/// The first rule left that selects the request, counted down (and dropped when used up).
fn take_rule(shared: &Shared, method: &str, verb: &str, request: &ApiRequest<'_>) -> Option<FaultRule> {
    let path = request.path;
    let agent = request.user_agent;
    let mut faults = lock(&shared.faults);
    let index = faults.rules.iter().position(|r| {
        r.remaining > 0
            && r.agent.as_ref().is_none_or(|a| agent.contains(a.as_str()))
            && selects(&r.method, &r.glob, method, verb, path)
    })?;
    let rule = &mut faults.rules[index];
    rule.remaining -= 1;
    let taken = rule.clone();
    if rule.remaining == 0 {
        faults.rules.remove(index);
    }
    Some(taken)
}

/// An error answer as kube-apiserver words it, with `Retry-After` when given.
fn throttled(code: u16, retry_after: Option<u64>) -> Response<Body> {
    let (reason, message) = match code {
        429 => ("TooManyRequests", "Too many requests, please try again later."),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request",
        ),
        500 => (
            "InternalError",
            "an error on the server (\"injected fault\") has prevented the request from succeeding",
        ),
        _ => ("InternalError", "injected fault"),
    };
    let mut response = status_response(code, reason, message);
    if let Some(seconds) = retry_after {
        response.headers_mut().insert("retry-after", seconds.into());
    }
    response
}

/// Holds a request without answering until the black holes are lifted or connections are cut;
/// a lifted one is closed with a 504.
async fn black_hole(shared: &Arc<Shared>) -> Response<Body> {
    let mut lifted = shared.lifted.subscribe();
    let mut cut = shared.cut_connections.subscribe();
    tokio::select! {
        _ = lifted.changed() => {}
        _ = cut.changed() => {}
    }
    let mut response = throttled(504, None);
    response.headers_mut().insert("connection", hyper::header::HeaderValue::from_static("close"));
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

/// `GET /apis/GROUP/VERSION`: the group version's resources (an `APIResourceList`), as
/// discovery clients read them; `None` for other paths.
fn discovery(path: &str, faults: &Faults) -> Option<Response<Body>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version) = match segments.as_slice() {
        ["apis", group, version] => (*group, *version),
        ["api", version] => ("", *version),
        _ => return None,
    };
    let served: Vec<_> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .filter(|r| !faults.absent_gateway_kinds.iter().any(|p| p == r.plural))
        .collect();
    if served.is_empty() || (faults.gateway_api_absent && group == super::store::GATEWAY_GROUP) {
        let message = format!("the server could not find the requested resource ({path})");
        return Some(status_response(404, "NotFound", &message));
    }
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    let mut resources = Vec::new();
    for r in served {
        resources.push(json!({"name": r.plural, "singularName": r.kind.to_ascii_lowercase(), "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs}));
        if r.status {
            resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    let list = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources});
    Some(json_response(StatusCode::OK, &list))
}

pub(super) fn route(
    shared: &Arc<Shared>,
    request: &ApiRequest<'_>,
    faults: &Faults,
) -> (Response<Body>, bool) {
    let path = request.path;
    if path == "/version" {
        let version = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"});
        return (json_response(StatusCode::OK, &version), false);
    }
    if let Some(discovery) = discovery(path, faults) {
        return (discovery, false);
    }
    let target = parse_target(path)
        .filter(|t| !(faults.gateway_api_absent && t.resource.group == super::store::GATEWAY_GROUP))
        .filter(|t| !faults.absent_gateway_kinds.iter().any(|p| p == t.resource.plural));
    let Some(target) = target else {
        let message = format!("the server could not find the requested resource ({path})");
        return (status_response(404, "NotFound", &message), false);
    };
    let query = query_map(request.query);
    let verb = verb_of(request.method, &target, &query);
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
        return (status_response(403, "Forbidden", &message), false);
    }
    let read = |response| (response, false);
    match verb {
        "watch" => read(watch_response(shared, &target, &query)),
        "list" => read(list(shared, &target, &query)),
        "get" => read(match lock(&shared.store).objects.get(&key_of(&target)) {
            Some(object) => json_response(StatusCode::OK, object),
            None => not_found(&target),
        }),
        "create" => create(shared, &target, request.body),
        "update" | "patch" => {
            let change = if verb == "update" {
                Change::Replace(request.body)
            } else {
                Change::Patch { body: request.body, content_type: request.content_type, query: &query }
            };
            write(shared, &target, change)
        }
        "delete" => {
            let deleted = lock(&shared.store).delete(&key_of(&target));
            shared.notify();
            match deleted {
                Some(Deleted::Gone(object) | Deleted::Pending(object)) => {
                    (json_response(StatusCode::OK, &object), true)
                }
                None => read(not_found(&target)),
            }
        }
        _ => read(status_response(405, "MethodNotAllowed", "the server does not allow this method")),
    }
}

fn create(shared: &Arc<Shared>, target: &Target, body: &Bytes) -> (Response<Body>, bool) {
    let Ok(object) = serde_json::from_slice::<Value>(body) else {
        return (status_response(400, "BadRequest", "the body is not JSON"), false);
    };
    let Some(name) = object["metadata"]["name"].as_str() else {
        return (status_response(422, "Invalid", "metadata.name: Required value: name is required"), false);
    };
    let key = Key {
        resource: target.resource,
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.to_owned(),
    };
    let mut store = lock(&shared.store);
    if store.objects.contains_key(&key) {
        let message = format!("{} \"{}\" already exists", target.resource.qualified(), key.name);
        return (status_response(409, "AlreadyExists", &message), false);
    }
    let stored = store.create(key, object, false);
    drop(store);
    shared.notify();
    (json_response(StatusCode::CREATED, &stored), true)
}

/// A replace (PUT) or a patch, of the main resource or its status.
enum Change<'a> {
    Replace(&'a Bytes),
    Patch { body: &'a Bytes, content_type: &'a str, query: &'a HashMap<String, String> },
}

/// The patch media types kube-apiserver accepts.
const PATCH_TYPES: &str = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json";

fn write(shared: &Arc<Shared>, target: &Target, change: Change<'_>) -> (Response<Body>, bool) {
    let subresource = if target.status { Write::Status } else { Write::Main };
    let key = key_of(target);
    let mut store = lock(&shared.store);
    let Some(existing) = store.objects.get(&key).cloned() else {
        return (not_found(target), false);
    };
    let object = match change {
        Change::Replace(body) => {
            let Ok(object) = serde_json::from_slice::<Value>(body) else {
                return (status_response(400, "BadRequest", "the body is not JSON"), false);
            };
            object
        }
        Change::Patch { body, content_type, query } => match patched(&existing, body, content_type, query) {
            Ok(object) => object,
            Err((code, reason, message)) => return (status_response(code, reason, &message), false),
        },
    };
    // A write that names a resourceVersion (a replace, or a patch that sets one) is a
    // precondition: it applies only to that version.
    if let Some(wanted) = object["metadata"]["resourceVersion"].as_str()
        && Some(wanted) != existing["metadata"]["resourceVersion"].as_str()
    {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
            target.resource.qualified(),
            key.name
        );
        return (status_response(409, "Conflict", &message), false);
    }
    if subresource == Write::Status
        && let Some(message) = invalid_status(target.resource, &key.name, &object)
    {
        return (status_response(422, "Invalid", &message), false);
    }
    let before = store.rv;
    let stored = store.update(&key, existing, object, subresource);
    let applied = store.rv != before;
    drop(store);
    shared.notify();
    (json_response(StatusCode::OK, &stored), applied)
}

/// `existing` with a patch of the request's media type applied, or the error answer.
fn patched(
    existing: &Value,
    body: &Bytes,
    content_type: &str,
    query: &HashMap<String, String>,
) -> Result<Value, (u16, &'static str, String)> {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let not_json = || (400, "BadRequest", "the body of the request is not valid JSON".to_owned());
    let patch = |body: &Bytes| serde_json::from_slice::<Value>(body).map_err(|_| not_json());
    let mut object = existing.clone();
    match media_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            // Strategic merge patches are applied as merge patches: the suites' lists are
            // replaced whole either way.
            merge_patch(&mut object, &patch(body)?);
        }
        "application/apply-patch+yaml" => {
            if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err((
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
                        .to_owned(),
                ));
            }
            // JSON is YAML; server-side apply is merged like a merge patch here.
            merge_patch(&mut object, &patch(body)?);
        }
        "application/json-patch+json" => {
            let operations = patch(body)?;
            json_patch(&mut object, &operations)
                .map_err(|message| (422, "Invalid", format!("the JSON patch failed: {message}")))?;
        }
        other => {
            let message = format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: {PATCH_TYPES}"
            );
            return Err((415, "UnsupportedMediaType", message));
        }
    }
    Ok(object)
}

/// RFC 6902 JSON patch: `add`, `replace`, `remove` and `test`.
fn json_patch(target: &mut Value, operations: &Value) -> Result<(), String> {
    let operations = operations.as_array().ok_or("the patch is not a list of operations")?;
    for operation in operations {
        let op = operation["op"].as_str().unwrap_or("");
        let pointer = operation["path"].as_str().ok_or("an operation has no path")?;
        let (parent, last) = pointer.rsplit_once('/').ok_or_else(|| format!("bad path {pointer}"))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match op {
            "test" => {
                if target.pointer(pointer) != Some(&operation["value"]) {
                    return Err(format!("test failed at {pointer}"));
                }
            }
            "add" | "replace" | "remove" => {
                let container = target.pointer_mut(parent).ok_or_else(|| format!("no {parent}"))?;
                let value = operation["value"].clone();
                match container {
                    Value::Object(map) => {
                        if op != "add" && !map.contains_key(&last) {
                            return Err(format!("no {pointer}"));
                        }
                        if op == "remove" {
                            map.remove(&last);
                        } else {
                            map.insert(last, value);
                        }
                    }
                    Value::Array(list) => {
                        let index = if last == "-" {
                            list.len()
                        } else {
                            last.parse().map_err(|_| format!("bad index {last}"))?
                        };
                        match op {
                            "add" if index <= list.len() => list.insert(index, value),
                            "replace" if index < list.len() => list[index] = value,
                            "remove" if index < list.len() => drop(list.remove(index)),
                            _ => return Err(format!("index {index} out of range")),
                        }
                    }
                    _ => return Err(format!("{parent} is not a container")),
                }
            }
            other => return Err(format!("unsupported operation {other:?}")),
        }
    }
    Ok(())
}

/// Why kube-apiserver would refuse `object`'s load-balancer status, if it would: every `ip`
/// must be an IP address, every `hostname` a DNS-1123 subdomain that is not an IP address.
pub(super) fn invalid_status(resource: &ResourceType, name: &str, object: &Value) -> Option<String> {
    let entries = object["status"]["loadBalancer"]["ingress"].as_array()?;
    for (i, entry) in entries.iter().enumerate() {
        let problem = if let Some(ip) = entry.get("ip").and_then(Value::as_str) {
            ip.parse::<std::net::IpAddr>().is_err().then_some(("ip", ip, "must be a valid IP address"))
        } else {
            None
        };
        let problem = problem.or_else(|| {
            let hostname = entry.get("hostname").and_then(Value::as_str)?;
            if hostname.parse::<std::net::IpAddr>().is_ok() {
                Some(("hostname", hostname, "must be a DNS name, not an IP address"))
            } else if !dns1123_subdomain(hostname) {
                Some((
                    "hostname",
                    hostname,
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                ))
            } else {
                None
            }
        });
        if let Some((field, value, why)) = problem {
            return Some(format!(
                "{}.{} \"{name}\" is invalid: status.loadBalancer.ingress[{i}].{field}: Invalid value: \"{value}\": {why}",
                resource.kind,
                if resource.group.is_empty() { "core" } else { resource.group },
            ));
        }
    }
    None
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated labels of lowercase letters,
/// digits and `-`, each 1-63 long, starting and ending with a letter or digit.
pub(super) fn dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            (1..=63).contains(&bytes.len())
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
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
    let (rv, items, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match store.pages.get(token) {
            Some(page) => (page.rv, page.items.clone(), page.offset),
            None => {
                return status_response(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
        },
        None => {
            let filter = Filter::new(target.resource, target.namespace.clone(), query);
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|(k, v)| filter.in_scope(k) && filter.matches(v))
                .map(|(_, v)| v.clone())
                .collect();
            (store.rv, Arc::new(items), 0)
        }
    };
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let end = limit.map_or(items.len(), |limit| (offset + limit).min(items.len()));
    let page = &items[offset.min(end)..end];
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        store.next_page += 1;
        let token = format!("page-{}", store.next_page);
        metadata["continue"] = json!(token.clone());
        metadata["remainingItemCount"] = json!(items.len() - end);
        store.pages.insert(token, Page { rv, items: items.clone(), offset: end });
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
