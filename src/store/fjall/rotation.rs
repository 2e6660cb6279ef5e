//! "Memtable rotation" (see the parent module): the thread that rotates
//! memtables, and the writer's count of what each memtable holds.

use super::{FjallStore, Keyspaces, StoreError, Writer};
use std::sync::Mutex;

/// What fjall adds to a memtable item's key and value when it sizes the
/// memtable (lsm-tree counts `size_of::<InternalValue>()`, about 60 bytes
/// in lsm-tree 3.1), rounded up. Counting it is what keeps our rotation
/// ahead of fjall's own: an index item has a key of 16 bytes or so and no
/// value, and counted without its overhead it filled fjall's memtable more
/// than 4 times faster than we counted, so fjall's backstop fired on every
/// commit and flooded its worker's channel after all (a CI run hung so in
/// tests/it/store.rs). Overcounting is harmless: we only rotate a bit early.
pub(super) const MEMTABLE_ITEM_OVERHEAD: u64 = 128;

/// The memtable bytes one item (insert or tombstone) costs, by fjall's
/// measure or more.
pub(super) fn memtable_cost(key_len: usize, value_len: usize) -> u64 {
    (key_len as u64)
        .saturating_add(value_len as u64)
        .saturating_add(MEMTABLE_ITEM_OVERHEAD)
}

/// A thread that rotates memtables when a writer asks it to. Rotating
/// takes fjall's journal and version locks and trims the version history,
/// which deletes and closes the files of tables a compaction replaced: a
/// `close(2)` that frees a table's blocks took 3 to 13 ms on ext4 under
/// load, five in a row at times. Done inline it stalled the I/O thread that
/// happened to cross the limit, and every connection it serves. The writer
/// only sends a request (one per memtable, since it restarts its count when
/// it asks), so a put never waits for a rotation.
pub(super) struct Rotator {
    /// Requests: which keyspace to rotate. `None` once the store is dropped.
    requests: Option<std::sync::mpsc::Sender<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first rotation that failed, reported by the next [`Store::flush`].
    failed: std::sync::Arc<Mutex<Option<fjall::Error>>>,
}

impl Rotator {
    pub(super) fn start(keyspaces: Keyspaces) -> std::io::Result<Rotator> {
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let failed = std::sync::Arc::new(Mutex::new(None));
        let report = std::sync::Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("tlsmgr-rotate".into())
            .spawn(move || {
                for which in rx {
                    if let Err(e) = keyspaces[which].rotate_memtable() {
                        let mut slot = report
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        slot.get_or_insert(e);
                    }
                }
            })?;
        Ok(Rotator {
            requests: Some(tx),
            thread: Some(thread),
            failed,
        })
    }

    /// Asks for a rotation of keyspace `which`; returns at once.
    pub(super) fn request(&self, which: usize) {
        if let Some(tx) = &self.requests {
            // The thread only ends once `requests` is gone.
            let _ = tx.send(which);
        }
    }

    /// The first rotation error since the last call, if any.
    pub(super) fn take_failure(&self) -> Option<fjall::Error> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl Drop for Rotator {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the requests already
        // sent; joining it releases its handles on the database before the
        // store is gone, so the directory can be opened again at once.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FjallStore {
    /// Counts `bytes` committed to `sessions` (`which` 0) or `by_age` (1)
    /// and asks for a rotation of its memtable once past the limit. The
    /// caller holds the writer lock, so one rotation is asked per memtable.
    pub(super) fn committed(&self, w: &mut Writer, which: usize, bytes: u64) {
        w.written_since_tidy = true;
        w.unrotated[which] = w.unrotated[which].saturating_add(bytes);
        if w.unrotated[which] >= w.rotate_at[which] {
            w.unrotated[which] = 0;
            self.rotator.request(which);
        }
    }

    /// Rotates the memtable of `sessions` (`which` 0) or `by_age` (1). The
    /// caller holds the writer lock.
    pub(super) fn rotate(&self, w: &mut Writer, which: usize) -> Result<(), StoreError> {
        w.unrotated[which] = 0;
        let keyspace = if which == 0 {
            &self.sessions
        } else {
            &self.by_age
        };
        keyspace
            .rotate_memtable()
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}
