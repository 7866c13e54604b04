//! The deletion breaker for volume data: before anything on the destination changes, the
//! receiver counts what the new manifest would delete. A source that is empty, freshly
//! formatted or mounted wrongly looks exactly like "the user deleted everything"; mirroring
//! it would wipe the DR copy too. Above a share of the destination's files or bytes the
//! sync holds instead, naming a batch id; the same deletion set passes when released with
//! that id.

use std::collections::HashSet;
use std::os::fd::AsFd;

use super::beneath::{self, Root};
use crate::pvc::PvcError;
use crate::pvc::manifest::{LOST_AND_FOUND, STATE_DIR};

/// Below both of these, deletions never hold (tidying a few small files is normal).
const MIN_FILES: u64 = 10;
/// See [`MIN_FILES`].
const MIN_BYTES: u64 = 1 << 20;

/// What the destination holds and what the manifest would delete of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    /// Top-level paths to delete (a stale directory once, not its contents), parents
    /// before children.
    pub stale: Vec<Vec<u8>>,
    /// Files (anything not a directory) at the destination.
    pub files_total: u64,
    /// Bytes of those files.
    pub bytes_total: u64,
    /// Files that would be deleted, inside stale directories included.
    pub files_deleted: u64,
    /// Bytes that would be deleted.
    pub bytes_deleted: u64,
}

/// A sync held by the breaker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    /// Id of this deletion set (the same set gives the same id on every run).
    pub batch: String,
    /// Files that would be deleted.
    pub files: u64,
    /// Bytes that would be deleted.
    pub bytes: u64,
    /// Files at the destination.
    pub files_total: u64,
    /// Bytes at the destination.
    pub bytes_total: u64,
    /// The threshold in percent.
    pub max_percent: u8,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "held: this sync would delete {} of the destination's {} files ({} of {} bytes), more than {}% — is the source volume empty or mounted wrongly? Nothing was changed. If the deletions are intended, release batch {}",
            self.files,
            self.files_total,
            self.bytes,
            self.bytes_total,
            self.max_percent,
            self.batch
        )
    }
}

/// The manifest's paths, asked in walk order (the census walks the destination in the
/// order the manifest was checked to have, so a cursor over the manifest answers without
/// holding its paths in memory).
pub trait Wanted {
    /// Whether the manifest has `path`; every call names a path later in walk order than
    /// the one before.
    fn contains(&mut self, path: &[u8]) -> Result<bool, PvcError>;
}

impl Wanted for HashSet<&[u8]> {
    fn contains(&mut self, path: &[u8]) -> Result<bool, PvcError> {
        Ok(HashSet::contains(self, path))
    }
}

/// Walk order: depth first, each directory before its children, names sorted bytewise per
/// directory — paths compared component by component.
pub fn walk_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

/// A [`Wanted`] over manifest paths given in walk order.
pub struct Cursor<I: Iterator<Item = Result<Vec<u8>, PvcError>>> {
    paths: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = Result<Vec<u8>, PvcError>>> Cursor<I> {
    /// A cursor over `paths`.
    pub fn new(paths: I) -> Self {
        Cursor {
            paths: paths.peekable(),
        }
    }
}

impl<I: Iterator<Item = Result<Vec<u8>, PvcError>>> Wanted for Cursor<I> {
    fn contains(&mut self, path: &[u8]) -> Result<bool, PvcError> {
        loop {
            let order = match self.paths.peek() {
                None => return Ok(false),
                Some(Ok(p)) => Some(walk_order(p, path)),
                Some(Err(_)) => None,
            };
            let Some(order) = order else {
                // An unreadable manifest is an error, never "not wanted" (that would
                // delete).
                return match self.paths.next() {
                    Some(Err(e)) => Err(e),
                    _ => Err(PvcError::Protocol("manifest cursor".into())),
                };
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.paths.next();
                }
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Greater => return Ok(false),
            }
        }
    }
}

/// Walks the destination (the state directory and a top-level `lost+found` aside) against
/// the manifest's paths: `wanted` paths stay, `kept` paths (unreadable at the source) stay
/// with everything beneath them, anything else is stale.
pub fn census(
    root: &Root,
    wanted: &mut dyn Wanted,
    kept: &HashSet<&[u8]>,
) -> Result<Census, PvcError> {
    let mut c = Census::default();
    walk(root, &[], wanted, kept, false, &mut c)?;
    Ok(c)
}

fn walk(
    root: &Root,
    prefix: &[u8],
    wanted: &mut dyn Wanted,
    kept: &HashSet<&[u8]>,
    inside_stale: bool,
    c: &mut Census,
) -> Result<(), PvcError> {
    let io = |err| PvcError::io(&root.show(prefix), err);
    let dir = root.dir(prefix).map_err(io)?;
    for (name, is_dir) in beneath::list(dir.as_fd()).map_err(io)? {
        if prefix.is_empty() && (name == STATE_DIR.as_bytes() || name == LOST_AND_FOUND.as_bytes())
        {
            continue;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            [prefix, b"/", &name].concat()
        };
        if kept.contains(path.as_slice()) {
            continue;
        }
        let stale = inside_stale || !wanted.contains(&path)?;
        if is_dir {
            if stale && !inside_stale {
                c.stale.push(path.clone());
            }
            walk(root, &path, wanted, kept, stale, c)?;
            continue;
        }
        let size = beneath::stat(dir.as_fd(), &name)
            .map_err(|e| PvcError::io(&root.show(&path), e))?
            .filter(|s| beneath::kind(s) == rustix::fs::FileType::RegularFile)
            .map_or(0, |s| s.st_size as u64);
        c.files_total += 1;
        c.bytes_total += size;
        if stale {
            c.files_deleted += 1;
            c.bytes_deleted += size;
            if !inside_stale {
                c.stale.push(path);
            }
        }
    }
    Ok(())
}

/// The id of a deletion set (12 hex digits): a hash of its paths and of the counts —
/// what would be deleted and what the destination holds — so a release names exactly
/// this situation, not a later wipe that happens to touch the same top-level names.
pub fn batch_id(c: &Census) -> String {
    let mut h = blake3::Hasher::new();
    for n in [
        c.files_deleted,
        c.bytes_deleted,
        c.files_total,
        c.bytes_total,
    ] {
        h.update(&n.to_le_bytes());
    }
    for p in &c.stale {
        h.update(p);
        h.update(b"\0");
    }
    h.finalize().to_hex()[..12].to_string()
}

/// Whether `c` holds under `max_percent` (100 = never) unless `allow` names its batch.
/// Pure.
pub fn decide(c: &Census, max_percent: u8, allow: Option<&str>) -> Option<Hold> {
    if max_percent >= 100 || c.files_deleted == 0 {
        return None;
    }
    let pct = u128::from(max_percent);
    let over = |part: u64, whole: u64| u128::from(part) * 100 > pct * u128::from(whole);
    let big = c.files_deleted >= MIN_FILES || c.bytes_deleted >= MIN_BYTES;
    if !big || !(over(c.files_deleted, c.files_total) || over(c.bytes_deleted, c.bytes_total)) {
        return None;
    }
    let batch = batch_id(c);
    if allow == Some(batch.as_str()) {
        return None;
    }
    Some(Hold {
        batch,
        files: c.files_deleted,
        bytes: c.bytes_deleted,
        files_total: c.files_total,
        bytes_total: c.bytes_total,
        max_percent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(files_total: u64, bytes_total: u64, files: u64, bytes: u64) -> Census {
        Census {
            stale: vec![b"a".to_vec()],
            files_total,
            bytes_total,
            files_deleted: files,
            bytes_deleted: bytes,
        }
    }

    #[test]
    fn decide_table() {
        let id = batch_id(&census(100, 1 << 30, 100, 1 << 30));
        // (case, census, max percent, allow, holds)
        let cases: Vec<(&str, Census, u8, Option<&str>, bool)> = vec![
            (
                "nothing deleted",
                census(100, 1 << 30, 0, 0),
                50,
                None,
                false,
            ),
            (
                "a few of many",
                census(100, 1 << 30, 5, 100),
                50,
                None,
                false,
            ),
            (
                "everything",
                census(100, 1 << 30, 100, 1 << 30),
                50,
                None,
                true,
            ),
            ("most files", census(100, 1 << 30, 60, 100), 50, None, true),
            (
                "few files, most bytes",
                census(100, 1 << 30, 2, 900 << 20),
                50,
                None,
                true,
            ),
            (
                "exactly the share",
                census(100, 100 << 20, 50, 50 << 20),
                50,
                None,
                false,
            ),
            ("tiny volume wiped", census(3, 300, 3, 300), 50, None, false),
            (
                "small files, many",
                census(12, 1200, 12, 1200),
                50,
                None,
                true,
            ),
            (
                "breaker off",
                census(100, 1 << 30, 100, 1 << 30),
                100,
                None,
                false,
            ),
            (
                "zero percent, one big file",
                census(100, 1 << 30, 1, 2 << 20),
                0,
                None,
                true,
            ),
            (
                "released",
                census(100, 1 << 30, 100, 1 << 30),
                50,
                Some(&id),
                false,
            ),
            (
                "other batch released",
                census(100, 1 << 30, 100, 1 << 30),
                50,
                Some("0123456789ab"),
                true,
            ),
        ];
        for (case, c, pct, allow, holds) in cases {
            assert_eq!(decide(&c, pct, allow).is_some(), holds, "{case}");
        }
    }

    #[test]
    fn batch_id_names_the_set_and_the_counts() {
        let with = |stale: &[&str], files: u64| Census {
            stale: stale.iter().map(|p| p.as_bytes().to_vec()).collect(),
            files_total: 100,
            bytes_total: 1000,
            files_deleted: files,
            bytes_deleted: 10,
        };
        let a = batch_id(&with(&["x", "y"], 5));
        assert_eq!(a, batch_id(&with(&["x", "y"], 5)));
        assert_eq!(a.len(), 12);
        assert_ne!(a, batch_id(&with(&["x"], 5)), "other paths");
        assert_ne!(
            a,
            batch_id(&with(&["x", "y"], 6)),
            "same names, other contents"
        );
        // The separator keeps ["xy"] and ["x", "y"] apart.
        assert_ne!(batch_id(&with(&["xy"], 5)), batch_id(&with(&["x", "y"], 5)));
    }

    #[test]
    fn walk_order_table() {
        use std::cmp::Ordering::*;
        // (a, b, order): a directory's children come right after it, before a sibling
        // whose name merely starts with the directory's.
        let cases = [
            ("a", "a/x", Less),
            ("a/x", "a-b", Less),
            ("a/z/z", "a0", Less),
            ("a-b", "a", Greater),
            ("b", "a/x", Greater),
            ("a/x", "a/x", Equal),
            ("a/x/y", "a/y", Less),
        ];
        for (a, b, order) in cases {
            assert_eq!(walk_order(a.as_bytes(), b.as_bytes()), order, "{a} vs {b}");
        }
    }

    /// The census with the manifest cursor finds exactly what it finds with every path
    /// in memory.
    #[test]
    fn census_cursor_matches_set() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "a/sub", "a-b", "c", "gone", "gone/deep"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for f in [
            "a/x",
            "a/sub/y",
            "a/stale",
            "a-b/z",
            "c/k",
            "gone/deep/q",
            "top",
            "a0",
        ] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let root = Root::open(dir.path()).unwrap();
        // In walk order, as the manifest is; with paths the destination lacks.
        let manifest = [
            "a", "a/new", "a/sub", "a/sub/y", "a/x", "a-b", "a-b/z", "a0", "b", "b/n", "c", "c/k",
            "top",
        ];
        let set: HashSet<&[u8]> = manifest.iter().map(|p| p.as_bytes()).collect();
        let kept = HashSet::new();
        let mut with_set = set.clone();
        let expected = super::census(&root, &mut with_set, &kept).unwrap();
        let mut cursor = Cursor::new(manifest.iter().map(|p| Ok(p.as_bytes().to_vec())));
        let got = super::census(&root, &mut cursor, &kept).unwrap();
        assert_eq!(got, expected);
        assert_eq!(got.stale, vec![b"a/stale".to_vec(), b"gone".to_vec()]);
        assert_eq!(got.files_deleted, 2);
    }

    #[test]
    fn census_cursor_error_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let root = Root::open(dir.path()).unwrap();
        let mut cursor =
            Cursor::new([Err(PvcError::Protocol("unreadable spill".into()))].into_iter());
        // Never "not wanted": that would delete.
        assert!(super::census(&root, &mut cursor, &HashSet::new()).is_err());
    }
}
