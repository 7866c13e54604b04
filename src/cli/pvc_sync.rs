//! `dr-syncer pvc-sync`: the DR side of PVC data replication. Connects to a volume server
//! (optionally through a bastion), pins host keys, syncs into `--to`, and reports.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use crate::gitops::KnownHosts;
use crate::pvc::ssh::{self, SshUrl};
use crate::pvc::{PvcError, Summary, receiver};

/// Exit code: the connection, host key or authentication failed.
pub const EXIT_CONNECT: u8 = 3;
/// Exit code: the transfer failed (protocol, remote or local I/O error).
pub const EXIT_TRANSFER: u8 = 4;
/// Exit code: a file failed verification twice.
pub const EXIT_VERIFY: u8 = 5;

/// Arguments of `dr-syncer pvc-sync`.
#[derive(Debug, clap::Args)]
pub struct PvcSyncArgs {
    /// The volume server, `ssh://HOST:PORT`.
    #[arg(long, env = "DR_SYNCER_FROM_SSH")]
    pub from: SshUrl,
    /// Destination directory (the DR volume).
    #[arg(long, env = "DR_SYNCER_TO")]
    pub to: PathBuf,
    /// Client key (OpenSSH private key file).
    #[arg(long, env = "DR_SYNCER_IDENTITY")]
    pub identity: PathBuf,
    /// `known_hosts` pinning the servers' host keys (`[host]:port key` lines).
    #[arg(long, env = "DR_SYNCER_KNOWN_HOSTS")]
    pub known_hosts: PathBuf,
    /// A bastion to go through, `ssh://HOST:PORT`.
    #[arg(long, env = "DR_SYNCER_JUMP")]
    pub jump: Option<SshUrl>,
    /// Bandwidth limit in bytes per second.
    #[arg(long, env = "DR_SYNCER_BWLIMIT")]
    pub bwlimit: Option<u64>,
    /// Keep retrying for this long (e.g. `3m`) while the server is unreachable, refuses
    /// our key or the bastion does not forward yet: a fresh allow-list entry or a new or
    /// rotated client key reaches the agent with its next volume refresh. A host-key
    /// mismatch is never retried.
    #[arg(long, env = "DR_SYNCER_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "0s")]
    pub connect_timeout: std::time::Duration,
    /// Also write the JSON summary here (a Kubernetes Job uses `/dev/termination-log`, so
    /// the controller reads it from the pod status).
    #[arg(long, env = "DR_SYNCER_SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,
    /// Summary format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Summary formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Table,
    /// One JSON object.
    Json,
}

/// Runs one sync.
pub async fn run(args: &PvcSyncArgs) -> anyhow::Result<ExitCode> {
    let key = ssh::load_key(&args.identity)?;
    let known = KnownHosts::parse(
        &std::fs::read_to_string(&args.known_hosts)
            .with_context(|| format!("--known-hosts {}", args.known_hosts.display()))?,
    );
    let deadline = std::time::Instant::now() + args.connect_timeout;
    let conn = loop {
        match ssh::connect(&args.from, key.clone(), known.clone(), args.jump.as_ref()).await {
            Ok(c) => break c,
            Err(
                e @ (ssh::SshError::Transport(_)
                | ssh::SshError::Refused(_)
                | ssh::SshError::Auth(_)),
            ) if std::time::Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => {
                eprintln!("error: {e}");
                write_summary_file(
                    args,
                    &serde_json::json!({"error": e.to_string(), "exitCode": EXIT_CONNECT}),
                );
                return Ok(ExitCode::from(EXIT_CONNECT));
            }
        }
    };
    let tty = std::io::stderr().is_terminal() && args.output == Format::Table;
    let last = Arc::new(AtomicU64::new(0));
    let progress: Option<receiver::ProgressFn> = tty.then(|| {
        let last = last.clone();
        Box::new(move |done: u64, total: u64, bytes: u64| {
            last.store(bytes, Ordering::Relaxed);
            eprint!(
                "\r{done}/{total} files, {:.1} MiB",
                bytes as f64 / (1u64 << 20) as f64
            );
        }) as receiver::ProgressFn
    });
    let opts = receiver::Options {
        bwlimit: args.bwlimit,
        progress,
        ..Default::default()
    };
    let result = receiver::sync(conn.stream, &args.to, &opts).await;
    if tty {
        eprintln!();
    }
    match result {
        Ok(summary) => {
            print_summary(&summary, args.output)?;
            write_summary_file(args, &serde_json::to_value(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            let code = match e {
                PvcError::Verify(_) => EXIT_VERIFY,
                _ => EXIT_TRANSFER,
            };
            write_summary_file(
                args,
                &serde_json::json!({"error": e.to_string(), "exitCode": code}),
            );
            Ok(ExitCode::from(code))
        }
    }
}

fn print_summary(s: &Summary, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(s)?),
        Format::Table => {
            println!(
                "files: {} transferred, {} unchanged, {} metadata only, {} resent after verification",
                s.files_transferred, s.files_unchanged, s.files_metadata, s.files_redone
            );
            println!(
                "entries: {} directories, {} symlinks, {} hard links, {} deleted",
                s.dirs, s.symlinks, s.hardlinks, s.deleted
            );
            println!(
                "bytes: {} sent literally, {} matched from the destination, {} sparse, {} total",
                s.bytes_literal, s.bytes_matched, s.bytes_sparse, s.bytes_total
            );
            println!("duration: {:.2}s", s.duration.as_secs_f64());
        }
    }
    Ok(())
}

/// Best effort: the summary file is a report channel, not a result; a failure to write it
/// must not turn a good sync into a failed one.
fn write_summary_file(args: &PvcSyncArgs, value: &serde_json::Value) {
    if let Some(path) = &args.summary_file
        && let Err(e) = std::fs::write(path, value.to_string())
    {
        eprintln!("warning: --summary-file {}: {e}", path.display());
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::controller::schedule::parse_duration(s)
        .ok_or_else(|| format!("{s:?}: expected a duration such as 90s, 3m or 1h"))
}
