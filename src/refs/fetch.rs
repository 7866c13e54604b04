//! Reading what a mapping refers to: its ClusterMapping, RemoteCluster clients, git
//! credentials and age recipients. Secret contents stay in memory and never appear in an
//! error message: errors name the object, the field and the key, not the value.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::api::{
    ClusterMapping, NamespaceMapping, ObjectRef, RemoteCluster, SecretsSpec, TenantPolicy,
};
use crate::gitops::{Auth, KnownHosts};

use super::tenancy::{self, Role, Scope, Tenancy};
use super::{ClusterRef, MappingRefs};

/// A mapping's ClusterMapping and the scope its references were authorized under: the
/// only way the controller gets at a mapping's references (see [`resolve`]).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its ClusterMapping, if it references one.
    pub cluster_mapping: Option<ClusterMapping>,
    /// The scope it was authorized under.
    pub scope: Scope,
}

impl Resolved {
    /// The mapping's references under the authorized scope.
    pub fn refs<'a>(&'a self, nm: &'a NamespaceMapping) -> MappingRefs<'a> {
        MappingRefs::new(nm, self.cluster_mapping.as_ref()).scoped(&self.scope)
    }

    /// The export policy with the restrictions of the scope (a tenant's transforms leave
    /// RBAC objects alone).
    pub fn restrict<E>(
        &self,
        policy: Result<crate::export::Policy, E>,
    ) -> Result<crate::export::Policy, E> {
        policy.map(|p| match self.scope {
            Scope::Tenant { .. } => p.for_tenant(),
            Scope::Admin { .. } => p,
        })
    }
}

/// Reads a mapping's ClusterMapping and checks every reference and destination against the
/// tenancy rules; a refusal names the field. An error reading the TenantPolicies refuses
/// (fail closed). Mappings outside the controller's and the tenant namespaces are refused
/// too, so a caller that forgot to filter them still writes nothing.
pub async fn resolve(
    client: &Client,
    tenancy: &Tenancy,
    nm: &NamespaceMapping,
) -> Result<Resolved, RefError> {
    let ns = nm.metadata.namespace.clone().unwrap_or_default();
    let scope = match tenancy.role(&ns) {
        Role::Admin => Scope::Admin {
            cross_namespace_refs: tenancy.cross_namespace_refs,
        },
        Role::Unwatched => {
            return Err(tenancy::Refusal {
                field: "metadata.namespace".into(),
                message: format!(
                    "namespace {ns} is neither the controller's ({}) nor a tenant namespace (--tenant-namespaces)",
                    tenancy.controller_namespace
                ),
            }
            .into());
        }
        Role::Tenant => {
            let policies =
                Api::<TenantPolicy>::namespaced(client.clone(), &tenancy.controller_namespace)
                    .list(&Default::default())
                    .await?;
            let grants =
                tenancy::grants_for(&ns, &policies.items).ok_or_else(|| tenancy::Refusal {
                    field: "metadata.namespace".into(),
                    message: format!(
                        "no TenantPolicy in namespace {} grants namespace {ns} anything",
                        tenancy.controller_namespace
                    ),
                })?;
            Scope::Tenant {
                controller_namespace: tenancy.controller_namespace.clone(),
                grants,
            }
        }
    };
    // The ClusterMappingRef is checked before it is read: a refused reference is not
    // followed, not even to report that it does not exist.
    if !scope.cross_namespace_refs()
        && let Some(r) = &nm.spec.cluster_mapping_ref
        && let Some(other) = &r.namespace
        && *other != ns
    {
        return Err(tenancy::Refusal {
            field: "spec.clusterMappingRef.namespace".into(),
            message: format!(
                "references namespace {other}, but references may not leave namespace {ns}"
            ),
        }
        .into());
    }
    if let Some(r) = &nm.spec.cluster_mapping_ref
        && !tenancy::valid_name(&r.name)
    {
        return Err(tenancy::Refusal {
            field: "spec.clusterMappingRef.name".into(),
            message: "not a valid object name (lowercase letters, digits, '-' and '.')".into(),
        }
        .into());
    }
    let cluster_mapping = cluster_mapping(client, nm).await?;
    // What came back must be the object asked for, in the namespace asked for.
    if let Some(cm) = &cluster_mapping {
        let want = nm
            .spec
            .cluster_mapping_ref
            .as_ref()
            .and_then(|r| r.namespace.clone())
            .unwrap_or_else(|| ns.clone());
        if cm.metadata.namespace.as_deref() != Some(want.as_str()) {
            return Err(tenancy::Refusal {
                field: "spec.clusterMappingRef".into(),
                message: format!("the ClusterMapping read is not in namespace {want}"),
            }
            .into());
        }
    }
    let resolved = Resolved {
        cluster_mapping,
        scope,
    };
    tenancy::authorize(resolved.refs(nm), &resolved.scope)?;
    Ok(resolved)
}

/// A reference that cannot be resolved; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// The referenced object does not exist.
    #[error("{field}: {kind} {namespace}/{name} not found")]
    Missing {
        /// Field holding the reference.
        field: String,
        /// Kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// It exists but is unusable.
    #[error("{field}: {message}")]
    Invalid {
        /// Field holding the reference.
        field: String,
        /// Why.
        message: String,
    },
    /// The tenancy rules refuse it (see [`super::tenancy`]).
    #[error("not allowed: {0}")]
    Forbidden(#[from] super::tenancy::Refusal),
    /// API error while reading a referenced object.
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

fn invalid(field: &str, message: impl Into<String>) -> RefError {
    RefError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The ClusterMapping a mapping references, if any.
pub async fn cluster_mapping(
    client: &Client,
    nm: &NamespaceMapping,
) -> Result<Option<ClusterMapping>, RefError> {
    let Some(r) = &nm.spec.cluster_mapping_ref else {
        return Ok(None);
    };
    let ns = r
        .namespace
        .clone()
        .or_else(|| nm.metadata.namespace.clone())
        .unwrap_or_default();
    let api: Api<ClusterMapping> = Api::namespaced(client.clone(), &ns);
    match api.get_opt(&r.name).await? {
        Some(cm) => Ok(Some(cm)),
        None => Err(RefError::Missing {
            field: "spec.clusterMappingRef".into(),
            kind: "ClusterMapping",
            namespace: ns,
            name: r.name.clone(),
        }),
    }
}

async fn secret_data(
    client: &Client,
    field: &str,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, ByteString>, RefError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await? {
        Some(s) => Ok(s.data.unwrap_or_default()),
        None => Err(RefError::Missing {
            field: field.into(),
            kind: "Secret",
            namespace: ns.into(),
            name: name.into(),
        }),
    }
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Where a mapping reads its objects: a client and the name recorded in commits.
#[derive(Clone)]
pub struct Source {
    /// The source RemoteCluster's name, or `local` for the controller's own cluster.
    pub name: String,
    /// A client for it.
    pub client: Client,
}

/// The source cluster of a mapping (its own `sourceCluster`, else its ClusterMapping's,
/// else the controller's cluster, reached with `local`).
pub async fn source_client(client: &Client, refs: MappingRefs<'_>) -> Result<Source, RefError> {
    match refs.source() {
        Some(r) => Ok(Source {
            client: cluster_client(client, &r).await?,
            name: r.name,
        }),
        None => Ok(Source {
            name: "local".into(),
            client: client.clone(),
        }),
    }
}

/// Why a kubeconfig from a Secret is refused before any connection is made: dr-syncer
/// always verifies TLS, and a kubeconfig written by someone else must not make the
/// controller run programs or read its own files (e.g. its ServiceAccount token).
pub fn kubeconfig_refusal(kc: &Kubeconfig) -> Option<String> {
    for (i, c) in kc.clusters.iter().enumerate() {
        let Some(cluster) = &c.cluster else { continue };
        let at = format!("clusters[{i}] ({})", c.name);
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Some(format!(
                "{at}: insecure-skip-tls-verify is true; dr-syncer always verifies TLS: remove it and put the cluster's CA into certificate-authority-data"
            ));
        }
        // Any scheme but https (in any spelling: `HTTP://` is plain http too) is refused.
        if let Some(server) = &cluster.server
            && !server.to_ascii_lowercase().starts_with("https://")
        {
            return Some(format!(
                "{at}: server is not an https:// URL (plain http:// or another scheme); dr-syncer only talks TLS to clusters"
            ));
        }
        if cluster.certificate_authority.is_some() {
            return Some(format!(
                "{at}: certificate-authority names a file of the controller's pod; use certificate-authority-data"
            ));
        }
    }
    for (i, u) in kc.auth_infos.iter().enumerate() {
        let Some(auth) = &u.auth_info else { continue };
        let at = format!("users[{i}] ({})", u.name);
        let file_fields = [
            ("tokenFile", auth.token_file.is_some()),
            ("client-certificate", auth.client_certificate.is_some()),
            ("client-key", auth.client_key.is_some()),
        ];
        if let Some((field, _)) = file_fields.iter().find(|(_, set)| *set) {
            return Some(format!(
                "{at}: {field} names a file of the controller's pod; embed the credential (token, client-certificate-data, client-key-data)"
            ));
        }
        if auth.exec.is_some() || auth.auth_provider.is_some() {
            return Some(format!(
                "{at}: exec and auth-provider plugins would run programs inside the controller; use a token or client certificate"
            ));
        }
    }
    None
}

/// A client for the RemoteCluster `r` (TLS always verified; see [`kubeconfig_refusal`]).
pub async fn cluster_client(client: &Client, r: &ClusterRef) -> Result<Client, RefError> {
    let rc = Api::<RemoteCluster>::namespaced(client.clone(), &r.namespace)
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| RefError::Missing {
            field: r.field.clone(),
            kind: "RemoteCluster",
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        })?;
    let name = &r.name;
    let s = &rc.spec.kubeconfig_secret_ref;
    let ns = s.namespace.clone().unwrap_or_else(|| r.namespace.clone());
    if !super::tenancy::valid_name(&s.name) {
        return Err(invalid(
            &format!(
                "RemoteCluster {}/{name}: spec.kubeconfigSecretRef.name",
                r.namespace
            ),
            "not a valid object name (lowercase letters, digits, '-' and '.')",
        ));
    }
    if ns != r.namespace && !r.cross_namespace_refs {
        return Err(invalid(
            &format!(
                "RemoteCluster {}/{name}: spec.kubeconfigSecretRef.namespace",
                r.namespace
            ),
            format!(
                "references namespace {ns}, but references may not leave namespace {} (run the controller with --allow-cross-namespace-refs)",
                r.namespace
            ),
        ));
    }
    let data = secret_data(
        client,
        &format!("RemoteCluster {name}: spec.kubeconfigSecretRef"),
        &ns,
        &s.name,
    )
    .await?;
    let field = format!(
        "RemoteCluster {name}: spec.kubeconfigSecretRef (Secret {ns}/{} key {:?})",
        s.name, s.key
    );
    let raw = text(&data, &s.key)
        .ok_or_else(|| invalid(&field, "the Secret has no such key (or it is not UTF-8)"))?;
    // The parser's message may quote the Secret's text: report only that it failed.
    let kc = Kubeconfig::from_yaml(&raw).map_err(|_| {
        invalid(
            &field,
            "not a valid kubeconfig (YAML with clusters, users, contexts)",
        )
    })?;
    if let Some(why) = kubeconfig_refusal(&kc) {
        return Err(invalid(&field, why));
    }
    // kube's messages may quote decoded credential bytes (e.g. bad base64 in
    // client-key-data): name the fields to check, never the value.
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|_| {
            invalid(
                &field,
                "the kubeconfig's context, server, CA or credentials could not be loaded (check current-context and that the *-data fields are base64 PEM)",
            )
        })?;
    config.default_retry = false;
    Client::try_from(config).map_err(|_| {
        invalid(
            &field,
            "no client could be built from the kubeconfig's CA and credentials (check certificate-authority-data, client-certificate-data, client-key-data)",
        )
    })
}

/// Git credentials from a Flux-style Secret: `identity` (SSH private key), `known_hosts`,
/// `username`, `password` / `bearerToken`. `holder_ns` is where a reference without a
/// namespace resolves.
pub async fn git_auth(
    client: &Client,
    holder_ns: &str,
    field: &str,
    r: Option<&ObjectRef>,
) -> Result<Auth, RefError> {
    let Some(r) = r else {
        return Ok(Auth::default());
    };
    let ns = r.namespace.clone().unwrap_or_else(|| holder_ns.to_string());
    let data = secret_data(client, field, &ns, &r.name).await?;
    Ok(Auth {
        ssh_key: None,
        ssh_key_pem: text(&data, "identity"),
        secret: Some(format!("Secret {ns}/{}", r.name)),
        known_hosts: text(&data, "known_hosts").map(|k| KnownHosts::parse(&k)),
        username: text(&data, "username"),
        token: text(&data, "bearerToken").or_else(|| text(&data, "password")),
    })
}

/// Age recipients: the mapping's, else the ClusterMapping defaults, plus the referenced
/// recipients Secret (resolved in the namespace of the object holding the reference).
pub async fn recipients(client: &Client, refs: MappingRefs<'_>) -> Result<Vec<String>, RefError> {
    let nm = refs.mapping;
    let own: Option<SecretsSpec> = nm.spec.secrets.clone();
    let (spec, holder_ns, field) = match own {
        Some(s) => (
            s,
            nm.metadata.namespace.clone().unwrap_or_default(),
            "spec.secrets.ageRecipientsSecretRef".to_string(),
        ),
        None => {
            let Some(cm) = refs.cluster_mapping else {
                return Ok(Vec::new());
            };
            let Some(s) = cm.spec.defaults.as_ref().and_then(|d| d.secrets.clone()) else {
                return Ok(Vec::new());
            };
            let (ns, field) = refs.cm_field(cm, "spec.defaults.secrets.ageRecipientsSecretRef");
            (s, ns, field)
        }
    };
    let mut out = spec.age_recipients.clone();
    if let Some(r) = &spec.age_recipients_secret_ref {
        let ns = r.namespace.clone().unwrap_or(holder_ns);
        let key = r.key.clone().unwrap_or_else(|| "recipients.txt".into());
        let data = secret_data(client, &field, &ns, &r.name).await?;
        let body = text(&data, &key)
            .ok_or_else(|| invalid(&field, format!("Secret {ns}/{} has no key {key:?}", r.name)))?;
        // Every line is checked here, where it is still known to come from a Secret: the
        // parser's message would quote the offending line, so only its number is named.
        let lines = crate::sops::Recipients::parse_file(&body).unwrap_or_default();
        for (i, line) in lines.iter().enumerate() {
            if crate::sops::Recipients::from_list(std::slice::from_ref(line)).is_err() {
                return Err(invalid(
                    &field,
                    format!(
                        "Secret {ns}/{} key {key:?}: recipient {} (not counting comments and blank lines) is not an age recipient (age1…)",
                        r.name,
                        i + 1
                    ),
                ));
            }
        }
        out.extend(lines);
        // An emptied recipients Secret is a configuration error, not "skip Secrets": the
        // sync would otherwise drop every Secret from git.
        if out.is_empty() {
            return Err(invalid(
                &field,
                format!(
                    "Secret {ns}/{} key {key:?} holds no age recipient, so Secrets could not be encrypted; refusing to sync (every Secret would be dropped from git)",
                    r.name
                ),
            ));
        }
    }
    Ok(out)
}
