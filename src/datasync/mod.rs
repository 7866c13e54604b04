//! PVC data replication in Kubernetes: the agent in the source cluster, one operation per
//! PVC (point-in-time copy → volume server pod → `pvc-sync` Job on the DR side), SSH keys
//! generated and rotated by the controller, locks, cleanup, status and metrics. The data
//! path itself is `crate::pvc`.
//!
//! Dependencies run one way: the controller starts the tasks with a [`DataCtx`] built from
//! its own context and registers the [`metrics`] families; `datasync` itself uses `api`,
//! `refs`, `export`, `schedule` and `pvc`, never `controller`.

pub mod agent;
pub mod context;
pub mod due;
pub mod group;
pub mod hooks;
pub mod keys;
pub mod lock;
pub mod metrics;
pub mod objects;
pub mod plan;
pub mod rings;
pub mod run;
pub mod task;

pub use context::DataCtx;
pub use task::{DataSyncError, DataSyncs};
