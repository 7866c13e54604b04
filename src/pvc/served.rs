//! What the sender keeps of each manifest entry to serve requests for it — path, size and
//! the inode the walk saw — in fixed-size records on disk, so a volume of millions of files
//! costs the volume server no memory per file. The records and paths go to unnamed
//! temporary files (`O_TMPFILE` in the temporary directory: the volume server pod mounts
//! an `emptyDir` there); where none can be made, to a memory file (`memfd`), which is what
//! holding them in memory would cost anyway.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::PvcError;
use super::manifest::FileId;
use super::scratch::FileAt;
use super::wire::{Entry, Kind};

/// An error of the temporary files.
pub fn scratch_error(e: io::Error) -> PvcError {
    PvcError::io(std::path::Path::new("(the sender's temporary files)"), e)
}

/// Bytes of one record: size, dev, ino, path offset (8 each), path length (4), is-file (1),
/// padding.
const RECORD: u64 = 40;

/// What serving a request for one entry needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The path (empty for anything but a file: only files are ever sent).
    pub path: Vec<u8>,
    /// Size announced in the manifest: never more is sent.
    pub size: u64,
    /// The inode the walk saw.
    pub id: FileId,
    /// Whether the entry is a regular file.
    pub is_file: bool,
}

/// The served entries, by manifest index.
pub struct ServedTable {
    records: File,
    paths: File,
    records_out: BufWriter<FileAt>,
    paths_out: BufWriter<FileAt>,
    count: u32,
    paths_len: u64,
}

fn scratch_file(name: &str) -> io::Result<File> {
    match tempfile::tempfile() {
        Ok(f) => Ok(f),
        Err(e) => {
            tracing::warn!(error = %e, "no temporary file for the manifest; keeping it in memory");
            let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
            Ok(File::from(fd))
        }
    }
}

impl ServedTable {
    /// An empty table.
    pub fn new() -> io::Result<ServedTable> {
        let records = scratch_file("dr-syncer-served")?;
        let paths = scratch_file("dr-syncer-paths")?;
        let writer = |f: &File| -> io::Result<BufWriter<FileAt>> {
            Ok(BufWriter::with_capacity(
                128 << 10,
                FileAt {
                    file: f.try_clone()?,
                    pos: 0,
                },
            ))
        };
        Ok(ServedTable {
            records_out: writer(&records)?,
            paths_out: writer(&paths)?,
            records,
            paths,
            count: 0,
            paths_len: 0,
        })
    }

    /// Appends entry `e`, walked at inode `id`, as the next index.
    pub fn push(&mut self, e: &Entry, id: FileId) -> io::Result<()> {
        let is_file = e.kind == Kind::File;
        let path: &[u8] = if is_file { &e.path } else { &[] };
        let mut rec = [0u8; RECORD as usize];
        rec[0..8].copy_from_slice(&e.size.to_le_bytes());
        rec[8..16].copy_from_slice(&id.dev.to_le_bytes());
        rec[16..24].copy_from_slice(&id.ino.to_le_bytes());
        rec[24..32].copy_from_slice(&self.paths_len.to_le_bytes());
        rec[32..36].copy_from_slice(&(path.len() as u32).to_le_bytes());
        rec[36] = u8::from(is_file);
        self.records_out.write_all(&rec)?;
        self.paths_out.write_all(path)?;
        self.paths_len += path.len() as u64;
        self.count += 1;
        Ok(())
    }

    /// Makes everything pushed readable.
    pub fn flush(&mut self) -> io::Result<()> {
        self.records_out.flush()?;
        self.paths_out.flush()
    }

    /// Number of entries.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entry `idx` (after [`ServedTable::flush`]); `None` past the end.
    pub fn get(&self, idx: u32) -> io::Result<Option<Served>> {
        if idx >= self.count {
            return Ok(None);
        }
        let mut rec = [0u8; RECORD as usize];
        self.records
            .read_exact_at(&mut rec, u64::from(idx) * RECORD)?;
        let u64_at = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rec[32..36].try_into().expect("4 bytes"));
        let mut path = vec![0; len as usize];
        self.paths.read_exact_at(&mut path, u64_at(24))?;
        Ok(Some(Served {
            path,
            size: u64_at(0),
            id: FileId {
                dev: u64_at(8),
                ino: u64_at(16),
            },
            is_file: rec[36] == 1,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_table_round_trip() {
        let mut t = ServedTable::new().unwrap();
        let entry = |i: u64, kind: Kind| Entry {
            path: format!("dir/file-{i}").into_bytes(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: i * 7,
            mtime_s: 0,
            mtime_ns: 0,
        };
        for i in 0..10_000u64 {
            let kind = if i % 3 == 0 { Kind::Dir } else { Kind::File };
            let id = FileId {
                dev: 5,
                ino: 1000 + i,
            };
            t.push(&entry(i, kind), id).unwrap();
        }
        t.flush().unwrap();
        assert_eq!(t.len(), 10_000);
        let f = t.get(4).unwrap().unwrap();
        assert_eq!(
            f,
            Served {
                path: b"dir/file-4".to_vec(),
                size: 28,
                id: FileId { dev: 5, ino: 1004 },
                is_file: true,
            }
        );
        // Directories keep no path: nothing is ever sent for them.
        let d = t.get(9999).unwrap().unwrap();
        assert!(!d.is_file && d.path.is_empty());
        assert_eq!(t.get(9998).unwrap().unwrap().path, b"dir/file-9998");
        assert_eq!(t.get(10_000).unwrap(), None);
    }
}
