//! PVC data replication in Kubernetes: the agent in the source cluster, one operation per
//! PVC (point-in-time copy → volume server pod → `pvc-sync` Job on the DR side), SSH keys
//! generated and rotated by the controller, locks, cleanup, status and metrics. The data
//! path itself is `crate::pvc`.

pub mod agent;
pub mod due;
pub mod keys;
pub mod lock;
pub mod objects;
pub mod plan;
pub mod rings;
pub mod run;
pub mod task;

pub use task::DataSyncs;
