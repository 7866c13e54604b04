//! The controller: NamespaceMappings replicated continuously, on a schedule or on demand,
//! into git. `run` wires the pieces; each reconcile is a pipeline whose decision and status
//! stages are pure (`schedule`, `status`).

pub mod clusters;
pub mod context;
pub mod continuous;
pub mod direct;
pub mod dr_ready;
pub mod http;
pub mod hub;
pub mod incremental;
pub mod leader;
pub mod mapping;
pub mod metrics;
pub mod schedule;
pub mod shard;
pub mod status;
pub mod streamed;
pub mod sync;
pub mod tracker;

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

use crate::api::{ClusterMapping, NamespaceMapping, RemoteCluster, TenantPolicy};

pub use context::{Ctx, Settings};

/// Errors a reconcile cannot turn into status.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// API error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The CRDs are not installed.
    #[error(
        "the dr-syncer.io/v1alpha1 CRDs are not installed in this cluster; install them with `dr-syncer crds | kubectl apply --server-side -f -` (or the Helm chart)"
    )]
    CrdsMissing,
    /// Leadership was lost; the process exits so a restart waits for it again.
    #[error("lost the leader-election lease; exiting so that only one replica writes")]
    LostLeadership,
    /// The membership lease ran out (sharding); the process exits so a restart rejoins.
    #[error("lost the membership lease ({0}); exiting so that each mapping has one writer")]
    LostMembership(String),
    /// The membership lease could not be taken at start.
    #[error("joining the controller members: {0}")]
    Join(String),
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// The HTTP endpoint could not start.
    #[error("serving {addr}: {source}")]
    Http {
        /// Address.
        addr: std::net::SocketAddr,
        /// Error.
        source: std::io::Error,
    },
    /// API error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Process-level options.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub http_addr: std::net::SocketAddr,
    /// Lease duration in seconds when leader election is on.
    pub leader_election: Option<u64>,
    /// Lease duration in seconds when sharding is on: every replica works, each on the
    /// mappings the live members assign to it ([`shard`]).
    pub sharding: Option<u64>,
    /// This replica's identity.
    pub instance: String,
}

/// Checks that the CRDs are served (no RBAC on CRDs needed: this is discovery).
pub async fn check_crds(client: &Client) -> Result<(), RunError> {
    match client
        .list_api_group_resources("dr-syncer.io/v1alpha1")
        .await
    {
        Ok(list) if list.resources.iter().any(|r| r.name == "namespacemappings") => Ok(()),
        Ok(_) => Err(RunError::CrdsMissing),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(RunError::CrdsMissing),
        Err(e) => Err(e.into()),
    }
}

/// Runs the controllers until a shutdown signal (or, with leader election, until the
/// lease is lost).
pub async fn run(client: Client, settings: Settings, opts: RunOptions) -> Result<(), RunError> {
    check_crds(&client).await?;
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = Arc::new(http::Readiness::default());
    let addr = opts.http_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Http { addr, source })?;
    drop(listener); // probe only: fail early on a taken port
    tokio::spawn(http::serve(addr, metrics.clone(), ready.clone()));
    let mut leadership = None;
    if let Some(duration) = opts.leader_election {
        let manager = kube_lease_manager::LeaseManagerBuilder::new(
            client.clone(),
            leader::lease_name(settings.shard.as_deref()),
        )
        .with_namespace(&settings.namespace)
        .with_identity(&opts.instance)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .with_field_manager("dr-syncer")
        .build()
        .await?;
        let (mut rx, task) = manager.watch().await;
        ready.set(true); // a standby replica is healthy
        tracing::info!(identity = %opts.instance, "waiting for the leader-election lease");
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return Err(RunError::LostLeadership);
            }
        }
        tracing::info!(identity = %opts.instance, "became leader");
        leadership = Some((rx, task));
    }
    // Leading from here on (a lost lease ends the process).
    metrics.leader.set(1);
    // Tenant mappings may live in any namespace the admin lists: watch them all and let the
    // reconciler drop the others (`Tenancy::role`).
    let mappings: Api<NamespaceMapping> = if settings.tenancy.has_tenants() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &settings.namespace)
    };
    let mut ctx = Ctx::new(client, settings, opts.instance.clone(), metrics).await?;
    if leadership.is_some() {
        ctx.leadership = Some(leader::Leadership {
            client: ctx.client.clone(),
            namespace: ctx.settings.namespace.clone(),
            identity: opts.instance.clone(),
            lease: leader::lease_name(ctx.settings.shard.as_deref()),
        });
    }
    if let Some(duration) = opts.sharding {
        let membership = shard::Membership::new(
            ctx.client.clone(),
            &ctx.settings.namespace,
            &opts.instance,
            ctx.settings.shard.clone(),
            std::time::Duration::from_secs(duration),
        );
        membership.join().await.map_err(RunError::Join)?;
        tracing::info!(identity = %opts.instance, members = ?membership.members(), "joined the controller members");
        tokio::spawn(membership.clone().run());
        let (gauge, seen) = (ctx.metrics.members.clone(), membership.clone());
        tokio::spawn(async move {
            let mut changes = seen.changes().boxed();
            loop {
                gauge.set(i64::try_from(seen.members().len()).unwrap_or(i64::MAX));
                if changes.next().await.is_none() {
                    return;
                }
            }
        });
        ctx.membership = Some(membership);
    } else {
        ctx.metrics.members.set(1);
    }
    let ctx = Arc::new(ctx);
    // Members changing move mappings (and cluster health checks) between replicas: every
    // replica re-judges all of them. Without sharding the stream never fires.
    let members_changed = || -> futures::stream::BoxStream<'static, ()> {
        match &ctx.membership {
            Some(m) => m.changes().boxed(),
            None => futures::stream::pending().boxed(),
        }
    };
    // Static shards (Flux's convention): a `--shard` replica takes only mappings labelled
    // with it, the default group only unlabelled ones.
    let shard_only =
        watcher::Config::default().labels(&shard::shard_selector(ctx.settings.shard.as_deref()));
    // RemoteClusters and ClusterMappings get health status only in the controller's
    // namespace: the admin registers clusters there (tenants are granted them by name), and
    // the controller never dials a kubeconfig a tenant wrote.
    let own = ctx.settings.namespace.clone();
    let clusters: Api<RemoteCluster> = Api::namespaced(ctx.client.clone(), &own);
    let cluster_mappings: Api<ClusterMapping> = Api::namespaced(ctx.client.clone(), &own);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        if ctx.settings.tenancy.cross_namespace_refs {
            Api::all(ctx.client.clone())
        } else {
            Api::namespaced(ctx.client.clone(), &own)
        };
    let policies: Api<TenantPolicy> = Api::namespaced(ctx.client.clone(), &own);
    if let Some(interval) = ctx.settings.dr_check_interval {
        tokio::spawn(dr_ready::run(ctx.clone(), mappings.clone(), interval));
    }
    let mapping_controller = Controller::new(mappings, shard_only);
    let mapping_store = mapping_controller.store();
    // A policy granted, changed or revoked re-judges every tenant mapping: the event shows
    // only the policy's new namespaces, not those an edit removed.
    let admin_ns = own.clone();
    let mapping_controller = mapping_controller
        .watches(
            policies,
            watcher::Config::default(),
            move |_: TenantPolicy| {
                let admin_ns = admin_ns.clone();
                mapping_store
                    .state()
                    .into_iter()
                    .filter(move |nm| nm.metadata.namespace.as_deref() != Some(admin_ns.as_str()))
                    .map(|nm| kube::runtime::reflector::ObjectRef::from_obj(&*nm))
            },
        )
        .reconcile_all_on(members_changed())
        .with_config(
            kube::runtime::controller::Config::default().concurrency(ctx.settings.sync_concurrency),
        )
        .shutdown_on_signal()
        .run(mapping::reconcile, mapping::error_policy, ctx.clone())
        .for_each(log_result);
    let rc_controller = Controller::new(clusters.clone(), watcher::Config::default());
    let rc_store = rc_controller.store();
    let rc_controller = rc_controller
        .watches(secrets, watcher::Config::default(), move |secret| {
            clusters::clusters_using(&secret, &rc_store.state())
        })
        .reconcile_all_on(members_changed())
        .shutdown_on_signal()
        .run(
            clusters::reconcile_cluster,
            clusters::error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let cm_controller = Controller::new(cluster_mappings, watcher::Config::default());
    let cm_store = cm_controller.store();
    let cm_controller = cm_controller
        .watches(clusters, watcher::Config::default(), move |rc| {
            clusters::mappings_using(&rc, &cm_store.state())
        })
        .reconcile_all_on(members_changed())
        .shutdown_on_signal()
        .run(
            clusters::reconcile_mapping,
            clusters::error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let controller = async move {
        tokio::join!(mapping_controller, rc_controller, cm_controller);
    };
    ready.set(true);
    let lost_leadership = async move {
        match leadership {
            Some((mut rx, _task)) => {
                while *rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            }
            None => std::future::pending().await,
        }
    };
    let membership = ctx.membership.clone();
    let lost_membership = async {
        match &membership {
            Some(m) => m.lost().await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        _ = controller => Ok(()),
        _ = lost_leadership => Err(RunError::LostLeadership),
        why = lost_membership => Err(RunError::LostMembership(why)),
    };
    // A replica shutting down hands its mappings over at once instead of after its lease.
    if let (Ok(()), Some(m)) = (&ended, &membership) {
        m.leave().await;
    }
    ended
}

async fn log_result<T, E: std::fmt::Display>(res: Result<T, E>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "reconcile");
    }
}
