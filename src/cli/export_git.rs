//! The git side of `dr-syncer export`: when `--to` is a repository, the export is committed
//! (only when it changed) and pushed, instead of written to a directory.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::api::NamespaceMapping;
use crate::gitops::{Auth, Breaker, CommitInfo, KnownHosts, Target};

use super::export::{ExportArgs, SourceInfo};

/// Git destination options.
#[derive(Debug, Clone, clap::Args)]
pub struct GitArgs {
    /// Branch to commit to (default: the mapping's, else `main`).
    #[arg(long, env = "DR_SYNCER_GIT_BRANCH")]
    pub branch: Option<String>,
    /// Directory inside the repository for this export (default: the mapping's, else root).
    #[arg(long, env = "DR_SYNCER_GIT_PATH")]
    pub path: Option<String>,
    /// SSH deploy key (private key file) for `ssh://` and `user@host:path` remotes.
    #[arg(long, env = "DR_SYNCER_SSH_KEY")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file pinning the SSH server's host key (required for SSH remotes).
    #[arg(long, env = "DR_SYNCER_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// HTTPS user name.
    #[arg(long, env = "DR_SYNCER_GIT_USERNAME")]
    pub git_username: Option<String>,
    /// File holding the HTTPS token.
    #[arg(long, env = "DR_SYNCER_GIT_TOKEN_FILE")]
    pub git_token_file: Option<PathBuf>,
    /// Commit author name.
    #[arg(long, env = "DR_SYNCER_AUTHOR_NAME")]
    pub author_name: Option<String>,
    /// Commit author email.
    #[arg(long, env = "DR_SYNCER_AUTHOR_EMAIL")]
    pub author_email: Option<String>,
    /// Name in commit subjects (default: the mapping's name, else `export`).
    #[arg(long, env = "DR_SYNCER_MAPPING_NAME")]
    pub mapping_name: Option<String>,
    /// Source cluster name for the commit trailer (default: the context, or `offline`).
    #[arg(long, env = "DR_SYNCER_SOURCE_CLUSTER")]
    pub source_cluster: Option<String>,
    /// Where local clones are cached (default: ~/.cache/dr-syncer/git).
    #[arg(long, env = "DR_SYNCER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Let a batch through that the mass-deletion breaker would hold.
    #[arg(long, env = "DR_SYNCER_ALLOW_MASS_DELETION")]
    pub allow_mass_deletion: bool,
    /// Largest share of objects one export may delete, in percent (default: mapping, else 50).
    #[arg(long, env = "DR_SYNCER_MAX_DELETE_PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_delete_percent: Option<u8>,
    /// Largest number of objects one export may delete.
    #[arg(long, env = "DR_SYNCER_MAX_DELETE_COUNT")]
    pub max_delete_count: Option<u64>,
}

/// Whether `to` names a git remote rather than a directory.
fn is_remote_url(to: &str) -> bool {
    to.contains("://")
        || regex::Regex::new(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")
            .expect("valid regex")
            .is_match(to)
}

/// Whether `path` is a git repository (bare or with a work tree).
fn is_repository(path: &Path) -> bool {
    path.join("HEAD").is_file() && path.join("objects").is_dir() || path.join(".git").exists()
}

/// The git target, when `--to` is a repository.
pub fn destination(
    args: &ExportArgs,
    mapping: Option<&NamespaceMapping>,
) -> anyhow::Result<Option<Target>> {
    target(&args.to, &args.git, mapping)
}

/// The git target for `to` (a URL or a local repository) and the git options; `None` when
/// `to` is neither (a plain directory).
pub fn target(
    to_path: &Path,
    g: &GitArgs,
    mapping: Option<&NamespaceMapping>,
) -> anyhow::Result<Option<Target>> {
    let to = to_path.to_string_lossy().to_string();
    let url = if is_remote_url(&to) {
        to
    } else if is_repository(to_path) {
        let repo = git2::Repository::open(to_path)
            .with_context(|| format!("opening {}", to_path.display()))?;
        let branch = g.branch.clone().unwrap_or_else(|| "main".into());
        if !repo.is_bare()
            && repo
                .head()
                .ok()
                .and_then(|h| h.shorthand().ok().map(str::to_string))
                == Some(branch.clone())
        {
            anyhow::bail!(
                "{}: branch {branch} is checked out there; export to a bare repository or another branch",
                to_path.display()
            );
        }
        std::fs::canonicalize(to_path)?.display().to_string()
    } else {
        return Ok(None);
    };
    let from_mapping = mapping
        .and_then(|m| m.spec.destination.as_ref())
        .and_then(|d| d.git.as_ref());
    let known_hosts = match &g.known_hosts {
        Some(p) => Some(KnownHosts::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )),
        None => None,
    };
    let token = match &g.git_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let author = from_mapping.and_then(|d| d.author.clone());
    let cache_dir = match &g.cache_dir {
        Some(d) => d.clone(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .context("no --cache-dir and neither XDG_CACHE_HOME nor HOME is set")?
            .join("dr-syncer/git"),
    };
    Ok(Some(Target {
        url,
        branch: g
            .branch
            .clone()
            .or_else(|| from_mapping.map(|d| d.branch.clone()))
            .unwrap_or_else(|| "main".into()),
        path: g
            .path
            .clone()
            .or_else(|| from_mapping.and_then(|d| d.path.clone()))
            .unwrap_or_default(),
        auth: Auth {
            ssh_key: g.ssh_key.clone(),
            ssh_key_pem: None,
            secret: None,
            known_hosts,
            username: g.git_username.clone(),
            token,
        },
        author: (
            g.author_name
                .clone()
                .or_else(|| author.as_ref().map(|a| a.name.clone()))
                .unwrap_or_else(|| "dr-syncer".into()),
            g.author_email
                .clone()
                .or_else(|| author.as_ref().map(|a| a.email.clone()))
                .unwrap_or_else(|| "dr-syncer@dr-syncer.io".into()),
        ),
        cache_dir,
        fence: Default::default(),
    }))
}

/// Subject name and trailers.
pub fn commit_info(
    args: &ExportArgs,
    mapping: Option<&NamespaceMapping>,
    source: &SourceInfo,
) -> CommitInfo {
    CommitInfo {
        mapping: args
            .git
            .mapping_name
            .clone()
            .or_else(|| mapping.and_then(|m| m.metadata.name.clone()))
            .unwrap_or_else(|| "export".into()),
        source_cluster: args
            .git
            .source_cluster
            .clone()
            .unwrap_or_else(|| source.cluster.clone()),
        kubernetes_version: source.version.clone(),
        replica: String::new(),
    }
}

/// Breaker thresholds from the flags, else the mapping's `deletionSafety`, else 50 %.
pub fn breaker(args: &ExportArgs, mapping: Option<&NamespaceMapping>) -> Breaker {
    let safety = mapping.and_then(|m| m.spec.deletion_safety.as_ref());
    Breaker {
        max_percent: args
            .git
            .max_delete_percent
            .or_else(|| safety.map(|s| s.max_delete_percent.clamp(0, 100) as u8))
            .unwrap_or(50),
        max_count: args.git.max_delete_count.or_else(|| {
            safety
                .and_then(|s| s.max_delete_count)
                .map(|c| c.max(0) as u64)
        }),
        allow: args.git.allow_mass_deletion,
        release: None,
    }
}
