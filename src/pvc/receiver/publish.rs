//! Staging verified files on their own thread — owner, mode and times on the open
//! descriptor, then fsync — so the disk flush of one file overlaps receiving the next. The
//! files stay in the state directory's `tmp/` until the commit moves them into place
//! ([`super::commit`]): the destination's visible tree does not change during the
//! transfer. The first failure stops the thread and is reported.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::beneath::{self, Root};
use crate::pvc::PvcError;
use crate::pvc::wire::Entry;

/// A received file whose content passed verification, waiting to be staged.
pub struct Verified {
    /// The temporary file, written and verified.
    pub file: File,
    /// Its manifest index.
    pub idx: u32,
    /// Its manifest entry.
    pub entry: Entry,
}

/// What the staging thread did.
#[derive(Debug, Default)]
pub struct StagedFiles {
    /// Files staged (manifest indexes; each named in `tmp/` after its path), in the order
    /// they were verified.
    pub files: Vec<u32>,
    /// Files whose owner could not be set, and the first of them (path, uid, gid).
    pub owners_not_kept: u64,
    /// The first file whose owner could not be set.
    pub first_not_kept: Option<(Vec<u8>, u32, u32)>,
}

/// The staging thread.
pub struct Publisher {
    tx: Option<std::sync::mpsc::SyncSender<Verified>>,
    thread: Option<std::thread::JoinHandle<(StagedFiles, Result<(), PvcError>)>>,
}

impl Publisher {
    /// Starts the thread.
    pub fn start(root: Arc<Root>) -> Self {
        // Bounded: at most this many verified files (and their descriptors) wait.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Verified>(64);
        let thread = std::thread::spawn(move || {
            let mut out = StagedFiles::default();
            for v in rx {
                let path = root.show(&v.entry.path);
                let io = |e| PvcError::io(&path, e);
                // Metadata first, then one fsync: owner, mode and times are durable with
                // the content before any journal can name this file.
                let step = beneath::set_meta(v.file.as_fd(), &v.entry)
                    .and_then(|kept| v.file.sync_all().map(|()| kept));
                match step {
                    Ok(kept) => {
                        if !kept {
                            out.owners_not_kept += 1;
                            out.first_not_kept.get_or_insert_with(|| {
                                (v.entry.path.clone(), v.entry.uid, v.entry.gid)
                            });
                        }
                        out.files.push(v.idx);
                    }
                    Err(e) => return (out, Err(io(e))),
                }
            }
            (out, Ok(()))
        });
        Publisher {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Hands a file over; if the thread already stopped, its error.
    pub fn submit(&mut self, v: Verified) -> Result<(), PvcError> {
        let sent = self.tx.as_ref().map(|tx| tx.send(v).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        Err(PvcError::Protocol("the staging thread stopped".into()))
    }

    /// Waits until every handed-over file is staged; what was staged, and the thread's
    /// first error.
    pub fn finish(&mut self) -> (StagedFiles, Result<(), PvcError>) {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            None => (StagedFiles::default(), Ok(())),
            Some(Ok(r)) => r,
            Some(Err(_)) => (
                StagedFiles::default(),
                Err(PvcError::Protocol("staging thread panicked".into())),
            ),
        }
    }
}
