//! SSH key rings of the data path, kept in Secrets of the controller's cluster: one client
//! key per NamespaceMapping (DR jobs log in with it) and one host key per agent cluster (DR
//! jobs pin it). A ring holds the current key and, during a grace window after a rotation,
//! the previous public key, which servers keep accepting (`expiry-time`) and clients keep
//! pinning until the window ends. Everything here is pure; `store` reads and writes Secrets.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};
use serde_json::json;

use crate::pvc::access::{fingerprint, format_expiry};

/// Secret data key of the private key (OpenSSH format).
pub const PRIVATE: &str = "ssh-privatekey";
/// Secret data key of the public key (`ssh-ed25519 AAAA… comment`).
pub const PUBLIC: &str = "ssh-publickey";
/// Secret data key of the previous public key, kept during the grace window.
pub const PREVIOUS: &str = "previous-publickey";
/// Annotation: when the current key was generated (RFC 3339).
pub const ROTATED_AT: &str = "dr-syncer.io/rotated-at";
/// Annotation: end of the previous key's grace window (RFC 3339).
pub const PREVIOUS_EXPIRES: &str = "dr-syncer.io/previous-expires";
/// Annotation: the `dr-syncer.io/rotate-keys` value the current key answered.
pub const ROTATE_TOKEN: &str = "dr-syncer.io/rotate-token";

/// A fresh Ed25519 key, as `(private OpenSSH text, public line)`.
pub fn generate(comment: &str) -> (String, String) {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("OS random generator");
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let private = key
        .to_openssh(LineEnding::LF)
        .expect("Ed25519 keys encode")
        .to_string();
    let public = key.public_key().to_openssh().expect("Ed25519 keys encode");
    (private, public)
}

/// A key ring as stored in its Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRing {
    /// Current private key (OpenSSH text).
    pub private: String,
    /// Current public key line.
    pub public: String,
    /// When the current key was generated.
    pub rotated_at: Timestamp,
    /// Previous public key line and the end of its grace window.
    pub previous: Option<(String, Timestamp)>,
    /// The rotate-keys token the current key answered.
    pub token: Option<String>,
}

impl std::fmt::Debug for KeyRing {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("public", &self.public)
            .field("rotated_at", &self.rotated_at)
            .field("previous", &self.previous)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Why a ring is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// `rotationInterval` has passed.
    Interval,
    /// A new `dr-syncer.io/rotate-keys` value.
    Requested,
}

impl KeyRing {
    /// A ring with a new key and no previous one.
    pub fn new(comment: &str, now: Timestamp, token: Option<String>) -> Self {
        let (private, public) = generate(comment);
        KeyRing {
            private,
            public,
            rotated_at: now,
            previous: None,
            token,
        }
    }

    /// Reads a ring from its Secret; `Ok(None)` when the Secret has no key yet, `Err` names
    /// what is broken (the caller regenerates: a broken ring must not stop replication).
    pub fn from_secret(secret: &Secret) -> Result<Option<Self>, String> {
        let data = secret.data.clone().unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .map(|b| String::from_utf8(b.0.clone()).map_err(|_| format!("{k}: not UTF-8")))
                .transpose()
        };
        let (Some(private), Some(public)) = (text(PRIVATE)?, text(PUBLIC)?) else {
            return Ok(None);
        };
        PrivateKey::from_openssh(&private).map_err(|e| format!("{PRIVATE}: {e}"))?;
        PublicKey::from_openssh(&public).map_err(|e| format!("{PUBLIC}: {e}"))?;
        let ann = secret.metadata.annotations.clone().unwrap_or_default();
        let time = |k: &str| -> Result<Option<Timestamp>, String> {
            ann.get(k)
                .map(|v| v.parse().map_err(|e| format!("annotation {k}: {e}")))
                .transpose()
        };
        let rotated_at = time(ROTATED_AT)?.unwrap_or(Timestamp::UNIX_EPOCH);
        let previous = match (text(PREVIOUS)?, time(PREVIOUS_EXPIRES)?) {
            (Some(p), Some(t)) => Some((p, t)),
            _ => None,
        };
        Ok(Some(KeyRing {
            private,
            public,
            rotated_at,
            previous,
            token: ann.get(ROTATE_TOKEN).cloned(),
        }))
    }

    /// The Secret holding this ring.
    pub fn to_secret(
        &self,
        name: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Secret {
        let mut data = BTreeMap::from([
            (
                PRIVATE.to_string(),
                ByteString(self.private.clone().into_bytes()),
            ),
            (
                PUBLIC.to_string(),
                ByteString(self.public.clone().into_bytes()),
            ),
        ]);
        let mut ann = BTreeMap::from([(ROTATED_AT.to_string(), self.rotated_at.to_string())]);
        if let Some((p, t)) = &self.previous {
            data.insert(PREVIOUS.into(), ByteString(p.clone().into_bytes()));
            ann.insert(PREVIOUS_EXPIRES.into(), t.to_string());
        }
        if let Some(t) = &self.token {
            ann.insert(ROTATE_TOKEN.into(), t.clone());
        }
        let mut s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": ann},
            "type": "Opaque",
        }))
        .expect("valid Secret");
        s.data = Some(data);
        s
    }

    /// Whether the ring must rotate now: `requested` is the current `rotate-keys` value.
    pub fn rotation_due(
        &self,
        now: Timestamp,
        interval: Duration,
        requested: Option<&str>,
    ) -> Option<Rotation> {
        if requested.is_some() && requested != self.token.as_deref() {
            return Some(Rotation::Requested);
        }
        let age = Duration::try_from(now - self.rotated_at).unwrap_or_default();
        (age >= interval).then_some(Rotation::Interval)
    }

    /// The ring after a rotation: a new key, the current public key kept for `grace`.
    pub fn rotate(
        &self,
        comment: &str,
        now: Timestamp,
        grace: Duration,
        token: Option<String>,
    ) -> Self {
        let (private, public) = generate(comment);
        let until = later(now, grace);
        KeyRing {
            private,
            public,
            rotated_at: now,
            previous: Some((self.public.clone(), until)),
            token,
        }
    }

    /// The previous public key and its expiry, while its grace window is open.
    pub fn live_previous(&self, now: Timestamp) -> Option<&(String, Timestamp)> {
        self.previous.as_ref().filter(|(_, t)| now < *t)
    }

    /// `authorized_keys` lines for servers: the current key, and the previous one with an
    /// `expiry-time` so it stops working at the end of the grace window even if this text
    /// is not refreshed in time.
    pub fn authorized_keys(&self, now: Timestamp) -> String {
        let mut out = format!("{}\n", self.public.trim());
        if let Some((p, t)) = self.live_previous(now) {
            out.push_str(&format!(
                "expiry-time=\"{}\" {}\n",
                format_expiry(*t),
                p.trim()
            ));
        }
        out
    }

    /// The public keys to pin (current first, then the previous one during its window), as
    /// `type base64` without comments.
    pub fn pins(&self, now: Timestamp) -> Vec<String> {
        let mut out = vec![strip_comment(&self.public)];
        if let Some((p, _)) = self.live_previous(now) {
            out.push(strip_comment(p));
        }
        out
    }

    /// SHA-256 fingerprint of the current key.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.public)
    }
}

/// `t + d`, saturating at the largest time jiff represents (user-supplied durations can
/// be absurdly long; they must not panic the controller).
pub fn later(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// SHA-256 fingerprint of a public key line (empty when it does not parse).
pub fn fingerprint_of(line: &str) -> String {
    PublicKey::from_openssh(line.trim())
        .map(|k| fingerprint(&k))
        .unwrap_or_default()
}

fn strip_comment(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pvc::access::{Source, key_allowed, parse_authorized_keys};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn ring_secret_round_trip() {
        let ring = KeyRing::new("m", t("2026-11-26T10:00:00Z"), Some("a".into())).rotate(
            "m",
            t("2026-11-26T11:00:00Z"),
            Duration::from_secs(600),
            None,
        );
        let secret = ring.to_secret("k", "ns", &BTreeMap::new());
        let back = KeyRing::from_secret(&secret).unwrap().unwrap();
        assert_eq!(back, ring);
        assert!(
            !format!("{back:?}").contains("PRIVATE KEY"),
            "Debug hides the key"
        );
        let empty: Secret = Default::default();
        assert!(KeyRing::from_secret(&empty).unwrap().is_none());
    }

    #[test]
    fn ring_rotation_due_table() {
        let ring = KeyRing::new("m", t("2026-11-26T10:00:00Z"), Some("one".into()));
        let day = Duration::from_secs(86_400);
        let cases = [
            ("2026-11-26T12:00:00Z", None, None),
            ("2026-11-26T12:00:00Z", Some("one"), None),
            (
                "2026-11-26T12:00:00Z",
                Some("two"),
                Some(Rotation::Requested),
            ),
            ("2026-11-27T10:00:00Z", None, Some(Rotation::Interval)),
            ("2026-11-27T09:59:59Z", Some("one"), None),
        ];
        for (now, token, want) in cases {
            assert_eq!(
                ring.rotation_due(t(now), day, token),
                want,
                "{now} {token:?}"
            );
        }
    }

    #[test]
    fn ring_previous_key_accepted_only_in_grace_window() {
        let now = t("2026-11-26T10:00:00Z");
        let old = KeyRing::new("m", now, None);
        let new = old.rotate("m", now, Duration::from_secs(60), None);
        let text = new.authorized_keys(now);
        let keys = parse_authorized_keys(&text).unwrap();
        assert_eq!(keys.len(), 2);
        let src = Source::Fixed(keys);
        let old_key = PublicKey::from_openssh(&old.public).unwrap();
        let new_key = PublicKey::from_openssh(&new.public).unwrap();
        assert!(key_allowed(&src, &old_key, t("2026-11-26T10:00:59Z")));
        assert!(!key_allowed(&src, &old_key, t("2026-11-26T10:01:00Z")));
        assert!(key_allowed(&src, &new_key, t("2027-01-01T00:00:00Z")));
        assert_eq!(new.pins(now).len(), 2);
        assert_eq!(new.pins(t("2026-11-26T10:01:00Z")).len(), 1);
        assert_eq!(
            new.authorized_keys(t("2026-11-26T10:02:00Z"))
                .lines()
                .count(),
            1
        );
        assert!(new.fingerprint().starts_with("SHA256:"));
        assert_ne!(new.fingerprint(), fingerprint_of(&old.public));
    }
}
