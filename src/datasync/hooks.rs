//! Pre/post hooks of a PVC sync: commands run in the application's pods through the
//! source cluster's `pods/exec` subresource, before the point in time is taken and once
//! it is fixed (see [`crate::api::VolumeHook`] for when exactly).
//!
//! Which pods: the Running pods of the source namespace that mount the PVC and match the
//! hook's selector, in name order; hooks run in the order the mapping lists them. A failed
//! `pre` with `onError: Fail` stops there: nothing is copied, and `post` runs for every pod
//! whose `pre` was started (the failed one included — a half-applied freeze is undone).
//! `post` runs once per sync, also when the sync fails or times out after `pre` started.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, ListParams};
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client, ResourceExt};
use tokio::io::AsyncReadExt;

use crate::api::{HookCommand, HookErrorPolicy, VolumeHook};

/// How long a hook command may take when its `timeout` is unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Output kept per stream (the end of it goes into error messages).
const OUTPUT_LIMIT: usize = 4096;
/// Characters of a command's stderr quoted in a message.
const QUOTED: usize = 300;

/// One hook in one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The hook.
    pub hook: VolumeHook,
    /// The pod's name.
    pub pod: String,
    /// The container the commands run in.
    pub container: String,
}

/// Which phase a command belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the point in time.
    Pre,
    /// After it.
    Post,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

/// The (hook, pod) pairs of a sync of `claims`: for each hook in order, the Running pods
/// in `pods` that mount one of `claims` and match its selector, by name. A selector that cannot
/// be used is an error naming the hook (never "matches everything").
pub fn targets(
    hooks: &[VolumeHook],
    pods: &[Pod],
    claims: &[String],
) -> Result<Vec<Target>, String> {
    let mut using: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| claims.contains(&c.claim_name))
                })
        })
        .collect();
    using.sort_by_key(|p| p.name_any());
    let mut out = Vec::new();
    for hook in hooks {
        let selector =
            match &hook.pod_selector {
                Some(s) => Some(Selector::try_from(s.clone()).map_err(|e| {
                    format!("hook {:?}: podSelector cannot be used: {e}", hook.name)
                })?),
                None => None,
            };
        for pod in &using {
            if selector.as_ref().is_some_and(|s| {
                !s.matches(pod.metadata.labels.as_ref().unwrap_or(&Default::default()))
            }) {
                continue;
            }
            let first = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
                .unwrap_or_default();
            out.push(Target {
                hook: hook.clone(),
                pod: pod.name_any(),
                container: hook.container.clone().unwrap_or(first),
            });
        }
    }
    Ok(out)
}

/// The result of an exec from its final status: `Ok` for success, else why (exit code
/// when the kubelet reported one).
pub fn exit_of(status: Option<&Status>) -> Result<(), String> {
    let Some(s) = status else {
        return Err("the exec stream ended without a status".into());
    };
    if s.status.as_deref() == Some("Success") {
        return Ok(());
    }
    let code = s
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.clone());
    Err(match code {
        Some(code) => format!("exit code {code}"),
        None => s.message.clone().unwrap_or_else(|| "failed".into()),
    })
}

/// The last [`QUOTED`] characters of `text`, trimmed, for a message.
fn tail(text: &str) -> String {
    let t = text.trim();
    let n = t.chars().count();
    let tail: String = t.chars().skip(n.saturating_sub(QUOTED)).collect();
    if n > QUOTED {
        format!("…{tail}")
    } else {
        tail
    }
}

/// The hooks of one sync and how far they got.
pub struct HookRun {
    pods: Api<Pod>,
    claims: Vec<String>,
    hooks: Vec<VolumeHook>,
    /// The pairs, once `pre` looked them up.
    targets: Vec<Target>,
    /// How many pairs have had their `pre` started (pairs without `pre` count as started).
    started: usize,
    post_done: bool,
    warnings: Vec<String>,
}

impl HookRun {
    /// The hooks of a sync of `claims` (one PVC, or a consistency group's) in `namespace`
    /// of the source cluster.
    pub fn new(source: &Client, namespace: &str, claims: &[String], hooks: &[VolumeHook]) -> Self {
        HookRun {
            pods: Api::namespaced(source.clone(), namespace),
            claims: claims.to_vec(),
            hooks: hooks.to_vec(),
            targets: Vec::new(),
            started: 0,
            post_done: hooks.is_empty(),
            warnings: Vec::new(),
        }
    }

    /// Errors of hooks with `onError: Continue`, for the volume's status message.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Looks up the pods and runs every `pre` command; `Err` when one failed with
    /// `onError: Fail` (or the pods could not be listed: no hook ran then, and without
    /// knowing the pods the sync cannot know the application was quiesced).
    pub async fn pre(&mut self) -> Result<(), String> {
        if self.hooks.is_empty() {
            return Ok(());
        }
        let pods = self.pods.list(&ListParams::default()).await.map_err(|e| {
            format!(
                "hooks: cannot list the pods using {}: {e}",
                self.claims.join(", ")
            )
        })?;
        self.targets = targets(&self.hooks, &pods.items, &self.claims)?;
        tracing::info!(pvcs = %self.claims.join(","), pods = self.targets.len(), "running pre hooks");
        for i in 0..self.targets.len() {
            self.started = i + 1;
            let t = self.targets[i].clone();
            if let Some(cmd) = &t.hook.pre {
                self.run(&t, Phase::Pre, cmd).await?;
            }
        }
        Ok(())
    }

    /// Runs every `post` command of the pairs whose `pre` started; once per sync (later
    /// calls do nothing). All of them run even when one fails; `Err` names the first that
    /// failed with `onError: Fail`.
    pub async fn post(&mut self) -> Result<(), String> {
        if self.post_done {
            return Ok(());
        }
        self.post_done = true;
        let mut first = Ok(());
        let targets = std::mem::take(&mut self.targets);
        for t in &targets[..self.started] {
            if let Some(cmd) = &t.hook.post
                && let Err(e) = self.run(t, Phase::Post, cmd).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        self.targets = targets;
        first
    }

    /// Runs one command; `Err` only when it failed and its policy is `Fail` (a failure
    /// under `Continue` becomes a warning).
    async fn run(&mut self, t: &Target, phase: Phase, cmd: &HookCommand) -> Result<(), String> {
        let timeout = cmd
            .timeout
            .as_deref()
            .and_then(crate::schedule::parse_duration)
            .unwrap_or(DEFAULT_TIMEOUT);
        let what = format!(
            "hook {:?} {} in pod {} container {}",
            t.hook.name,
            phase.name(),
            t.pod,
            t.container
        );
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, self.exec(t, &cmd.command)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}s (the command may still run in the container)",
                timeout.as_secs()
            )),
        };
        match result {
            Ok(()) => {
                tracing::info!(hook = %t.hook.name, phase = phase.name(), pod = %t.pod, ms = started.elapsed().as_millis() as u64, "hook done");
                Ok(())
            }
            Err(e) => {
                let msg = format!("{what}: {e}");
                if cmd.on_error.unwrap_or_default() == HookErrorPolicy::Continue {
                    tracing::warn!(error = %msg, "hook failed; going on (onError: Continue)");
                    self.warnings.push(msg);
                    Ok(())
                } else {
                    Err(msg)
                }
            }
        }
    }

    /// Execs `command` in the pair's container and waits for its status.
    async fn exec(&self, t: &Target, command: &[String]) -> Result<(), String> {
        let ap = AttachParams::default()
            .container(t.container.clone())
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut proc = self
            .pods
            .exec(&t.pod, command.to_vec(), &ap)
            .await
            .map_err(|e| format!("exec failed: {e}"))?;
        let status = proc.take_status();
        // Drain both streams (a full pipe would stall the command), keeping the start.
        let read = |r: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
            let mut kept = Vec::new();
            if let Some(mut r) = r {
                let mut buf = [0u8; 8192];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        };
        let (_out, err) = tokio::join!(read(proc.stdout()), read(proc.stderr()));
        let status = match status {
            Some(s) => s.await,
            None => None,
        };
        let _ = proc.join().await;
        exit_of(status.as_ref()).map_err(|why| {
            let err = tail(&err);
            if err.is_empty() {
                why
            } else {
                format!("{why}: {err}")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, phase: &str, claim: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "db", "image": "x"}, {"name": "side", "image": "y"}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    fn hook(v: serde_json::Value) -> VolumeHook {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn targets_table() {
        let pods = vec![
            pod("db-1", "Running", "data", json!({"app": "db"})),
            pod("db-0", "Running", "data", json!({"app": "db"})),
            pod("web", "Running", "data", json!({"app": "web"})),
            pod("other", "Running", "logs", json!({"app": "db"})),
            pod("pending", "Pending", "data", json!({"app": "db"})),
        ];
        // (case, hooks, expected (pod, container) pairs)
        type Case = (
            &'static str,
            Vec<VolumeHook>,
            Vec<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "no selector: every running pod of the claim, by name",
                vec![hook(json!({"name": "h", "pre": {"command": ["true"]}}))],
                vec![("db-0", "db"), ("db-1", "db"), ("web", "db")],
            ),
            (
                "selector and container",
                vec![hook(json!({"name": "h", "container": "side",
                    "podSelector": {"matchLabels": {"app": "db"}}}))],
                vec![("db-0", "side"), ("db-1", "side")],
            ),
            (
                "expression selector",
                vec![hook(
                    json!({"name": "h", "podSelector": {"matchExpressions": [
                    {"key": "app", "operator": "NotIn", "values": ["db"]}]}}),
                )],
                vec![("web", "db")],
            ),
            (
                "hooks keep their order",
                vec![
                    hook(json!({"name": "a", "podSelector": {"matchLabels": {"app": "web"}}})),
                    hook(json!({"name": "b", "podSelector": {"matchLabels": {"app": "db"}}})),
                ],
                vec![("web", "db"), ("db-0", "db"), ("db-1", "db")],
            ),
            (
                "no pod matches",
                vec![hook(
                    json!({"name": "h", "podSelector": {"matchLabels": {"app": "none"}}}),
                )],
                vec![],
            ),
        ];
        for (name, hooks, want) in cases {
            let got: Vec<(String, String)> = targets(&hooks, &pods, &["data".to_string()])
                .unwrap()
                .into_iter()
                .map(|t| (t.pod, t.container))
                .collect();
            let want: Vec<(String, String)> = want
                .into_iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn targets_bad_selector_is_an_error_naming_the_hook() {
        let pods = vec![pod("db-0", "Running", "data", json!({}))];
        let hooks = vec![hook(
            json!({"name": "freeze", "podSelector": {"matchExpressions": [
            {"key": "app", "operator": "Sometimes", "values": ["db"]}]}}),
        )];
        let err = targets(&hooks, &pods, &["data".to_string()]).unwrap_err();
        assert!(err.contains("\"freeze\""), "{err}");
    }

    #[test]
    fn exit_of_table() {
        let st = |v: serde_json::Value| serde_json::from_value::<Status>(v).unwrap();
        assert_eq!(exit_of(Some(&st(json!({"status": "Success"})))), Ok(()));
        assert_eq!(
            exit_of(Some(&st(
                json!({"status": "Failure", "message": "command terminated with non-zero exit code",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}})
            ))),
            Err("exit code 3".into())
        );
        assert_eq!(
            exit_of(Some(&st(
                json!({"status": "Failure", "message": "container not found"})
            ))),
            Err("container not found".into())
        );
        assert!(exit_of(None).is_err());
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("  short \n"), "short");
        let long = "x".repeat(QUOTED) + "END";
        let t = tail(&long);
        assert!(t.starts_with('…') && t.ends_with("END"), "{t}");
        assert_eq!(t.chars().count(), QUOTED + 1);
    }
}
