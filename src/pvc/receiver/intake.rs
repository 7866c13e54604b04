//! The manifest stage: reads the sender's entries, checks that they describe one tree the
//! receiver can build without ever looking outside its root, and plans each file as it
//! arrives (a stat each, nothing written), so the receiver's stats overlap the sender's
//! walk.
//!
//! The manifest must be in strict walk order — depth first, each directory before its
//! children, names sorted bytewise per directory — which is checked with a stack of the
//! open directories: an entry's parent must be on it (so every parent is an earlier `Dir`
//! entry), and each name must sort after its previous sibling (so no path comes twice and
//! no path is both a file and a directory). Memory stays proportional to the depth.

use tokio::io::AsyncRead;

use super::plan::{Plan, Planner};
use super::spill::{Spill, Tag, spill_error};
use crate::pvc::PvcError;
use crate::pvc::manifest::{LOST_AND_FOUND, STATE_DIR};
use crate::pvc::wire::{self, Entry, Kind, Message};

/// The checked manifest and the plan of each file entry (by manifest index).
pub struct Manifest {
    /// Every entry, in manifest order (on disk).
    pub entries: Spill,
    /// Plans of the `File` entries that need anything done, in manifest order.
    pub plans: Vec<(u32, Plan)>,
    /// `File` entries that need nothing done.
    pub unchanged: u64,
    /// Paths the sender may not read: kept as they are here, beneath them included.
    pub unreadable: Vec<Vec<u8>>,
    /// Owner, mode and times of the root itself (an entry with an empty path).
    pub root: Option<Entry>,
}

/// A protocol error about `path`.
pub fn refuse(path: &[u8], why: &str) -> PvcError {
    PvcError::Protocol(format!("{:?}: {why}", String::from_utf8_lossy(path)))
}

/// The walk-order check: the directories open along the current path, each with the last
/// child name seen in it.
#[derive(Default)]
pub struct Order {
    open: Vec<(Vec<u8>, Vec<u8>)>,
    root_last: Option<Vec<u8>>,
}

impl Order {
    /// Checks the next entry against the previous ones; `earlier_file(i)` tells whether
    /// the earlier entry `i` is a `File` entry.
    pub fn check(&mut self, e: &Entry, earlier_file: impl Fn(u32) -> bool) -> Result<(), PvcError> {
        let (parent, name) = super::beneath::split(&e.path);
        if parent.is_empty() && name == STATE_DIR.as_bytes() {
            return Err(refuse(&e.path, "reserved for the receiver's state"));
        }
        if parent.is_empty() && name == LOST_AND_FOUND.as_bytes() {
            return Err(refuse(
                &e.path,
                "the file system's own directory, never replicated",
            ));
        }
        while self
            .open
            .last()
            .is_some_and(|(p, _)| p.as_slice() != parent)
        {
            self.open.pop();
        }
        let last = match self.open.last_mut() {
            Some((_, last)) => Some(last),
            None if parent.is_empty() => None,
            None => {
                return Err(refuse(
                    &e.path,
                    "its parent is not an earlier directory entry (or the manifest is out of order)",
                ));
            }
        };
        let last = match last {
            Some(l) => l,
            None => self.root_last.get_or_insert_with(Vec::new),
        };
        if !last.is_empty() && name <= last.as_slice() {
            return Err(refuse(
                &e.path,
                "duplicate or out of order (names must be unique and sorted per directory)",
            ));
        }
        *last = name.to_vec();
        match &e.kind {
            Kind::Dir => self.open.push((e.path.clone(), Vec::new())),
            Kind::HardLink { leader } => {
                if !earlier_file(*leader) {
                    return Err(refuse(
                        &e.path,
                        "hard link to something that is not an earlier file entry",
                    ));
                }
            }
            Kind::File | Kind::Symlink { .. } => {}
        }
        Ok(())
    }
}

/// Reads and checks the manifest (at most `max_entries` entries) into `entries`, planning
/// file entries as they arrive.
pub async fn receive<R: AsyncRead + Unpin>(
    rd: &mut R,
    planner: &mut Planner<'_>,
    mut entries: Spill,
    max_entries: u64,
) -> Result<Manifest, PvcError> {
    let mut plans = Vec::new();
    let mut unchanged = 0;
    let mut unreadable = Vec::new();
    let mut root = None;
    let mut order = Order::default();
    loop {
        match wire::read(rd).await? {
            Some(Message::Entry(e)) => {
                if entries.len() as u64 + unreadable.len() as u64 >= max_entries {
                    return Err(PvcError::Protocol(format!(
                        "manifest of more than {max_entries} entries refused (raise the limit if the volume really has that many)"
                    )));
                }
                order.check(&e, |i| entries.tag(i) == Some(Tag::File))?;
                if e.kind == Kind::File {
                    match planner.plan(&e)? {
                        Plan::Skip => unchanged += 1,
                        plan => plans.push((entries.len() as u32, plan)),
                    }
                }
                entries.push(&e).map_err(spill_error)?;
            }
            Some(Message::Root {
                mode,
                uid,
                gid,
                mtime_s,
                mtime_ns,
            }) if entries.is_empty() && unreadable.is_empty() && root.is_none() => {
                root = Some(Entry {
                    path: Vec::new(),
                    kind: Kind::Dir,
                    mode: mode & 0o7777,
                    uid,
                    gid,
                    size: 0,
                    mtime_s,
                    mtime_ns,
                });
            }
            // Takes its place in the walk order like a file of that name would.
            Some(Message::Unreadable { path }) => {
                if entries.len() as u64 + unreadable.len() as u64 >= max_entries {
                    return Err(PvcError::Protocol(format!(
                        "manifest of more than {max_entries} entries refused"
                    )));
                }
                let stand_in = Entry {
                    path,
                    kind: Kind::File,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    mtime_s: 0,
                    mtime_ns: 0,
                };
                order.check(&stand_in, |i| entries.tag(i) == Some(Tag::File))?;
                unreadable.push(stand_in.path);
            }
            Some(Message::ManifestEnd { entries: n }) if n == entries.len() as u64 => {
                entries.flush().map_err(spill_error)?;
                return Ok(Manifest {
                    entries,
                    plans,
                    unchanged,
                    unreadable,
                    root,
                });
            }
            Some(Message::Error { message }) => return Err(PvcError::Remote(message)),
            other => return Err(PvcError::Protocol(format!("in manifest: {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_s: 0,
            mtime_ns: 0,
        }
    }

    #[test]
    fn order_check_table() {
        let d = |p| entry(p, Kind::Dir);
        let f = |p| entry(p, Kind::File);
        let l = |p| {
            entry(
                p,
                Kind::Symlink {
                    target: b"x".to_vec(),
                },
            )
        };
        let h = |p, leader| entry(p, Kind::HardLink { leader });
        // (case, entries, index of the first refused entry)
        let cases: Vec<(&str, Vec<Entry>, Option<usize>)> = vec![
            (
                "a walk",
                vec![d("a"), f("a/x"), d("a/y"), f("a/y/z"), f("a-b"), f("b")],
                None,
            ),
            (
                "hard link to an earlier file",
                vec![f("a"), h("b", 0)],
                None,
            ),
            ("duplicate", vec![f("a"), f("a")], Some(1)),
            ("unsorted siblings", vec![f("b"), f("a")], Some(1)),
            ("missing parent", vec![f("a/b")], Some(0)),
            ("parent is a file", vec![f("a"), f("a/b")], Some(1)),
            ("parent is a symlink", vec![l("a"), f("a/b")], Some(1)),
            ("parent closed", vec![d("a"), d("b"), f("a/c")], Some(2)),
            (
                "dir then symlink of the same name",
                vec![d("d"), d("d/s"), l("d")],
                Some(2),
            ),
            ("state directory", vec![d(".drsync")], Some(0)),
            ("lost+found at the root", vec![d("lost+found")], Some(0)),
            (
                "lost+found deeper is fine",
                vec![d("a"), d("a/lost+found")],
                None,
            ),
            (
                "state directory deeper is fine",
                vec![d("a"), d("a/.drsync")],
                None,
            ),
            ("hard link to a dir", vec![d("a"), h("b", 0)], Some(1)),
            ("hard link to itself", vec![h("a", 0)], Some(0)),
            (
                "hard link to a later entry",
                vec![h("a", 1), f("b")],
                Some(0),
            ),
        ];
        for (case, entries, refused) in cases {
            let mut order = Order::default();
            let first_err = entries.iter().enumerate().find_map(|(i, e)| {
                let earlier_file =
                    |l: u32| (l as usize) < i && entries[l as usize].kind == Kind::File;
                order.check(e, earlier_file).err().map(|_| i)
            });
            assert_eq!(first_err, refused, "{case}");
        }
    }
}
