//! One sync of a NamespaceMapping: read the source, run the export pipeline, commit to git.
//! The same library code as `dr-syncer export`.

use std::time::Instant;

use kube::core::Selector;

use crate::api::{NamespaceMapping, keys};
use crate::export::layout::Consumer;
use crate::export::source::live;
use crate::export::{self, Policy, Summary, crds};
use crate::gitops::{Breaker, CommitInfo, GitError, Published, Target};
use crate::sops::Recipients;

use super::context::Ctx;
use super::streamed;
use crate::refs::{self, RefError};

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
    /// This replica lost the leader lease: nothing was written.
    #[error("not written: {0}")]
    NotLeader(String),
    /// The direct destination failed (or the breaker held the batch).
    #[error("DR cluster: {0}")]
    Direct(#[from] super::direct::DirectError),
}

impl SyncError {
    /// Whether this replica was refused the write because it lost the leader lease.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            SyncError::NotLeader(_) | SyncError::Git(GitError::Fenced(_))
        )
    }

    /// Whether the git remote could not be reached or refused the push (the
    /// `dr_syncer_push_failures_total` metric).
    pub fn is_push_failure(&self) -> bool {
        matches!(self, SyncError::Git(GitError::Remote { .. }))
    }

    /// Whether the mass-deletion breaker stopped the sync.
    pub fn held(&self) -> bool {
        matches!(
            self,
            SyncError::Git(GitError::Held(_))
                | SyncError::Direct(super::direct::DirectError::Held(_))
        )
    }
}

/// Where a sync's result went.
#[derive(Debug)]
pub enum Outcome {
    /// Git: a commit or nothing to commit.
    Git(Published),
    /// Direct apply into the DR cluster.
    Direct(super::direct::Applied),
}

/// What a successful sync did.
#[derive(Debug)]
pub struct SyncReport {
    /// Per-kind counts.
    pub summary: Summary,
    /// What happened at the destination.
    pub outcome: Outcome,
    /// Wall time.
    pub duration: std::time::Duration,
    /// Whether it was an incremental patch (not a full export).
    pub patch: bool,
}

/// Why an export into a promoted tree is refused.
pub const PROMOTED_MESSAGE: &str = "the DR side was promoted by `dr-syncer failover` (.dr-syncer/promoted.yaml); exporting would scale its live workloads to zero. Run `dr-syncer failback` first, or pause this mapping";

/// Runs one sync.
pub async fn run(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    resolved: &crate::refs::Resolved,
) -> Result<SyncReport, SyncError> {
    let start = Instant::now();
    let ns = nm.metadata.namespace.clone().unwrap_or_default();
    let name = nm.metadata.name.clone().unwrap_or_default();
    let policy = resolved
        .restrict(Policy::from_spec(&nm.spec))
        .map_err(|e| SyncError::Config(e.to_string()))?;
    let refs = resolved.refs(nm);
    let source = refs::source_client(&ctx.client, refs).await?;
    let client = source.client.clone();
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
    let breaker = breaker(nm);
    let concurrency = ctx.settings.list_concurrency;

    if let (Some(dr_ref), Some(cluster)) = (
        refs.direct(),
        nm.spec
            .destination
            .as_ref()
            .and_then(|d| d.cluster.as_ref()),
    ) {
        // The direct destination applies (and prunes) the whole set at once: it holds it.
        let progress = live::Progress {
            total: &|_| {},
            step: &|| {},
        };
        let read = live::read(
            &client,
            names,
            selector.as_deref(),
            &policy,
            concurrency,
            &progress,
        )
        .await?;
        let mut summary = Summary {
            failures: read.failures,
            ..Summary::default()
        };
        let mut objects = export::process(read.inputs, &policy, &read.registry, &mut summary);
        let (crds, failures) = live::get_crds(&client, crds::candidates(&objects, &policy)).await;
        summary.failures.extend(failures);
        let needed = crds::needed(&objects, &crds, &policy, &mut summary);
        objects.extend(needed);
        let dr = refs::cluster_client(&ctx.client, &dr_ref).await?;
        // A deposed leader must not apply an older snapshot over the new leader's.
        ctx.may_write(&format!("{ns}/{name}"))
            .await
            .map_err(SyncError::NotLeader)?;
        // Never prune a type whose listing failed: its objects were not read.
        let failed: Vec<String> = summary.failures.iter().map(|f| f.what.clone()).collect();
        let prunable: Vec<_> = if cluster.prune {
            read.types
                .into_iter()
                .filter(|rt| {
                    !failed.contains(&rt.qualified())
                        && !failed.contains(&rt.group_dir().to_string())
                })
                .collect()
        } else {
            Vec::new()
        };
        let applied = super::direct::apply(
            &dr,
            &objects,
            &prunable,
            &super::direct::managed_by(&ns, &name),
            &breaker,
        )
        .await?;
        return Ok(SyncReport {
            summary,
            outcome: Outcome::Direct(applied),
            duration: start.elapsed(),
            patch: false,
        });
    }

    let (target, recipients, consumer) = git_setup(ctx, nm, resolved).await?;
    let destination = streamed::Destination {
        target,
        recipients,
        consumer,
        fingerprint_key: ctx.fingerprint_key.clone(),
        info: CommitInfo {
            mapping: name,
            source_cluster: source.name,
            kubernetes_version: version,
            replica: ctx.replica().to_string(),
        },
        breaker,
    };
    let cluster = refs.source().map(|r| (r.namespace, r.name));
    let discovery =
        ctx.discovery(&cluster, &client)
            .await
            .map_err(|source| live::LiveError::Kube {
                context: "API discovery".into(),
                source,
            })?;
    let plan = live::plan(&client, &discovery, names, selector.as_deref(), &policy).await?;
    // The shared watches of this cluster know which types a namespace holds none of.
    let known_empty = |rt: &crate::export::ResourceType, namespace: &str| {
        ctx.hubs
            .known_empty(&cluster, &rt.api_resource(), namespace)
    };
    let (published, summary) = streamed::export(
        &client,
        plan,
        &policy,
        concurrency,
        &known_empty,
        destination,
    )
    .await?;
    Ok(SyncReport {
        summary,
        outcome: Outcome::Git(published),
        duration: start.elapsed(),
        patch: false,
    })
}

/// Whether `path` (relative to the mapping's root) is a Secret file written by the SOPS
/// encryption (`<ns>/core/secrets/<name>.sops.yaml`).
pub fn is_encrypted_secret(path: &str) -> bool {
    path.ends_with(".sops.yaml") && path.contains("/core/secrets/")
}

/// The git destination of a mapping (its own or the ClusterMapping's default) with
/// credentials resolved, the age recipients for its Secrets and the GitOps tool reading it.
pub async fn git_setup(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    resolved: &crate::refs::Resolved,
) -> Result<(Target, Recipients, Consumer), SyncError> {
    let refs = resolved.refs(nm);
    let Some((git, git_field)) = refs.git() else {
        return Err(SyncError::Config(
            "spec.destination: none set and the ClusterMapping has no defaults.git".into(),
        ));
    };
    let auth = refs::git_auth(
        &ctx.client,
        &refs.git_namespace(),
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
        fence: ctx.fence_for(&format!(
            "{}/{}",
            nm.metadata.namespace.as_deref().unwrap_or_default(),
            nm.metadata.name.as_deref().unwrap_or_default()
        )),
    };
    let recipients = Recipients::from_list(&refs::recipients(&ctx.client, refs).await?)
        .map_err(|e| SyncError::Config(format!("spec.secrets.ageRecipients: {e}")))?;
    Ok((target, recipients, git.consumer.into()))
}

/// Breaker thresholds from `deletionSafety`; `dr-syncer.io/allow-mass-deletion: <batch id>`
/// releases exactly the held batch with that id (shown in `status.lastError`).
pub fn breaker(nm: &NamespaceMapping) -> Breaker {
    let safety = nm.spec.deletion_safety.clone();
    let release = nm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::ALLOW_MASS_DELETION))
        .cloned();
    Breaker {
        max_percent: safety
            .as_ref()
            .map(|s| s.max_delete_percent.clamp(0, 100) as u8)
            .unwrap_or(50),
        max_count: safety
            .as_ref()
            .and_then(|s| s.max_delete_count)
            .map(|c| c.max(0) as u64),
        allow: false,
        release,
    }
}
