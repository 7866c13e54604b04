//! Between export trees (path → bytes) and git trees, straight in the object database.

use std::collections::BTreeMap;

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

use super::{GitError, git};
use crate::export::Tree;

const FILE_MODE: i32 = 0o100644;
const DIR_MODE: i32 = 0o040000;

/// Writes the files `ids` (path → blob id, the blobs already in the object database) as a
/// git tree; returns `None` for no files.
pub fn write_ids(repo: &Repository, ids: &BTreeMap<String, Oid>) -> Result<Option<Oid>, GitError> {
    let files: Vec<(&str, Oid)> = ids.iter().map(|(p, id)| (p.as_str(), *id)).collect();
    write_dir(repo, &files)
}

fn write_dir(repo: &Repository, files: &[(&str, Oid)]) -> Result<Option<Oid>, GitError> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut dirs: BTreeMap<&str, Vec<(&str, Oid)>> = BTreeMap::new();
    let mut builder = repo.treebuilder(None).map_err(git("tree builder"))?;
    for (path, blob) in files {
        match path.split_once('/') {
            Some((dir, rest)) => dirs.entry(dir).or_default().push((rest, *blob)),
            None => {
                builder
                    .insert(path, *blob, FILE_MODE)
                    .map_err(git("tree entry"))?;
            }
        }
    }
    for (dir, entries) in dirs {
        if let Some(oid) = write_dir(repo, &entries)? {
            builder
                .insert(dir, oid, DIR_MODE)
                .map_err(git("tree entry"))?;
        }
    }
    Ok(Some(builder.write().map_err(git("writing a tree"))?))
}

/// `base` with the directory at `path` replaced by `subtree` (removed when `None`); every
/// other path keeps its exact tree ids. Returns the new root tree.
pub fn replace_path(
    repo: &Repository,
    base: Option<&git2::Tree>,
    path: &str,
    subtree: Option<Oid>,
) -> Result<Oid, GitError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let root = replace(repo, base, &parts, subtree)?;
    match root {
        Some(oid) => Ok(oid),
        None => repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .map_err(git("writing an empty tree")),
    }
}

fn replace(
    repo: &Repository,
    base: Option<&git2::Tree>,
    parts: &[&str],
    subtree: Option<Oid>,
) -> Result<Option<Oid>, GitError> {
    let Some((first, rest)) = parts.split_first() else {
        return Ok(subtree);
    };
    let mut builder = repo.treebuilder(base).map_err(git("tree builder"))?;
    let child = match base.and_then(|b| b.get_name(first)) {
        Some(entry) if entry.kind() == Some(ObjectType::Tree) => {
            Some(repo.find_tree(entry.id()).map_err(git("reading a tree"))?)
        }
        _ => None,
    };
    match replace(repo, child.as_ref(), rest, subtree)? {
        Some(oid) => {
            builder
                .insert(first, oid, DIR_MODE)
                .map_err(git("tree entry"))?;
        }
        None => {
            if builder.get(first).map_err(git("tree entry"))?.is_some() {
                builder.remove(first).map_err(git("tree entry"))?;
            }
        }
    }
    if builder.is_empty() {
        return Ok(None);
    }
    Ok(Some(builder.write().map_err(git("writing a tree"))?))
}

/// The files below `path` in `root`, relative to `path`.
pub fn read_path(repo: &Repository, root: &git2::Tree, path: &str) -> Result<Tree, GitError> {
    let path = path.trim_matches('/');
    let tree = if path.is_empty() {
        root.clone()
    } else {
        match root.get_path(std::path::Path::new(path)) {
            Ok(entry) if entry.kind() == Some(ObjectType::Tree) => {
                repo.find_tree(entry.id()).map_err(git("reading a tree"))?
            }
            _ => return Ok(Tree::default()),
        }
    };
    let mut out = Tree::default();
    let mut failure = None;
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(ObjectType::Blob) {
            match repo.find_blob(entry.id()) {
                Ok(blob) => {
                    out.files.insert(
                        format!("{dir}{}", entry.name().unwrap_or_default()),
                        blob.content().to_vec(),
                    );
                }
                Err(e) => {
                    failure = Some(e);
                    return TreeWalkResult::Abort;
                }
            }
        }
        TreeWalkResult::Ok
    })
    .map_err(git("walking a tree"))?;
    match failure {
        Some(e) => Err(GitError::Git {
            what: "reading a blob".into(),
            source: e,
        }),
        None => Ok(out),
    }
}

/// The blob ids below `path` in `root`, by path relative to `path` (no content is read).
pub fn list_path(
    repo: &Repository,
    root: &git2::Tree,
    path: &str,
) -> Result<BTreeMap<String, Oid>, GitError> {
    let path = path.trim_matches('/');
    let tree = if path.is_empty() {
        root.clone()
    } else {
        match root.get_path(std::path::Path::new(path)) {
            Ok(entry) if entry.kind() == Some(ObjectType::Tree) => {
                repo.find_tree(entry.id()).map_err(git("reading a tree"))?
            }
            _ => return Ok(BTreeMap::new()),
        }
    };
    let mut out = BTreeMap::new();
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(ObjectType::Blob) {
            out.insert(
                format!("{dir}{}", entry.name().unwrap_or_default()),
                entry.id(),
            );
        }
        TreeWalkResult::Ok
    })
    .map_err(git("walking a tree"))?;
    Ok(out)
}
