//! htpasswd lines (`user:hash`, the format of Apache's `htpasswd` and of ingress-nginx's
//! `auth-file` Secrets), read into users and hash kinds. One reader for the YAML's validation,
//! the Kubernetes provider's notes and the proxy's verifier. Only the hash kinds Sluice can
//! verify are accepted; a rejected line is reported by its number and user, never its hash.

/// A hash format Sluice verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// `$2a$`, `$2b$`, `$2x$`, `$2y$` (bcrypt, `htpasswd -B`).
    Bcrypt,
    /// `$apr1$` (Apache's MD5, `htpasswd -m`, `openssl passwd -apr1`).
    Apr1,
    /// `{SHA}` + base64 of the SHA-1 of the password (`htpasswd -s`).
    Sha1,
}

/// One usable line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub user: &'a str,
    pub hash: &'a str,
    pub kind: HashKind,
}

/// A line that cannot be used, and why (without its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based.
    pub line: usize,
    pub user: String,
    pub reason: &'static str,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.user.is_empty() {
            write!(f, "line {}: {}", self.line, self.reason)
        } else {
            write!(f, "line {} (user {:?}): {}", self.line, self.user, self.reason)
        }
    }
}

/// What a whole file gives.
#[derive(Debug, Default)]
pub struct Parsed<'a> {
    /// In file order; a user named twice keeps its first line (as Apache's and nginx's lookups,
    /// which stop at the first line naming the user).
    pub entries: Vec<Entry<'a>>,
    pub rejected: Vec<Rejected>,
}

/// The hash kind of a stored hash, if Sluice verifies it.
pub fn kind_of(hash: &str) -> Option<HashKind> {
    if ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        Some(HashKind::Bcrypt)
    } else if hash.starts_with("$apr1$") {
        Some(HashKind::Apr1)
    } else if hash.starts_with("{SHA}") {
        Some(HashKind::Sha1)
    } else {
        None
    }
}

/// Reads htpasswd text: blank lines and `#` comments are skipped; `user:hash`, with anything
/// after a further `:` (Apache's comment field) ignored.
pub fn parse(text: &str) -> Parsed<'_> {
    let mut parsed = Parsed::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let reject = |user: &str, reason| Rejected { line: index + 1, user: user.to_owned(), reason };
        let Some((user, rest)) = line.split_once(':') else {
            parsed.rejected.push(reject("", "not of the form user:hash"));
            continue;
        };
        let hash = rest.split(':').next().unwrap_or("");
        if user.is_empty() {
            parsed.rejected.push(reject("", "the user name is empty"));
            continue;
        }
        let Some(kind) = kind_of(hash) else {
            parsed.rejected.push(reject(
                user,
                "unsupported hash: only bcrypt ($2y$, htpasswd -B), Apache MD5 ($apr1$) and {SHA} are verified",
            ));
            continue;
        };
        if kind == HashKind::Sha1 && sha1_digest(hash).is_none() {
            parsed.rejected.push(reject(user, "the {SHA} hash is not the base64 of 20 bytes"));
            continue;
        }
        if parsed.entries.iter().any(|e| e.user == user) {
            continue;
        }
        parsed.entries.push(Entry { user, hash, kind });
    }
    parsed
}

/// The SHA-1 digest of a `{SHA}` hash.
pub fn sha1_digest(hash: &str) -> Option<[u8; 20]> {
    use base64::Engine as _;
    let encoded = hash.strip_prefix("{SHA}")?;
    let digest = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    digest.try_into().ok()
}

/// htpasswd text from an ingress-nginx `auth-map` (user → hash pairs).
pub fn from_map<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    pairs.map(|(user, hash)| format!("{user}:{}\n", hash.trim())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_with_their_kind_and_bad_ones_named_without_the_hash() {
        let text = "# users\n\
                    alice:$apr1$salt$abc\n\
                    \n\
                    bob:$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW:comment\n\
                    carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\
                    dave:$6$secretsalt$secretsha512\n\
                    erin:{SHA}secretnotbase64\n\
                    no-colon-here\n\
                    :$apr1$x$y\n\
                    alice:$apr1$other$def\n";
        let parsed = parse(text);
        let users: Vec<_> = parsed.entries.iter().map(|e| (e.user, e.kind)).collect();
        assert_eq!(users, [("alice", HashKind::Apr1), ("bob", HashKind::Bcrypt), ("carol", HashKind::Sha1)]);
        assert_eq!(parsed.entries[0].hash, "$apr1$salt$abc", "the first line of a user wins");
        assert_eq!(parsed.entries[1].hash.len(), 60, "the comment field is not part of the hash");
        let rejected: Vec<String> = parsed.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(rejected.len(), 4, "{rejected:?}");
        assert!(rejected[0].starts_with("line 6 (user \"dave\"): unsupported hash"), "{rejected:?}");
        assert!(rejected.iter().all(|r| !r.contains("secret")), "a hash is never printed: {rejected:?}");
        assert_eq!(rejected[1], "line 7 (user \"erin\"): the {SHA} hash is not the base64 of 20 bytes");
        assert_eq!(rejected[2], "line 8: not of the form user:hash");
        assert_eq!(rejected[3], "line 9: the user name is empty");
    }

    #[test]
    fn an_auth_map_becomes_lines() {
        let text =
            from_map([("alice", "$apr1$a$b\n"), ("bob", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=")].into_iter());
        assert_eq!(text, "alice:$apr1$a$b\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
        assert_eq!(parse(&text).entries.len(), 2);
    }
}
