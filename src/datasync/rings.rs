//! Where the key rings live and when they rotate: a mapping's client ring in Secret
//! `dr-syncer-pvc-<mapping>` (owned by the mapping, so it goes with it), a RemoteCluster's
//! agent host ring in Secret `dr-syncer-agent-<cluster>`, both in the controller's cluster
//! beside the object they belong to.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use super::keys::{KeyRing, Rotation};
use crate::api::{SshKeySettings, keys};
use crate::schedule::parse_duration;

/// Shortest rotation interval honoured: a tiny value would rotate on every pass.
const MIN_ROTATION: Duration = Duration::from_secs(600);

/// Rotation interval (at least 10 minutes) and grace window (defaults 720h and 1h).
pub fn rotation(settings: Option<&SshKeySettings>) -> (Duration, Duration) {
    let interval = settings
        .and_then(|s| parse_duration(&s.rotation_interval))
        .unwrap_or(Duration::from_secs(720 * 3600))
        .max(MIN_ROTATION);
    let grace = settings
        .and_then(|s| parse_duration(&s.grace_period))
        .unwrap_or(Duration::from_secs(3600));
    (interval, grace)
}

/// A ring after the rotation check, and whether (why) it rotated now.
pub struct Checked {
    /// The ring in force.
    pub ring: KeyRing,
    /// Set when this call generated a new key.
    pub rotated: Option<Rotation>,
}

/// Reads the ring in `namespace/name`, creating or rotating it as due, and stores the
/// result. `owner` becomes the Secret's owner (the mapping or the RemoteCluster).
pub async fn ensure<K: Resource<DynamicType = ()>>(
    client: &Client,
    owner: &K,
    name: &str,
    settings: Option<&SshKeySettings>,
    manager: &str,
) -> Result<Checked, kube::Error> {
    let namespace = owner.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let now = Timestamp::now();
    let requested = owner.annotations().get(keys::ROTATE_KEYS).cloned();
    let comment = format!("dr-syncer {namespace}/{}", owner.name_any());
    let existing = match api.get_opt(name).await? {
        Some(s) => match KeyRing::from_secret(&s) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(secret = name, error = %e, "key ring unreadable; generating a new key");
                None
            }
        },
        None => None,
    };
    let (interval, grace) = rotation(settings);
    let (ring, rotated) = match existing {
        None => (KeyRing::new(&comment, now, requested), None),
        Some(r) => match r.rotation_due(now, interval, requested.as_deref()) {
            None => {
                return Ok(Checked {
                    ring: r,
                    rotated: None,
                });
            }
            Some(why) => (r.rotate(&comment, now, grace, requested), Some(why)),
        },
    };
    let labels = BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "dr-syncer".to_string(),
    )]);
    let mut secret = ring.to_secret(name, &namespace, &labels);
    if let Some(oref) = owner.controller_owner_ref(&()) {
        secret.metadata.owner_references = Some(vec![oref]);
    }
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    if let Some(why) = rotated {
        tracing::info!(secret = name, ?why, fingerprint = %ring.fingerprint(), "SSH key rotated");
    }
    Ok(Checked { ring, rotated })
}

/// A ring Secret that cannot be read or holds no usable ring.
#[derive(Debug, thiserror::Error)]
#[error("Secret {namespace}/{name}: {message}")]
pub struct ReadError {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// The API error or what is wrong with its content.
    pub message: String,
}

/// Reads a ring without creating it.
pub async fn read(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<KeyRing>, ReadError> {
    let err = |message: String| ReadError {
        namespace: namespace.into(),
        name: name.into(),
        message,
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(s)) => KeyRing::from_secret(&s).map_err(err),
        Ok(None) => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// When the ring next needs attention: its rotation, or the end of a grace window (the
/// agent's client list then drops the old key).
pub fn next_check(ring: &KeyRing, settings: Option<&SshKeySettings>, now: Timestamp) -> Timestamp {
    let (interval, _) = rotation(settings);
    let rotate = super::keys::later(ring.rotated_at, interval);
    match ring.live_previous(now) {
        Some((_, until)) => rotate.min(*until),
        None => rotate,
    }
}
