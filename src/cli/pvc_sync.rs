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
/// Exit code: owners could not be kept (`--ownership require`).
pub const EXIT_OWNERSHIP: u8 = 6;
/// Exit code: the deletion breaker held the sync; nothing changed.
pub const EXIT_HELD: u8 = 7;

/// Arguments of `dr-syncer pvc-sync`.
#[derive(Debug, clap::Args)]
pub struct PvcSyncArgs {
    /// The volume server, `ssh://HOST:PORT`.
    #[arg(
        long,
        env = "DR_SYNCER_FROM_SSH",
        required_unless_present = "finish_only"
    )]
    pub from: Option<SshUrl>,
    /// Destination directory (the DR volume).
    #[arg(long, env = "DR_SYNCER_TO")]
    pub to: PathBuf,
    /// Client key (OpenSSH private key file).
    #[arg(
        long,
        env = "DR_SYNCER_IDENTITY",
        required_unless_present = "finish_only"
    )]
    pub identity: Option<PathBuf>,
    /// `known_hosts` pinning the servers' host keys (`[host]:port key` lines).
    #[arg(
        long,
        env = "DR_SYNCER_KNOWN_HOSTS",
        required_unless_present = "finish_only"
    )]
    pub known_hosts: Option<PathBuf>,
    /// Only finish a commit an interrupted sync left on `--to` (no source needed), e.g.
    /// on failover before the application starts on the volume.
    #[arg(long)]
    pub finish_only: bool,
    /// Owners the receiver cannot set (no `CAP_CHOWN`): `require` fails the sync before
    /// any transfer; `ignore` lets files keep the job's ids and counts them.
    #[arg(long, env = "DR_SYNCER_OWNERSHIP", value_enum, default_value_t = receiver::Ownership::Require)]
    pub ownership: receiver::Ownership,
    /// Hold (change nothing, exit 7) a sync that would delete more than this share of the
    /// destination's files or bytes; 100 turns the breaker off.
    #[arg(long, env = "DR_SYNCER_MAX_DELETE_PERCENT", default_value_t = receiver::MAX_DELETE_PERCENT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_delete_percent: u8,
    /// Let a held deletion set through: its batch id, from the held report.
    #[arg(long, env = "DR_SYNCER_ALLOW_DELETIONS")]
    pub allow_deletions: Option<String>,
    /// For a live source (copy method `Direct`): after the sync, sync again (files that
    /// changed while the first pass read them are sent once more), then compare once more
    /// and report the files still changing.
    #[arg(long, env = "DR_SYNCER_RECHECK")]
    pub recheck: bool,
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
    if args.finish_only {
        return finish_only(args);
    }
    let (Some(from), Some(identity), Some(known_hosts)) =
        (&args.from, &args.identity, &args.known_hosts)
    else {
        anyhow::bail!("--from, --identity and --known-hosts are required");
    };
    let key = ssh::load_key(identity)?;
    let known = KnownHosts::parse(
        &std::fs::read_to_string(known_hosts)
            .with_context(|| format!("--known-hosts {}", known_hosts.display()))?,
    );
    let link = Link {
        from,
        key,
        known,
        deadline: std::time::Instant::now() + args.connect_timeout,
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
    let mut opts = receiver::Options {
        bwlimit: args.bwlimit,
        progress,
        ownership: args.ownership,
        max_delete_percent: args.max_delete_percent,
        allow_deletions: args.allow_deletions.clone(),
        ..Default::default()
    };
    let result = match link.pass(args, &opts).await {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if tty {
        eprintln!();
    }
    // A live volume (`--recheck`): files changed while the first pass read them are sent
    // once more, and a comparison after that tells which are still changing.
    let mut recheck = None;
    if result.is_ok() && args.recheck {
        opts.progress = None;
        let second = match link.pass(args, &opts).await {
            Ok(r) => r,
            Err(code) => return Ok(code),
        };
        let third = match &second {
            Ok(_) => {
                opts.check_only = true;
                match link.pass(args, &opts).await {
                    Ok(r) => Some(r),
                    Err(code) => return Ok(code),
                }
            }
            Err(_) => None,
        };
        recheck = Some((second, third));
    }
    let result = match (result, recheck) {
        (Ok(first), Some((Ok(second), Some(Ok(third))))) => Ok((first, Some((second, third)))),
        (Ok(_), Some((Err(e), _))) | (Ok(_), Some((_, Some(Err(e))))) => Err(e),
        (Ok(first), _) => Ok((first, None)),
        (Err(e), _) => Err(e),
    };
    match result {
        Ok((summary, recheck)) => {
            let mut report = serde_json::to_value(&summary)?;
            if let Some((second, third)) = &recheck {
                report["recheck"] = serde_json::json!({
                    "resent": second.files_transferred,
                    "resentBytes": second.bytes_total,
                    "stillChanging": third.would_change,
                    "stillChangingPaths": third.would_change_paths,
                });
            }
            match args.output {
                Format::Json => println!("{report}"),
                Format::Table => {
                    print_summary(&summary, args.output)?;
                    if let Some((second, third)) = &recheck {
                        println!(
                            "recheck: {} files changed during the copy and were sent again; {} still changing{}",
                            second.files_transferred,
                            third.would_change,
                            third
                                .would_change_paths
                                .first()
                                .map(|p| format!(" (first: {p})"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
            write_summary_file(args, &report);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            let code = match e {
                PvcError::Verify(_) => EXIT_VERIFY,
                PvcError::Ownership(_) => EXIT_OWNERSHIP,
                PvcError::Held(_) => EXIT_HELD,
                _ => EXIT_TRANSFER,
            };
            let mut report = serde_json::json!({"error": e.to_string(), "exitCode": code});
            if let PvcError::Held(hold) = &e {
                report["held"] = serde_json::to_value(hold)?;
            }
            write_summary_file(args, &report);
            Ok(ExitCode::from(code))
        }
    }
}

/// Where and how to connect, for each pass.
struct Link<'a> {
    from: &'a SshUrl,
    key: russh::keys::PrivateKey,
    known: KnownHosts,
    deadline: std::time::Instant,
}

impl Link<'_> {
    /// Connects (retrying until the deadline while the server is not there yet) and runs
    /// one sync. `Err` is the exit code of a connection failure, already reported.
    async fn pass(
        &self,
        args: &PvcSyncArgs,
        opts: &receiver::Options,
    ) -> Result<Result<Summary, PvcError>, ExitCode> {
        let conn = loop {
            match ssh::connect(
                self.from,
                self.key.clone(),
                self.known.clone(),
                args.jump.as_ref(),
            )
            .await
            {
                Ok(c) => break c,
                Err(
                    e @ (ssh::SshError::Transport(_)
                    | ssh::SshError::Refused(_)
                    | ssh::SshError::Auth(_)),
                ) if std::time::Instant::now() < self.deadline => {
                    eprintln!("retrying: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    write_summary_file(
                        args,
                        &serde_json::json!({"error": e.to_string(), "exitCode": EXIT_CONNECT}),
                    );
                    return Err(ExitCode::from(EXIT_CONNECT));
                }
            }
        };
        Ok(receiver::sync(conn.stream, &args.to, opts).await)
    }
}

/// `--finish-only`: finishes an interrupted commit on `--to`, if there is one.
fn finish_only(args: &PvcSyncArgs) -> anyhow::Result<ExitCode> {
    match receiver::finish_interrupted(&args.to) {
        Ok(Some(a)) => {
            println!(
                "finished an interrupted commit: {} files placed, {} entries deleted",
                a.placed, a.deleted
            );
            if a.owners_not_kept > 0 && args.ownership == receiver::Ownership::Require {
                eprintln!(
                    "error: {} entries could not be given their owner (no CAP_CHOWN)",
                    a.owners_not_kept
                );
                return Ok(ExitCode::from(EXIT_OWNERSHIP));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => {
            println!(
                "nothing to finish: {} is at a complete point in time",
                args.to.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_TRANSFER))
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
                "entries: {} directories, {} symlinks, {} hard links, {} deleted ({} files, {} bytes)",
                s.dirs, s.symlinks, s.hardlinks, s.deleted, s.deleted_files, s.deleted_bytes
            );
            if s.unreadable > 0 {
                println!(
                    "unreadable at the source (kept as they are here): {} (first: {})",
                    s.unreadable,
                    s.unreadable_paths.first().map_or("", String::as_str)
                );
            }
            if s.ownership_not_kept > 0 {
                println!("owners not kept: {} entries", s.ownership_not_kept);
            }
            if s.finished_interrupted_commit {
                println!("an interrupted commit of the previous sync was finished first");
            }
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
