//! The direct destination: server-side apply into a DR cluster with a fixed field manager,
//! every object labelled `dr-syncer.io/managed-by`; pruning deletes only objects carrying
//! this mapping's label, so nothing dr-syncer did not apply is ever touched.

use std::collections::BTreeSet;

use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::keys;
use crate::export::ExportedObject;
use crate::export::resource::ResourceType;
use crate::gitops::Breaker;

/// Field manager of every direct apply.
pub const FIELD_MANAGER: &str = "dr-syncer";

/// Errors of a direct apply.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// An object was refused by the DR apiserver.
    #[error("applying {what}: {source}")]
    Apply {
        /// `kind namespace/name`.
        what: String,
        /// Error.
        source: kube::Error,
    },
    /// An applied CRD was not served in time, so its custom resources cannot be applied.
    #[error("CustomResourceDefinition {0} was applied but not Established within 30 s")]
    NotEstablished(String),
    /// Listing or deleting for pruning failed.
    #[error("pruning: {0}")]
    Prune(kube::Error),
    /// The breaker held the batch.
    #[error(transparent)]
    Held(#[from] crate::gitops::Held),
    /// A destination namespace was promoted by `dr-syncer failover`.
    #[error("{0}")]
    Promoted(String),
    /// Whether a destination namespace was promoted could not be read: nothing is applied
    /// (an unknown answer is treated as "promoted"; the next attempt retries).
    #[error(
        "cannot tell whether namespace {namespace} on the DR cluster was promoted (dr-syncer failover), so nothing was applied: {source}"
    )]
    PromotionUnknown {
        /// The DR namespace.
        namespace: String,
        /// Why reading it failed.
        source: kube::Error,
    },
}

/// What a direct apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Objects applied.
    pub applied: usize,
    /// Objects pruned.
    pub pruned: usize,
}

/// The `dr-syncer.io/managed-by` value of a mapping: readable when it fits a label value,
/// else a hash.
pub fn managed_by(namespace: &str, name: &str) -> String {
    let v = format!("{namespace}.{name}");
    if v.len() <= 63 {
        return v;
    }
    let h = Sha256::digest(v.as_bytes());
    format!(
        "nsm-{}",
        h.iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn api(client: &Client, rt: &ResourceType, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = rt.api_resource();
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Applies `objects` into the DR cluster and prunes what this mapping applied before and
/// no longer exports. `types` are the types whose previous objects may be pruned (those
/// listed successfully on the source).
pub async fn apply(
    client: &Client,
    objects: &[ExportedObject],
    types: &[ResourceType],
    manager_label: &str,
    breaker: &Breaker,
) -> Result<Applied, DirectError> {
    let selector = format!("{}={manager_label}", keys::MANAGED_BY);
    let namespaces: BTreeSet<String> = objects.iter().filter_map(|o| o.namespace.clone()).collect();
    // What we applied earlier and would now delete.
    let wanted: BTreeSet<(String, String, String)> = objects
        .iter()
        .map(|o| {
            (
                o.rt.qualified(),
                o.namespace.clone().unwrap_or_default(),
                o.name.clone(),
            )
        })
        .collect();
    // A promoted namespace runs the live workloads: applying the standby form would scale
    // them back to zero.
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        // Fail closed: only a successful read that shows no marker lets the apply go on.
        let promoted = match ns_api.get_opt(ns).await {
            Ok(Some(n)) => kube::ResourceExt::annotations(&n)
                .get(crate::export::promote::PROMOTED_ANNOTATION)
                .cloned(),
            Ok(None) => None,
            Err(source) => {
                return Err(DirectError::PromotionUnknown {
                    namespace: ns.clone(),
                    source,
                });
            }
        };
        if let Some(at) = promoted {
            return Err(DirectError::Promoted(format!(
                "namespace {ns} on the DR cluster was promoted at {at} (dr-syncer failover); \
                 run `dr-syncer failback` first, or pause this mapping"
            )));
        }
    }
    let mut previous = 0usize;
    let mut stale = Vec::new();
    for rt in types.iter().filter(|rt| rt.namespaced) {
        for ns in &namespaces {
            let list = match api(client, rt, Some(ns))
                .list(&ListParams::default().labels(&selector))
                .await
            {
                Ok(l) => l,
                // A type the DR cluster does not serve holds nothing of ours.
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => return Err(DirectError::Prune(e)),
            };
            for item in list.items {
                previous += 1;
                let name = item.metadata.name.clone().unwrap_or_default();
                if !wanted.contains(&(rt.qualified(), ns.clone(), name.clone())) {
                    stale.push((rt.clone(), ns.clone(), name));
                }
            }
        }
    }
    let stale_keys: Vec<String> = stale
        .iter()
        .map(|(rt, ns, name)| format!("{}/{ns}/{name}", rt.qualified()))
        .collect();
    breaker.check(&stale_keys, previous as u64)?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    // The Namespace first, so namespaced objects have somewhere to go.
    let mut ordered: Vec<&ExportedObject> = objects.iter().collect();
    ordered.sort_by_key(|o| o.namespace.is_some());
    let mut new_crds = Vec::new();
    for obj in &ordered {
        // Custom resources can be applied only once the apiserver serves their CRDs.
        if obj.namespace.is_some() && !new_crds.is_empty() {
            wait_established(client, &std::mem::take(&mut new_crds)).await?;
        }
        if obj.rt.group == crate::export::crds::GROUP {
            new_crds.push(obj.name.clone());
        }
        let mut value = obj.value.clone();
        crate::export::value::ensure_map(&mut value, &["metadata", "labels"])
            .insert(keys::MANAGED_BY.into(), json!(manager_label));
        api(client, &obj.rt, obj.namespace.as_deref())
            .patch(&obj.name, &params, &Patch::Apply(&value))
            .await
            .map_err(|source| DirectError::Apply {
                what: format!(
                    "{} {}/{}",
                    obj.rt.qualified(),
                    obj.namespace.as_deref().unwrap_or("-"),
                    obj.name
                ),
                source,
            })?;
    }
    for (rt, ns, name) in &stale {
        match api(client, rt, Some(ns))
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(DirectError::Prune(e)),
        }
    }
    Ok(Applied {
        applied: objects.len(),
        pruned: stale.len(),
    })
}

/// How long a CRD may take to be served after it was applied.
const ESTABLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the apiserver reports every CRD in `names` `Established`.
async fn wait_established(client: &Client, names: &[String]) -> Result<(), DirectError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + ESTABLISH_TIMEOUT;
    for name in names {
        loop {
            let crd = api.get(name).await.map_err(|source| DirectError::Apply {
                what: format!(
                    "customresourcedefinitions.{} {name}",
                    crate::export::crds::GROUP
                ),
                source,
            })?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DirectError::NotEstablished(name.clone()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_by_table() {
        assert_eq!(managed_by("dr-syncer", "shop"), "dr-syncer.shop");
        let long = managed_by("dr-syncer", &"x".repeat(80));
        assert!(long.starts_with("nsm-") && long.len() <= 63, "{long}");
    }
}
