//! A mapping's files in one head as names and blob ids — enough to build, diff and apply a
//! small patch against a tree of 10 000 files without reading them.

use std::collections::BTreeMap;

use git2::{Oid, Repository};

use super::{GitError, git, is_object, treeio};
use crate::export::output::Diff;

pub use crate::export::patch::Patch;

/// The files at a mapping's path in one head, by blob id: names without contents, so a
/// patch can be built and diffed against 10 000 files without reading them.
pub struct Snapshot<'r> {
    repo: &'r Repository,
    /// Path (relative to the mapping's path) → blob id.
    pub paths: BTreeMap<String, Oid>,
}

impl<'r> Snapshot<'r> {
    pub(super) fn read(
        repo: &'r Repository,
        root: &git2::Tree,
        path: &str,
    ) -> Result<Self, GitError> {
        Ok(Snapshot {
            repo,
            paths: treeio::list_path(repo, root, path)?,
        })
    }

    /// The content of one file, if present.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        self.paths
            .get(path)
            .map(|id| {
                self.repo
                    .find_blob(*id)
                    .map(|b| b.content().to_vec())
                    .map_err(git("reading a blob"))
            })
            .transpose()
    }

    /// Object changes `patch` makes (blob ids compared, nothing read).
    pub(super) fn diff(&self, patch: &Patch) -> Diff {
        let mut d = Diff::default();
        for (path, content) in patch.iter().filter(|(p, _)| is_object(p)) {
            match (content, self.paths.get(path)) {
                (Some(_), None) => d.added.push(path.clone()),
                (Some(bytes), Some(old)) => {
                    if Oid::hash_object(git2::ObjectType::Blob, bytes).ok() != Some(*old) {
                        d.changed.push(path.clone());
                    }
                }
                (None, Some(_)) => d.deleted.push(path.clone()),
                (None, None) => {}
            }
        }
        d
    }
}

impl crate::export::patch::Committed for Snapshot<'_> {
    fn paths(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.paths.keys().map(String::as_str))
    }

    fn contains(&self, path: &str) -> bool {
        self.paths.contains_key(path)
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        self.read_file(path).map_err(|e| e.to_string())
    }
}
