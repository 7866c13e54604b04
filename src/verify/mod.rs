//! `verify`: would the DR cluster come up from this tree? Flux and Argo CD apply what they
//! are given and fail at the worst moment; this reads the tree they will apply and says,
//! before a disaster, what would go wrong:
//!
//! - [`tree`] (pure): every object file parses and sits where its namespace says; the
//!   kustomizations list exactly the files present, in the layout the consumer (Flux or
//!   Argo CD with KSOPS) needs; every SOPS file decrypts with the DR identity and its MAC
//!   verifies (Flux decrypts tampered files without noticing), or — in the controller,
//!   which holds no DR key — is encrypted for exactly the configured recipients;
//! - [`dry_run`]: a server-side dry-run apply of every object against the DR cluster, so
//!   what it would reject (a missing CRD, an API version it no longer serves, a schema or
//!   admission failure, a missing namespace) is listed with the server's reason.

pub mod dry_run;
pub mod tree;

use serde::Serialize;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Check {
    /// The file is a readable Kubernetes object in the right place.
    Object,
    /// The kustomizations and KSOPS generators match the files.
    Layout,
    /// The SOPS file decrypts and its MAC verifies (or its recipients are right).
    Secret,
    /// The DR apiserver accepts the object (server-side dry-run apply).
    DryRun,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The DR cluster would not come up as exported.
    Problem,
    /// Cannot be checked yet, but this tree supplies what is missing (the object's CRD or
    /// namespace is applied first by `_cluster/`).
    Deferred,
}

/// One thing `verify` found (only problems and deferrals are recorded; the rest is counted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The file (relative to the mapping's path).
    pub path: String,
    /// Which check.
    pub check: Check,
    /// Its verdict.
    pub outcome: Outcome,
    /// Why, in the words of the apiserver / sops / the layout.
    pub reason: String,
}

/// Everything `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Object files read.
    pub objects: usize,
    /// SOPS files whose decryption and MAC (or recipients) were checked and found right.
    pub secrets_verified: usize,
    /// Objects the DR apiserver accepted in the dry-run (0 without a DR cluster).
    pub dry_run_accepted: usize,
    /// Whether the dry-run ran.
    pub dry_run: bool,
    /// Problems and deferrals, sorted by path.
    pub findings: Vec<Finding>,
}

/// What the checks add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// Every object was checked, the DR apiserver's dry-run included, and nothing failed.
    Ready,
    /// Nothing failed, but not everything could be checked (no dry-run, or objects waiting
    /// for what `_cluster/` brings first): not known to come up.
    NotVerified,
    /// Something would fail.
    NotReady,
}

impl Report {
    /// The verdict: fail closed, so only a complete check with no finding is `Ready`.
    pub fn verdict(&self) -> Verdict {
        if self.findings.iter().any(|f| f.outcome == Outcome::Problem) {
            Verdict::NotReady
        } else if !self.dry_run || !self.findings.is_empty() {
            Verdict::NotVerified
        } else {
            Verdict::Ready
        }
    }

    /// Whether the DR cluster would come up: everything checked, no problem found.
    pub fn ready(&self) -> bool {
        self.verdict() == Verdict::Ready
    }

    /// Whether a problem was found.
    pub fn has_problems(&self) -> bool {
        self.verdict() == Verdict::NotReady
    }

    /// Files with at least one problem.
    pub fn rejected(&self) -> usize {
        let mut paths: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.outcome == Outcome::Problem)
            .map(|f| f.path.as_str())
            .collect();
        paths.dedup();
        paths.len()
    }

    /// Records a problem.
    pub fn problem(&mut self, path: &str, check: Check, reason: impl Into<String>) {
        self.findings.push(Finding {
            path: path.to_string(),
            check,
            outcome: Outcome::Problem,
            reason: reason.into(),
        });
    }

    /// Records a deferral.
    pub fn defer(&mut self, path: &str, check: Check, reason: impl Into<String>) {
        self.findings.push(Finding {
            path: path.to_string(),
            check,
            outcome: Outcome::Deferred,
            reason: reason.into(),
        });
    }

    /// One line for status and Events: the counts and the first problem.
    pub fn headline(&self) -> String {
        let mut line = format!(
            "{} objects, {} rejected, {} deferred, {} Secrets verified",
            self.objects,
            self.rejected(),
            self.findings
                .iter()
                .filter(|f| f.outcome == Outcome::Deferred)
                .count(),
            self.secrets_verified
        );
        if let Some(f) = self.findings.iter().find(|f| f.outcome == Outcome::Problem) {
            line.push_str(&format!("; first: {}: {}", f.path, f.reason));
        }
        line
    }

    /// A fixed-width table: every finding, then the totals and the verdict.
    pub fn table(&self) -> String {
        let width = self
            .findings
            .iter()
            .map(|f| f.path.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = String::new();
        if !self.findings.is_empty() {
            out.push_str(&format!(
                "{:<width$}  {:<7}  {:<8}  REASON\n",
                "PATH", "CHECK", "OUTCOME"
            ));
        }
        for f in &self.findings {
            let check = match f.check {
                Check::Object => "object",
                Check::Layout => "layout",
                Check::Secret => "secret",
                Check::DryRun => "dry-run",
            };
            let outcome = match f.outcome {
                Outcome::Problem => "PROBLEM",
                Outcome::Deferred => "deferred",
            };
            out.push_str(&format!(
                "{:<width$}  {check:<7}  {outcome:<8}  {}\n",
                f.path, f.reason
            ));
        }
        out.push_str(&format!("{}\n", self.headline_counts()));
        out.push_str(match self.verdict() {
            Verdict::Ready => "DR would come up: no problem found\n",
            Verdict::NotVerified if !self.dry_run => {
                "no problem found, but not verified: without a dry-run on the DR cluster (--kubeconfig or --context) nothing says the DR apiserver would accept it\n"
            }
            Verdict::NotVerified => {
                "no problem found, but not verified: the deferred objects wait for what _cluster/ brings first; check again once it is applied\n"
            }
            Verdict::NotReady => "DR would NOT come up as exported: fix the problems above\n",
        });
        out
    }

    fn headline_counts(&self) -> String {
        let dry = if self.dry_run {
            format!(
                "{} accepted by the DR apiserver (dry-run)",
                self.dry_run_accepted
            )
        } else {
            "no dry-run (pass --kubeconfig of the DR cluster)".into()
        };
        format!(
            "objects: {}, Secrets verified: {}, {dry}, files with problems: {}",
            self.objects,
            self.secrets_verified,
            self.rejected()
        )
    }

    /// Sorts the findings (stable output).
    pub fn sort(&mut self) {
        self.findings.sort();
        self.findings.dedup();
    }
}
