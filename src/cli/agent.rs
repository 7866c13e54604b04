//! `dr-syncer agent serve-volume` and `dr-syncer agent bastion`: the source side of PVC
//! data replication (see `pvc::ssh`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::pvc::{access, ssh};

/// Arguments of `dr-syncer agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// What to run.
    #[command(subcommand)]
    pub role: Role,
}

/// Agent roles.
#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// Serve one volume read-only to `dr-syncer pvc-sync` over SSH.
    ServeVolume(ServeArgs),
    /// Forward SSH connections to allow-listed volume servers only.
    Bastion(BastionArgs),
}

/// SSH server options both roles share.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "DR_SYNCER_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// Ed25519 host key (OpenSSH private key file).
    #[arg(long, env = "DR_SYNCER_HOST_KEY")]
    pub host_key: PathBuf,
    /// Public keys allowed to connect: an `authorized_keys` file or a directory of them (a
    /// mounted Secret). Re-read at every login, so rotations need no restart. The only
    /// option understood is `expiry-time="YYYYMMDDHHMMSSZ"`.
    #[arg(long, env = "DR_SYNCER_AUTHORIZED_KEYS")]
    pub authorized_keys: PathBuf,
}

/// `agent serve-volume`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The volume's root directory (read-only; nothing outside it is ever read).
    #[arg(long, env = "DR_SYNCER_ROOT")]
    pub root: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `agent bastion`.
#[derive(Debug, clap::Args)]
pub struct BastionArgs {
    /// A `HOST:PORT` forwarding target (repeatable).
    #[arg(long = "allow", value_parser = access::parse_target)]
    pub allow: Vec<(String, u16)>,
    /// Forwarding targets from a file or a directory of files (a mounted ConfigMap), one
    /// `HOST:PORT [SHA256:client-key-fingerprint] [expires=RFC3339]` per line, re-read for
    /// every forwarding request. Everything not listed is refused.
    #[arg(long, env = "DR_SYNCER_ALLOW_FROM", conflicts_with = "allow")]
    pub allow_from: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs the agent until it is stopped.
pub async fn run(args: &AgentArgs) -> anyhow::Result<ExitCode> {
    let server = match &args.role {
        Role::ServeVolume(a) => &a.server,
        Role::Bastion(a) => &a.server,
    };
    let key = ssh::load_key(&server.host_key)?;
    let keys = access::check_path(&server.authorized_keys, access::parse_authorized_keys)
        .map_err(|e| anyhow::anyhow!("--authorized-keys {e}"))?;
    let authorized = access::Source::Path(server.authorized_keys.clone());
    let listener = tokio::net::TcpListener::bind(server.listen)
        .await
        .with_context(|| format!("--listen {}", server.listen))?;
    tracing::info!(addr = %server.listen, keys, "listening");
    match &args.role {
        Role::ServeVolume(a) => {
            let root = std::fs::canonicalize(&a.root)
                .with_context(|| format!("--root {}", a.root.display()))?;
            anyhow::ensure!(root.is_dir(), "--root {}: not a directory", root.display());
            ssh::serve_volume(listener, root, key, authorized).await?;
        }
        Role::Bastion(a) => {
            let allow = match &a.allow_from {
                Some(path) => {
                    access::check_path(path, access::parse_allow)
                        .map_err(|e| anyhow::anyhow!("--allow-from {e}"))?;
                    access::Source::Path(path.clone())
                }
                None => {
                    anyhow::ensure!(
                        !a.allow.is_empty(),
                        "--allow or --allow-from: give the forwarding targets"
                    );
                    access::Source::Fixed(
                        a.allow
                            .iter()
                            .map(|(host, port)| access::AllowEntry {
                                host: host.clone(),
                                port: *port,
                                key: None,
                                expires: None,
                            })
                            .collect(),
                    )
                }
            };
            ssh::bastion(listener, key, authorized, allow).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
