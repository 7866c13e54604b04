//! `dr-syncer verify`: reads the tree the DR cluster pulls (a remote, a bare repository or
//! a checkout / export directory) and tells whether the DR cluster would come up from it:
//! objects and layout, every SOPS file decrypted with the DR identity and its MAC verified,
//! and with `--kubeconfig` a server-side dry-run of every object on the DR cluster.
//! Exit code 0 only when everything was checked (the dry-run included) and nothing failed;
//! 2 when something would fail; 3 when nothing failed but not everything could be checked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::export::layout::Consumer;
use crate::export::output;
use crate::gitops::Repo;
use crate::sops::Identities;
use crate::verify::{self, tree};

use super::export::{ConsumerArg, OutputFormat};
use super::export_git::{self, GitArgs};

/// Exit code when the DR cluster would not come up from the tree.
pub const EXIT_NOT_READY: u8 = 2;
/// Exit code when nothing failed but not everything could be checked (no dry-run, or
/// objects deferred until `_cluster/` is applied).
pub const EXIT_NOT_VERIFIED: u8 = 3;

/// Arguments of `dr-syncer verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The tree: a remote URL or bare repository (read at --branch), or a checkout or
    /// export directory.
    #[arg(long, env = "DR_SYNCER_REPO")]
    pub repo: PathBuf,
    /// Git options (branch, path of the mapping's files, credentials).
    #[command(flatten)]
    pub git: GitArgs,
    /// The DR cluster's age identity: every SOPS file must decrypt with it and its MAC
    /// verify. Required when the tree holds encrypted Secrets.
    #[arg(long, env = "SOPS_AGE_KEY_FILE")]
    pub age_identity: Option<PathBuf>,
    /// The layout to expect (default: Argo CD when the tree holds KSOPS generators).
    #[arg(long, value_enum)]
    pub consumer: Option<ConsumerArg>,
    /// Kubeconfig of the DR cluster: every object is dry-run applied there (also done
    /// with only --context, from the default kubeconfig).
    #[arg(long, env = "DR_SYNCER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context of the DR cluster.
    #[arg(long, env = "DR_SYNCER_CONTEXT")]
    pub context: Option<String>,
    /// Report format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Runs the checks and prints the report.
pub async fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let files = read(args).await?;
    let consumer = match args.consumer {
        Some(ConsumerArg::Flux) => Consumer::Flux,
        Some(ConsumerArg::Argocd) => Consumer::ArgoCd,
        None => tree::detect_consumer(&files),
    };
    let identity = args
        .age_identity
        .as_deref()
        .map(read_identity)
        .transpose()?;
    let keys = match &identity {
        Some((identities, recipients)) => tree::SecretKeys::Identity {
            identities,
            recipients,
        },
        None => tree::SecretKeys::Nothing,
    };
    let (mut report, candidates) = tree::check(&files, consumer, &keys);
    if args.kubeconfig.is_some() || args.context.is_some() {
        let client =
            super::client::build(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
        let bar = super::progress::bar(candidates.len() as u64, "dry-run {pos}/{len} objects", 1);
        let done = verify::dry_run::run(&client, &candidates, &mut report, &|| bar.inc(1)).await;
        bar.finish_and_clear();
        done.context("reaching the DR cluster for the dry-run")?;
    }
    match args.output {
        OutputFormat::Table => print!("{}", report.table()),
        OutputFormat::Json => {
            let mut doc = serde_json::to_value(&report)?;
            doc["ready"] = serde_json::json!(report.ready());
            doc["verdict"] = serde_json::to_value(report.verdict())?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(match report.verdict() {
        verify::Verdict::Ready => ExitCode::SUCCESS,
        verify::Verdict::NotReady => ExitCode::from(EXIT_NOT_READY),
        verify::Verdict::NotVerified => ExitCode::from(EXIT_NOT_VERIFIED),
    })
}

/// The files below `--path`: from git (remote or bare repository, at `--branch`) or from a
/// directory (a checkout is read as it is on disk).
async fn read(args: &VerifyArgs) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let bare = args.repo.join("HEAD").is_file() && args.repo.join("objects").is_dir();
    if args.repo.is_dir() && !bare {
        let dir = args.repo.join(args.git.path.as_deref().unwrap_or(""));
        anyhow::ensure!(dir.is_dir(), "--path: {} is not a directory", dir.display());
        return Ok(output::read_tree(&dir)?.files);
    }
    let target = export_git::target(&args.repo, &args.git, None)?.with_context(|| {
        format!(
            "--repo: {} is not a git repository, URL or directory",
            args.repo.display()
        )
    })?;
    let path = target.path.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let repo = Repo::open(target)?;
        let head = repo
            .fetch()?
            .with_context(|| format!("--repo: the branch has no commit (path {path:?})"))?;
        let tree = repo.files_at(Some(head))?;
        anyhow::ensure!(
            !tree.files.is_empty(),
            "--path: nothing at {path:?} on the branch"
        );
        Ok(tree.files)
    })
    .await?
}

/// The identity and its public keys (named when a file is not encrypted for it).
fn read_identity(path: &Path) -> anyhow::Result<(Identities, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let identities = Identities::from_file_contents(&text)
        .with_context(|| format!("--age-identity {}", path.display()))?;
    let recipients = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .filter_map(|l| l.parse::<age::x25519::Identity>().ok())
        .map(|id| id.to_public().to_string())
        .collect();
    Ok((identities, recipients))
}
