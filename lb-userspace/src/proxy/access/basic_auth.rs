//! HTTP basic authentication against htpasswd credentials (ingress-nginx `auth-type: basic`).
//!
//! Verifying a bcrypt hash costs milliseconds by design, so verified credentials are remembered
//! in a [`DecisionCache`]: per node, bounded, sharded so no request takes a global lock, keyed by
//! a SHA-256 of the credential set's fingerprint and the `Authorization` value, so a changed
//! Secret or file (a new fingerprint) never honours what the old one allowed. bcrypt runs on
//! tokio's blocking pool, a few at a time, so a flood of wrong passwords cannot stall a worker's
//! other connections. Every comparison of secrets is constant-time.

use std::sync::LazyLock;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use md5::{Digest as _, Md5};
use subtle::ConstantTimeEq as _;

use super::cache::{DecisionCache, Key, key_of};
use crate::{
    FastMap,
    config::{
        BasicAuthConfig,
        htpasswd::{self, HashKind},
    },
};

/// How many verified credentials a node remembers (all routes together).
const CACHE_CAPACITY: usize = 4096;

/// A route's compiled basic authentication.
#[derive(Debug)]
pub struct BasicAuth {
    /// `Basic realm="..."`.
    challenge: HeaderValue,
    users: FastMap<Box<str>, Credential>,
    /// SHA-256 of the realm and the credential lines: the cache's namespace.
    fingerprint: [u8; 32],
    /// The credentials could not be read: every request is refused with 503.
    unavailable: bool,
}

#[derive(Debug)]
enum Credential {
    Bcrypt(Box<str>),
    /// The whole `$apr1$salt$hash` string.
    Apr1(Box<str>),
    Sha1([u8; 20]),
}

/// What a request's credentials come to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 401 with the challenge.
    Challenge(HeaderValue),
    /// 503: the route's credentials could not be read.
    Unavailable,
}

impl BasicAuth {
    /// Compiles the configuration; an htpasswd file is read here. `at` names the field.
    pub fn compile(config: &BasicAuthConfig, at: &str) -> Result<BasicAuth, String> {
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\"", config.realm))
            .map_err(|_| format!("{at}.realm: not a valid header value"))?;
        let text = match (&config.htpasswd, &config.htpasswd_file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("{at}.htpasswd_file: cannot read {path}: {e}"))?,
            (None, None) => String::new(),
        };
        let parsed = htpasswd::parse(&text);
        if let Some(rejected) = parsed.rejected.first() {
            return Err(format!("{at}: {rejected}"));
        }
        let mut users = FastMap::default();
        for entry in parsed.entries {
            let credential = match entry.kind {
                HashKind::Bcrypt => Credential::Bcrypt(entry.hash.into()),
                HashKind::Apr1 => Credential::Apr1(entry.hash.into()),
                HashKind::Sha1 => match htpasswd::sha1_digest(entry.hash) {
                    Some(digest) => Credential::Sha1(digest),
                    None => {
                        return Err(format!("{at}: user {:?}: the {{SHA}} hash is malformed", entry.user));
                    }
                },
            };
            users.insert(entry.user.into(), credential);
        }
        let fingerprint = key_of(&[config.realm.as_bytes(), text.as_bytes()]);
        Ok(BasicAuth { challenge, users, fingerprint, unavailable: config.unavailable })
    }

    /// Decides on a request's `Authorization` header.
    pub async fn check(&self, headers: &HeaderMap) -> Verdict {
        if self.unavailable {
            return Verdict::Unavailable;
        }
        let Some(value) = headers.get(AUTHORIZATION) else { return self.challenge() };
        let key = cache_key(&self.fingerprint, value.as_bytes());
        if VERIFIED.get(&key, 0).is_some() {
            return Verdict::Allowed;
        }
        let Some((user, password)) = decode(value.as_bytes()) else { return self.challenge() };
        let Some(credential) = self.users.get(user.as_str()) else { return self.challenge() };
        if credential.verify(password).await {
            VERIFIED.insert(key, (), u64::MAX);
            Verdict::Allowed
        } else {
            self.challenge()
        }
    }

    fn challenge(&self) -> Verdict {
        Verdict::Challenge(self.challenge.clone())
    }
}

impl Credential {
    async fn verify(&self, password: String) -> bool {
        match self {
            Credential::Bcrypt(hash) => {
                // bcrypt is slow on purpose: off the worker's thread, a few at a time.
                let Ok(_permit) = BCRYPT_SLOTS.acquire().await else { return false };
                let hash = hash.clone();
                tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                    .await
                    .unwrap_or(false)
            }
            Credential::Apr1(stored) => {
                let salt = stored["$apr1$".len()..].split('$').next().unwrap_or("");
                apr1(password.as_bytes(), salt.as_bytes()).as_bytes().ct_eq(stored.as_bytes()).into()
            }
            Credential::Sha1(stored) => {
                let digest = <sha1::Sha1 as sha1::Digest>::digest(password.as_bytes());
                digest.as_slice().ct_eq(stored).into()
            }
        }
    }
}

/// Concurrent bcrypt verifications across the node.
static BCRYPT_SLOTS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
});

/// `Basic base64(user:password)` → (user, password).
fn decode(value: &[u8]) -> Option<(String, String)> {
    let space = value.iter().position(|&b| b == b' ')?;
    if !value[..space].eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let encoded = value[space + 1..].trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn cache_key(fingerprint: &[u8; 32], authorization: &[u8]) -> Key {
    key_of(&[fingerprint, authorization])
}

/// Apache's MD5 crypt (`$apr1$`): FreeBSD's MD5 crypt with Apache's magic.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let alternate = Md5::new().chain_update(password).chain_update(salt).chain_update(password).finalize();
    let mut context = Md5::new().chain_update(password).chain_update(MAGIC).chain_update(salt);
    for chunk in (0..password.len()).step_by(16) {
        context.update(&alternate[..(password.len() - chunk).min(16)]);
    }
    let mut bits = password.len();
    while bits != 0 {
        if bits & 1 != 0 {
            context.update([0u8]);
        } else {
            context.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = context.finalize();
    for round in 0..1000 {
        let mut context = Md5::new();
        if round & 1 != 0 {
            context.update(password);
        } else {
            context.update(digest);
        }
        if round % 3 != 0 {
            context.update(salt);
        }
        if round % 7 != 0 {
            context.update(password);
        }
        if round & 1 != 0 {
            context.update(digest);
        } else {
            context.update(password);
        }
        digest = context.finalize();
    }
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(MAGIC.len() + salt.len() + 23);
    out.push_str("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let d = digest;
    let groups = [
        ((u32::from(d[0]) << 16) | (u32::from(d[6]) << 8) | u32::from(d[12]), 4),
        ((u32::from(d[1]) << 16) | (u32::from(d[7]) << 8) | u32::from(d[13]), 4),
        ((u32::from(d[2]) << 16) | (u32::from(d[8]) << 8) | u32::from(d[14]), 4),
        ((u32::from(d[3]) << 16) | (u32::from(d[9]) << 8) | u32::from(d[15]), 4),
        ((u32::from(d[4]) << 16) | (u32::from(d[10]) << 8) | u32::from(d[5]), 4),
        (u32::from(d[11]), 2),
    ];
    for (mut value, count) in groups {
        for _ in 0..count {
            out.push(char::from(ITOA64[(value & 0x3f) as usize]));
            value >>= 6;
        }
    }
    out
}

/// The node's verified credentials (the value says nothing: presence is the decision).
static VERIFIED: LazyLock<DecisionCache<()>> = LazyLock::new(|| DecisionCache::new(CACHE_CAPACITY));

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl passwd -apr1 -salt <salt> <password>`.
    const APR1_VECTORS: &[(&str, &str, &str)] = &[
        ("secret", "Gs5vE2ez", "$apr1$Gs5vE2ez$9nmKCfZjWKk2iQr6uNB4A/"),
        ("", "abcdefgh", "$apr1$abcdefgh$L.PT565ESX4Tp2bqNs7Ie."),
        ("a password longer than sixteen bytes", "xy", "$apr1$xy$KdN98XSITqSWy8I9WeEMZ1"),
    ];

    #[test]
    fn apr1_matches_openssl() {
        for (password, salt, expected) in APR1_VECTORS {
            assert_eq!(apr1(password.as_bytes(), salt.as_bytes()), *expected, "{password:?}");
        }
    }

    fn headers(user: &str, password: &str) -> HeaderMap {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Basic {token}")).unwrap());
        headers
    }

    fn auth(lines: &str) -> BasicAuth {
        let config =
            BasicAuthConfig { realm: "Staff".into(), htpasswd: Some(lines.into()), ..Default::default() };
        BasicAuth::compile(&config, "here").unwrap()
    }

    #[tokio::test]
    async fn each_hash_kind_admits_its_password_and_nothing_else() {
        let bcrypt_hash = bcrypt::hash("b-pass", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let lines = format!(
            "apr:{}\nbc:{bcrypt_hash}\nsha:{{SHA}}{}\n",
            APR1_VECTORS[0].2,
            // `htpasswd -nbs sha s-pass`
            base64::engine::general_purpose::STANDARD.encode(<sha1::Sha1 as sha1::Digest>::digest(b"s-pass"))
        );
        let auth = auth(&lines);
        let challenge = Verdict::Challenge(HeaderValue::from_static("Basic realm=\"Staff\""));
        for (user, good) in [("apr", "secret"), ("bc", "b-pass"), ("sha", "s-pass")] {
            assert_eq!(auth.check(&headers(user, good)).await, Verdict::Allowed, "{user}");
            assert_eq!(auth.check(&headers(user, "wrong")).await, challenge, "{user}");
            assert_eq!(auth.check(&headers("nobody", good)).await, challenge, "{user}");
        }
        assert_eq!(auth.check(&HeaderMap::new()).await, challenge);
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(auth.check(&bearer).await, challenge);
        // The scheme is case-insensitive.
        let mut lower = headers("apr", "secret");
        let value = lower[AUTHORIZATION].to_str().unwrap().replacen("Basic", "basic", 1);
        lower.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
        assert_eq!(auth.check(&lower).await, Verdict::Allowed);
    }

    #[tokio::test]
    async fn bcrypt_matches_the_openbsd_vectors() {
        let auth = auth(
            "u:$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n\
             y:$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n",
        );
        assert_eq!(auth.check(&headers("u", "U*U")).await, Verdict::Allowed);
        assert_eq!(auth.check(&headers("y", "U*U")).await, Verdict::Allowed);
        assert!(matches!(auth.check(&headers("y", "U*V")).await, Verdict::Challenge(_)));
    }

    #[tokio::test]
    async fn a_changed_credential_set_does_not_honour_the_old_cache() {
        let old = auth(&format!("apr:{}\n", APR1_VECTORS[0].2));
        assert_eq!(old.check(&headers("apr", "secret")).await, Verdict::Allowed);
        let key = cache_key(&old.fingerprint, headers("apr", "secret")[AUTHORIZATION].as_bytes());
        assert!(VERIFIED.get(&key, 0).is_some());
        // The same user with another password: the old one is cached under the old set only.
        let new = auth(&format!("apr:{}\n", APR1_VECTORS[2].2));
        assert!(matches!(new.check(&headers("apr", "secret")).await, Verdict::Challenge(_)));
        let unavailable =
            BasicAuth::compile(&BasicAuthConfig { unavailable: true, ..Default::default() }, "here").unwrap();
        assert_eq!(unavailable.check(&headers("apr", "secret")).await, Verdict::Unavailable);
    }

    #[test]
    fn unsupported_hashes_and_unreadable_files_are_errors_naming_the_field() {
        let config = BasicAuthConfig { htpasswd: Some("eve:$6$salt$hash\n".into()), ..Default::default() };
        let e = BasicAuth::compile(&config, "routes[0].basic_auth").unwrap_err();
        assert!(e.starts_with("routes[0].basic_auth: line 1 (user \"eve\"): unsupported hash"), "{e}");
        assert!(!e.contains("$6$salt"), "{e}");
        let config =
            BasicAuthConfig { htpasswd_file: Some("/nonexistent/htpasswd".into()), ..Default::default() };
        let e = BasicAuth::compile(&config, "at").unwrap_err();
        assert!(e.starts_with("at.htpasswd_file: cannot read /nonexistent/htpasswd"), "{e}");
    }
}
