//! `dr-syncer failover` (promote the DR side) and `dr-syncer failback` (return it to
//! standby). Git mode makes one commit on the mapping's path that restores (or zeroes)
//! replicas and CronJob suspension and records the promotion in `.dr-syncer/promoted.yaml`,
//! which stops exports from scaling the live DR workloads back down. Direct mode patches
//! the workloads in the DR cluster and marks its Namespaces. Both show the change first
//! and only act with `--yes`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::export::layout::is_generated;
use crate::export::promote::{self, PROMOTED_ANNOTATION, PROMOTED_FILE, Step};
use crate::export::{Registry, Tree, render};
use crate::gitops::{Breaker, CommitInfo, GitError, Patch as FilePatch, Published, Repo};

use super::export_git::{self, GitArgs};

/// Arguments of `failover` and `failback`.
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// Git mode: the mapping's repository (remote URL or local bare repository); --branch
    /// and --path select the mapping's files.
    #[arg(long, env = "DR_SYNCER_REPO", conflicts_with_all = ["kubeconfig", "context"], required_unless_present = "kubeconfig")]
    pub repo: Option<PathBuf>,
    /// Git options (credentials, branch, path, author).
    #[command(flatten)]
    pub git: GitArgs,
    /// Direct mode: kubeconfig of the DR cluster.
    #[arg(long, env = "DR_SYNCER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Direct mode: kubeconfig context.
    #[arg(long, env = "DR_SYNCER_CONTEXT")]
    pub context: Option<String>,
    /// Direct mode: the DR namespaces to change (repeatable).
    #[arg(
        long = "namespace",
        short = 'n',
        value_delimiter = ',',
        requires = "kubeconfig"
    )]
    pub namespaces: Vec<String>,
    /// Make the change; without it only the preview is printed.
    #[arg(long)]
    pub yes: bool,
}

/// Which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Promote: workloads run with the source's replicas.
    Failover,
    /// Back to standby: workloads at zero, CronJobs suspended.
    Failback,
}

impl Direction {
    fn apply(self, obj: &mut Value) -> Option<Step> {
        match self {
            Direction::Failover => promote::promote(obj),
            Direction::Failback => promote::demote(obj),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Direction::Failover => "failover",
            Direction::Failback => "failback",
        }
    }
}

/// Runs failover or failback.
pub async fn run(args: &FailoverArgs, direction: Direction) -> anyhow::Result<ExitCode> {
    match &args.repo {
        Some(repo) => git_mode(args, repo, direction).await,
        None => direct_mode(args, direction).await,
    }
}

fn describe(path: &str, step: &Step) -> String {
    format!("{path}: {} {} -> {}", step.field, step.from, step.to)
}

async fn git_mode(
    args: &FailoverArgs,
    repo: &std::path::Path,
    direction: Direction,
) -> anyhow::Result<ExitCode> {
    let Some(target) = export_git::target(repo, &args.git, None)? else {
        bail!("--repo: {} is not a git repository or URL", repo.display());
    };
    let (yes, name) = (args.yes, direction.name());
    tokio::task::spawn_blocking(move || -> anyhow::Result<ExitCode> {
        let path = target.path.clone();
        let repo = Repo::open(target)?;
        let head = repo
            .fetch()?
            .with_context(|| format!("--repo: the branch has no export yet (path {path:?})"))?;
        let tree = repo.files_at(Some(head))?;
        let promoted = tree.files.contains_key(PROMOTED_FILE);
        match (direction, promoted) {
            (Direction::Failover, true) => {
                println!("already promoted ({PROMOTED_FILE} exists); nothing to do");
                return Ok(ExitCode::SUCCESS);
            }
            (Direction::Failback, false) => {
                println!("not promoted ({PROMOTED_FILE} is absent); nothing to do");
                return Ok(ExitCode::SUCCESS);
            }
            _ => {}
        }
        let (patch, preview) = plan(&tree, direction)?;
        print!("{preview}");
        let changed = patch.len();
        let mut patch = patch;
        patch.insert(
            PROMOTED_FILE.into(),
            (direction == Direction::Failover).then(|| marker().into_bytes()),
        );
        if !yes {
            println!("\n{changed} workloads would change; nothing written (pass --yes to commit)");
            return Ok(ExitCode::SUCCESS);
        }
        let info = CommitInfo {
            mapping: name.into(),
            source_cluster: "dr".into(),
            kubernetes_version: "n/a".into(),
            replica: String::new(),
        };
        let breaker = Breaker {
            max_percent: 100,
            max_count: None,
            allow: true,
            release: None,
        };
        let published =
            repo.publish_patch::<_, GitError>(head, &info, &breaker, |_| Ok(patch.clone()))?;
        match published {
            Published::Committed { sha, subject, .. } => {
                println!("\n{subject} ({})", &sha[..12.min(sha.len())]);
            }
            Published::Unchanged { .. } => println!("\nnothing to commit"),
        }
        Ok(ExitCode::SUCCESS)
    })
    .await?
}

/// The changed object files and a unified-diff preview of them.
fn plan(tree: &Tree, direction: Direction) -> anyhow::Result<(FilePatch, String)> {
    let mut patch = FilePatch::new();
    let mut preview = String::new();
    for (path, bytes) in &tree.files {
        // Secrets are never workloads, and their files are encrypted.
        if path.starts_with('.') || is_generated(path) || path.ends_with(".sops.yaml") {
            continue;
        }
        let Ok(mut obj) = serde_saphyr::from_slice::<Value>(bytes) else {
            continue;
        };
        let Some(step) = direction.apply(&mut obj) else {
            continue;
        };
        let new = render::render(&obj).with_context(|| format!("rendering {path}"))?;
        let old = String::from_utf8_lossy(bytes);
        preview.push_str(&format!("# {}\n", describe(path, &step)));
        preview.push_str(
            &similar::TextDiff::from_lines(old.as_ref(), new.as_str())
                .unified_diff()
                .context_radius(2)
                .header(&format!("a/{path}"), &format!("b/{path}"))
                .to_string(),
        );
        patch.insert(path.clone(), Some(new.into_bytes()));
    }
    Ok((patch, preview))
}

fn marker() -> String {
    format!(
        "# The DR side of this mapping is promoted: exports are refused until\n# `dr-syncer failback` removes this file.\npromotedAt: \"{}\"\n",
        jiff::Timestamp::now()
    )
}

/// Workload types failover changes.
const WORKLOADS: [(&str, &str); 5] = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "ReplicaSet"),
    ("batch/v1", "CronJob"),
    ("batch/v1", "Job"),
];

async fn direct_mode(args: &FailoverArgs, direction: Direction) -> anyhow::Result<ExitCode> {
    if args.namespaces.is_empty() {
        bail!(
            "--namespace: name the DR namespaces to {}",
            direction.name()
        );
    }
    let client = super::client::build(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let registry = Registry::builtin();
    let params = PatchParams::default();
    let mut changed = 0;
    for ns in &args.namespaces {
        for (api_version, kind) in WORKLOADS {
            let rt = registry.lookup(api_version, kind).expect("built-in type");
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), ns, &rt.api_resource());
            let list = api
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing {} in {ns}", rt.qualified()))?;
            for obj in list {
                let mut before = serde_json::to_value(&obj)?;
                // Dynamic lists omit apiVersion/kind per item.
                before["apiVersion"] = json!(api_version);
                before["kind"] = json!(kind);
                let mut after = before.clone();
                let Some(step) = direction.apply(&mut after) else {
                    continue;
                };
                let name = obj.metadata.name.clone().unwrap_or_default();
                println!(
                    "{}",
                    describe(&format!("{ns}/{}/{name}", rt.qualified()), &step)
                );
                changed += 1;
                if args.yes {
                    let ops = json_patch::diff(&before, &after);
                    api.patch(&name, &params, &Patch::<()>::Json(ops))
                        .await
                        .with_context(|| format!("patching {ns}/{}/{name}", rt.qualified()))?;
                }
            }
        }
        if args.yes {
            mark_namespace(&client, ns, direction).await?;
        }
    }
    if !args.yes {
        println!("\n{changed} workloads would change; nothing written (pass --yes to apply)");
    } else {
        println!("\n{}: {changed} workloads changed", direction.name());
    }
    Ok(ExitCode::SUCCESS)
}

/// Marks (or unmarks) a promoted DR namespace, so direct-mode syncs stop touching it.
async fn mark_namespace(client: &Client, ns: &str, direction: Direction) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let value = match direction {
        Direction::Failover => json!(jiff::Timestamp::now().to_string()),
        Direction::Failback => Value::Null,
    };
    api.patch(
        ns,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {PROMOTED_ANNOTATION: value}}})),
    )
    .await
    .with_context(|| format!("marking namespace {ns}"))?;
    Ok(())
}
