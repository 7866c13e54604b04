//! Positioned writes for the scratch files that hold manifests on disk ([`super::served`],
//! the receiver's spill): one descriptor serves buffered appends and positioned reads
//! alike, with no shared file offset between them.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Appends to `file` at `pos` (use behind a `BufWriter`).
pub struct FileAt {
    /// The file written.
    pub file: File,
    /// Where the next write goes.
    pub pos: u64,
}

impl Write for FileAt {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
