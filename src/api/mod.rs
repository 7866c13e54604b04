//! The custom resources of group `dr-syncer.io/v1alpha1`.
//!
//! The Rust types are the single source of truth: `dr-syncer crds` prints the CRDs generated
//! from them (see [`crds`]) and `crds/` plus the Helm chart's copy are checked against it.
//! Cross-field rules are CEL (`x-kubernetes-validations`) so the apiserver rejects bad
//! objects before the controller ever sees them.

// clippy reads kube's repeated `printcolumn(type_ = ...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
mod cluster_mapping;
mod common;
#[allow(clippy::duplicated_attributes)]
mod namespace_mapping;
pub mod reference;
#[allow(clippy::duplicated_attributes)]
mod remote_cluster;
mod schema;
#[allow(clippy::duplicated_attributes)]
mod tenant_policy;

pub use cluster_mapping::*;
pub use common::*;
pub use namespace_mapping::*;
pub use remote_cluster::*;
pub use tenant_policy::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every dr-syncer resource.
pub const GROUP: &str = "dr-syncer.io";

/// Well-known labels and annotations (prefix `dr-syncer.io/`), shared with the Go original
/// so objects prepared for it keep working.
pub mod keys {
    /// Label: an object (or namespace) carrying `"true"` is never exported.
    pub const IGNORE: &str = "dr-syncer.io/ignore";
    /// Annotation written on scaled-down workloads: the replica count before scaling.
    pub const ORIGINAL_REPLICAS: &str = "dr-syncer.io/original-replicas";
    /// Annotation on a source workload: replicas to use on the DR side instead of zero.
    pub const SCALE_OVERRIDE: &str = "dr-syncer.io/scale-override";
    /// Annotation on a NamespaceMapping: any new value triggers one sync.
    pub const SYNC_NOW: &str = "dr-syncer.io/sync-now";
    /// Annotation on a NamespaceMapping: releases a batch held by the mass-deletion breaker
    /// when its value equals the held batch's id (shown in `status.lastError`).
    pub const ALLOW_MASS_DELETION: &str = "dr-syncer.io/allow-mass-deletion";
    /// Annotation on a NamespaceMapping: releases the volume data sync held by the data
    /// deletion breaker when its value equals the held batch's id (shown in the volume's
    /// `status.pvcData` message and the `PvcDeletionsHeld` Event).
    pub const ALLOW_DATA_DELETION: &str = "dr-syncer.io/allow-data-deletion";
    /// Label set on every object applied into a DR cluster; pruning only touches these.
    pub const MANAGED_BY: &str = "dr-syncer.io/managed-by";
    /// Annotation on a NamespaceMapping: any new value runs one volume data sync of every
    /// replicated PVC now.
    pub const SYNC_DATA_NOW: &str = "dr-syncer.io/sync-data-now";
    /// Annotation on a NamespaceMapping (client key) or RemoteCluster (agent host key): any
    /// new value rotates the key now; the old one keeps working for the grace period.
    pub const ROTATE_KEYS: &str = "dr-syncer.io/rotate-keys";
}

/// Every CRD, in a stable order (the order `dr-syncer crds` prints them).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        ClusterMapping::crd(),
        NamespaceMapping::crd(),
        RemoteCluster::crd(),
        TenantPolicy::crd(),
    ]
}

/// All CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, crate::yaml::RenderError> {
    crate::yaml::to_multi_doc(&crds())
}

/// One `(file name, YAML)` pair per CRD, named `<plural>.<group>.yaml` like upstream charts.
pub fn crd_files() -> Result<Vec<(String, String)>, crate::yaml::RenderError> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), crate::yaml::to_string(crd)?))
        })
        .collect()
}

#[cfg(test)]
mod tests;
