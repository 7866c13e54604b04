//! Types shared by more than one resource: references, the git destination and the
//! secret-encryption settings (a ClusterMapping provides both as defaults).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go-style duration such as `30s`, `5m`, `1h30m` or `500ms` (the spelling Flux and Argo CD
/// users already know).
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// Reference to an object by name; `namespace` defaults to the referring object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referenced object; defaults to the referring object's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Reference to one key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret; defaults to the referring object's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Key inside the Secret's `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Where exported manifests are committed.
///
/// `url` accepts `https://`, `ssh://`, scp-style `git@host:path`, `git://` (read-only daemons
/// and tests) and `file://`. Plain `http://` is refused: it would send credentials in clear.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitDestination {
    /// Repository URL.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(r"self.matches('^(https|ssh|git|file)://[^\\s]+$') || self.matches('^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\\s]+$')").message("url must use https://, ssh://, git://, file:// or scp-style user@host:path"))]
    pub url: String,
    /// Branch to commit to; created on first push if missing.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9._/-]+$"))]
    pub branch: String,
    /// Directory inside the repository for this mapping's files (relative, no `..`).
    /// Empty means the repository root. Mappings sharing a repository need distinct paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(r"!self.startsWith('/') && !self.matches('(^|/)\\.\\.(/|$)')").message("path must be relative and must not contain '..'"))]
    pub path: Option<String>,
    /// Secret with credentials, using Flux's key names: `identity` (SSH private key) and
    /// `known_hosts` (required for SSH: host keys are pinned, never trusted on first use), or
    /// `username` + `password` / `bearerToken` for HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<ObjectRef>,
    /// Commit author; defaults to `dr-syncer <dr-syncer@dr-syncer.io>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<GitAuthor>,
    /// The GitOps tool on the DR cluster that pulls this repository. `Flux` lists the
    /// encrypted Secrets as kustomization resources (kustomize-controller decrypts them);
    /// `ArgoCD` lists them in a KSOPS generator (`secret-generator.yaml`) per namespace.
    #[serde(default)]
    pub consumer: GitConsumer,
}

/// The GitOps tool that reads a git destination.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum GitConsumer {
    /// Flux kustomize-controller with SOPS decryption.
    #[default]
    Flux,
    /// Argo CD with the KSOPS kustomize plugin.
    #[serde(rename = "ArgoCD")]
    ArgoCd,
}

impl From<GitConsumer> for crate::export::layout::Consumer {
    fn from(c: GitConsumer) -> Self {
        match c {
            GitConsumer::Flux => crate::export::layout::Consumer::Flux,
            GitConsumer::ArgoCd => crate::export::layout::Consumer::ArgoCd,
        }
    }
}

fn default_branch() -> String {
    "main".into()
}

/// Name and email recorded on commits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitAuthor {
    /// Author name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Author email.
    #[schemars(length(min = 3, max = 256), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub email: String,
}

/// How Secrets are written: encrypted for age recipients in the SOPS format, or skipped when
/// no recipient is configured. Plaintext never reaches git.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsSpec {
    /// age X25519 recipients (`age1…`) every Secret is encrypted for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    #[x_kube(validation = Rule::new("self.all(r, r.matches('^age1[02-9ac-hj-np-z]{58}$'))").message("each ageRecipients entry must be an age X25519 recipient: 'age1' followed by 58 bech32 characters"))]
    pub age_recipients: Vec<String>,
    /// Secret holding more recipients, one per line (`#` comments allowed); key defaults to
    /// `recipients.txt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_recipients_secret_ref: Option<SecretKeyRef>,
    /// Also export Helm release Secrets (`type: helm.sh/release.v1`). Off by default: Flux
    /// and Argo CD recreate releases themselves and the blobs churn on every upgrade.
    #[serde(default)]
    pub include_helm_releases: bool,
}
