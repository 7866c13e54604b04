//! Prometheus metrics of the controller (prometheus-client), served on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `mapping="<namespace>/<name>"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MappingLabel {
    /// Mapping key.
    pub mapping: String,
}

/// `mapping`, `kind` (`plural.group`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Mapping key.
    pub mapping: String,
    /// Resource type.
    pub kind: String,
}

/// `mapping`, `path`: `patch` (Continuous mode's incremental commit) or `full`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    /// Mapping key.
    pub mapping: String,
    /// How the sync was done.
    pub path: String,
}

/// Every metric the controller exports.
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// Wall time of syncs.
    pub sync_duration: Family<MappingLabel, Histogram>,
    /// Objects written by the last sync, per kind.
    pub objects_exported: Family<KindLabel, Gauge>,
    /// Commits pushed.
    pub commits: Family<MappingLabel, Counter>,
    /// Successful syncs by how they were done (a high `full` share in Continuous mode
    /// means changes that patches cannot express, such as HPA or Namespace edits).
    pub syncs: Family<PathLabel, Counter>,
    /// Failed syncs whose cause was the git remote.
    pub push_failures: Family<MappingLabel, Counter>,
    /// Failed syncs of any cause.
    pub sync_failures: Family<MappingLabel, Counter>,
    /// Source changes waiting for the debounce window (Continuous mode).
    pub pending_changes: Family<MappingLabel, Gauge>,
    /// 1 while a Continuous mapping's watch runs (0 after the mapping is paused, switched
    /// to another mode or deleted).
    pub continuous_watch: Family<MappingLabel, Gauge>,
    /// 1 while the mass-deletion breaker holds the mapping's batch.
    pub breaker_held: Family<MappingLabel, Gauge>,
    /// Unix time of the last successful sync: `time() - this` is the RPO.
    pub last_success: Family<MappingLabel, Gauge<f64, AtomicU64>>,
    /// PVC data-sync metrics (`pvc_*`), recorded by [`crate::datasync`].
    pub pvc: crate::datasync::metrics::PvcMetrics,
    /// Files of the mapping's tree the last DR readiness check found a problem with (the
    /// DR apiserver's dry-run rejected them, or their layout or encryption is wrong).
    pub dr_rejected_objects: Family<MappingLabel, Gauge>,
    /// The mapping's RPO target (`spec.rpoTarget` or `--default-rpo-target`) in seconds, so
    /// alerts compare `time() - last_success_timestamp_seconds` with it per mapping.
    pub rpo_target: Family<MappingLabel, Gauge>,
    /// 1 while this replica leads (or runs without leader election); a standby shows 0.
    /// `sum(dr_syncer_leader) < 1` means nobody writes.
    pub leader: Gauge,
    /// Live replicas this one sees (sharding; 1 without it): each owns about 1/N of the
    /// mappings, and replicas that disagree for long point at a clock or API problem.
    pub members: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dr_syncer");
        let sync_duration = Family::<MappingLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        let m = Metrics {
            sync_duration: sync_duration.clone(),
            objects_exported: Family::default(),
            commits: Family::default(),
            syncs: Family::default(),
            push_failures: Family::default(),
            sync_failures: Family::default(),
            pending_changes: Family::default(),
            continuous_watch: Family::default(),
            breaker_held: Family::default(),
            last_success: Family::default(),
            pvc: Default::default(),
            dr_rejected_objects: Family::default(),
            rpo_target: Family::default(),
            leader: Gauge::default(),
            members: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sync_duration_seconds",
            "Wall time of a sync",
            m.sync_duration.clone(),
        );
        registry.register(
            "objects_exported",
            "Objects written by the last sync, per kind",
            m.objects_exported.clone(),
        );
        registry.register("commits", "Commits pushed", m.commits.clone());
        registry.register(
            "syncs",
            "Successful syncs, by path (patch or full)",
            m.syncs.clone(),
        );
        registry.register(
            "push_failures",
            "Syncs that failed at the git remote",
            m.push_failures.clone(),
        );
        registry.register(
            "sync_failures",
            "Syncs that failed for any reason",
            m.sync_failures.clone(),
        );
        registry.register(
            "pending_changes",
            "Source changes waiting for the debounce window",
            m.pending_changes.clone(),
        );
        registry.register(
            "continuous_watch",
            "1 while the Continuous watch of a mapping runs",
            m.continuous_watch.clone(),
        );
        registry.register(
            "breaker_held",
            "1 while the mass-deletion breaker holds a batch",
            m.breaker_held.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful sync (RPO = now - this)",
            m.last_success.clone(),
        );
        registry.register(
            "dr_rejected_objects",
            "Files the last DR readiness check (DrReady) found a problem with",
            m.dr_rejected_objects.clone(),
        );
        registry.register(
            "rpo_target_seconds",
            "The mapping's RPO target (spec.rpoTarget or the controller's default)",
            m.rpo_target.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (or runs without leader election)",
            m.leader.clone(),
        );
        registry.register(
            "members",
            "Live controller replicas this replica sees (sharding; 1 without it)",
            m.members.clone(),
        );
        m.pvc.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
