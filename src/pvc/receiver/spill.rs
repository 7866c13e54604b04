//! The checked manifest, kept on disk instead of in memory: a volume of millions of files
//! has a manifest of hundreds of megabytes, more than the DR Job's memory limit should
//! have to hold. Entries go to an unnamed temporary file as they arrive (on the
//! destination volume, which has the room; no name is ever visible there); memory keeps
//! 9 bytes per entry — where its record starts and its kind — so any entry is one
//! positioned read away and the later stages read the manifest in walk order again.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;

use super::State;
use super::beneath::{self, Root};
use crate::pvc::PvcError;
use crate::pvc::manifest::STATE_DIR;
use crate::pvc::scratch::FileAt;
use crate::pvc::wire::{Entry, Kind};

/// An error reading or writing the spill file.
pub fn spill_error(e: io::Error) -> PvcError {
    PvcError::io(std::path::Path::new("(the manifest's spill file)"), e)
}

/// An entry's kind, as memory keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// Another name of an earlier file.
    HardLink,
}

impl Tag {
    fn of(kind: &Kind) -> Tag {
        match kind {
            Kind::Dir => Tag::Dir,
            Kind::File => Tag::File,
            Kind::Symlink { .. } => Tag::Symlink,
            Kind::HardLink { .. } => Tag::HardLink,
        }
    }
}

/// The manifest's entries, by manifest index.
pub struct Spill {
    file: File,
    /// Where each entry's record starts; it ends where the next one starts.
    starts: Vec<u64>,
    tags: Vec<Tag>,
    /// Bytes written (the end of the last record).
    end: u64,
    /// Records not yet written to `file`.
    out: BufWriter<FileAt>,
}

impl Spill {
    /// An empty spill in an unnamed file on the destination volume (`O_TMPFILE`), or, where
    /// its file system has none (NFS, for one), in a file of the state directory that is
    /// unlinked as soon as it is open. Not the process's temporary directory: the DR Job
    /// runs with a read-only root file system, and the volume has the room.
    pub fn create(root: &Root) -> io::Result<Spill> {
        let file = match root.unnamed_file() {
            Ok(f) => f,
            Err(_) => unlinked_in_state_dir(root)?,
        };
        let out = BufWriter::with_capacity(
            256 << 10,
            FileAt {
                file: file.try_clone()?,
                pos: 0,
            },
        );
        Ok(Spill {
            file,
            starts: Vec::new(),
            tags: Vec::new(),
            end: 0,
            out,
        })
    }

    /// Appends `e` as the next entry.
    pub fn push(&mut self, e: &Entry) -> io::Result<()> {
        let bytes = postcard::to_stdvec(e).map_err(io::Error::other)?;
        self.starts.push(self.end);
        self.tags.push(Tag::of(&e.kind));
        self.out.write_all(&bytes)?;
        self.end += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything pushed readable.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The kind of entry `idx`.
    pub fn tag(&self, idx: u32) -> Option<Tag> {
        self.tags.get(idx as usize).copied()
    }

    /// How many entries are of kind `tag`.
    pub fn count(&self, tag: Tag) -> u64 {
        self.tags.iter().filter(|t| **t == tag).count() as u64
    }

    /// Entry `idx` (after [`Spill::flush`]).
    pub fn get(&self, idx: u32) -> io::Result<Entry> {
        let i = idx as usize;
        let start = *self
            .starts
            .get(i)
            .ok_or_else(|| io::Error::other(format!("no manifest entry {idx}")))?;
        let end = self.starts.get(i + 1).copied().unwrap_or(self.end);
        let mut buf = vec![0; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        postcard::from_bytes(&buf).map_err(io::Error::other)
    }

    /// Every entry in manifest order, with its index (after [`Spill::flush`]).
    pub fn iter(&self) -> Entries<'_> {
        Entries {
            spill: self,
            next: 0,
            rd: BufReader::with_capacity(
                256 << 10,
                ReadAt {
                    file: &self.file,
                    pos: 0,
                    end: self.end,
                },
            ),
            buf: Vec::new(),
        }
    }

    /// The indexes of entries of kind `tag`, last first.
    pub fn rev_indexes(&self, tag: Tag) -> impl Iterator<Item = u32> + '_ {
        (0..self.tags.len())
            .rev()
            .filter(move |i| self.tags[*i] == tag)
            .map(|i| i as u32)
    }
}

/// A file in the state directory's `tmp/`, already unlinked. The state directory is opened
/// as a sync opens it ([`State::open`]): only this receiver's own, writable by it only, so
/// nobody else can open the file in the moment it has a name and rewrite the manifest
/// after it was checked. One this creates is removed again if nothing else is in it (a
/// check-only pass leaves no trace).
fn unlinked_in_state_dir(root: &Root) -> io::Result<File> {
    use std::os::fd::AsFd;
    let name = b"manifest-spill".as_slice();
    let top = root.dir(b"")?;
    let existed = beneath::stat(top.as_fd(), STATE_DIR.as_bytes())?.is_some();
    let state = State::open(root).map_err(|e| io::Error::other(e.to_string()))?;
    let file = beneath::create(state.tmp.as_fd(), name)?;
    rustix::fs::unlinkat(&state.tmp, beneath::os(name), rustix::fs::AtFlags::empty())?;
    if !existed {
        drop(state);
        State::tidy(root);
    }
    Ok(file)
}

/// Reads at a position of its own, so readers do not disturb each other.
struct ReadAt<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos).min(buf.len() as u64) as usize;
        let n = self.file.read_at(&mut buf[..left], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// See [`Spill::iter`].
pub struct Entries<'s> {
    spill: &'s Spill,
    next: usize,
    rd: BufReader<ReadAt<'s>>,
    buf: Vec<u8>,
}

impl Iterator for Entries<'_> {
    type Item = io::Result<(u32, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        let start = *self.spill.starts.get(i)?;
        let end = self
            .spill
            .starts
            .get(i + 1)
            .copied()
            .unwrap_or(self.spill.end);
        self.next += 1;
        self.buf.resize((end - start) as usize, 0);
        let read = self.rd.read_exact(&mut self.buf).and_then(|()| {
            postcard::from_bytes(&self.buf)
                .map(|e| (i as u32, e))
                .map_err(io::Error::other)
        });
        if read.is_err() {
            // One error ends the walk.
            self.next = self.spill.starts.len();
            let _ = self.rd.fill_buf();
        }
        Some(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: path.len() as u64,
            mtime_s: 3,
            mtime_ns: 4,
        }
    }

    #[test]
    fn spill_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let mut spill = Spill::create(&root).unwrap();
        let entries: Vec<Entry> = (0..5000)
            .map(|i| match i % 4 {
                0 => entry(&format!("d{i}"), Kind::Dir),
                1 => entry(&format!("f{i}"), Kind::File),
                2 => entry(
                    &format!("l{i}"),
                    Kind::Symlink {
                        target: vec![b'x'; i % 300],
                    },
                ),
                _ => entry(&format!("h{i}"), Kind::HardLink { leader: 1 }),
            })
            .collect();
        for e in &entries {
            spill.push(e).unwrap();
        }
        spill.flush().unwrap();
        assert_eq!(spill.len(), entries.len());
        let back: Vec<Entry> = spill.iter().map(|r| r.unwrap().1).collect();
        assert_eq!(back, entries);
        for i in [0u32, 1, 2, 3, 4999, 1234] {
            assert_eq!(spill.get(i).unwrap(), entries[i as usize]);
        }
        assert!(spill.get(5000).is_err());
        assert_eq!(spill.count(Tag::Dir), 1250);
        assert_eq!(spill.tag(3), Some(Tag::HardLink));
        let dirs: Vec<u32> = spill.rev_indexes(Tag::Dir).take(2).collect();
        assert_eq!(dirs, vec![4996, 4992]);
        // Nothing named was left on the volume.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Where the volume has no unnamed files: a state-directory file, gone at once, and
    /// the state directory too when this made it.
    #[test]
    fn spill_fallback_leaves_no_trace() {
        use std::io::{Read, Seek, Write};
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let mut f = unlinked_in_state_dir(&root).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        f.write_all(b"entries").unwrap();
        f.rewind().unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "entries");
        // A state directory that was there stays, without the file.
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        let _f = unlinked_in_state_dir(&root).unwrap();
        let tmp = dir.path().join(STATE_DIR).join("tmp");
        assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
        // Someone else's state directory is replaced, never written in.
        std::fs::remove_dir_all(dir.path().join(STATE_DIR)).unwrap();
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        let planted = dir.path().join(STATE_DIR).join("planted");
        std::fs::write(&planted, "x").unwrap();
        std::fs::set_permissions(
            dir.path().join(STATE_DIR),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let _g = unlinked_in_state_dir(&root).unwrap();
        assert!(!planted.exists());
    }
}
