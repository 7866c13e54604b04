//! Prometheus metric families of the volume data sync. They live here, not in the
//! controller, so `datasync` records its metrics without importing the controller; the
//! controller owns the registry and registers them ([`PvcMetrics::register`]).

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

/// `mapping`, `kind` (`literal` or `matched` bytes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Mapping key.
    pub mapping: String,
    /// Kind of bytes.
    pub kind: String,
}

/// `mapping`, `result` (`Succeeded`, `Failed`, `Held` (by the deletion breaker), `Skipped`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Mapping key.
    pub mapping: String,
    /// Outcome.
    pub result: String,
}

/// `mapping`, `pvc` (`namespace/name` on the source).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PvcLabel {
    /// Mapping key.
    pub mapping: String,
    /// Source PVC.
    pub pvc: String,
}

/// The metric families of PVC data syncs. Cloning shares the families (a clone records
/// into the same series the registry serves).
#[derive(Clone)]
pub struct PvcMetrics {
    /// PVC data syncs by result.
    pub syncs: Family<ResultLabel, Counter>,
    /// Wall time of PVC data syncs.
    pub duration: Family<MappingLabel, Histogram>,
    /// Volume bytes moved by PVC data syncs, `kind` = `literal` (sent) or `matched`
    /// (rebuilt from the DR copy).
    pub bytes: Family<KindLabel, Counter>,
    /// Unix time of the point in time the DR copy of a PVC holds: `time() - this` is the
    /// volume's RPO.
    pub last_success: Family<PvcLabel, Gauge<f64, AtomicU64>>,
}

impl Default for PvcMetrics {
    fn default() -> Self {
        PvcMetrics {
            syncs: Family::default(),
            duration: Family::<MappingLabel, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 16))
            }),
            bytes: Family::default(),
            last_success: Family::default(),
        }
    }
}

impl PvcMetrics {
    /// Registers the families in `registry` (the controller's, served on `/metrics`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("pvc_syncs", "PVC data syncs, by result", self.syncs.clone());
        registry.register(
            "pvc_sync_duration_seconds",
            "Wall time of a PVC data sync",
            self.duration.clone(),
        );
        registry.register(
            "pvc_bytes",
            "Volume bytes of PVC data syncs, literal (sent) or matched (from the DR copy)",
            self.bytes.clone(),
        );
        registry.register(
            "pvc_last_success_timestamp_seconds",
            "Point in time the DR copy of a PVC holds (RPO = now - this)",
            self.last_success.clone(),
        );
    }
}
