//! The dereference stage: every reference of a NamespaceMapping is resolved here and only
//! here — source cluster (mapping → ClusterMapping → the controller's own cluster), direct
//! destination, DR cluster, git destination and credentials, age recipients.
//!
//! Full syncs, Continuous watches, patch syncs, direct apply and volume data sync all ask
//! this module, so they cannot disagree about where a mapping reads from or writes to (they
//! once did: the watch followed a different cluster than the full sync). Which object a
//! reference names is decided by pure functions ([`MappingRefs`]); reading those objects
//! and their Secrets is in [`fetch`]. Names found in a ClusterMapping resolve in the
//! ClusterMapping's namespace, like its own status does.

pub mod fetch;
pub mod tenancy;

use crate::api::{ClusterMapping, GitDestination, NamespaceMapping};

pub use fetch::{
    RefError, Resolved, Source, cluster_client, cluster_mapping, git_auth, kubeconfig_refusal,
    recipients, resolve, source_client,
};
pub use tenancy::{Role, Scope, Tenancy, TenantNamespaces};

/// A RemoteCluster named by a mapping, with the field that named it (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    /// Namespace of the RemoteCluster.
    pub namespace: String,
    /// Name of the RemoteCluster.
    pub name: String,
    /// The field holding the reference, e.g. `spec.sourceCluster` or
    /// `ClusterMapping dr-syncer/prod-to-dr spec.sourceCluster`.
    pub field: String,
    /// Whether the RemoteCluster's kubeconfig Secret may live in another namespace (only
    /// with `--allow-cross-namespace-refs`).
    pub cross_namespace_refs: bool,
}

/// A mapping together with the ClusterMapping it references: answers "which object does
/// this reference mean" without any API call.
#[derive(Debug, Clone, Copy)]
pub struct MappingRefs<'a> {
    /// The mapping.
    pub mapping: &'a NamespaceMapping,
    /// Its ClusterMapping, if it references one (already fetched).
    pub cluster_mapping: Option<&'a ClusterMapping>,
    /// Where RemoteCluster names resolve instead of the referring object's namespace (a
    /// tenant's mappings only name the admin's clusters, in the controller's namespace).
    pub clusters_namespace: Option<&'a str>,
    /// Whether references may leave the mapping's namespace.
    pub cross_namespace_refs: bool,
}

impl<'a> MappingRefs<'a> {
    /// The references of `mapping`, whose ClusterMapping (if any) is `cluster_mapping`.
    pub fn new(mapping: &'a NamespaceMapping, cluster_mapping: Option<&'a ClusterMapping>) -> Self {
        MappingRefs {
            mapping,
            cluster_mapping,
            clusters_namespace: None,
            cross_namespace_refs: false,
        }
    }

    /// The same references judged under `scope` (where RemoteClusters resolve, whether
    /// references may cross namespaces).
    pub fn scoped(self, scope: &'a Scope) -> Self {
        MappingRefs {
            clusters_namespace: scope.clusters_namespace(),
            cross_namespace_refs: scope.cross_namespace_refs(),
            ..self
        }
    }

    fn cluster_ref(&self, namespace: String, name: String, field: String) -> ClusterRef {
        ClusterRef {
            namespace: self
                .clusters_namespace
                .map(str::to_string)
                .unwrap_or(namespace),
            name,
            field,
            cross_namespace_refs: self.cross_namespace_refs,
        }
    }

    fn mapping_namespace(&self) -> String {
        self.mapping.metadata.namespace.clone().unwrap_or_default()
    }

    pub(crate) fn cm_field(&self, cm: &ClusterMapping, field: &str) -> (String, String) {
        let ns = cm
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| self.mapping_namespace());
        let name = cm.metadata.name.clone().unwrap_or_default();
        (ns.clone(), format!("ClusterMapping {ns}/{name} {field}"))
    }

    /// The source RemoteCluster: the mapping's `spec.sourceCluster`, else its
    /// ClusterMapping's; `None` means the cluster the controller runs in.
    pub fn source(&self) -> Option<ClusterRef> {
        if let Some(name) = &self.mapping.spec.source_cluster {
            return Some(self.cluster_ref(
                self.mapping_namespace(),
                name.clone(),
                "spec.sourceCluster".into(),
            ));
        }
        let cm = self.cluster_mapping?;
        let name = cm.spec.source_cluster.clone()?;
        let (namespace, field) = self.cm_field(cm, "spec.sourceCluster");
        Some(self.cluster_ref(namespace, name, field))
    }

    /// The name recorded as the source in commits (`Source-Cluster:`): the RemoteCluster's
    /// name, or `local`.
    pub fn source_name(&self) -> String {
        self.source()
            .map(|r| r.name)
            .unwrap_or_else(|| "local".into())
    }

    /// The direct destination (`spec.destination.cluster.remoteClusterRef`), if the mapping
    /// applies into a DR cluster instead of committing to git.
    pub fn direct(&self) -> Option<ClusterRef> {
        let r = &self
            .mapping
            .spec
            .destination
            .as_ref()?
            .cluster
            .as_ref()?
            .remote_cluster_ref;
        let namespace = r
            .namespace
            .clone()
            .unwrap_or_else(|| self.mapping_namespace());
        Some(self.cluster_ref(
            namespace,
            r.name.clone(),
            "spec.destination.cluster.remoteClusterRef".into(),
        ))
    }

    /// The DR cluster that receives volume data: the direct destination, else the
    /// ClusterMapping's `targetCluster`; `None` means the controller runs in the DR cluster.
    pub fn dr_cluster(&self) -> Option<ClusterRef> {
        if let Some(direct) = self.direct() {
            return Some(direct);
        }
        let cm = self.cluster_mapping?;
        let name = cm.spec.target_cluster.clone()?;
        let (namespace, field) = self.cm_field(cm, "spec.targetCluster");
        Some(self.cluster_ref(namespace, name, field))
    }

    /// The effective git destination and the field it came from: the mapping's own, or the
    /// ClusterMapping default with the mapping's name appended to its path. `None` for a
    /// direct destination or when neither is set.
    pub fn git(&self) -> Option<(GitDestination, String)> {
        let nm = self.mapping;
        if let Some(g) = nm.spec.destination.as_ref().and_then(|d| d.git.clone()) {
            return Some((g, "spec.destination.git".into()));
        }
        if self.direct().is_some() {
            return None;
        }
        let cm = self.cluster_mapping?;
        let mut g = cm.spec.defaults.as_ref()?.git.clone()?;
        let name = nm.metadata.name.clone().unwrap_or_default();
        g.path = Some(match g.path.as_deref().map(|p| p.trim_matches('/')) {
            Some(p) if !p.is_empty() => format!("{p}/{name}"),
            _ => name,
        });
        Some((g, self.cm_field(cm, "spec.defaults.git").1))
    }

    /// Namespace in which the git destination's `credentialsSecretRef` resolves when it
    /// names none: the namespace of the object that holds the reference.
    pub fn git_namespace(&self) -> String {
        let own = self
            .mapping
            .spec
            .destination
            .as_ref()
            .is_some_and(|d| d.git.is_some());
        match self.cluster_mapping {
            Some(cm) if !own => self.cm_field(cm, "").0,
            _ => self.mapping_namespace(),
        }
    }
}

#[cfg(test)]
mod tests;
