//! Go-built test peers (`tests/tools/build.sh`, cached by its go.sum) and Debian tools.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The `sops` binary built from `github.com/getsops/sops/v3/cmd/sops` (pinned in go.mod).
pub fn sops() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("tests/tools/build.sh"))
        .join("sops")
}

/// Runs a cached build script (relative to the workspace) and returns the directory it
/// prints.
fn build(script: &str) -> PathBuf {
    let script = crate::workspace_root().join(script);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The directory `tests/helm/build.sh` prepares: `bin/helm` (helm built from its pinned Go
/// module), `crds/flux/*.yaml` and `crds/argocd/*.yaml` (from the consumers' modules).
pub fn helm_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("tests/helm/build.sh")).clone()
}

/// The `helm` binary (see [`helm_dir`]).
pub fn helm() -> PathBuf {
    helm_dir().join("bin/helm")
}

/// A Debian-packaged command (`age`, `sshd`, ...), with a hint when it is missing.
pub fn debian(cmd: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = PathBuf::from(dir).join(cmd);
        if p.exists() {
            return p;
        }
    }
    panic!("{cmd} not found: install the Debian package {package} (make deps does)");
}
