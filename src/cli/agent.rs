//! `dr-syncer agent serve-volume` and `dr-syncer agent bastion`: the source side of PVC
//! data replication (see `pvc::ssh`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::pvc::ssh;

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
    /// Public keys allowed to connect (`authorized_keys` format, no options).
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
    /// A `HOST:PORT` forwarding target (repeatable); everything else is refused.
    #[arg(long = "allow", value_parser = parse_target)]
    pub allow: Vec<(String, u16)>,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn parse_target(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s}: expected HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("{s}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Runs the agent until it is stopped.
pub async fn run(args: &AgentArgs) -> anyhow::Result<ExitCode> {
    let server = match &args.role {
        Role::ServeVolume(a) => &a.server,
        Role::Bastion(a) => &a.server,
    };
    let key = ssh::load_key(&server.host_key)?;
    let authorized = ssh::load_authorized_keys(&server.authorized_keys)?;
    let listener = tokio::net::TcpListener::bind(server.listen)
        .await
        .with_context(|| format!("--listen {}", server.listen))?;
    tracing::info!(addr = %server.listen, keys = authorized.len(), "listening");
    match &args.role {
        Role::ServeVolume(a) => {
            let root = std::fs::canonicalize(&a.root)
                .with_context(|| format!("--root {}", a.root.display()))?;
            anyhow::ensure!(root.is_dir(), "--root {}: not a directory", root.display());
            ssh::serve_volume(listener, root, key, authorized).await?;
        }
        Role::Bastion(a) => {
            anyhow::ensure!(
                !a.allow.is_empty(),
                "--allow: give at least one HOST:PORT target"
            );
            ssh::bastion(listener, key, authorized, a.allow.clone()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
