//! Reading what a mapping refers to: its ClusterMapping, the source RemoteCluster's
//! kubeconfig, git credentials and age recipients. Secret contents stay in memory.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::api::{
    ClusterMapping, GitDestination, NamespaceMapping, ObjectRef, RemoteCluster, SecretsSpec,
};
use crate::gitops::{Auth, KnownHosts};

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
    /// API error.
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

/// A client for the RemoteCluster `name` in `namespace` (TLS always verified).
pub async fn remote_client(
    client: &Client,
    field: &str,
    namespace: &str,
    name: &str,
) -> Result<Client, RefError> {
    let rc = Api::<RemoteCluster>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| RefError::Missing {
            field: field.into(),
            kind: "RemoteCluster",
            namespace: namespace.into(),
            name: name.into(),
        })?;
    let r = &rc.spec.kubeconfig_secret_ref;
    let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_string());
    let data = secret_data(
        client,
        &format!("RemoteCluster {name}: spec.kubeconfigSecretRef"),
        &ns,
        &r.name,
    )
    .await?;
    let field = format!("RemoteCluster {name}: spec.kubeconfigSecretRef.key");
    let raw = text(&data, &r.key).ok_or_else(|| {
        invalid(
            &field,
            format!("Secret {ns}/{} has no key {:?}", r.name, r.key),
        )
    })?;
    let kc = Kubeconfig::from_yaml(&raw)
        .map_err(|e| invalid(&field, format!("not a kubeconfig: {e}")))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(&field, e.to_string()))?;
    config.default_retry = false;
    Client::try_from(config).map_err(|e| invalid(&field, e.to_string()))
}

/// Git credentials from a Flux-style Secret: `identity`, `known_hosts`, `username`,
/// `password` / `bearerToken`.
pub async fn git_auth(
    client: &Client,
    nm_ns: &str,
    field: &str,
    r: Option<&ObjectRef>,
) -> Result<Auth, RefError> {
    let Some(r) = r else {
        return Ok(Auth::default());
    };
    let ns = r.namespace.clone().unwrap_or_else(|| nm_ns.to_string());
    let data = secret_data(client, field, &ns, &r.name).await?;
    Ok(Auth {
        ssh_key: None,
        ssh_key_pem: text(&data, "identity"),
        known_hosts: text(&data, "known_hosts").map(|k| KnownHosts::parse(&k)),
        username: text(&data, "username"),
        token: text(&data, "bearerToken").or_else(|| text(&data, "password")),
    })
}

/// The effective git destination: the mapping's own, or the ClusterMapping default with
/// the mapping's name appended to its path.
pub fn git_destination(
    nm: &NamespaceMapping,
    cm: Option<&ClusterMapping>,
) -> Option<(GitDestination, &'static str)> {
    if let Some(g) = nm.spec.destination.as_ref().and_then(|d| d.git.clone()) {
        return Some((g, "spec.destination.git"));
    }
    if nm
        .spec
        .destination
        .as_ref()
        .is_some_and(|d| d.cluster.is_some())
    {
        return None;
    }
    let mut g = cm
        .and_then(|c| c.spec.defaults.as_ref())
        .and_then(|d| d.git.clone())?;
    let name = nm.metadata.name.clone().unwrap_or_default();
    g.path = Some(match g.path.as_deref().map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("{p}/{name}"),
        _ => name,
    });
    Some((g, "ClusterMapping spec.defaults.git"))
}

/// Age recipients: the mapping's, else the ClusterMapping defaults, plus the referenced
/// recipients Secret.
pub async fn recipients(
    client: &Client,
    nm: &NamespaceMapping,
    cm: Option<&ClusterMapping>,
) -> Result<Vec<String>, RefError> {
    let spec: Option<SecretsSpec> = nm.spec.secrets.clone().or_else(|| {
        cm.and_then(|c| c.spec.defaults.as_ref())
            .and_then(|d| d.secrets.clone())
    });
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let mut out = spec.age_recipients.clone();
    if let Some(r) = &spec.age_recipients_secret_ref {
        let ns = r
            .namespace
            .clone()
            .or_else(|| nm.metadata.namespace.clone())
            .unwrap_or_default();
        let key = r.key.clone().unwrap_or_else(|| "recipients.txt".into());
        let field = "spec.secrets.ageRecipientsSecretRef";
        let data = secret_data(client, field, &ns, &r.name).await?;
        let body = text(&data, &key)
            .ok_or_else(|| invalid(field, format!("Secret {ns}/{} has no key {key:?}", r.name)))?;
        out.extend(
            crate::sops::Recipients::parse_file(&body)
                .map_err(|e| invalid(field, e.to_string()))?,
        );
    }
    Ok(out)
}
