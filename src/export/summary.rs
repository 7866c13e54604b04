//! What an export did, per resource type: shown as a table or JSON, kept in status.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counts for one resource type (`plural.group`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindCounts {
    /// Objects written.
    pub exported: u64,
    /// Objects left out (type or object rules).
    pub excluded: u64,
    /// Exported objects a transform changed.
    pub transformed: u64,
    /// Secrets not written because no age recipient is configured.
    pub secrets_skipped: u64,
    /// Secrets written encrypted.
    pub secrets_encrypted: u64,
}

/// A resource type or API group that could not be read; its files are kept as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// `plural.group`, or `group` when discovery of a whole group failed.
    pub what: String,
    /// The namespace, when the failure is per namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The error.
    pub error: String,
}

/// Summary of one export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Per `plural.group`.
    pub kinds: BTreeMap<String, KindCounts>,
    /// Exclusions by reason.
    pub excluded_by_reason: BTreeMap<String, u64>,
    /// Per user transform: `(applied, skipped)`.
    pub transforms: BTreeMap<String, TransformCounts>,
    /// Types or groups that failed to list.
    pub failures: Vec<Failure>,
    /// Namespaces exported (source → destination).
    pub namespaces: BTreeMap<String, String>,
    /// What a DR operator must act on although the export succeeded (e.g. a CRD whose
    /// conversion webhook must run on the DR cluster).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How often a user transform applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TransformCounts {
    /// Objects patched.
    pub applied: u64,
    /// Objects matched but not patched (failed `test` or missing path).
    pub skipped: u64,
    /// The last reason for a skip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_skip_reason: Option<String>,
}

impl Summary {
    /// Counts for a type, created on first use.
    pub fn kind(&mut self, qualified: &str) -> &mut KindCounts {
        self.kinds.entry(qualified.to_string()).or_default()
    }

    /// Records an exclusion.
    pub fn exclude(&mut self, qualified: &str, reason: &str) {
        self.kind(qualified).excluded += 1;
        *self
            .excluded_by_reason
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// Totals over all types.
    pub fn totals(&self) -> KindCounts {
        self.kinds.values().fold(KindCounts::default(), |mut t, k| {
            t.exported += k.exported;
            t.excluded += k.excluded;
            t.transformed += k.transformed;
            t.secrets_skipped += k.secrets_skipped;
            t.secrets_encrypted += k.secrets_encrypted;
            t
        })
    }

    /// A fixed-width table, one line per type and a total.
    pub fn table(&self) -> String {
        let width = self.kinds.keys().map(String::len).max().unwrap_or(4).max(5);
        let mut out = format!(
            "{:<width$}  {:>8}  {:>8}  {:>11}  {:>15}  {:>17}\n",
            "KIND", "EXPORTED", "EXCLUDED", "TRANSFORMED", "SECRETS-SKIPPED", "SECRETS-ENCRYPTED"
        );
        let mut line = |name: &str, k: &KindCounts| {
            out.push_str(&format!(
                "{name:<width$}  {:>8}  {:>8}  {:>11}  {:>15}  {:>17}\n",
                k.exported, k.excluded, k.transformed, k.secrets_skipped, k.secrets_encrypted
            ));
        };
        for (name, k) in &self.kinds {
            line(name, k);
        }
        line("TOTAL", &self.totals());
        for (reason, n) in &self.excluded_by_reason {
            out.push_str(&format!("excluded: {n} × {reason}\n"));
        }
        for (name, t) in &self.transforms {
            out.push_str(&format!(
                "transform {name}: applied {}, skipped {}",
                t.applied, t.skipped
            ));
            if let Some(r) = &t.last_skip_reason {
                out.push_str(&format!(" (last: {r})"));
            }
            out.push('\n');
        }
        for f in &self.failures {
            let ns = f
                .namespace
                .as_deref()
                .map(|n| format!(" in {n}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "FAILED {}{ns}: {} (its files were kept)\n",
                f.what, f.error
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("WARNING {w}\n"));
        }
        out
    }
}
