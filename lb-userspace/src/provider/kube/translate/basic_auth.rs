//! `auth-type: basic`: the Ingress's auth Secret read into the routes' `basic_auth`, as
//! ingress-nginx reads it. What ingress-nginx answers with a denied location (503) is the same
//! here: a missing, cross-namespace or keyless Secret, or a bad `auth-type`/`auth-secret-type`,
//! gives `unavailable` credentials and a note naming the Ingress and the field. Lines that
//! cannot be used (an unsupported hash) are left out with a note naming the user; the others
//! still log in.

use super::{Builder, IngressId};
use crate::{
    config::{BasicAuthConfig, htpasswd},
    provider::kube::annotations::BasicAuthSetting,
};

impl Builder<'_> {
    pub(super) fn basic_auth_config(
        &mut self,
        setting: &BasicAuthSetting,
        id: &IngressId,
    ) -> BasicAuthConfig {
        let realm = setting.realm.clone();
        match self.htpasswd_of(setting, id) {
            Ok(text) => BasicAuthConfig { realm, htpasswd: Some(text), ..Default::default() },
            Err(why) => {
                self.note(Some(id), format!("basic auth: {why}; its paths answer 503"));
                BasicAuthConfig { realm, unavailable: true, ..Default::default() }
            }
        }
    }

    /// The usable htpasswd lines of the Ingress's auth Secret.
    fn htpasswd_of(&mut self, setting: &BasicAuthSetting, id: &IngressId) -> Result<String, String> {
        if let Some(denied) = &setting.denied {
            return Err(denied.clone());
        }
        let Some(reference) = &setting.secret else {
            return Err("annotation auth-secret is missing".to_owned());
        };
        let (namespace, name) = reference.split_once('/').unwrap_or((&id.namespace, reference));
        if namespace != &*id.namespace {
            return Err(format!("auth-secret {reference}: Secrets of other namespaces are not used"));
        }
        let Some(secret) = self.index.secrets.get(&(namespace, name)).copied() else {
            return Err(format!("auth-secret {namespace}/{name} not found"));
        };
        let data = secret.data.as_ref();
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).ok();
        let raw = if setting.map {
            let pairs: Option<Vec<(String, String)>> =
                data.into_iter().flatten().map(|(user, hash)| Some((user.clone(), text(&hash.0)?))).collect();
            let pairs = pairs.ok_or_else(|| format!("Secret {namespace}/{name}: a value is not UTF-8"))?;
            htpasswd::from_map(pairs.iter().map(|(u, h)| (u.as_str(), h.as_str())))
        } else {
            data.and_then(|d| d.get("auth"))
                .and_then(|b| text(&b.0))
                .ok_or_else(|| format!("Secret {namespace}/{name} has no UTF-8 key `auth`"))?
        };
        let parsed = htpasswd::parse(&raw);
        for rejected in &parsed.rejected {
            self.note(Some(id), format!("basic auth: Secret {namespace}/{name} {rejected}; left out"));
        }
        Ok(parsed.entries.iter().map(|e| format!("{}:{}\n", e.user, e.hash)).collect())
    }
}
