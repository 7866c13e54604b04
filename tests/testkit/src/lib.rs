//! Test support for dr-syncer: real components, started on loopback for each test run.
//!
//! - [`bench`]: samples, medians, spreads, peak RSS and computed verdicts for `benches/`.
//! - [`envtest`]: etcd + kube-apiserver (+ kubectl) built from Go modules, with TLS, RBAC and
//!   ServiceAccount tokens, one or several side by side.
//! - [`objects`]: applying objects and generating namespaces of mixed objects.
//! - [`git`]: `git daemon` and `sshd` serving bare repositories.
//! - [`kubelet`]: the exec part of a kubelet, for `pods/exec` through the test apiserver.
//! - [`process`]: long-running children that are stopped with all their descendants.
//! - [`flux`]: Flux's source- and kustomize-controller (built from their Go modules) run
//!   against a test apiserver.
//! - [`volume`]: the PVC agent's volume server on loopback, with `ssh-keygen` keys.
//! - [`tools`]: Go-built peers (sops, kustomize, helm) and the KSOPS emulation
//!   (`src/bin/ksops_emulation.rs`), a test-only stand-in for KSOPS's exec KRM function.

pub mod bench;
pub mod envtest;
pub mod flux;
pub mod git;
pub mod git_https;
pub mod kubelet;
pub mod objects;
pub mod process;
pub mod tools;
pub mod volume;

/// Root of the dr-syncer workspace (where `Cargo.toml` and `tests/envtest` live).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
