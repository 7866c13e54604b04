//! `ClusterMapping`: a source and a DR cluster paired, with defaults the NamespaceMappings
//! that reference it inherit.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DURATION_PATTERN, GitDestination, SecretsSpec};

/// A source cluster paired with a DR cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "dr-syncer.io",
    version = "v1alpha1",
    kind = "ClusterMapping",
    namespaced,
    status = "ClusterMappingStatus",
    shortname = "clm",
    category = "dr-syncer",
    doc = "Pairs a source cluster with a DR cluster and holds defaults for its NamespaceMappings",
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.sourceCluster"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetCluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.sourceCluster) || !has(self.targetCluster) || self.sourceCluster != self.targetCluster").message("spec.sourceCluster and spec.targetCluster must differ").field_path(".targetCluster"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterMappingSpec {
    /// Stop all syncing of the NamespaceMappings that reference this mapping.
    #[serde(default)]
    pub paused: bool,
    /// RemoteCluster (same namespace) that is the source; empty means the cluster the
    /// controller runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub source_cluster: Option<String>,
    /// RemoteCluster (same namespace) that is the DR side. Needed for direct apply and PVC
    /// data; a git-only setup may leave it empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub target_cluster: Option<String>,
    /// Defaults inherited by NamespaceMappings that do not set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<MappingDefaults>,
    /// SSH keys of the PVC data path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_keys: Option<SshKeySettings>,
}

/// Defaults for the NamespaceMappings of a ClusterMapping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MappingDefaults {
    /// Git destination; each NamespaceMapping without a destination writes below
    /// `<path>/<NamespaceMapping name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitDestination>,
    /// Secret encryption defaults (age recipients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsSpec>,
}

/// Generation and rotation of the ed25519 keys used by PVC data syncs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshKeySettings {
    /// Rotate keys this often.
    #[serde(default = "default_rotation")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub rotation_interval: String,
    /// Keep accepting the previous key this long after a rotation.
    #[serde(default = "default_grace")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub grace_period: String,
}

fn default_rotation() -> String {
    "720h".into()
}
fn default_grace() -> String {
    "1h".into()
}

/// Observed state of a ClusterMapping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMappingStatus {
    /// Pending, Ready, Degraded (a cluster unhealthy), Failed or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterMappingPhase>,
    /// Human-readable reason for the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready`, `SourceReady`, `TargetReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// When both clusters were last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Summary phase of a ClusterMapping.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClusterMappingPhase {
    /// Not checked yet.
    Pending,
    /// Both clusters healthy.
    Ready,
    /// One cluster unhealthy.
    Degraded,
    /// A referenced RemoteCluster is missing.
    Failed,
    /// `spec.paused` is set.
    Paused,
}
