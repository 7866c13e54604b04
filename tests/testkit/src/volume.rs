//! The PVC agent's volume server (`dr-syncer agent serve-volume`) on loopback, with
//! OpenSSH-made keys, as a DR Job reaches it: for the PVC scale test and the PVC benchmark.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An ed25519 key pair made by `ssh-keygen` at `path` (and `path.pub`); the public line.
pub fn keygen(path: &Path) -> String {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (Debian package openssh-client)");
    assert!(ok.success(), "ssh-keygen failed for {}", path.display());
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// A running volume server; killed when dropped.
pub struct VolumeServer {
    /// The process (its `/proc` status holds the peak RSS).
    pub child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl VolumeServer {
    /// Serves `root` with the host key `dir/agent_host`, admitting `dir/authorized_keys`;
    /// returns once it listens.
    pub fn start(bin: &Path, dir: &Path, root: &Path) -> VolumeServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["agent", "serve-volume", "--root"])
            .arg(root)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--host-key"])
            .arg(dir.join("agent_host"))
            .arg("--authorized-keys")
            .arg(dir.join("authorized_keys"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = VolumeServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the volume server never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for VolumeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
