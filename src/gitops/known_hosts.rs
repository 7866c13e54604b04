//! SSH host-key pinning from an OpenSSH `known_hosts` file: an unknown host or a changed
//! key is an error, never silently accepted (no trust on first use), and a key marked
//! `@revoked` is refused for every host.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// Parsed `known_hosts` entries.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
    /// Key blobs of the `@revoked` lines.
    revoked: Vec<Vec<u8>>,
    /// An `@revoked` line could not be read: which key it revokes is unknown, so every
    /// key is refused (fail closed).
    revocation_unreadable: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    patterns: Patterns,
    key_type: String,
    key: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Patterns {
    /// Comma-separated host patterns (`host`, `[host]:port`, `*` wildcards).
    Plain(Vec<String>),
    /// `|1|salt|hash`: HMAC-SHA1 of the host name under the salt.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// Why a host key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    /// No entry for the host.
    #[error(
        "host {0} is not in known_hosts; add its key (e.g. `ssh-keyscan -p PORT HOST`) — unknown hosts are never trusted"
    )]
    Unknown(String),
    /// Entries exist but none has this key.
    #[error(
        "host key of {0} does not match known_hosts (possible man-in-the-middle); refusing to connect"
    )]
    Mismatch(String),
    /// The key is marked `@revoked` (or an `@revoked` line is unreadable).
    #[error("host key of {0} is revoked in known_hosts; refusing to connect")]
    Revoked(String),
}

impl KnownHosts {
    /// Parses a `known_hosts` file. Malformed lines and `@cert-authority` lines are skipped
    /// (a skipped line can only make a host unknown, never trusted). `@revoked` lines
    /// revoke their key for every host, whatever their host pattern; an unreadable one
    /// makes every key refused, since skipping it could trust the key it revokes.
    pub fn parse(text: &str) -> Self {
        let mut revoked = Vec::new();
        let mut revocation_unreadable = false;
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("@revoked") else {
                continue;
            };
            let mut parts = rest.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(_hosts), Some(_kind), Some(key)) => match STANDARD.decode(key) {
                    Ok(k) => revoked.push(k),
                    Err(_) => revocation_unreadable = true,
                },
                _ => revocation_unreadable = true,
            }
        }
        let entries = text
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                    return None;
                }
                let mut parts = line.split_whitespace();
                let (hosts, key_type, key) = (parts.next()?, parts.next()?, parts.next()?);
                let key = STANDARD.decode(key).ok()?;
                let patterns = if let Some(rest) = hosts.strip_prefix("|1|") {
                    let (salt, hash) = rest.split_once('|')?;
                    Patterns::Hashed {
                        salt: STANDARD.decode(salt).ok()?,
                        hash: STANDARD.decode(hash).ok()?,
                    }
                } else {
                    Patterns::Plain(hosts.split(',').map(str::to_string).collect())
                };
                Some(Entry {
                    patterns,
                    key_type: key_type.to_string(),
                    key,
                })
            })
            .collect();
        KnownHosts {
            entries,
            revoked,
            revocation_unreadable,
        }
    }

    /// Checks the raw public key blob `key` (SSH wire format, as libgit2 reports it) of
    /// `host:port`.
    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Result<(), HostKeyError> {
        let name = if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        };
        if self.revocation_unreadable || self.revoked.iter().any(|r| r == key) {
            return Err(HostKeyError::Revoked(name));
        }
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.patterns.matches(&name))
            .collect();
        if matching.is_empty() {
            return Err(HostKeyError::Unknown(name));
        }
        if matching
            .iter()
            .any(|e| e.key == key && key_type_of(key).is_none_or(|t| t == e.key_type))
        {
            Ok(())
        } else {
            Err(HostKeyError::Mismatch(name))
        }
    }
}

/// The key type named inside an SSH public key blob (its first string).
fn key_type_of(blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    String::from_utf8(blob.get(4..4 + len)?.to_vec()).ok()
}

impl Patterns {
    fn matches(&self, name: &str) -> bool {
        match self {
            Patterns::Plain(list) => {
                let mut hit = false;
                for p in list {
                    if let Some(neg) = p.strip_prefix('!') {
                        if glob(neg, name) {
                            return false;
                        }
                    } else if glob(p, name) {
                        hit = true;
                    }
                }
                hit
            }
            Patterns::Hashed { salt, hash } => {
                let mut mac =
                    <Hmac<Sha1> as KeyInit>::new_from_slice(salt).expect("HMAC takes any key");
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
        }
    }
}

/// `*` and `?` wildcards, as OpenSSH host patterns.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(kind: &str, body: &[u8]) -> Vec<u8> {
        let mut b = (kind.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn known_hosts_check_table() {
        let good = blob("ssh-ed25519", b"good-key");
        let bad = blob("ssh-ed25519", b"evil-key");
        let old = blob("ssh-ed25519", b"old-key");
        let b64 = STANDARD.encode(&good);
        let old64 = STANDARD.encode(&old);
        // A hashed entry for "[git.example.com]:2222", as `ssh-keygen -H` writes it.
        let salt = b"0123456789abcdef0123";
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(salt).unwrap();
        mac.update(b"[git.example.com]:2222");
        let hashed = format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        );
        let text = format!(
            "# comment\n[127.0.0.1]:2222 ssh-ed25519 {b64}\ngithub.com,*.corp.example ssh-ed25519 {b64}\n{hashed} ssh-ed25519 {b64}\n[127.0.0.1]:2222 ssh-ed25519 {old64}\n@revoked other.example ssh-ed25519 {old64}\n"
        );
        let kh = KnownHosts::parse(&text);
        let cases = [
            ("127.0.0.1", 2222, &good, Ok(())),
            (
                "127.0.0.1",
                2222,
                &bad,
                Err(HostKeyError::Mismatch("[127.0.0.1]:2222".into())),
            ),
            (
                "127.0.0.1",
                22,
                &good,
                Err(HostKeyError::Unknown("127.0.0.1".into())),
            ),
            ("github.com", 22, &good, Ok(())),
            ("git.corp.example", 22, &good, Ok(())),
            ("git.example.com", 2222, &good, Ok(())),
            (
                "git.example.com",
                2222,
                &bad,
                Err(HostKeyError::Mismatch("[git.example.com]:2222".into())),
            ),
            (
                "other.example",
                22,
                &good,
                Err(HostKeyError::Unknown("other.example".into())),
            ),
        ];
        for (host, port, key, expected) in cases {
            assert_eq!(kh.check(host, port, key), expected, "{host}:{port}");
        }
        // Pinned for the host, but revoked (by a line naming another host): refused.
        assert_eq!(
            kh.check("127.0.0.1", 2222, &old),
            Err(HostKeyError::Revoked("[127.0.0.1]:2222".into()))
        );
    }

    #[test]
    fn known_hosts_revoked_unreadable_refuses_every_key() {
        let good = blob("ssh-ed25519", b"good-key");
        let b64 = STANDARD.encode(&good);
        for broken in ["@revoked *", "@revoked * ssh-ed25519 !!notbase64!!"] {
            let kh = KnownHosts::parse(&format!("[h]:22 ssh-ed25519 {b64}\n{broken}\n"));
            assert_eq!(
                kh.check("h", 22, &good),
                Err(HostKeyError::Revoked("h".into())),
                "{broken}"
            );
        }
    }
}
