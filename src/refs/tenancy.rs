//! Who may make the controller read and write what.
//!
//! The controller holds every Secret of the source cluster and writes into other clusters
//! and repositories, so a NamespaceMapping is a request made with the controller's
//! privileges. Three rules keep those privileges with the admin:
//! - Mappings are reconciled only in the controller's own namespace (the admin's) and in
//!   tenant namespaces the admin lists; everything else is ignored.
//! - References never leave the mapping's namespace (no other namespace's Secret,
//!   ClusterMapping or RemoteCluster), unless the controller runs with
//!   `--allow-cross-namespace-refs`, which only the admin's own mappings may use.
//! - A tenant mapping exports only its own namespace and writes only where a
//!   [`TenantPolicy`] in the controller's namespace allows (git URL prefixes and paths, DR
//!   clusters registered by the admin, DR namespaces).
//!
//! The decision is a pure function of the mapping, its ClusterMapping and the policies
//! ([`authorize`]), tested from YAML fixtures.

use std::collections::BTreeSet;

use crate::api::{GitGrant, NamespaceMapping, ObjectRef, TenantPolicy};

use super::MappingRefs;

/// Which namespaces besides the controller's hold tenant mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TenantNamespaces {
    /// None: only the controller's namespace is reconciled.
    #[default]
    None,
    /// These namespaces.
    Listed(BTreeSet<String>),
    /// Every namespace (each still needs a TenantPolicy naming it).
    All,
}

impl TenantNamespaces {
    /// Parses the `--tenant-namespaces` value: a comma-separated list, or `*` for all.
    pub fn parse(s: &str) -> Self {
        let names: BTreeSet<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if names.contains("*") {
            TenantNamespaces::All
        } else if names.is_empty() {
            TenantNamespaces::None
        } else {
            TenantNamespaces::Listed(names)
        }
    }
}

/// The controller's tenancy settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenancy {
    /// The controller's (admin's) namespace: its mappings are the admin's, TenantPolicies
    /// and the RemoteClusters tenants may be granted live there.
    pub controller_namespace: String,
    /// Namespaces whose mappings are tenant mappings.
    pub tenants: TenantNamespaces,
    /// Whether the admin's own mappings may reference objects in other namespaces.
    pub cross_namespace_refs: bool,
}

/// What a mapping in some namespace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// In the controller's namespace.
    Admin,
    /// In a tenant namespace.
    Tenant,
    /// Neither: the controller leaves it alone (no status, no sync).
    Unwatched,
}

impl Tenancy {
    /// The role of a mapping in namespace `ns`.
    pub fn role(&self, ns: &str) -> Role {
        if ns == self.controller_namespace {
            return Role::Admin;
        }
        match &self.tenants {
            TenantNamespaces::All => Role::Tenant,
            TenantNamespaces::Listed(names) if names.contains(ns) => Role::Tenant,
            _ => Role::Unwatched,
        }
    }

    /// Whether mappings outside the controller's namespace are reconciled at all (the
    /// watch then spans every namespace and [`Tenancy::role`] filters).
    pub fn has_tenants(&self) -> bool {
        self.tenants != TenantNamespaces::None
    }
}

/// How a mapping's references are judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// The admin's mapping.
    Admin {
        /// References may name other namespaces.
        cross_namespace_refs: bool,
    },
    /// A tenant's mapping with the grants of every policy naming its namespace.
    Tenant {
        /// The controller's namespace, where granted RemoteClusters live.
        controller_namespace: String,
        /// The grants.
        grants: Grants,
    },
}

impl Scope {
    /// Whether references may leave the mapping's namespace.
    pub fn cross_namespace_refs(&self) -> bool {
        matches!(
            self,
            Scope::Admin {
                cross_namespace_refs: true
            }
        )
    }

    /// Where RemoteCluster names resolve: tenants only get the admin's clusters.
    pub fn clusters_namespace(&self) -> Option<&str> {
        match self {
            Scope::Admin { .. } => None,
            Scope::Tenant {
                controller_namespace,
                ..
            } => Some(controller_namespace),
        }
    }
}

/// The union of the TenantPolicies naming one namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// Git repositories.
    pub git: Vec<GitGrant>,
    /// Source RemoteClusters.
    pub source_clusters: BTreeSet<String>,
    /// Destination RemoteClusters.
    pub destination_clusters: BTreeSet<String>,
    /// DR namespace patterns (empty: the tenant namespace's own name).
    pub destination_namespaces: Vec<String>,
    /// Volume hooks (exec in the tenant's pods) allowed.
    pub exec_hooks: bool,
}

/// The grants for tenant namespace `ns` from `policies` (those read from the controller's
/// namespace); `None` when no policy names it.
pub fn grants_for(ns: &str, policies: &[TenantPolicy]) -> Option<Grants> {
    let mut found = false;
    let mut g = Grants::default();
    for p in policies
        .iter()
        .filter(|p| p.spec.namespaces.iter().any(|n| n == ns))
    {
        found = true;
        g.git.extend(p.spec.git.iter().cloned());
        g.source_clusters
            .extend(p.spec.source_clusters.iter().cloned());
        g.destination_clusters
            .extend(p.spec.destination_clusters.iter().cloned());
        g.destination_namespaces
            .extend(p.spec.destination_namespaces.iter().cloned());
        g.exec_hooks |= p.spec.exec_hooks;
    }
    found.then_some(g)
}

/// Why a mapping may not do what it asks; the field is named, never a Secret's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refusal {
    /// The field that asks for it.
    pub field: String,
    /// Why it is refused and what would allow it.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks every reference and destination of a mapping against its scope.
pub fn authorize(refs: MappingRefs<'_>, scope: &Scope) -> Result<(), Refusal> {
    let nm = refs.mapping;
    let own = nm.metadata.namespace.clone().unwrap_or_default();
    check_names(refs)?;
    if !scope.cross_namespace_refs() {
        same_namespace(nm, refs, &own, scope)?;
    }
    let Scope::Tenant { grants, .. } = scope else {
        return Ok(());
    };
    tenant_source(nm, &own)?;
    tenant_destination_namespace(nm, &own, grants)?;
    // Volume data is written where the DR cluster is; "none named" would mean the
    // controller's own cluster, which no grant covers.
    if nm.spec.pvc_config.as_ref().is_some_and(|p| p.sync_data) && refs.dr_cluster().is_none() {
        return Err(refuse(
            "spec.pvcConfig.syncData",
            "a tenant's volume data needs a DR cluster its TenantPolicy grants (spec.destination.cluster or the ClusterMapping's targetCluster)",
        ));
    }
    let hooks = nm
        .spec
        .pvc_config
        .as_ref()
        .and_then(|p| p.data_sync_config.as_ref())
        .is_some_and(|d| !d.hooks.is_empty());
    if hooks && !grants.exec_hooks {
        return Err(refuse(
            "spec.pvcConfig.dataSyncConfig.hooks",
            format!(
                "volume hooks exec commands in pods; no TenantPolicy grants them to namespace {own} (execHooks: true)"
            ),
        ));
    }
    granted_cluster(refs.source(), &grants.source_clusters, "source", &own)?;
    granted_cluster(
        refs.dr_cluster(),
        &grants.destination_clusters,
        "destination",
        &own,
    )?;
    if let Some((git, field)) = refs.git() {
        let path = git.path.clone().unwrap_or_default();
        if !grants
            .git
            .iter()
            .any(|g| url_allowed(&git.url, &g.url_prefix) && path_allowed(&path, g))
        {
            return Err(refuse(
                field,
                format!(
                    "repository {:?} path {path:?} is not allowed for namespace {own} by any TenantPolicy (git[].urlPrefix, git[].pathPrefix)",
                    git.url
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `name` is a valid object name (a DNS-1123 subdomain). Names go into request
/// paths unescaped, so `../../dr-syncer/secrets/x` must never get that far.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
}

/// Every object name a mapping (and its ClusterMapping) references is a valid name.
pub fn check_names(refs: MappingRefs<'_>) -> Result<(), Refusal> {
    let spec = &refs.mapping.spec;
    let git = spec.destination.as_ref().and_then(|d| d.git.as_ref());
    let mut names: Vec<(&str, Option<&str>)> = vec![
        (
            "spec.clusterMappingRef.name",
            spec.cluster_mapping_ref.as_ref().map(|r| r.name.as_str()),
        ),
        ("spec.sourceCluster", spec.source_cluster.as_deref()),
        (
            "spec.destination.git.credentialsSecretRef.name",
            git.and_then(|g| g.credentials_secret_ref.as_ref())
                .map(|r| r.name.as_str()),
        ),
        (
            "spec.destination.cluster.remoteClusterRef.name",
            spec.destination
                .as_ref()
                .and_then(|d| d.cluster.as_ref())
                .map(|c| c.remote_cluster_ref.name.as_str()),
        ),
        (
            "spec.secrets.ageRecipientsSecretRef.name",
            spec.secrets
                .as_ref()
                .and_then(|s| s.age_recipients_secret_ref.as_ref())
                .map(|r| r.name.as_str()),
        ),
    ];
    if let Some(cm) = refs.cluster_mapping {
        let d = cm.spec.defaults.as_ref();
        names.extend([
            (
                "ClusterMapping spec.sourceCluster",
                cm.spec.source_cluster.as_deref(),
            ),
            (
                "ClusterMapping spec.targetCluster",
                cm.spec.target_cluster.as_deref(),
            ),
            (
                "ClusterMapping spec.defaults.git.credentialsSecretRef.name",
                d.and_then(|d| d.git.as_ref())
                    .and_then(|g| g.credentials_secret_ref.as_ref())
                    .map(|r| r.name.as_str()),
            ),
            (
                "ClusterMapping spec.defaults.secrets.ageRecipientsSecretRef.name",
                d.and_then(|d| d.secrets.as_ref())
                    .and_then(|s| s.age_recipients_secret_ref.as_ref())
                    .map(|r| r.name.as_str()),
            ),
        ]);
    }
    for (field, name) in names {
        if let Some(name) = name
            && !valid_name(name)
        {
            return Err(refuse(
                field,
                "not a valid object name (lowercase letters, digits, '-' and '.')",
            ));
        }
    }
    Ok(())
}

/// A RemoteCluster a tenant names must be among the `role` clusters its policies grant.
fn granted_cluster(
    r: Option<super::ClusterRef>,
    granted: &BTreeSet<String>,
    role: &str,
    own: &str,
) -> Result<(), Refusal> {
    match r {
        Some(r) if !granted.contains(&r.name) => Err(refuse(
            r.field,
            format!(
                "RemoteCluster {:?} is not among the {role} clusters a TenantPolicy grants namespace {own}",
                r.name
            ),
        )),
        _ => Ok(()),
    }
}

/// A reference's namespace must be absent or `allowed`.
fn check_ref(field: &str, r: Option<&ObjectRef>, allowed: &str) -> Result<(), Refusal> {
    match r.and_then(|r| r.namespace.as_deref()) {
        Some(ns) if ns != allowed => Err(refuse(
            format!("{field}.namespace"),
            format!(
                "references namespace {ns}, but references may not leave namespace {allowed} (the controller runs without --allow-cross-namespace-refs, or this is a tenant mapping)"
            ),
        )),
        _ => Ok(()),
    }
}

fn same_namespace(
    nm: &NamespaceMapping,
    refs: MappingRefs<'_>,
    own: &str,
    scope: &Scope,
) -> Result<(), Refusal> {
    let spec = &nm.spec;
    check_ref(
        "spec.clusterMappingRef",
        spec.cluster_mapping_ref.as_ref(),
        own,
    )?;
    if let Some(r) = spec
        .secrets
        .as_ref()
        .and_then(|s| s.age_recipients_secret_ref.as_ref())
        && let Some(ns) = &r.namespace
        && ns != own
    {
        return Err(refuse(
            "spec.secrets.ageRecipientsSecretRef.namespace",
            format!("references namespace {ns}, but references may not leave namespace {own}"),
        ));
    }
    let git = spec.destination.as_ref().and_then(|d| d.git.as_ref());
    check_ref(
        "spec.destination.git.credentialsSecretRef",
        git.and_then(|g| g.credentials_secret_ref.as_ref()),
        own,
    )?;
    // RemoteClusters: the admin's resolve in the mapping's namespace; a tenant names only
    // the admin's registered clusters (checked against the grants by name).
    let cluster_ns = scope.clusters_namespace().unwrap_or(own);
    let direct = spec.destination.as_ref().and_then(|d| d.cluster.as_ref());
    check_ref(
        "spec.destination.cluster.remoteClusterRef",
        direct.map(|c| &c.remote_cluster_ref),
        cluster_ns,
    )?;
    // A ClusterMapping (necessarily in this namespace by now) must not reach out either.
    if let Some(cm) = refs.cluster_mapping
        && let Some(d) = &cm.spec.defaults
    {
        check_ref(
            "ClusterMapping spec.defaults.git.credentialsSecretRef",
            d.git
                .as_ref()
                .and_then(|g| g.credentials_secret_ref.as_ref()),
            own,
        )?;
        if let Some(ns) = d
            .secrets
            .as_ref()
            .and_then(|s| s.age_recipients_secret_ref.as_ref())
            .and_then(|r| r.namespace.as_ref())
            && ns != own
        {
            return Err(refuse(
                "ClusterMapping spec.defaults.secrets.ageRecipientsSecretRef.namespace",
                format!("references namespace {ns}, but references may not leave namespace {own}"),
            ));
        }
    }
    Ok(())
}

fn tenant_source(nm: &NamespaceMapping, own: &str) -> Result<(), Refusal> {
    if nm.spec.namespace_selector.is_some() {
        return Err(refuse(
            "spec.namespaceSelector",
            format!("a tenant mapping exports only its own namespace; set sourceNamespace: {own}"),
        ));
    }
    match nm.spec.source_namespace.as_deref() {
        Some(s) if s == own => Ok(()),
        Some(s) => Err(refuse(
            "spec.sourceNamespace",
            format!("a mapping in namespace {own} may export only namespace {own}, not {s}"),
        )),
        None => Err(refuse(
            "spec.sourceNamespace",
            format!("a tenant mapping must set sourceNamespace: {own}"),
        )),
    }
}

fn tenant_destination_namespace(
    nm: &NamespaceMapping,
    own: &str,
    grants: &Grants,
) -> Result<(), Refusal> {
    let dest = match (
        &nm.spec.destination_namespace,
        &nm.spec.destination_namespace_suffix,
    ) {
        (Some(d), _) => d.clone(),
        (None, Some(suffix)) => format!("{own}{suffix}"),
        (None, None) => own.to_string(),
    };
    let allowed = if grants.destination_namespaces.is_empty() {
        dest == own
    } else {
        grants
            .destination_namespaces
            .iter()
            .any(|p| namespace_matches(&dest, p))
    };
    if allowed {
        Ok(())
    } else {
        Err(refuse(
            "spec.destinationNamespace",
            format!(
                "DR namespace {dest} is not allowed for namespace {own} (TenantPolicy destinationNamespaces)"
            ),
        ))
    }
}

/// `pattern` is a name or a prefix followed by one `*`.
pub fn namespace_matches(ns: &str, pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ns.starts_with(prefix),
        None => ns == pattern,
    }
}

/// Whether `url` lies under `prefix` at a path-segment boundary. URLs a server might
/// normalise into somewhere else (`..`/`.` segments, percent-encoding, backslashes, query or
/// fragment) are refused outright: fail closed rather than guess the server's rules.
pub fn url_allowed(url: &str, prefix: &str) -> bool {
    if url.contains(['%', '\\', '?', '#']) || url.chars().any(char::is_whitespace) {
        return false;
    }
    let path_start = url.find("://").map(|i| i + 3).unwrap_or(0);
    if url[path_start..]
        .split(['/', ':'])
        .any(|seg| seg == "." || seg == "..")
    {
        return false;
    }
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return false;
    }
    match url.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('/') || rest == ".git" || rest == ".git/",
        None => false,
    }
}

/// Whether a repository path lies under the grant's `pathPrefix` (at a segment boundary).
pub fn path_allowed(path: &str, grant: &GitGrant) -> bool {
    let path = path.trim_matches('/');
    if path.split('/').any(|seg| seg == ".." || seg == ".") {
        return false;
    }
    let Some(prefix) = grant
        .path_prefix
        .as_deref()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    else {
        return true;
    };
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
#[path = "tenancy_tests.rs"]
mod tests;
