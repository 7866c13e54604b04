//! What the commit does to the tree, in order: directories first (so every file has a
//! real directory to land in), staged files moved into place, metadata of files whose
//! content was already right, hard links and symlinks, deletions, and directory metadata
//! last (children change directory times, so deepest first). Written as journal
//! operations ([`super::commit`]); nothing here touches the destination's visible tree.

use std::os::fd::AsFd;

use super::State;
use super::answers::tmp_name;
use super::beneath::{self, Root, split};
use super::commit::{JournalWriter, Op};
use super::spill::{Spill, Tag};
use crate::pvc::wire::{Entry, Kind};

/// A file whose new content waits in the state directory's `tmp/`.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Manifest index.
    pub idx: u32,
    /// Name in `tmp/`.
    pub tmp: Vec<u8>,
}

/// A new name of a hard-linked file whose other name `member` is already here with the
/// right content (a link was added on the source): stages a link to it instead of
/// resending. `None` if there is no such name.
pub fn stage_twin(
    root: &Root,
    state: &State,
    (idx, e): (u32, &Entry),
    members: &[&[u8]],
) -> std::io::Result<Option<Staged>> {
    for m in members {
        let (parent, name) = split(m);
        let Ok(dir) = root.dir(parent) else { continue };
        let same = beneath::stat(dir.as_fd(), name)
            .ok()
            .flatten()
            .is_some_and(|s| {
                let l = super::plan::Local::from(&s);
                l.is_file && l.size == e.size && l.mtime_s == e.mtime_s && l.mtime_ns == e.mtime_ns
            });
        if !same {
            continue;
        }
        let tmp = format!("twin-{idx}").into_bytes();
        beneath::link(dir.as_fd(), name, state.tmp.as_fd(), &tmp)?;
        return Ok(Some(Staged { idx, tmp }));
    }
    Ok(None)
}

/// Writes the commit of a sync to `journal`: `staged` files (manifest indexes, named in
/// `tmp/` after their path), `twins` (staged links that also need their metadata),
/// `meta_only` files (manifest indexes), the `stale` paths to delete (parents
/// before children, as the census lists them), and the root's own metadata. The manifest
/// is read in walk order, pass by pass, never held whole.
pub fn write_ops(
    journal: &mut JournalWriter<'_>,
    entries: &Spill,
    staged: &mut [u32],
    twins: &[Staged],
    meta_only: &mut [u32],
    stale: &[Vec<u8>],
    root: Option<&Entry>,
) -> std::io::Result<()> {
    // Deletions first: they free the space the rest may need, and no stale path is an
    // ancestor of a wanted one.
    for p in stale.iter().rev() {
        journal.push(&Op::Delete { path: p.clone() })?;
    }
    for r in entries.iter() {
        let (_, e) = r?;
        if e.kind == Kind::Dir {
            journal.push(&Op::MkDir { path: e.path })?;
        }
    }
    staged.sort_unstable();
    let mut next = staged.iter().peekable();
    for r in entries.iter() {
        let (i, e) = r?;
        if next.next_if_eq(&&i).is_some() {
            journal.push(&Op::Place {
                tmp: tmp_name(&e.path),
                path: e.path,
            })?;
        }
    }
    all_taken(next, "staged file")?;
    for s in twins {
        journal.push(&Op::Place {
            tmp: s.tmp.clone(),
            path: entries.get(s.idx)?.path,
        })?;
    }
    for s in twins {
        journal.push(&Op::Meta(entries.get(s.idx)?))?;
    }
    meta_only.sort_unstable();
    let mut next = meta_only.iter().peekable();
    for r in entries.iter() {
        let (i, e) = r?;
        if next.next_if_eq(&&i).is_some() {
            journal.push(&Op::Meta(e))?;
        }
    }
    all_taken(next, "metadata-only file")?;
    for r in entries.iter() {
        let (_, e) = r?;
        match e.kind {
            // Checked with the manifest: an earlier file entry.
            Kind::HardLink { leader } => journal.push(&Op::Link {
                leader: entries.get(leader)?.path,
                entry: e,
            })?,
            Kind::Symlink { .. } => journal.push(&Op::Symlink(e))?,
            Kind::Dir | Kind::File => {}
        }
    }
    for i in entries.rev_indexes(Tag::Dir) {
        journal.push(&Op::DirMeta(entries.get(i)?))?;
    }
    if let Some(r) = root {
        journal.push(&Op::RootMeta(r.clone()))?;
    }
    Ok(())
}

/// After a merge with the manifest: every index was matched. One left over (a duplicate,
/// or past the manifest) would otherwise be dropped from the commit without a word, and
/// its staged data discarded with the partial files.
fn all_taken(
    mut rest: std::iter::Peekable<std::slice::Iter<'_, u32>>,
    what: &str,
) -> std::io::Result<()> {
    match rest.next() {
        None => Ok(()),
        Some(i) => Err(std::io::Error::other(format!(
            "{what} {i} matches no manifest entry (or comes twice); nothing was committed"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_taken_table() {
        // (case, indexes, matched in the merge, error expected)
        let cases: [(&str, &[u32], usize, bool); 3] = [
            ("every index matched", &[1, 4, 9], 3, false),
            ("a duplicate is left over", &[4, 4], 1, true),
            ("past the manifest", &[1, 99], 1, true),
        ];
        for (case, idx, matched, err) in cases {
            let mut it = idx.iter().peekable();
            for _ in 0..matched {
                it.next();
            }
            assert_eq!(all_taken(it, "staged file").is_err(), err, "{case}");
        }
    }
}
