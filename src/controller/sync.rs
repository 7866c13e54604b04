//! One sync of a NamespaceMapping: read the source, run the export pipeline, commit to git.
//! The same library code as `dr-syncer export`.

use std::time::Instant;

use kube::core::Selector;

use crate::api::{ClusterMapping, NamespaceMapping, keys};
use crate::export::secrets::SecretWriter;
use crate::export::source::live;
use crate::export::{self, Policy, Summary, output};
use crate::gitops::{Breaker, CommitInfo, GitError, Published, Repo, Target};
use crate::sops::Recipients;

use super::context::Ctx;
use super::refs::{self, RefError};

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The mapping or what it references is not usable (fix the spec).
    #[error("{0}")]
    Config(String),
    /// A reference could not be resolved.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// Reading the source failed.
    #[error("source: {0}")]
    Source(#[from] live::LiveError),
    /// Encryption failed.
    #[error("secrets: {0}")]
    Sops(#[from] crate::sops::SopsError),
    /// The git destination failed (or the breaker held the batch).
    #[error(transparent)]
    Git(#[from] GitError),
}

/// What a successful sync did.
#[derive(Debug)]
pub struct SyncReport {
    /// Per-kind counts.
    pub summary: Summary,
    /// The commit, or that nothing changed.
    pub published: Published,
    /// Wall time.
    pub duration: std::time::Duration,
}

/// Runs one sync.
pub async fn run(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    cm: Option<&ClusterMapping>,
) -> Result<SyncReport, SyncError> {
    let start = Instant::now();
    let ns = nm.metadata.namespace.clone().unwrap_or_default();
    let policy = Policy::from_spec(&nm.spec).map_err(|e| SyncError::Config(e.to_string()))?;
    let Some((git, git_field)) = refs::git_destination(nm, cm) else {
        return Err(SyncError::Config("spec.destination.cluster: direct apply into a DR cluster is not available in this version; use a git destination".into()));
    };
    let source_cluster = nm
        .spec
        .source_cluster
        .clone()
        .or_else(|| cm.and_then(|c| c.spec.source_cluster.clone()));
    let client = match &source_cluster {
        Some(name) => refs::remote_client(&ctx.client, "spec.sourceCluster", &ns, name).await?,
        None => ctx.client.clone(),
    };
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "unknown".into());
    let selector = match nm.spec.namespace_selector.clone() {
        Some(s) => Some(
            Selector::try_from(s)
                .map_err(|e| SyncError::Config(format!("spec.namespaceSelector: {e}")))?
                .to_string(),
        ),
        None => None,
    };
    let names: Vec<String> = nm.spec.source_namespace.clone().into_iter().collect();
    let progress = live::Progress {
        total: &|_| {},
        step: &|| {},
    };
    let read = live::read(
        &client,
        names,
        selector.as_deref(),
        &policy,
        ctx.settings.list_concurrency,
        &progress,
    )
    .await?;
    let mut summary = Summary {
        failures: read.failures,
        ..Summary::default()
    };
    let objects = export::process(read.inputs, &policy, &read.registry, &mut summary);

    let auth = refs::git_auth(
        &ctx.client,
        &ns,
        &format!("{git_field}.credentialsSecretRef"),
        git.credentials_secret_ref.as_ref(),
    )
    .await?;
    let author = git.author.clone();
    let target = Target {
        url: git.url.clone(),
        branch: git.branch.clone(),
        path: git.path.clone().unwrap_or_default(),
        auth,
        author: (
            author
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_else(|| "dr-syncer".into()),
            author
                .as_ref()
                .map(|a| a.email.clone())
                .unwrap_or_else(|| "dr-syncer@dr-syncer.io".into()),
        ),
        cache_dir: ctx.settings.cache_dir.clone(),
    };
    let recipients = Recipients::from_list(&refs::recipients(&ctx.client, nm, cm).await?)
        .map_err(|e| SyncError::Config(format!("spec.secrets.ageRecipients: {e}")))?;
    let name = nm.metadata.name.clone().unwrap_or_default();
    let safety = nm.spec.deletion_safety.clone();
    let allow = nm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::ALLOW_MASS_DELETION))
        .is_some_and(|v| v == "true");
    let breaker = Breaker {
        max_percent: safety
            .as_ref()
            .map(|s| s.max_delete_percent.clamp(0, 100) as u8)
            .unwrap_or(50),
        max_count: safety
            .as_ref()
            .and_then(|s| s.max_delete_count)
            .map(|c| c.max(0) as u64),
        allow,
    };
    let info = CommitInfo {
        mapping: name,
        source_cluster: source_cluster.unwrap_or_else(|| "local".into()),
        kubernetes_version: version,
    };
    let key = ctx.fingerprint_key.clone();
    // git2 is blocking: run the git part on the blocking pool.
    let (published, summary) = tokio::task::spawn_blocking(move || -> Result<_, SyncError> {
        let repo = Repo::open(target)?;
        let head = repo.fetch()?;
        let previous = repo.files_at(head)?;
        let writer = SecretWriter {
            recipients,
            fingerprint_key: &key,
            previous: &previous,
        };
        let mut tree = export::build_tree(&objects, Some(&writer), &mut summary)?;
        if !summary.failures.is_empty() {
            let failures = summary.failures.clone();
            let dests: Vec<String> = summary.namespaces.values().cloned().collect();
            output::carry_over(&mut tree, &previous, |top, group, plural| {
                let qualified = if group == "core" {
                    plural.to_string()
                } else {
                    format!("{plural}.{group}")
                };
                dests.iter().any(|d| d == top)
                    && failures
                        .iter()
                        .any(|f| f.what == qualified || f.what == group)
            });
        }
        Ok((repo.publish(head, &tree, &info, &breaker)?, summary))
    })
    .await
    .map_err(|e| SyncError::Config(format!("sync task failed: {e}")))??;
    Ok(SyncReport {
        summary,
        published,
        duration: start.elapsed(),
    })
}
