//! `dr-syncer export`: one export of one or more namespaces, from a live cluster or from
//! files, into a directory (or just the diff with `--dry-run`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use kube::core::Selector;
use serde_json::json;

use crate::api::NamespaceMapping;
use crate::export::layout::Consumer;
use crate::export::secrets::SecretWriter;
use crate::export::source::{live, offline};
use crate::export::{self, NamespaceInput, Policy, Summary, crds, output};
use crate::sops::Recipients;

/// Exit code when some types could not be listed (their files were kept).
pub const EXIT_PARTIAL: u8 = 3;
/// Exit code when the mass-deletion breaker held the batch (nothing committed).
pub const EXIT_HELD: u8 = 4;

/// Arguments of `dr-syncer export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Read objects from YAML/JSON files below this directory instead of a cluster.
    #[arg(long, env = "DR_SYNCER_FROM", conflicts_with_all = ["kubeconfig", "context"])]
    pub from: Option<PathBuf>,
    /// Kubeconfig of the source cluster (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "DR_SYNCER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long, env = "DR_SYNCER_CONTEXT")]
    pub context: Option<String>,
    /// Source namespace (repeatable). Default: the mapping's, or every namespace in --from.
    #[arg(
        long = "namespace",
        short = 'n',
        env = "DR_SYNCER_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Export every namespace whose labels match (`kubectl -l` syntax).
    #[arg(
        long,
        short = 'l',
        env = "DR_SYNCER_SELECTOR",
        conflicts_with = "namespaces"
    )]
    pub selector: Option<String>,
    /// A NamespaceMapping whose spec drives filtering, transforms and destination namespaces.
    #[arg(long, env = "DR_SYNCER_MAPPING")]
    pub mapping: Option<PathBuf>,
    /// Destination: a directory (replaced as a whole; kept if the export fails), a local git
    /// repository, or a remote URL (`ssh://`, `git@host:path`, `https://`, `git://`).
    #[arg(long, env = "DR_SYNCER_TO")]
    pub to: PathBuf,
    /// Show what would change in --to without writing.
    #[arg(long, env = "DR_SYNCER_DRY_RUN")]
    pub dry_run: bool,
    /// Summary format.
    #[arg(long, short = 'o', env = "DR_SYNCER_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// age recipient (`age1…`) to encrypt Secrets for (repeatable; adds to the mapping's).
    #[arg(
        long = "age-recipient",
        env = "DR_SYNCER_AGE_RECIPIENTS",
        value_delimiter = ','
    )]
    pub age_recipients: Vec<String>,
    /// File with age recipients, one per line (`#` comments allowed).
    #[arg(long, env = "DR_SYNCER_AGE_RECIPIENTS_FILE")]
    pub age_recipients_file: Option<PathBuf>,
    /// Key of the Secret fingerprints (32 random bytes; created if missing). Keep it out of
    /// git: with it, fingerprints could be checked against guessed passwords.
    #[arg(long, env = "DR_SYNCER_FINGERPRINT_KEY")]
    pub fingerprint_key: Option<PathBuf>,
    /// The GitOps tool that reads the output: `argocd` lists encrypted Secrets in a KSOPS
    /// generator per namespace instead of the kustomization. Default: the mapping's git
    /// destination's `consumer`, else `flux`.
    #[arg(long, env = "DR_SYNCER_CONSUMER", value_enum)]
    pub consumer: Option<ConsumerArg>,
    /// Types listed at once (live).
    #[arg(long, env = "DR_SYNCER_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Do not write the CRDs of exported custom resources into `_cluster/` (for DR
    /// platforms that install CRDs themselves; the mapping's `exportCRDs: false`).
    #[arg(long, env = "DR_SYNCER_NO_CRDS")]
    pub no_crds: bool,
    /// Git destination options (used when --to is a repository URL or path).
    #[command(flatten)]
    pub git: super::export_git::GitArgs,
}

/// `--consumer` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsumerArg {
    /// Flux kustomize-controller (SOPS decryption).
    Flux,
    /// Argo CD with KSOPS.
    Argocd,
}

/// Summary format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table per kind.
    Table,
    /// One JSON document.
    Json,
}

/// Runs the export.
pub async fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let mapping = args.mapping.as_deref().map(load_mapping).transpose()?;
    let mut policy = match &mapping {
        Some(m) => Policy::from_spec(&m.spec).with_context(|| {
            format!(
                "{}: invalid mapping",
                args.mapping.as_ref().unwrap().display()
            )
        })?,
        None => Policy::default(),
    };
    if args.no_crds {
        policy.export_crds = false;
    }
    let mut summary = Summary::default();
    let (inputs, registry, source, crd_source) = match &args.from {
        Some(dir) => {
            let (i, r, crds) = read_offline(dir, args, mapping.as_ref())?;
            (
                i,
                r,
                SourceInfo {
                    cluster: "offline".into(),
                    version: "unknown".into(),
                },
                CrdSource::Files(crds::index(crds)),
            )
        }
        None => {
            let (i, r, s, client) =
                read_live(args, mapping.as_ref(), &policy, &mut summary).await?;
            (i, r, s, CrdSource::Live(client))
        }
    };
    let mut objects = export::process(inputs, &policy, &registry, &mut summary);
    let available = match crd_source {
        CrdSource::Files(available) => available,
        CrdSource::Live(client) => {
            let (found, failures) =
                live::get_crds(&client, crds::candidates(&objects, &policy)).await;
            summary.failures.extend(failures);
            found
        }
    };
    let needed = crds::needed(&objects, &available, &policy, &mut summary);
    objects.extend(needed);
    let git = super::export_git::destination(args, mapping.as_ref())?;
    let (repo, head, previous) = match &git {
        Some(target) => {
            let repo = crate::gitops::Repo::open(target.clone())?;
            let head = repo.fetch()?;
            let previous = repo.files_at(head)?;
            (Some(repo), head, previous)
        }
        None => (None, None, output::read_tree(&args.to)?),
    };
    if previous
        .files
        .contains_key(crate::export::promote::PROMOTED_FILE)
    {
        anyhow::bail!(
            "{}: {}",
            args.to.display(),
            crate::controller::sync::PROMOTED_MESSAGE
        );
    }
    let recipients = recipients(args, mapping.as_ref())?;
    // Without recipients Secrets are skipped; where the destination already holds encrypted
    // Secrets that would delete them all, so it is refused like the controller refuses it.
    if recipients.is_empty()
        && let Some(path) = previous
            .files
            .keys()
            .find(|p| crate::controller::sync::is_encrypted_secret(p))
    {
        anyhow::bail!(
            "{}: no age recipients given, but the destination holds encrypted Secrets (e.g. {path}); pass --age-recipient (or the mapping's secrets.ageRecipients) so they are not deleted",
            args.to.display()
        );
    }
    let key = if recipients.is_empty() {
        Vec::new()
    } else {
        fingerprint_key(args.fingerprint_key.as_deref())?
    };
    let writer = SecretWriter {
        recipients,
        fingerprint_key: &key,
        previous: &previous,
    };
    let consumer = match args.consumer {
        Some(ConsumerArg::Flux) => Consumer::Flux,
        Some(ConsumerArg::Argocd) => Consumer::ArgoCd,
        None => mapping
            .as_ref()
            .and_then(|m| m.spec.destination.as_ref())
            .and_then(|d| d.git.as_ref())
            .map(|g| g.consumer.into())
            .unwrap_or_default(),
    };
    let mut tree = export::build_tree(&objects, Some(&writer), consumer, &mut summary)?;
    output::keep_failed_types(&mut tree, &previous, &summary);
    let diff = output::diff(&previous, &tree);
    let mut published = None;
    if !args.dry_run {
        match &repo {
            Some(repo) => {
                let info = super::export_git::commit_info(args, mapping.as_ref(), &source);
                match repo.publish(
                    head,
                    &tree,
                    &info,
                    &super::export_git::breaker(args, mapping.as_ref()),
                ) {
                    Ok(p) => published = Some(p),
                    Err(crate::gitops::GitError::Held(held)) => {
                        print!("{}", summary.table());
                        eprintln!("error: {held}");
                        return Ok(ExitCode::from(EXIT_HELD));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None if !diff.is_empty() || !args.to.join(output::MARKER).exists() => {
                output::write_tree(&tree, &args.to)?
            }
            None => {}
        }
    }
    report(args, &summary, &diff, published.as_ref())?;
    if summary.failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(EXIT_PARTIAL))
    }
}

fn report(
    args: &ExportArgs,
    summary: &Summary,
    diff: &output::Diff,
    published: Option<&crate::gitops::Published>,
) -> anyhow::Result<()> {
    match args.output {
        OutputFormat::Table => {
            print!("{}", summary.table());
            let verb = if args.dry_run {
                "would change"
            } else {
                "changed"
            };
            println!(
                "{}: {} added, {} changed, {} deleted ({verb})",
                args.to.display(),
                diff.added.len(),
                diff.changed.len(),
                diff.deleted.len()
            );
            if args.dry_run {
                for (mark, paths) in [
                    ("+", &diff.added),
                    ("~", &diff.changed),
                    ("-", &diff.deleted),
                ] {
                    for p in paths {
                        println!("{mark} {p}");
                    }
                }
            }
            match published {
                Some(crate::gitops::Published::Committed {
                    sha,
                    subject,
                    attempts,
                    ..
                }) => {
                    println!("committed {sha}: {subject} (pushed after {attempts} attempt(s))");
                }
                Some(crate::gitops::Published::Unchanged { head }) => {
                    println!(
                        "no commit: the repository already holds this export (head {})",
                        head.as_deref().unwrap_or("none")
                    );
                }
                None => {}
            }
        }
        OutputFormat::Json => {
            let commit = match published {
                Some(crate::gitops::Published::Committed {
                    sha,
                    subject,
                    attempts,
                    ..
                }) => json!({"sha": sha, "subject": subject, "attempts": attempts}),
                _ => serde_json::Value::Null,
            };
            let doc = json!({"output": args.to, "dryRun": args.dry_run, "summary": summary, "diff": diff, "commit": commit});
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}

/// Recipients from the flags, the recipients file and the mapping's `secrets.ageRecipients`.
fn recipients(args: &ExportArgs, mapping: Option<&NamespaceMapping>) -> anyhow::Result<Recipients> {
    let mut all = args.age_recipients.clone();
    if let Some(path) = &args.age_recipients_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        all.extend(Recipients::parse_file(&text)?);
    }
    if let Some(s) = mapping.and_then(|m| m.spec.secrets.as_ref()) {
        all.extend(s.age_recipients.iter().cloned());
    }
    Ok(Recipients::from_list(&all)?)
}

/// The fingerprint key: the given file, or `~/.config/dr-syncer/fingerprint.key`; created
/// with 32 random bytes (mode 0600) when missing.
fn fingerprint_key(path: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .context("no --fingerprint-key and neither XDG_CONFIG_HOME nor HOME is set")?;
            base.join("dr-syncer/fingerprint.key")
        }
    };
    if let Ok(key) = std::fs::read(&path) {
        anyhow::ensure!(
            key.len() >= 32,
            "{}: a fingerprint key needs at least 32 bytes",
            path.display()
        );
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("random generator: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&key)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

fn load_mapping(path: &Path) -> anyhow::Result<NamespaceMapping> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text)
        .with_context(|| format!("{}: not a NamespaceMapping", path.display()))
}

fn mapping_selector(mapping: Option<&NamespaceMapping>) -> anyhow::Result<Option<Selector>> {
    mapping
        .and_then(|m| m.spec.namespace_selector.clone())
        .map(|s| Selector::try_from(s).context("spec.namespaceSelector"))
        .transpose()
}

fn wanted_namespaces(args: &ExportArgs, mapping: Option<&NamespaceMapping>) -> Vec<String> {
    if !args.namespaces.is_empty() {
        return args.namespaces.clone();
    }
    mapping
        .and_then(|m| m.spec.source_namespace.clone())
        .into_iter()
        .collect()
}

/// Where the CRDs of the exported custom resources come from.
enum CrdSource {
    /// The input files' CustomResourceDefinitions.
    Files(crds::Available),
    /// The source cluster, asked once the exported types are known.
    Live(kube::Client),
}

fn read_offline(
    dir: &Path,
    args: &ExportArgs,
    mapping: Option<&NamespaceMapping>,
) -> anyhow::Result<(
    Vec<NamespaceInput>,
    export::Registry,
    Vec<serde_json::Value>,
)> {
    let selector = match &args.selector {
        Some(s) => {
            Some(export::selector::parse(s).map_err(|e| anyhow::anyhow!("--selector {s:?}: {e}"))?)
        }
        None => mapping_selector(mapping)?,
    };
    let mut input = offline::read_dir(dir)?;
    // On stderr, before the summary: stdout stays the table or the JSON document.
    for warning in &input.warnings {
        eprintln!("warning: {warning}");
    }
    let crds = std::mem::take(&mut input.crds);
    let (inputs, registry) =
        input.into_namespaces(&wanted_namespaces(args, mapping), selector.as_ref())?;
    Ok((inputs, registry, crds))
}

/// Where the objects came from, for commit trailers.
pub struct SourceInfo {
    /// Cluster name (context, or `offline`).
    pub cluster: String,
    /// Kubernetes version.
    pub version: String,
}

async fn read_live(
    args: &ExportArgs,
    mapping: Option<&NamespaceMapping>,
    policy: &Policy,
    summary: &mut Summary,
) -> anyhow::Result<(
    Vec<NamespaceInput>,
    export::Registry,
    SourceInfo,
    kube::Client,
)> {
    let client =
        crate::cli::client::build(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "unknown".into());
    let source = SourceInfo {
        cluster: args.context.clone().unwrap_or_else(|| "source".into()),
        version,
    };
    let selector = match (&args.selector, mapping_selector(mapping)?) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(sel)) => Some(sel.to_string()),
        (None, None) => None,
    };
    let bar = std::sync::Mutex::new(indicatif::ProgressBar::hidden());
    let progress = live::Progress {
        total: &|n| *bar.lock().unwrap() = progress_bar(n),
        step: &|| bar.lock().unwrap().inc(1),
    };
    let names = wanted_namespaces(args, mapping);
    let read = live::read(
        &client,
        names,
        selector.as_deref(),
        policy,
        args.concurrency,
        &progress,
    )
    .await?;
    bar.lock().unwrap().finish_and_clear();
    // An empty selection would replace the output with nothing; say so instead.
    anyhow::ensure!(
        !read.inputs.is_empty(),
        "no namespace matches {}",
        selector.as_deref().unwrap_or("the given names")
    );
    summary.failures.extend(read.failures);
    Ok((read.inputs, read.registry, source, client))
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    super::progress::bar(total, "listing {pos}/{len} types", 50)
}
