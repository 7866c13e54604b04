//! Writing an export to a directory: built next to the target and swapped in, so a failed
//! export leaves the previous output untouched; files of types that could not be listed are
//! carried over from the previous output instead of being deleted.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::layout::{Tree, path_kind};

/// Marker file at the root of an export directory; without it an existing, non-empty
/// directory is refused rather than replaced.
pub const MARKER: &str = ".dr-syncer-export";

/// Errors writing the output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The target exists, is not empty and was not written by dr-syncer.
    #[error(
        "{0} exists and was not written by dr-syncer export (no {MARKER}); refusing to replace it"
    )]
    Foreign(PathBuf),
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths added, changed and deleted between two trees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// New files.
    pub added: Vec<String>,
    /// Files whose content changed.
    pub changed: Vec<String>,
    /// Files gone.
    pub deleted: Vec<String>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.deleted.is_empty()
    }
}

/// Compares `old` and `new`.
pub fn diff(old: &Tree, new: &Tree) -> Diff {
    let mut d = Diff::default();
    for (p, content) in &new.files {
        match old.files.get(p) {
            None => d.added.push(p.clone()),
            Some(c) if c != content => d.changed.push(p.clone()),
            _ => {}
        }
    }
    d.deleted = old
        .files
        .keys()
        .filter(|p| !new.files.contains_key(*p))
        .cloned()
        .collect();
    d
}

/// Reads a previous export (empty when `dir` does not exist); the marker file is not part
/// of it.
pub fn read_tree(dir: &Path) -> Result<Tree, OutputError> {
    let mut tree = Tree::default();
    if !dir.exists() {
        return Ok(tree);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            if entry.file_name() == MARKER || entry.file_name() == ".git" {
                continue;
            }
            if entry.file_type().map_err(io_err(&path))?.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .expect("below dir")
                    .to_string_lossy()
                    .replace('\\', "/");
                tree.files
                    .insert(rel, std::fs::read(&path).map_err(io_err(&path))?);
            }
        }
    }
    Ok(tree)
}

/// Copies into `new` the object files of `old` for which `keep(top_dir, group_dir, plural)`
/// holds (types whose listing failed), then regenerates the kustomizations.
pub fn carry_over(new: &mut Tree, old: &Tree, keep: impl Fn(&str, &str, &str) -> bool) {
    for (p, content) in &old.files {
        if super::layout::is_generated(p) || new.files.contains_key(p) {
            continue;
        }
        if path_kind(p).is_some_and(|(top, group, plural)| keep(top, group, plural)) {
            new.files.insert(p.clone(), content.clone());
        }
    }
    new.write_kustomizations();
}

/// Keeps, from `previous`, the files of every type or group `summary` reports as failed in
/// the namespaces it exported (a failed listing must never delete files).
pub fn keep_failed_types(tree: &mut Tree, previous: &Tree, summary: &super::Summary) {
    if summary.failures.is_empty() {
        return;
    }
    carry_over(tree, previous, |top, group, plural| {
        of_failed_type(top, group, plural, summary)
    });
}

/// Whether a file at `top/group/plural/…` belongs to a type or group `summary` reports as
/// failed in a namespace it exported: such a file of the previous output is kept.
pub fn of_failed_type(top: &str, group: &str, plural: &str, summary: &super::Summary) -> bool {
    let qualified = if group == "core" {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    };
    summary.failures.iter().any(|f| {
        let in_namespace = match &f.namespace {
            Some(src) => summary.namespaces.get(src).is_some_and(|d| d == top),
            None => summary.namespaces.values().any(|d| d == top),
        };
        // A failed cluster-wide read (the CRDs) keeps its files under `_cluster/`.
        let cluster = top == super::layout::CLUSTER_DIR && f.namespace.is_none();
        (in_namespace || cluster) && (f.what == qualified || f.what == group)
    })
}

/// Replaces `dir` with `tree`: written to a sibling temp directory, then swapped in.
pub fn write_tree(tree: &Tree, dir: &Path) -> Result<(), OutputError> {
    if dir.exists() && !dir.join(MARKER).exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .next()
            .is_none();
        if !empty {
            return Err(OutputError::Foreign(dir.to_path_buf()));
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .tempdir_in(&parent)
        .map_err(io_err(&parent))?;
    for (rel, content) in &tree.files {
        let path = staging.path().join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(io_err(p))?;
        }
        std::fs::write(&path, content).map_err(io_err(&path))?;
    }
    let marker = staging.path().join(MARKER);
    std::fs::write(
        &marker,
        "written by dr-syncer export; the whole directory is replaced on each export\n",
    )
    .map_err(io_err(&marker))?;
    let staged = staging.keep();
    if dir.exists() {
        let old = tempfile::Builder::new()
            .prefix(&format!(".{name}.old-"))
            .tempdir_in(&parent)
            .map_err(io_err(&parent))?
            .keep();
        std::fs::remove_dir(&old).map_err(io_err(&old))?;
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
        if let Err(e) = std::fs::rename(&staged, dir) {
            // Put the previous output back; the new one stays in `staged` for inspection.
            let _ = std::fs::rename(&old, dir);
            return Err(OutputError::Io {
                path: dir.to_path_buf(),
                source: e,
            });
        }
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    } else {
        std::fs::rename(&staged, dir).map_err(io_err(dir))?;
    }
    Ok(())
}
