//! `dr-syncer status`: the whole DR posture on one screen, kubectl-plugin style (installed
//! as `kubectl-dr_syncer` it runs as `kubectl dr-syncer status`). Reads the
//! NamespaceMappings of the controller's cluster; the columns are built by
//! [`super::status_view`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;

use super::status_view::{self, Style};
use crate::api::NamespaceMapping;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The table.
    Table,
    /// The table with destination, last error and PVC messages.
    Wide,
    /// Every row as JSON.
    Json,
    /// Every row as YAML.
    Yaml,
}

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Namespace of the NamespaceMappings (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Mappings of every namespace.
    #[arg(long, short = 'A', conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Redraw every 2 seconds until interrupted.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// RPO target of mappings without `spec.rpoTarget`.
    #[arg(long, default_value = "1h", value_parser = parse_target)]
    pub rpo_target: Duration,
    /// Exit 1 when a mapping or PVC is over its RPO target, failed or held (for scripts
    /// and cron checks; the table is printed either way).
    #[arg(long)]
    pub check: bool,
    /// Kubeconfig of the controller's cluster (default: KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "DR_SYNCER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long)]
    pub context: Option<String>,
}

fn parse_target(s: &str) -> Result<Duration, String> {
    crate::schedule::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration like 15m or 1h"))
}

/// Runs `status`.
pub async fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let client = super::client::build(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let api: Api<NamespaceMapping> = if args.all_namespaces {
        Api::all(client)
    } else {
        match &args.namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::default_namespaced(client),
        }
    };
    let tty = std::io::stdout().is_terminal();
    loop {
        let list = api
            .list(&ListParams::default())
            .await
            .context("listing NamespaceMappings")?;
        let now = Timestamp::now();
        let rows = status_view::rows(&list.items, now, args.rpo_target);
        let text = match args.output {
            Output::Table | Output::Wide => {
                if rows.is_empty() {
                    "No NamespaceMappings found.\n".to_string()
                } else {
                    let style = Style {
                        namespaces: args.all_namespaces,
                        wide: args.output == Output::Wide,
                        color: tty,
                    };
                    status_view::render(&rows, now, style)
                }
            }
            Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
            Output::Yaml => serde_saphyr::to_string(&rows)?,
        };
        let mut out = std::io::stdout().lock();
        if args.watch && tty {
            // Home and clear, then the new screen.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if !args.watch {
            let bad = rows.iter().any(|r| {
                r.over_target
                    || r.phase == "Failed"
                    || !r.held.is_empty()
                    || r.pvcs.iter().any(|p| p.over_target || p.result == "Failed")
            });
            return Ok(if args.check && bad {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        if !tty {
            writeln!(out)?;
        }
        drop(out);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
