//! Command-line interface: flag parsing, logging set-up and dispatch to subcommands.
//! Every flag can also be set from an environment variable (`DR_SYNCER_*`), which is how
//! the Helm chart configures the controller.

mod agent;
mod bootstrap;
pub mod client;
mod controller;
mod crds;
mod decrypt;
pub mod export;
mod export_git;
mod failover;
mod logging;
mod progress;
mod pvc_sync;
mod status;
pub mod status_view;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use logging::LogFormat;

/// Kubernetes disaster recovery: replicate namespaces into git or a DR cluster.
#[derive(Debug, Parser)]
#[command(name = "dr-syncer", version, about, long_about = None)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, env = "DR_SYNCER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax, e.g. `info` or `dr_syncer=debug,kube=info`.
    #[arg(long, global = true, env = "DR_SYNCER_LOG", default_value = "info")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions (or write one file per CRD with --dir).
    Crds(crds::CrdsArgs),
    /// Export namespaces as clean, DR-ready manifests (from a cluster or from files).
    Export(Box<export::ExportArgs>),
    /// Decrypt a SOPS file (MAC verified) and print it.
    Decrypt(decrypt::DecryptArgs),
    /// Run the controller (NamespaceMappings into git).
    Controller(controller::ControllerArgs),
    /// Print the Flux or Argo CD objects that make the DR cluster pull the export.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Promote the DR side: restore replicas and CronJobs (one git commit, or direct patches).
    Failover(failover::FailoverArgs),
    /// Return the DR side to standby: workloads at zero, CronJobs suspended.
    Failback(failover::FailoverArgs),
    /// Source-side PVC agent: the volume server and the bastion (SSH).
    Agent(agent::AgentArgs),
    /// Sync a volume from an agent into a local directory (the DR side of PVC data).
    PvcSync(pvc_sync::PvcSyncArgs),
    /// Tell before a disaster whether the DR cluster would come up from the exported tree.
    Verify(verify::VerifyArgs),
    /// The DR posture on one screen: every mapping's phase, RPO, last commit, held
    /// breakers, DR readiness and PVCs (also `kubectl dr-syncer status`).
    Status(status::StatusArgs),
}

/// Runs a parsed command line; the exit code tells scripts what happened.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    logging::init(cli.log_format, &cli.log)?;
    match cli.command {
        Command::Crds(args) => crds::run(&args),
        Command::Export(args) => export::run(&args).await,
        Command::Decrypt(args) => decrypt::run(&args),
        Command::Controller(args) => controller::run(&args).await,
        Command::Bootstrap(args) => bootstrap::run(&args),
        Command::Failover(args) => failover::run(&args, failover::Direction::Failover).await,
        Command::Failback(args) => failover::run(&args, failover::Direction::Failback).await,
        Command::Agent(args) => agent::run(&args).await,
        Command::PvcSync(args) => pvc_sync::run(&args).await,
        Command::Verify(args) => verify::run(&args).await,
        Command::Status(args) => status::run(&args).await,
    }
}
