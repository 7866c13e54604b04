//! One sync per PVC at a time, across mappings, replicas and restarts: a Lease per source
//! PVC in the controller's namespace, taken by creating it (the apiserver makes create
//! atomic) and taken over only when its holder let it expire.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Label of the PVC Leases: the mapping that took them.
const MAPPING: &str = super::objects::MAPPING;

/// Name of the Lease guarding one source PVC (`cluster/namespace/name` hashed: names of
/// any length fit).
pub fn lease_name(cluster: &str, namespace: &str, pvc: &str) -> String {
    let hash = blake3::hash(format!("{cluster}/{namespace}/{pvc}").as_bytes()).to_hex();
    format!("dr-syncer-pvc-{}", &hash[..16])
}

/// A held lock; release it with [`release`].
pub struct Held {
    name: String,
    /// The version we wrote: release deletes only that, never a successor's lock.
    version: Option<String>,
}

/// Takes the lock, or says who holds it.
pub async fn acquire(
    client: &Client,
    namespace: &str,
    name: &str,
    holder: &str,
    mapping: &str,
    hold_for: Duration,
) -> Result<Result<Held, String>, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let now = MicroTime(jiff::Timestamp::now());
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "labels": {MAPPING: mapping, "app.kubernetes.io/managed-by": "dr-syncer"}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": hold_for.as_secs().min(i32::MAX as u64),
                 "acquireTime": now, "renewTime": now},
    }))
    .expect("valid Lease");
    match api.create(&PostParams::default(), &lease).await {
        Ok(l) => {
            return Ok(Ok(Held {
                name: name.into(),
                version: l.metadata.resource_version,
            }));
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    let current = api.get(name).await?;
    let spec = current.spec.clone().unwrap_or_default();
    let holder_now = spec.holder_identity.clone().unwrap_or_default();
    let expires = spec.renew_time.map(|t| {
        t.0 + jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)))
    });
    if expires.is_some_and(|t| t > jiff::Timestamp::now()) {
        return Ok(Err(holder_now));
    }
    // Expired: take it over, conditional on the version we read (a racing taker loses).
    let mut taken = lease;
    taken.metadata.resource_version = current.metadata.resource_version;
    match api.replace(name, &PostParams::default(), &taken).await {
        Ok(l) => {
            tracing::warn!(lease = name, previous = %holder_now, "took over an expired PVC lock");
            Ok(Ok(Held {
                name: name.into(),
                version: l.metadata.resource_version,
            }))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(holder_now)),
        Err(e) => Err(e),
    }
}

/// Releases a lock — only the version this holder wrote: if it expired and someone else
/// took it over meanwhile, theirs stays (409 from the precondition).
pub async fn release(client: &Client, namespace: &str, held: Held) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        preconditions: held.version.map(|v| kube::api::Preconditions {
            resource_version: Some(v),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&held.name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Releases every lock a mapping holds (after a restart no operation of it runs).
pub async fn release_all(
    client: &Client,
    namespace: &str,
    mapping: &str,
) -> Result<usize, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(&format!("{MAPPING}={mapping}")))
        .await?;
    for l in &list.items {
        if let Some(n) = &l.metadata.name {
            let held = Held {
                name: n.clone(),
                version: None,
            };
            release(client, namespace, held).await?;
        }
    }
    Ok(list.items.len())
}
