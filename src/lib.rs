//! dr-syncer: Kubernetes disaster recovery.
//!
//! Source namespaces are exported as clean, DR-ready manifests into a git repository per
//! mapping (Secrets encrypted with age in the SOPS format) or applied straight into a DR
//! cluster. Modules follow the data flow: [`api`] (the CRDs) → export → gitops/sops →
//! controller; [`cli`] is the command-line edge.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod datasync;
pub mod events;
pub mod export;
pub mod gitops;
pub mod pvc;
pub mod refs;
pub mod schedule;
pub mod sops;
pub mod verify;
pub mod yaml;
