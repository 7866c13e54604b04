//! The exec part of a kubelet for the test apiserver (`tests/envtest/cmd/exec-kubelet`):
//! a Node whose address and kubelet port point at it makes `pods/exec` on that node's pods
//! run the command as a local process, through the real apiserver and the kubelet's own
//! streaming code. Every exec is logged as one JSON line ([`ExecKubelet::execs`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::process::ProcessGroup;

/// A running exec-kubelet; stopped when dropped.
pub struct ExecKubelet {
    _group: ProcessGroup,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
}

impl ExecKubelet {
    /// Starts one on a free loopback port, logging into `dir/exec.log`.
    pub fn start(dir: &Path) -> Self {
        let bin = crate::envtest::bin_dir()
            .expect("envtest binaries")
            .join("exec-kubelet");
        let log = dir.join("exec.log");
        let mut group = ProcessGroup::spawn(
            Command::new(&bin)
                .arg("--listen=127.0.0.1:0")
                .arg(format!("--log={}", log.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stdout = group.child_mut().stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("exec-kubelet prints its port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("exec-kubelet printed {line:?}, not a port"));
        ExecKubelet {
            _group: group,
            port,
            log,
        }
    }

    /// Creates Node `name` (Ready) whose kubelet is this one.
    pub async fn node(&self, client: &Client, name: &str) {
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                    "conditions": [{"type": "Ready", "status": "True"}]}})),
            )
            .await
            .unwrap();
    }

    /// Every exec that ended so far, in order: `{start, end, pod, container, command,
    /// exit}`.
    pub fn execs(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("exec log line is JSON"))
            .collect()
    }
}
