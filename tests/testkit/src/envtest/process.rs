//! Starting and stopping etcd + kube-apiserver under a shell supervisor (see the module docs
//! of [`super`] for the lifeline).

use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

use super::{Result, io};
use crate::process::{ProcessGroup, Stop};

/// How long a stopping supervisor gets to shut the servers down in order (apiserver, then
/// etcd) and remove its directory before its process group is signalled.
const ORDERLY_STOP: Duration = Duration::from_secs(60);

/// The supervisor script: starts both servers, then either waits for the lifeline (stdin)
/// to close or, detached, for the servers to exit; stops apiserver before etcd.
const SCRIPT: &str = r#"
dir="$1"; mode="$2"; shift 2
cd "$dir"
. ./args.sh
"$ETCD" "${ETCD_ARGS[@]}" >etcd.log 2>&1 </dev/null & e=$!
"$APISERVER" "${APISERVER_ARGS[@]}" >apiserver.log 2>&1 </dev/null & a=$!
echo "$a $e" > pids
stop() { kill "$a" 2>/dev/null; wait "$a" 2>/dev/null; kill "$e" 2>/dev/null; wait "$e" 2>/dev/null; }
if [ "$mode" = detached ]; then
  wait "$a"; stop
else
  trap '' INT TERM
  # Returns when the test process closes the pipe or exits; also notices a dead apiserver.
  while kill -0 "$a" 2>/dev/null; do read -r -t 1 _ ; [ $? -gt 128 ] || break; done
  stop
  cd / && rm -rf "$dir"
fi
"#;

/// A running supervisor, leading its own process group with etcd and the apiserver.
pub struct Supervisor {
    child: ProcessGroup,
    lifeline: Option<ChildStdin>,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Supervisor {
    /// Writes `args.sh` and starts the supervisor.
    pub fn spawn(
        dir: &Path,
        bins: &Path,
        etcd_client: u16,
        etcd_peer: u16,
        secure: u16,
        detached: bool,
    ) -> Result<Self> {
        let d = dir.display();
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args = [
            format!("--data-dir={d}/etcd"),
            "--name=default".into(),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            // Test data is thrown away; fsync only costs time.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let apiserver_args = [
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure}"),
            format!("--etcd-servers={client_url}"),
            format!("--tls-cert-file={d}/serving.crt"),
            format!("--tls-private-key-file={d}/serving.key"),
            format!("--client-ca-file={d}/ca.crt"),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={d}/sa.pub"),
            format!("--service-account-signing-key-file={d}/sa.key"),
            // Room for the benchmarks' thousands of Services.
            "--service-cluster-ip-range=10.0.0.0/16".into(),
            "--allow-privileged=true".into(),
            // No controller-manager creates `default` ServiceAccounts, so this plugin would
            // reject every Pod; tests create the accounts they use.
            "--disable-admission-plugins=ServiceAccount".into(),
            // The default reconciler refuses a loopback advertise address.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            format!("--cert-dir={d}/certs"),
        ];
        let arr = |v: &[String]| v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" ");
        let args_sh = format!(
            "ETCD={}\nAPISERVER={}\nETCD_ARGS=({})\nAPISERVER_ARGS=({})\n",
            quote(&bins.join("etcd").display().to_string()),
            quote(&bins.join("kube-apiserver").display().to_string()),
            arr(&etcd_args),
            arr(&apiserver_args),
        );
        std::fs::write(dir.join("args.sh"), args_sh).map_err(io("writing args.sh"))?;
        std::fs::write(dir.join("supervisor.sh"), SCRIPT).map_err(io("writing supervisor.sh"))?;
        let mut cmd = Command::new("bash");
        cmd.arg(dir.join("supervisor.sh"))
            .arg(dir)
            .arg(if detached { "detached" } else { "lifeline" })
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if detached {
            cmd.stdin(Stdio::null());
        } else {
            cmd.stdin(Stdio::piped());
        }
        // Own process group, both modes: `make envtest-up`'s terminal signals don't reach a
        // detached instance, and stopping an attached one can end every process it started
        // even when the script is stuck. The lifeline still stops the servers when the test
        // process dies without running destructors.
        let mut child =
            ProcessGroup::spawn(&mut cmd).map_err(io("starting the envtest supervisor"))?;
        let lifeline = child.child_mut().stdin.take();
        Ok(Supervisor { child, lifeline })
    }

    /// The id of the process group of the supervisor, etcd and the apiserver.
    #[cfg(test)]
    pub(super) fn process_group(&self) -> u32 {
        self.child.id()
    }

    /// Whether the supervisor (and so the apiserver) has exited.
    pub fn exited(&mut self) -> bool {
        self.child.leader_exited()
    }

    /// Stops the servers and waits until they are gone.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Asks the supervisor to stop the servers in order (through the lifeline) and waits;
    /// signals its whole group only when that takes longer than [`ORDERLY_STOP`].
    fn shutdown(&mut self) {
        if let Some(mut l) = self.lifeline.take() {
            let _ = l.write_all(b"stop\n");
        }
        self.child.stop(Stop::Await(ORDERLY_STOP));
    }

    /// Leaves a detached supervisor running.
    pub fn detach(mut self) {
        self.child.detach();
    }
}

impl Drop for Supervisor {
    /// A supervisor dropped without [`stop`](Self::stop) (an error or a panic while
    /// starting) stops like one that was: lifeline first, so the servers stop in order.
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Stops the servers of a detached instance in `dir` using its `pids` file.
pub fn stop_pids(dir: &Path) -> Result<()> {
    let Ok(pids) = std::fs::read_to_string(dir.join("pids")) else {
        return Ok(());
    };
    for pid in pids.split_whitespace() {
        // The apiserver first, then etcd; ignore processes already gone.
        let _ = Command::new("kill").arg(pid).stderr(Stdio::null()).status();
        for _ in 0..100 {
            let alive = Command::new("kill")
                .args(["-0", pid])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success());
            if !matches!(alive, Ok(true)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_file(dir.join("pids"));
    Ok(())
}
