//! The pure part of `dr-syncer status`: NamespaceMappings (as read) to rows, rows to a
//! table. Kept free of I/O so every column is tested from YAML fixtures.

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::{MappingPhase, NamespaceMapping, PvcSyncResult, PvcVolumeStatus, ReplicationMode};

/// Condition type of the DR readiness check.
const DR_READY: &str = "DrReady";

/// One mapping's DR posture.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingRow {
    /// Namespace of the NamespaceMapping.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `Continuous`, `Scheduled` or `Manual`, with `paused` when paused.
    pub mode: String,
    /// `git`, `cluster`, or `default` (the ClusterMapping's).
    pub destination: String,
    /// The phase (`Pending` before the first status).
    pub phase: String,
    /// End of the last successful sync.
    pub last_sync: Option<Timestamp>,
    /// Seconds since the last complete sync (`None`: never synced completely).
    pub rpo_seconds: Option<i64>,
    /// The RPO target in seconds.
    pub rpo_target_seconds: i64,
    /// The RPO is above the target, or there never was a complete sync.
    pub over_target: bool,
    /// Short id of the last commit.
    pub last_commit: Option<String>,
    /// Breakers holding: `manifests` and/or `data:<pvc>`.
    pub held: Vec<String>,
    /// `DrReady` condition: `True`, `False`, or `None` when not checked.
    pub dr_ready: Option<String>,
    /// Why the last sync failed, when it did.
    pub last_error: Option<String>,
    /// Replicated PVCs.
    pub pvcs: Vec<PvcRow>,
}

/// One PVC's replication state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcRow {
    /// Source PVC `namespace/name`.
    pub source: String,
    /// Result of the last attempt.
    pub result: String,
    /// The point in time the DR copy holds.
    pub point_in_time: Option<Timestamp>,
    /// Seconds since that point in time (`None`: no good copy yet).
    pub rpo_seconds: Option<i64>,
    /// Above the mapping's RPO target (or never copied).
    pub over_target: bool,
    /// The last attempt's message.
    pub message: Option<String>,
}

/// Rows for `mappings` at `now`; a mapping without `spec.rpoTarget` gets `default_target`.
pub fn rows(
    mappings: &[NamespaceMapping],
    now: Timestamp,
    default_target: Duration,
) -> Vec<MappingRow> {
    let mut out: Vec<MappingRow> = mappings
        .iter()
        .map(|nm| row(nm, now, default_target))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

fn age(now: Timestamp, t: Timestamp) -> i64 {
    (now.as_second() - t.as_second()).max(0)
}

fn row(nm: &NamespaceMapping, now: Timestamp, default_target: Duration) -> MappingRow {
    let spec = &nm.spec;
    let st = nm.status.clone().unwrap_or_default();
    let target = spec
        .rpo_target
        .as_deref()
        .and_then(crate::schedule::parse_duration)
        .unwrap_or(default_target)
        .as_secs() as i64;
    let mut mode = match spec.replication_mode {
        ReplicationMode::Continuous => "Continuous",
        ReplicationMode::Scheduled => "Scheduled",
        ReplicationMode::Manual => "Manual",
    }
    .to_string();
    if spec.paused {
        mode.push_str(",paused");
    }
    let destination = match &spec.destination {
        Some(d) if d.cluster.is_some() => "cluster",
        Some(d) if d.git.is_some() => "git",
        _ => "default",
    }
    .to_string();
    let rpo = st.last_complete_sync_time.as_ref().map(|t| age(now, t.0));
    let pvcs: Vec<PvcRow> = st
        .pvc_data
        .as_ref()
        .map(|p| p.volumes.iter().map(|v| pvc_row(v, now, target)).collect())
        .unwrap_or_default();
    let mut held = Vec::new();
    if st.phase == Some(MappingPhase::Held) {
        held.push("manifests".to_string());
    }
    held.extend(
        pvcs.iter()
            .filter(|p| p.result == "Held")
            .map(|p| format!("data:{}", p.source)),
    );
    MappingRow {
        namespace: nm.metadata.namespace.clone().unwrap_or_default(),
        name: nm.metadata.name.clone().unwrap_or_default(),
        mode,
        destination,
        phase: st
            .phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "Pending".into()),
        last_sync: st.last_sync_time.as_ref().map(|t| t.0),
        rpo_seconds: rpo,
        rpo_target_seconds: target,
        over_target: rpo.is_none_or(|r| r > target),
        last_commit: st
            .last_commit
            .as_ref()
            .map(|c| c.sha.chars().take(7).collect()),
        held,
        dr_ready: st
            .conditions
            .iter()
            .find(|c| c.type_ == DR_READY)
            .map(|c| c.status.clone()),
        last_error: st.last_error.as_ref().map(|e| e.message.clone()),
        pvcs,
    }
}

fn pvc_row(v: &PvcVolumeStatus, now: Timestamp, target: i64) -> PvcRow {
    let pit = v.point_in_time.as_ref().map(|t| t.0);
    let rpo = pit.map(|t| age(now, t));
    PvcRow {
        source: v.source.clone(),
        result: v
            .result
            .map(|r| match r {
                PvcSyncResult::Running => "Running",
                PvcSyncResult::Succeeded => "Succeeded",
                PvcSyncResult::Failed => "Failed",
                PvcSyncResult::Held => "Held",
                PvcSyncResult::Skipped => "Skipped",
            })
            .unwrap_or("Pending")
            .to_string(),
        point_in_time: pit,
        rpo_seconds: rpo,
        over_target: rpo.is_none_or(|r| r > target),
        message: v.message.clone(),
    }
}

/// `s` seconds as the largest two units: `45s`, `12m`, `3h05m`, `2d04h`.
pub fn human(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How the table is drawn.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// A NAMESPACE column (several namespaces shown).
    pub namespaces: bool,
    /// More columns: destination, last error, PVC messages.
    pub wide: bool,
    /// ANSI colour: an RPO over its target in red, a held breaker in yellow.
    pub color: bool,
}

fn paint(text: String, code: &str, on: bool) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text
    }
}

/// The table: one line per mapping, then one per PVC. An RPO over its target ends in `!`
/// (and is red with colour); `-` stands for nothing.
pub fn render(rows: &[MappingRow], now: Timestamp, style: Style) -> String {
    let dash = || "-".to_string();
    let rpo_cell = |rpo: Option<i64>, over: bool| {
        let text = match rpo {
            Some(r) => human(r),
            None => "never".into(),
        };
        let text = if over { format!("{text}!") } else { text };
        (text, over)
    };
    let mut head = Vec::new();
    if style.namespaces {
        head.push("NAMESPACE");
    }
    head.extend([
        "NAME",
        "MODE",
        "PHASE",
        "LAST SYNC",
        "RPO",
        "TARGET",
        "COMMIT",
        "HELD",
        "DR READY",
        "PVCS",
    ]);
    if style.wide {
        head.extend(["DESTINATION", "LAST ERROR"]);
    }
    // Cells with their colour code (None: plain).
    let mut lines: Vec<Vec<(String, Option<&str>)>> = Vec::new();
    for r in rows {
        let mut l = Vec::new();
        if style.namespaces {
            l.push((r.namespace.clone(), None));
        }
        let (rpo, over) = rpo_cell(r.rpo_seconds, r.over_target);
        let ok = r.pvcs.iter().filter(|p| p.result == "Succeeded").count();
        l.extend([
            (r.name.clone(), None),
            (r.mode.clone(), None),
            (r.phase.clone(), (r.phase == "Failed").then_some("31")),
            (
                r.last_sync
                    .map(|t| format!("{} ago", human(age(now, t))))
                    .unwrap_or_else(dash),
                None,
            ),
            (rpo, over.then_some("31")),
            (human(r.rpo_target_seconds), None),
            (r.last_commit.clone().unwrap_or_else(dash), None),
            (
                if r.held.is_empty() {
                    dash()
                } else {
                    r.held.join(",")
                },
                (!r.held.is_empty()).then_some("33"),
            ),
            (
                match r.dr_ready.as_deref() {
                    Some("True") => "yes".into(),
                    Some("False") => "no".into(),
                    Some(_) => "unknown".into(),
                    None => dash(),
                },
                (r.dr_ready.as_deref() == Some("False")).then_some("31"),
            ),
            (
                if r.pvcs.is_empty() {
                    dash()
                } else {
                    format!("{ok}/{} ok", r.pvcs.len())
                },
                None,
            ),
        ]);
        if style.wide {
            l.push((r.destination.clone(), None));
            l.push((
                r.last_error
                    .clone()
                    .map(|e| one_line(&e, 80))
                    .unwrap_or_else(dash),
                None,
            ));
        }
        lines.push(l);
    }
    let mut out = table(&head, &lines, style.color);
    let pvcs: Vec<(&MappingRow, &PvcRow)> = rows
        .iter()
        .flat_map(|r| r.pvcs.iter().map(move |p| (r, p)))
        .collect();
    if !pvcs.is_empty() {
        let mut head = vec!["MAPPING", "PVC", "RESULT", "POINT IN TIME", "RPO"];
        if style.wide {
            head.push("MESSAGE");
        }
        let lines: Vec<Vec<(String, Option<&str>)>> = pvcs
            .iter()
            .map(|(r, p)| {
                let (rpo, over) = rpo_cell(p.rpo_seconds, p.over_target);
                let mut l = vec![
                    (format!("{}/{}", r.namespace, r.name), None),
                    (p.source.clone(), None),
                    (
                        p.result.clone(),
                        match p.result.as_str() {
                            "Failed" => Some("31"),
                            "Held" => Some("33"),
                            _ => None,
                        },
                    ),
                    (
                        p.point_in_time
                            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                            .unwrap_or_else(dash),
                        None,
                    ),
                    (rpo, over.then_some("31")),
                ];
                if style.wide {
                    l.push((
                        p.message
                            .clone()
                            .map(|m| one_line(&m, 100))
                            .unwrap_or_else(dash),
                        None,
                    ));
                }
                l
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&head, &lines, style.color));
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// Columns padded to their widest cell (colour codes do not count), two spaces apart.
fn table(head: &[&str], lines: &[Vec<(String, Option<&str>)>], color: bool) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for l in lines {
        for (i, (c, _)) in l.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let cells: Vec<String> = head
        .iter()
        .enumerate()
        .map(|(i, h)| pad(h, width[i]))
        .collect();
    out.push_str(cells.join("  ").trim_end());
    out.push('\n');
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, (c, code))| match code {
                Some(code) => {
                    paint(c.clone(), code, color) + &" ".repeat(width[i] - c.chars().count())
                }
                None => pad(c, width[i]),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-03T12:00:00Z";

    fn mapping(yaml: &str) -> NamespaceMapping {
        serde_saphyr::from_str(yaml).expect("fixture is a NamespaceMapping")
    }

    fn fixtures() -> Vec<NamespaceMapping> {
        vec![
            mapping(
                r#"
apiVersion: dr-syncer.io/v1alpha1
kind: NamespaceMapping
metadata: {name: shop, namespace: dr}
spec: {sourceNamespace: shop, replicationMode: Continuous, rpoTarget: 15m,
       destination: {git: {url: "ssh://git@h/r.git"}}}
status:
  phase: Synced
  lastSyncTime: "2026-12-03T11:58:00Z"
  lastCompleteSyncTime: "2026-12-03T11:58:00Z"
  lastCommit: {sha: 0123456789abcdef, time: "2026-12-03T11:58:00Z", message: sync}
  conditions:
    - {type: DrReady, status: "True", reason: Verified, message: ok, lastTransitionTime: "2026-12-03T11:00:00Z"}
  pvcData:
    volumes:
      - {source: shop/data, destination: shop/data, result: Succeeded, pointInTime: "2026-12-03T11:50:00Z"}
      - {source: shop/logs, destination: shop/logs, result: Held, message: "held: batch b1", pointInTime: "2026-12-03T09:00:00Z"}
"#,
            ),
            mapping(
                r#"
apiVersion: dr-syncer.io/v1alpha1
kind: NamespaceMapping
metadata: {name: billing, namespace: dr}
spec: {sourceNamespace: billing, replicationMode: Scheduled, schedule: "@hourly", paused: true,
       destination: {cluster: {remoteClusterRef: {name: dr}}}}
status:
  phase: Failed
  lastSyncTime: "2026-12-03T09:00:00Z"
  lastCompleteSyncTime: "2026-12-03T09:00:00Z"
  lastError: {message: "push refused:\n  non-fast-forward", time: "2026-12-03T11:00:00Z"}
  conditions:
    - {type: DrReady, status: "False", reason: Rejected, message: x, lastTransitionTime: "2026-12-03T11:00:00Z"}
"#,
            ),
            mapping(
                r#"
apiVersion: dr-syncer.io/v1alpha1
kind: NamespaceMapping
metadata: {name: new, namespace: team-a}
spec: {sourceNamespace: team-a, replicationMode: Manual}
"#,
            ),
        ]
    }

    #[test]
    fn rows_table() {
        let now: Timestamp = NOW.parse().unwrap();
        let r = rows(&fixtures(), now, Duration::from_secs(3600));
        let names: Vec<_> = r
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect();
        assert_eq!(
            names,
            ["dr/billing", "dr/shop", "team-a/new"],
            "sorted by namespace and name"
        );
        let billing = &r[0];
        assert_eq!(
            (
                billing.mode.as_str(),
                billing.destination.as_str(),
                billing.phase.as_str()
            ),
            ("Scheduled,paused", "cluster", "Failed")
        );
        assert_eq!(
            (
                billing.rpo_seconds,
                billing.rpo_target_seconds,
                billing.over_target
            ),
            (Some(10800), 3600, true)
        );
        assert_eq!(billing.dr_ready.as_deref(), Some("False"));
        let shop = &r[1];
        assert_eq!(
            (shop.rpo_seconds, shop.rpo_target_seconds, shop.over_target),
            (Some(120), 900, false)
        );
        assert_eq!(shop.last_commit.as_deref(), Some("0123456"));
        assert_eq!(shop.held, ["data:shop/logs"]);
        assert_eq!(
            shop.pvcs
                .iter()
                .map(|p| (p.rpo_seconds, p.over_target))
                .collect::<Vec<_>>(),
            [(Some(600), false), (Some(10800), true)]
        );
        let new = &r[2];
        assert_eq!(
            (new.phase.as_str(), new.rpo_seconds, new.over_target),
            ("Pending", None, true)
        );
    }

    #[test]
    fn render_plain_and_wide() {
        let now: Timestamp = NOW.parse().unwrap();
        let r = rows(&fixtures(), now, Duration::from_secs(3600));
        let plain = render(
            &r,
            now,
            Style {
                namespaces: true,
                ..Default::default()
            },
        );
        let want = "\
NAMESPACE  NAME     MODE              PHASE    LAST SYNC  RPO     TARGET  COMMIT   HELD            DR READY  PVCS
dr         billing  Scheduled,paused  Failed   3h00m ago  3h00m!  1h00m   -        -               no        -
dr         shop     Continuous        Synced   2m ago     2m      15m     0123456  data:shop/logs  yes       1/2 ok
team-a     new      Manual            Pending  -          never!  1h00m   -        -               -         -

MAPPING  PVC        RESULT     POINT IN TIME         RPO
dr/shop  shop/data  Succeeded  2026-12-03T11:50:00Z  10m
dr/shop  shop/logs  Held       2026-12-03T09:00:00Z  3h00m!
";
        assert_eq!(plain, want);
        let wide = render(
            &r,
            now,
            Style {
                namespaces: false,
                wide: true,
                color: false,
            },
        );
        assert!(
            wide.lines()
                .next()
                .unwrap()
                .ends_with("DESTINATION  LAST ERROR"),
            "{wide}"
        );
        assert!(
            wide.contains("cluster      push refused: non-fast-forward"),
            "{wide}"
        );
        assert!(wide.contains("held: batch b1"), "{wide}");
        assert!(!wide.starts_with("NAMESPACE"));
    }

    #[test]
    fn render_color_marks_only_what_is_wrong() {
        let now: Timestamp = NOW.parse().unwrap();
        let r = rows(&fixtures(), now, Duration::from_secs(3600));
        let c = render(
            &r,
            now,
            Style {
                color: true,
                ..Default::default()
            },
        );
        assert!(c.contains("\x1b[31m3h00m!\x1b[0m"), "{c:?}");
        assert!(c.contains("\x1b[33mdata:shop/logs\x1b[0m"), "{c:?}");
        assert!(
            !c.contains("\x1b[31m2m"),
            "an RPO within target stays plain: {c:?}"
        );
        // Colour codes do not shift the columns: stripped, it is the plain table.
        let stripped = regex::Regex::new("\x1b\\[[0-9]+m")
            .unwrap()
            .replace_all(&c, "");
        assert_eq!(stripped, render(&r, now, Style::default()));
    }

    #[test]
    fn human_table() {
        for (s, want) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (3600, "1h00m"),
            (3 * 3600 + 300, "3h05m"),
            (2 * 86400 + 4 * 3600, "2d04h"),
            (-5, "0s"),
        ] {
            assert_eq!(human(s), want, "{s}");
        }
    }
}
