//! `dr-syncer controller`: runs the reconcilers in (or against) a cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::controller::{self, RunError, Settings};

/// Arguments of `dr-syncer controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Kubeconfig (default: in-cluster, then $KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "DR_SYNCER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The controller's own namespace (fingerprint-key Secret, Leases).
    #[arg(long, env = "POD_NAMESPACE", default_value = "dr-syncer")]
    pub namespace: String,
    /// Where git clones are cached (an emptyDir in the chart).
    #[arg(
        long,
        env = "DR_SYNCER_CACHE_DIR",
        default_value = "/tmp/dr-syncer/git"
    )]
    pub cache_dir: PathBuf,
    /// Resource types listed at once per sync.
    #[arg(long, env = "DR_SYNCER_LIST_CONCURRENCY", default_value_t = 8)]
    pub list_concurrency: usize,
    /// Mappings reconciled (and fully synced) at once. A sync mostly waits on the
    /// apiserver and the git remote, so a fleet of mappings starts faster with more; each
    /// running sync holds a few pages of objects.
    #[arg(long, env = "DR_SYNCER_SYNC_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub sync_concurrency: u16,
    /// This replica's name (events, leases).
    #[arg(long, env = "POD_NAME", default_value = "dr-syncer")]
    pub instance: String,
    /// Namespaces whose NamespaceMappings are reconciled as tenant mappings, comma-separated
    /// (`*`: every namespace). Each needs a TenantPolicy in the controller's namespace; a
    /// tenant mapping exports only its own namespace and uses only its own Secrets. Without
    /// it only mappings in `--namespace` are reconciled.
    #[arg(long, env = "DR_SYNCER_TENANT_NAMESPACES", default_value = "")]
    pub tenant_namespaces: String,
    /// Let the mappings in the controller's namespace reference Secrets, ClusterMappings and
    /// RemoteClusters in other namespaces (never tenant mappings).
    #[arg(long, env = "DR_SYNCER_ALLOW_CROSS_NAMESPACE_REFS")]
    pub allow_cross_namespace_refs: bool,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "DR_SYNCER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Elect one writer among replicas with a Lease (active/standby; the others wait).
    #[arg(long, env = "DR_SYNCER_LEADER_ELECTION", conflicts_with = "sharding")]
    pub leader_election: bool,
    /// Spread the mappings over every live replica (active/active): each replica holds a
    /// membership Lease and owns the mappings rendezvous hashing assigns to it; a replica
    /// that dies loses them to the others within the lease duration.
    #[arg(long, env = "DR_SYNCER_SHARDING")]
    pub sharding: bool,
    /// Serve only the NamespaceMappings labelled `dr-syncer.io/shard=<NAME>` (a static
    /// shard, Flux's convention); without it, only the unlabelled ones.
    #[arg(long, env = "DR_SYNCER_SHARD", value_parser = parse_shard)]
    pub shard: Option<String>,
    /// Lease duration in seconds (leader election or sharding); a dead replica's work
    /// moves to the others this long after its last renewal.
    #[arg(long, env = "DR_SYNCER_LEASE_DURATION", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_duration: u64,
    /// Image of the PVC agent and the data-sync pods (the chart sets its own image).
    #[arg(long, env = "DR_SYNCER_IMAGE", default_value = concat!("ghcr.io/dr-syncer/dr-syncer:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Milliseconds a Continuous watch waits before it lists (tests only).
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_watch_start_delay_ms: u64,
    /// How often each git mapping with a DR cluster (the ClusterMapping's targetCluster) is
    /// checked: its tree dry-run applied there, the result in condition DrReady. `0` turns
    /// the check off.
    #[arg(long, env = "DR_SYNCER_DR_CHECK_INTERVAL", default_value = "10m")]
    pub dr_check_interval: String,
    /// RPO target of mappings without `spec.rpoTarget`, exported as
    /// `dr_syncer_rpo_target_seconds` for the alerting rules.
    #[arg(long, env = "DR_SYNCER_DEFAULT_RPO_TARGET", default_value = "1h")]
    pub default_rpo_target: String,
}

/// A shard name is a label value: 63 characters at most, alphanumeric at both ends, `-`,
/// `_` and `.` inside.
fn parse_shard(s: &str) -> Result<String, String> {
    let inner_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends_ok = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if s.len() <= 63 && inner_ok && ends_ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a label value (1-63 characters: letters, digits, '-', '_', '.'; a letter or digit at both ends)"
        ))
    }
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: &ControllerArgs) -> anyhow::Result<ExitCode> {
    let client = super::client::build(args.kubeconfig.as_deref(), None).await?;
    let settings = Settings {
        namespace: args.namespace.clone(),
        cache_dir: args.cache_dir.clone(),
        list_concurrency: args.list_concurrency,
        sync_concurrency: args.sync_concurrency,
        field_manager: "dr-syncer".into(),
        tenancy: crate::refs::Tenancy {
            controller_namespace: args.namespace.clone(),
            tenants: crate::refs::TenantNamespaces::parse(&args.tenant_namespaces),
            cross_namespace_refs: args.allow_cross_namespace_refs,
        },
        image: args.image.clone(),
        watch_start_delay: std::time::Duration::from_millis(args.test_watch_start_delay_ms),
        dr_check_interval: match args.dr_check_interval.as_str() {
            "0" => None,
            s => {
                let d = crate::schedule::parse_duration(s).with_context(|| {
                    format!("--dr-check-interval: {s:?} is not a duration (e.g. 10m, 30s)")
                })?;
                // Zero in any unit is off; anything shorter than a second would spin.
                (!d.is_zero()).then(|| d.max(std::time::Duration::from_secs(1)))
            }
        },
        default_rpo_target: std::time::Duration::from_secs(3600),
        shard: args.shard.clone(),
    };
    let default_rpo_target = crate::schedule::parse_duration(&args.default_rpo_target)
        .filter(|d| !d.is_zero())
        .with_context(|| {
            format!(
                "--default-rpo-target: {:?} is not a duration (e.g. 15m, 1h)",
                args.default_rpo_target
            )
        })?;
    let settings = Settings {
        default_rpo_target,
        ..settings
    };
    tracing::info!(namespace = %args.namespace, instance = %args.instance, "dr-syncer controller starting");
    let opts = controller::RunOptions {
        http_addr: args.http_addr,
        leader_election: args.leader_election.then_some(args.lease_duration),
        sharding: args.sharding.then_some(args.lease_duration),
        instance: args.instance.clone(),
    };
    match controller::run(client, settings, opts).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ RunError::CrdsMissing) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        // Exit at once: returning would wait for blocking git work still in flight, and a
        // deposed leader must stop writing now (pushes are fenced as well).
        Err(e @ (RunError::LostLeadership | RunError::LostMembership(_))) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Err(e) => Err(e).context("controller"),
    }
}
