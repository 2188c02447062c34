//! The validating admission webhook's decisions (`sluice webhook`): an `admission.k8s.io/v1`
//! AdmissionReview in, the review with its response out, decided by the controller's own
//! translation ([`Translator::build`]) of the cluster as the webhook sees it with the object
//! admitted in place of its current version.
//!
//! - Denied (HTTP 200, `allowed: false`, status 400 `BadRequest`, as ingress-nginx answers): a
//!   refused annotation (snippets...), an annotation value that does not parse, a rule host or
//!   path that is not valid, a configuration that does not validate, a host/path or TLS host
//!   that an older Ingress already serves (as ingress-nginx's `checkOverlap`, canaries excepted),
//!   and an update that takes a host/path from a newer Ingress serving it. The message names
//!   the annotation, host or path.
//! - Allowed with `warnings` (kubectl prints them): ignored and unknown annotations.
//! - Allowed without a look: Ingresses of other classes, deletions, objects being deleted.
//! - Another kind: allowed with a warning that it was not checked (ingress-nginx answers 500,
//!   which `failurePolicy: Fail` turns into a denial); kinds are dispatched in [`Reviewer::review`]
//!   so the Gateway API's can be added there.
//! - A body that is not an AdmissionReview v1 with a request and a uid: [`BadReview`] (the
//!   server answers 400, as ingress-nginx).
//!
//! What the webhook cannot see it does not judge: it watches IngressClasses, Ingresses,
//! Services and ConfigMaps, not Secrets or EndpointSlices (least privilege), so notes about
//! TLS or auth Secrets and endpoints are left to the controller's Events and log.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::ConfigMap,
        networking::v1::{Ingress, IngressClass},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{Client, runtime::reflector::Store};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    service::Service,
    translate::{ClusterState, IngressId, NoteKind, Translation, Translator, id_of},
};
use crate::config::Config;

/// The AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// A request body that is not an AdmissionReview this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[error("not an admission.k8s.io/v1 AdmissionReview request: {0}")]
pub struct BadReview(String);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    /// Absent for cluster-scoped kinds; the name too for `generateName`.
    #[serde(default, deserialize_with = "null_as_empty")]
    namespace: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    name: String,
    operation: String,
    #[serde(default)]
    object: Value,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    version: String,
    kind: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// The decision on one object.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Why it is denied (empty: allowed).
    pub denied: Vec<String>,
    pub warnings: Vec<String>,
}

/// Decides reviews against the cluster state it is given.
pub struct Reviewer {
    translator: Translator,
    base: Config,
}

impl Reviewer {
    /// `base` is the configuration the Ingresses are translated onto (its listeners decide
    /// whether TLS hosts can be served).
    pub fn new(translator: Translator, base: Config) -> Reviewer {
        Reviewer { translator, base }
    }

    /// The AdmissionReview to answer `body` with.
    pub fn review(&self, body: &[u8], state: &ClusterState) -> Result<Value, BadReview> {
        let review: Review = serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
        if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
            return Err(BadReview(format!("apiVersion {:?}, kind {:?}", review.api_version, review.kind)));
        }
        let request = review.request.ok_or_else(|| BadReview("no request".into()))?;
        if request.uid.is_empty() {
            return Err(BadReview("the request has no uid".into()));
        }
        let kind = &request.kind;
        let decision = match (kind.group.as_str(), kind.version.as_str(), kind.kind.as_str()) {
            // Deletions carry no object; what is deleted cannot make a conflict.
            _ if request.operation == "DELETE" || request.operation == "CONNECT" => Decision::default(),
            ("networking.k8s.io", "v1", "Ingress") => match self.ingress(&request, state) {
                Ok(decision) => decision,
                Err(why) => Decision { denied: vec![why], warnings: Vec::new() },
            },
            (group, version, kind) => Decision {
                denied: Vec::new(),
                warnings: vec![format!(
                    "sluice's webhook validates networking.k8s.io/v1 Ingress; {kind}.{version}.{group} was not checked"
                )],
            },
        };
        let target = format!("{} {}/{}", kind.kind, request.namespace, request.name);
        if decision.denied.is_empty() {
            tracing::info!(object = %target, operation = %request.operation, warnings = decision.warnings.len(), "admission: allowed");
        } else {
            tracing::info!(object = %target, operation = %request.operation, reasons = %decision.denied.join("; "), "admission: denied");
        }
        Ok(response(&request.uid, &target, &decision))
    }

    /// Checks an Ingress as the controller would translate it.
    fn ingress(&self, request: &Request, state: &ClusterState) -> Result<Decision, String> {
        let mut ingress: Ingress = serde_json::from_value(request.object.clone())
            .map_err(|e| format!("the object is not a valid Ingress: {e}"))?;
        if ingress.metadata.deletion_timestamp.is_some() {
            return Ok(Decision::default());
        }
        // A new object has no namespace, name (generateName) or creation time of its own yet.
        let meta = &mut ingress.metadata;
        if meta.namespace.as_deref().unwrap_or("").is_empty() {
            meta.namespace = Some(request.namespace.clone());
        }
        if meta.name.as_deref().unwrap_or("").is_empty() {
            let name =
                if request.name.is_empty() { meta.generate_name.clone() } else { Some(request.name.clone()) };
            meta.name = Some(name.unwrap_or_default());
        }
        // Newest of all: an older Ingress keeps what it serves.
        meta.creation_timestamp.get_or_insert_with(|| Time(k8s_openapi::jiff::Timestamp::now()));
        let id = id_of(&ingress);
        let mut candidate = state.clone();
        candidate.ingresses.retain(|i| id_of(i) != id);
        candidate.ingresses.push(Arc::new(ingress));
        let translation = match self.translator.build(&self.base, &candidate) {
            Ok(translation) => translation,
            Err(e) => {
                return Ok(match self.translator.build(&self.base, state) {
                    // The cluster translates without it: it is what breaks the configuration.
                    Ok(_) => Decision { denied: vec![e.to_string()], warnings: Vec::new() },
                    Err(_) => Decision {
                        denied: Vec::new(),
                        warnings: vec![format!(
                            "not checked: the cluster's configuration does not validate: {e}"
                        )],
                    },
                });
            }
        };
        if !translation.considered.contains(&id) {
            return Ok(Decision::default());
        }
        let mut decision = Decision::default();
        for note in translation.notes.iter().filter(|n| n.ingress.as_ref() == Some(&id)) {
            match &note.kind {
                NoteKind::Refused | NoteKind::Invalid | NoteKind::Conflict { .. } => {
                    decision.denied.push(note.message.clone())
                }
                NoteKind::Ignored => decision.warnings.push(note.message.clone()),
                NoteKind::Warning => {}
            }
        }
        decision.denied.extend(self.taken_from_newer(&id, &translation, state));
        Ok(decision)
    }

    /// Conflicts the admitted Ingress (older than some, on an update) makes for Ingresses that
    /// did not have them before: what they serve would move to it.
    fn taken_from_newer(
        &self,
        id: &IngressId,
        translation: &Translation,
        state: &ClusterState,
    ) -> Vec<String> {
        let caused = |t: &Translation| -> BTreeSet<(IngressId, String)> {
            t.notes
                .iter()
                .filter(|n| matches!(&n.kind, NoteKind::Conflict { with } if with == id))
                .filter_map(|n| Some((n.ingress.clone()?, n.message.clone())))
                .collect()
        };
        let now = caused(translation);
        if now.is_empty() {
            return Vec::new();
        }
        let before = self.translator.build(&self.base, state).map(|t| caused(&t)).unwrap_or_default();
        now.difference(&before)
            .map(|(other, message)| format!("would take from Ingress {other}: {message}"))
            .collect()
    }
}

/// The AdmissionReview answering `uid`.
fn response(uid: &str, target: &str, decision: &Decision) -> Value {
    let mut response = json!({ "uid": uid, "allowed": decision.denied.is_empty() });
    if !decision.denied.is_empty() {
        response["status"] = json!({
            "status": "Failure",
            "code": 400,
            "reason": "BadRequest",
            "message": format!("sluice denies {target}: {}", decision.denied.join("; ")),
        });
    }
    if !decision.warnings.is_empty() {
        response["warnings"] = json!(decision.warnings);
    }
    json!({ "apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response })
}

/// The webhook's view of the cluster: reflectors of the kinds it needs (least privilege: no
/// Secrets, no EndpointSlices).
#[derive(Clone)]
pub struct AdmissionStores {
    classes: Store<IngressClass>,
    ingresses: Store<Ingress>,
    services: Store<Service>,
    configmaps: Store<ConfigMap>,
}

impl AdmissionStores {
    /// Starts the reflectors on the current runtime.
    pub fn start(client: &Client, watch_timeout: Duration) -> AdmissionStores {
        let config =
            kube::runtime::watcher::Config::default().timeout(watch_timeout.as_secs().clamp(1, 290) as u32);
        // Nothing waits for changes: each review reads the stores as they are.
        let (changed, _) = watch::channel(0u64);
        AdmissionStores {
            classes: super::reflect(kube::Api::all(client.clone()), config.clone(), changed.clone()),
            ingresses: super::reflect(kube::Api::all(client.clone()), config.clone(), changed.clone()),
            services: super::reflect_trimmed::<k8s_openapi::api::core::v1::Service, Service>(
                kube::Api::all(client.clone()),
                config.clone(),
                changed.clone(),
            ),
            configmaps: super::reflect(kube::Api::all(client.clone()), config, changed),
        }
    }

    /// Waits until every store has listed once.
    pub async fn ready(&self) {
        let _ = tokio::join!(
            self.classes.wait_until_ready(),
            self.ingresses.wait_until_ready(),
            self.services.wait_until_ready(),
            self.configmaps.wait_until_ready(),
        );
    }

    pub fn state(&self) -> ClusterState {
        ClusterState {
            classes: self.classes.state(),
            ingresses: self.ingresses.state(),
            services: self.services.state(),
            configmaps: self.configmaps.state(),
            ..ClusterState::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::provider::kube::translate::Settings;

    fn reviewer() -> Reviewer {
        let base = Config::from_yaml(
            "listeners:\n  - name: http\n    address: \"0.0.0.0:80\"\n  - name: https\n    address: \"0.0.0.0:443\"\n    tls: {}\n",
            "base",
        )
        .unwrap();
        Reviewer::new(
            Translator::new(Settings { ingress_class: "sluice".into(), ..Settings::default() }),
            base,
        )
    }

    fn ingress(
        name: &str,
        host: &str,
        path: &str,
        annotations: &[(&str, &str)],
        created: Option<&str>,
    ) -> Value {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let mut metadata = json!({"name": name, "namespace": "default", "annotations": annotations});
        if let Some(created) = created {
            metadata["creationTimestamp"] = json!(created);
        }
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata,
            "spec": {"ingressClassName": "sluice", "rules": [{"host": host, "http": {"paths": [
                {"path": path, "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
            ]}}]}
        })
    }

    fn review_of(object: &Value, operation: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
                "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
                "namespace": "default", "name": object["metadata"]["name"], "operation": operation,
                "object": object,
            }
        }))
        .unwrap()
    }

    fn state_with(ingresses: &[Value]) -> ClusterState {
        ClusterState {
            ingresses: ingresses
                .iter()
                .map(|i| Arc::new(serde_json::from_value(i.clone()).unwrap()))
                .collect(),
            ..ClusterState::default()
        }
    }

    #[test]
    fn a_plain_ingress_is_allowed_and_a_snippet_denied_naming_the_annotation() {
        let r = reviewer();
        let out = r
            .review(&review_of(&ingress("a", "a.example", "/", &[], None), "CREATE"), &state_with(&[]))
            .unwrap();
        assert_eq!(out["response"], json!({"uid": "u-1", "allowed": true}));
        let snippet = ingress(
            "a",
            "a.example",
            "/",
            &[("nginx.ingress.kubernetes.io/configuration-snippet", "x;")],
            None,
        );
        let out = r.review(&review_of(&snippet, "CREATE"), &state_with(&[])).unwrap();
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 400);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("Ingress default/a") && message.contains("configuration-snippet"),
            "{message}"
        );
    }

    #[test]
    fn bad_values_are_denied_and_ignored_annotations_warned() {
        let r = reviewer();
        let bad = ingress(
            "a",
            "a.example",
            "/",
            &[("nginx.ingress.kubernetes.io/proxy-read-timeout", "soon")],
            None,
        );
        let out = r.review(&review_of(&bad, "CREATE"), &state_with(&[])).unwrap();
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("proxy-read-timeout") && message.contains("\"soon\""), "{message}");
        let ignored = ingress(
            "a",
            "a.example",
            "/",
            &[("nginx.ingress.kubernetes.io/enable-opentelemetry", "true")],
            None,
        );
        let out = r.review(&review_of(&ignored, "CREATE"), &state_with(&[])).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        let warnings = out["response"]["warnings"].as_array().unwrap();
        assert!(warnings[0].as_str().unwrap().contains("enable-opentelemetry"), "{warnings:?}");
    }

    #[test]
    fn a_host_and_path_served_by_another_ingress_is_denied_but_not_by_itself_or_a_canary() {
        let r = reviewer();
        let old = ingress("old", "a.example", "/app", &[], Some("2026-01-01T00:00:00Z"));
        let state = state_with(std::slice::from_ref(&old));
        let out =
            r.review(&review_of(&ingress("new", "a.example", "/app", &[], None), "CREATE"), &state).unwrap();
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("a.example") && message.contains("/app") && message.contains("default/old"),
            "{message}"
        );
        // Updating the owner itself is no conflict.
        let out = r.review(&review_of(&old, "UPDATE"), &state).unwrap();
        assert_eq!(out["response"]["allowed"], true, "{out}");
        let canary =
            ingress("c", "a.example", "/app", &[("nginx.ingress.kubernetes.io/canary", "true")], None);
        assert_eq!(r.review(&review_of(&canary, "CREATE"), &state).unwrap()["response"]["allowed"], true);
        // An older Ingress updated to take a newer one's path is denied too.
        let newer = ingress("newer", "b.example", "/", &[], Some("2026-02-01T00:00:00Z"));
        let state = state_with(&[old.clone(), newer]);
        let taking = ingress("old", "b.example", "/", &[], Some("2026-01-01T00:00:00Z"));
        let out = r.review(&review_of(&taking, "UPDATE"), &state).unwrap();
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("would take from Ingress default/newer"), "{message}");
    }

    #[test]
    fn other_classes_other_kinds_and_deletions_are_allowed() {
        let r = reviewer();
        let mut other = ingress(
            "a",
            "a.example",
            "/",
            &[("nginx.ingress.kubernetes.io/configuration-snippet", "x;")],
            None,
        );
        other["spec"]["ingressClassName"] = json!("nginx");
        assert_eq!(
            r.review(&review_of(&other, "CREATE"), &state_with(&[])).unwrap()["response"]["allowed"],
            true
        );
        let mut body: Value = serde_json::from_slice(&review_of(&other, "CREATE")).unwrap();
        body["request"]["kind"] =
            json!({"group": "gateway.networking.k8s.io", "version": "v1", "kind": "HTTPRoute"});
        let out = r.review(&serde_json::to_vec(&body).unwrap(), &state_with(&[])).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"]["warnings"][0].as_str().unwrap().contains("HTTPRoute"));
        body["request"]["operation"] = json!("DELETE");
        body["request"]["object"] = Value::Null;
        assert_eq!(
            r.review(&serde_json::to_vec(&body).unwrap(), &state_with(&[])).unwrap()["response"]["allowed"],
            true
        );
    }

    #[test]
    fn malformed_reviews_are_bad_requests() {
        let r = reviewer();
        let state = state_with(&[]);
        assert!(r.review(b"{not json", &state).is_err());
        assert!(
            r.review(
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
                &state
            )
            .is_err()
        );
        assert!(
            r.review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, &state).is_err()
        );
        // An object that is not an Ingress is denied, as ingress-nginx does.
        let mut body: Value =
            serde_json::from_slice(&review_of(&ingress("a", "a.example", "/", &[], None), "CREATE")).unwrap();
        body["request"]["object"]["spec"] = json!("not a spec");
        let out = r.review(&serde_json::to_vec(&body).unwrap(), &state).unwrap();
        assert_eq!(out["response"]["allowed"], false);
    }
}
