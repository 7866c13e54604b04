//! `TenantPolicy`: what the NamespaceMappings of tenant namespaces may do. Only policies in
//! the controller's own namespace count, so only whoever may write there (the platform
//! admin) can grant anything; a policy a tenant creates in its own namespace is ignored.
//!
//! Modelled on Argo CD's AppProject (allowed source repositories and destinations) and
//! Flux's multi-tenancy lockdown: a tenant mapping exports only its own namespace, uses only
//! Secrets of its own namespace, and writes only where a policy allows.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Grants for the NamespaceMappings of some tenant namespaces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "dr-syncer.io",
    version = "v1alpha1",
    kind = "TenantPolicy",
    namespaced,
    shortname = "tp",
    category = "dr-syncer",
    doc = "Allows the NamespaceMappings of tenant namespaces specific git repositories, DR clusters and DR namespaces; read only from the controller's namespace",
    printcolumn(name = "Namespaces", type_ = "string", json_path = ".spec.namespaces"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantPolicySpec {
    /// Tenant namespaces governed by this policy (exact names). Several policies may name
    /// one namespace: their grants add up.
    #[schemars(length(min = 1))]
    pub namespaces: Vec<String>,
    /// Git repositories the tenant's mappings may push to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub git: Vec<GitGrant>,
    /// RemoteClusters (in the controller's namespace, registered by the admin) the tenant's
    /// mappings may read their own namespace from (`spec.sourceCluster` or a
    /// ClusterMapping's `sourceCluster`). The controller's own cluster is always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_clusters: Vec<String>,
    /// RemoteClusters (in the controller's namespace) the tenant's mappings may write to:
    /// direct apply and volume data (`spec.destination.cluster`, a ClusterMapping's
    /// `targetCluster`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_clusters: Vec<String>,
    /// DR namespaces the tenant's objects may land in, exact or with one trailing `*`
    /// (`team-a-*`). Empty: only a namespace named like the tenant namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_namespaces: Vec<String>,
    /// Let the tenant's mappings run volume hooks (`dataSyncConfig.hooks`): commands the
    /// controller execs in the tenant's pods. Off by default: a tenant who may edit
    /// mappings but not exec into pods would otherwise gain exec through the controller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec_hooks: bool,
}

/// One git repository prefix a tenant may push to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitGrant {
    /// Repository URL prefix, matched at a path-segment boundary:
    /// `ssh://git@git.example.com/dr/team-a` allows `.../dr/team-a/state.git` and
    /// `.../dr/team-a.git`, never `.../dr/team-a-other/...`.
    #[schemars(length(min = 1))]
    pub url_prefix: String,
    /// Directory inside the repository the mapping's files must live under; empty: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}
