//! `dr-syncer bootstrap flux|argocd`: prints the objects the DR cluster needs to pull the
//! export — for Flux a GitRepository and Kustomizations (cluster-scoped first and never
//! pruned, then one per namespace, pruned, depending on it, decrypting with SOPS); for
//! Argo CD an Application for the cluster-scoped directory and an ApplicationSet over the
//! namespace directories. The YAML templates live in `templates/`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use minijinja::{Environment, context};

const FLUX: &str = include_str!("../../templates/flux.yaml.j2");
const ARGOCD: &str = include_str!("../../templates/argocd.yaml.j2");

/// Arguments of `dr-syncer bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The GitOps tool on the DR cluster.
    #[command(subcommand)]
    pub tool: Tool,
}

/// Which tool to bootstrap.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// GitRepository + Kustomizations with SOPS decryption.
    Flux(FluxArgs),
    /// Application + ApplicationSet (git directory generator) for KSOPS exports.
    Argocd(ArgoArgs),
}

/// What both tools need.
#[derive(Debug, clap::Args)]
pub struct RepoArgs {
    /// Repository URL as the DR cluster reaches it.
    #[arg(long)]
    pub repo: String,
    /// Branch the exporter commits to.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// The mapping's directory in the repository (`spec.destination.git.path`).
    #[arg(long, default_value = "")]
    pub path: String,
    /// Name (prefix) of the generated objects.
    #[arg(long, default_value = "dr-syncer")]
    pub name: String,
    /// Secret holding the age identity on the DR cluster.
    #[arg(long, default_value = "dr-syncer-age")]
    pub age_secret: String,
}

/// `bootstrap flux`.
#[derive(Debug, clap::Args)]
pub struct FluxArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Namespace of the Flux objects.
    #[arg(long, default_value = "flux-system")]
    namespace: String,
    /// How often the Kustomizations re-apply (drift correction).
    #[arg(long, default_value = "10m")]
    interval: String,
    /// How often the GitRepository fetches: bounds how far the DR cluster lags the export.
    /// Also how often a failed apply of a Kustomization is retried.
    #[arg(long, default_value = "1m")]
    source_interval: String,
    /// Secret with the repository credentials (Flux's `identity`/`known_hosts` keys).
    #[arg(long)]
    git_secret: Option<String>,
    /// Exported (destination) namespaces, one Kustomization each.
    #[arg(long = "namespaces", value_delimiter = ',', conflicts_with = "from")]
    namespaces: Vec<String>,
    /// A checkout of the repository (or an export directory): its namespace directories
    /// below --path are used.
    #[arg(long)]
    from: Option<PathBuf>,
}

/// `bootstrap argocd`.
#[derive(Debug, clap::Args)]
pub struct ArgoArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Namespace of the Argo CD objects.
    #[arg(long, default_value = "argocd")]
    namespace: String,
    /// Argo CD project.
    #[arg(long, default_value = "default")]
    project: String,
    /// Destination cluster API server.
    #[arg(long, default_value = "https://kubernetes.default.svc")]
    server: String,
}

/// Kubernetes object names (and Flux/Argo CD names built from them): DNS-1123 labels.
fn check_name(field: &str, value: &str) -> anyhow::Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        bail!("{field}: {value:?} is not a valid name (lowercase letters, digits, '-')");
    }
    Ok(())
}

fn clean_path(path: &str) -> anyhow::Result<String> {
    let p = path.trim_matches('/');
    if p.split('/').any(|s| s == "..") {
        bail!("--path: {path:?} must not contain '..'");
    }
    Ok(p.to_string())
}

/// Destination namespace directories of an export below `dir`.
fn namespaces_in(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("--from: {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && !name.starts_with('.') && !name.starts_with('_') {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Renders the objects for `args`.
pub fn render(args: &BootstrapArgs) -> anyhow::Result<String> {
    let mut env = Environment::new();
    env.add_template("flux", FLUX)?;
    env.add_template("argocd", ARGOCD)?;
    match &args.tool {
        Tool::Flux(f) => {
            check_name("--name", &f.repo.name)?;
            check_name("--namespace", &f.namespace)?;
            check_name("--age-secret", &f.repo.age_secret)?;
            if let Some(s) = &f.git_secret {
                check_name("--git-secret", s)?;
            }
            let path = clean_path(&f.repo.path)?;
            let namespaces = match &f.from {
                Some(dir) => namespaces_in(&dir.join(&path))?,
                None => f.namespaces.clone(),
            };
            if namespaces.is_empty() {
                bail!("no namespace: pass --namespaces a,b or --from <checkout of the repository>");
            }
            for ns in &namespaces {
                check_name("--namespaces", ns)?;
            }
            let prefix = if path.is_empty() {
                "./".to_string()
            } else {
                format!("./{path}/")
            };
            Ok(env.get_template("flux")?.render(context! {
                name => f.repo.name, namespace => f.namespace, interval => f.interval,
                source_interval => f.source_interval,
                repo => f.repo.repo, branch => f.repo.branch, prefix => prefix,
                git_secret => f.git_secret, age_secret => f.repo.age_secret,
                namespaces => namespaces,
            })? + "\n")
        }
        Tool::Argocd(a) => {
            check_name("--name", &a.repo.name)?;
            check_name("--namespace", &a.namespace)?;
            check_name("--project", &a.project)?;
            let path = clean_path(&a.repo.path)?;
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{path}/")
            };
            Ok(env.get_template("argocd")?.render(context! {
                name => a.repo.name, namespace => a.namespace, project => a.project,
                server => a.server, repo => a.repo.repo, branch => a.repo.branch,
                prefix => prefix, age_secret => a.repo.age_secret,
            })? + "\n")
        }
    }
}

/// Prints the objects.
pub fn run(args: &BootstrapArgs) -> anyhow::Result<ExitCode> {
    print!("{}", render(args)?);
    Ok(ExitCode::SUCCESS)
}
