//! Measuring for the benchmarks (`benches/`), so every figure is taken the same way:
//! repeated samples reported as median and spread, peak memory read from the kernel (a
//! failed read stops the benchmark — it is never reported as 0), goals judged by code on
//! medians of at least [`MIN_SAMPLES`] samples, and tables printed as Markdown so
//! `make bench` collects them into `benches/RESULTS.md` as they are.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// A control plane for a controller benchmark: `crds` applied (then a moment for them to
/// be served) and the controller's namespace `dr-syncer`; with a client and an applier.
pub async fn controller_plane(
    crds: &[serde_json::Value],
) -> (
    crate::envtest::ControlPlane,
    kube::Client,
    crate::objects::Applier,
) {
    let plane = crate::envtest::ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    let applier = crate::objects::Applier::new(client.clone(), "bench");
    for crd in crds {
        applier.apply(crd).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    applier
        .apply(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dr-syncer"}}))
        .await;
    (plane, client, applier)
}

/// Fewest samples a goal is judged on: one run proves nothing about a median.
pub const MIN_SAMPLES: usize = 3;

/// Starts `dr-syncer controller` (the binary `bin`) against `kubeconfig` in the
/// `dr-syncer` namespace, caching clones in `cache`, with `extra` arguments; it logs
/// warnings only and serves `/metrics` on a free loopback port.
pub fn start_controller(
    bin: &Path,
    kubeconfig: &Path,
    cache: &Path,
    extra: &[&str],
) -> std::process::Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Command::new(bin)
        .args(["controller", "--kubeconfig"])
        .arg(kubeconfig)
        .args([
            "--namespace",
            "dr-syncer",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--cache-dir",
        ])
        .arg(cache)
        .args(extra)
        .env("DR_SYNCER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Repetitions per measurement: `BENCH_REPS`, never fewer than [`MIN_SAMPLES`].
pub fn reps() -> usize {
    std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MIN_SAMPLES)
        .max(MIN_SAMPLES)
}

/// Repeated measurements of one quantity.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<f64>);

impl FromIterator<f64> for Samples {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        Samples(iter.into_iter().collect())
    }
}

impl Samples {
    /// Adds one measurement.
    pub fn push(&mut self, v: f64) {
        assert!(v.is_finite(), "a measurement is not a number: {v}");
        self.0.push(v);
    }

    /// How many measurements there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The measurements in the order taken.
    pub fn values(&self) -> &[f64] {
        &self.0
    }

    fn sorted(&self) -> Vec<f64> {
        assert!(!self.0.is_empty(), "no samples");
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        let mid = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        }
    }

    /// The smallest measurement.
    pub fn min(&self) -> f64 {
        self.sorted()[0]
    }

    /// The largest measurement.
    pub fn max(&self) -> f64 {
        *self.sorted().last().unwrap()
    }

    /// The `p` quantile (0..=1), nearest rank.
    pub fn quantile(&self, p: f64) -> f64 {
        let v = self.sorted();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    /// Whether the ranges of two sample sets overlap: a difference of medians inside
    /// overlapping ranges is within the noise of these runs.
    pub fn overlaps(&self, other: &Samples) -> bool {
        self.min() <= other.max() && other.min() <= self.max()
    }

    /// `min–max`, with `decimals` places.
    pub fn spread(&self, decimals: usize) -> String {
        format!("{:.decimals$}–{:.decimals$}", self.min(), self.max())
    }
}

/// A goal's outcome, computed from the measurements, never written by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Met on the medians.
    Met,
    /// Met on the medians, but the compared sample ranges overlap.
    MetWithinNoise,
    /// Not met.
    Missed,
    /// Fewer than [`MIN_SAMPLES`] samples: not judged.
    NotJudged(usize),
}

impl Verdict {
    /// Judges `met` (computed from medians) over `samples` samples per side; `overlap`
    /// says whether the compared ranges overlap (false for a fixed target).
    pub fn judge(samples: usize, met: bool, overlap: bool) -> Verdict {
        match (samples >= MIN_SAMPLES, met, overlap) {
            (false, _, _) => Verdict::NotJudged(samples),
            (true, false, _) => Verdict::Missed,
            (true, true, true) => Verdict::MetWithinNoise,
            (true, true, false) => Verdict::Met,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Met => f.write_str("met"),
            Verdict::MetWithinNoise => f.write_str("met on medians (ranges overlap)"),
            Verdict::Missed => f.write_str("MISSED"),
            Verdict::NotJudged(n) => write!(f, "not judged ({n} samples < {MIN_SAMPLES})"),
        }
    }
}

/// A Markdown table, printed with padded columns so it also reads well in a terminal.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "row {cells:?}");
        self.rows.push(cells);
    }

    /// Prints the table under a `### title` heading.
    pub fn print(&self, title: &str) {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.header[c].chars().count(), 3])
                    .max()
                    .unwrap()
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        println!("\n### {title}\n");
        line(&self.header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule);
        for r in &self.rows {
            line(r);
        }
        println!();
    }
}

/// One run of a command: wall time and the peak resident memory of the largest process
/// it waited for.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Wall time, seconds.
    pub secs: f64,
    /// Peak RSS, KiB (GNU time's `%M`).
    pub peak_rss_kib: u64,
}

/// Runs `cmd` under GNU time (`/usr/bin/time`, Debian package `time`); panics when the
/// command fails or its peak RSS cannot be read.
pub fn gnu_time(cmd: &Command) -> Timed {
    let rss_file = tempfile_path("rss");
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("GNU time (/usr/bin/time, Debian package `time`) runs");
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    let peak_rss_kib = read_time_rss(&rss_file);
    let _ = std::fs::remove_file(&rss_file);
    Timed { secs, peak_rss_kib }
}

/// The `%M` figure GNU time wrote to `path`; panics when there is none.
pub fn read_time_rss(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("peak RSS from GNU time at {}: {e}", path.display()));
    let last = text.trim().lines().last().unwrap_or_default();
    match last.trim().parse() {
        Ok(kib) if kib > 0 => kib,
        _ => panic!(
            "peak RSS from GNU time at {}: not a positive number: {text:?}",
            path.display()
        ),
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`); panics when it cannot be
/// read — a missing figure is not a small one.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no {field} figure"))
}

/// A fresh path in the temporary directory for a measurement file.
pub fn tempfile_path(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "dr-syncer-bench-{}-{what}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// `items` rotated left by `rep`: each repetition starts with the next contender, so no
/// tool always runs first (cold) or last (after the others warmed the caches).
pub fn rotated<T: Clone>(items: &[T], rep: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = rep % v.len();
        v.rotate_left(k);
    }
    v
}

/// Flushes every file system's dirty pages (`sync`) so a tool that does not fsync does not
/// leave its write-back to be paid by the next run.
pub fn settle() {
    let ok = Command::new("sync").status().expect("sync runs");
    assert!(ok.success(), "sync failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(v: &[f64]) -> Samples {
        let mut s = Samples::default();
        for x in v {
            s.push(*x);
        }
        s
    }

    #[test]
    fn samples_median_odd_and_even() {
        assert_eq!(samples(&[3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(samples(&[4.0, 1.0, 3.0, 2.0]).median(), 2.5);
        assert_eq!(samples(&[5.0, 1.0, 9.0]).spread(1), "1.0–9.0");
    }

    #[test]
    fn samples_overlap() {
        assert!(samples(&[1.0, 2.0]).overlaps(&samples(&[2.0, 3.0])));
        assert!(!samples(&[1.0, 1.5]).overlaps(&samples(&[2.0, 3.0])));
    }

    #[test]
    fn verdict_needs_three_samples() {
        assert_eq!(Verdict::judge(1, true, false), Verdict::NotJudged(1));
        assert_eq!(Verdict::judge(3, true, false), Verdict::Met);
        assert_eq!(Verdict::judge(3, true, true), Verdict::MetWithinNoise);
        assert_eq!(Verdict::judge(3, false, false), Verdict::Missed);
    }

    #[test]
    fn rotated_starts_with_the_next_contender() {
        assert_eq!(rotated(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(rotated(&[1, 2, 3], 1), vec![2, 3, 1]);
        assert_eq!(rotated(&[1, 2, 3], 4), vec![2, 3, 1]);
    }

    #[test]
    fn read_time_rss_rejects_a_missing_figure() {
        let p = tempfile_path("t");
        std::fs::write(&p, "Command exited with non-zero status 1\n").unwrap();
        assert!(std::panic::catch_unwind(|| read_time_rss(&p)).is_err());
        std::fs::write(&p, "12345\n").unwrap();
        assert_eq!(read_time_rss(&p), 12345);
        let _ = std::fs::remove_file(&p);
    }
}
