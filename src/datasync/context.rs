//! What the data sync needs from the process that runs it, and nothing more: a client of
//! the controller's cluster, the few settings it reads, an Event recorder and its metric
//! families. The controller builds one [`DataCtx`] from its own context; `datasync` never
//! sees the controller's context, so the dependency runs one way (controller → datasync).

use kube::Resource;
use kube::runtime::events::Recorder;

use super::metrics::PvcMetrics;

/// The narrow context of the data-sync tasks.
pub struct DataCtx {
    /// Client of the cluster the controller runs in (mappings, key Secrets, PVC locks).
    pub client: kube::Client,
    /// The controller's namespace: where the PVC locks (Leases) live.
    pub namespace: String,
    /// Field manager of everything written.
    pub field_manager: String,
    /// Default image of the data-sync pods (the controller's own image).
    pub image: String,
    /// This replica's identity (PVC lock holder).
    pub instance: String,
    /// Event recorder; a clone of the controller's, so repeated Events fold into series.
    pub recorder: Recorder,
    /// PVC data-sync metrics, registered by the controller.
    pub metrics: PvcMetrics,
    /// The tenancy rules every data sync is authorized against, like a manifest sync.
    pub tenancy: crate::refs::Tenancy,
}

impl DataCtx {
    /// Publishes an Event about `obj` with action `SyncData`; a failure is logged, never
    /// fatal (Events are a report, not state).
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        crate::events::publish(&self.recorder, obj, warning, reason, "SyncData", note).await;
    }
}
