//! The SQLite store's background checkpoints: the write-ahead log copied
//! back into the database file on a thread of its own, so that the
//! journal's commits seldom wait for it.
//!
//! SQLite's own (automatic) checkpoint runs inside the commit that takes
//! the log past 1,000 pages, on the connection that made it. On the writer
//! that was a commit of 5–10 ms every quarter of a second at 2,000 messages
//! a second, and every claim that came meanwhile waited for it: those waits
//! were the steady load's slowest percent (`docs/benchmarks.md`, a
//! sixteenth session). Here a [`Checkpointer`] thread, on a connection of
//! its own, checkpoints `PASSIVE` (it neither waits for nor blocks the
//! writer or a reader) at most every [`CHECKPOINT_EVERY`] while commits
//! come, so the log seldom reaches that threshold. The writer keeps the
//! automatic checkpoint as the bound on the log: SQLite starts the log over
//! only when a transaction begins with every page of it copied, and if a
//! commit ran during each background checkpoint it cannot; the writer's
//! checkpoint then finds most pages copied already. Why and what it
//! measured: `docs/adr/0007-sqlite-checkpoints-off-the-commit-path.md`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tracing::warn;

/// The longest a commit's pages wait in the log for a checkpoint: the
/// commits of this time share one.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// The thread that checkpoints a database file; stopped (and joined) when
/// dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Flags {
    /// A commit has written to the log since the last checkpoint began.
    pending: AtomicBool,
    stop: AtomicBool,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (in WAL mode). `None`,
    /// with a warning, if it cannot: the writer's automatic checkpoint
    /// still keeps the log in bounds.
    pub(crate) fn start(path: &Path) -> Option<Checkpointer> {
        let conn = match open(path) {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "the store's background checkpoints are off: its connection did not open; commits checkpoint the log themselves");
                return None;
            }
        };
        let flags = Arc::new(Flags::default());
        let theirs = flags.clone();
        let thread = std::thread::Builder::new()
            .name("herald-checkpoint".to_owned())
            .spawn(move || run(&conn, &theirs))
            .inspect_err(
                |e| warn!(error = %e, "the store's background checkpoints are off: no thread"),
            )
            .ok()?;
        Some(Checkpointer {
            flags,
            thread: Some(thread),
        })
    }

    /// A commit has written to the log: a checkpoint follows within
    /// [`CHECKPOINT_EVERY`]. Wakes the thread only for the first commit
    /// after a checkpoint began.
    pub(crate) fn poke(&self) {
        if !self.flags.pending.swap(true, Ordering::AcqRel) {
            if let Some(thread) = &self.thread {
                thread.thread().unpark();
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The writer's: the log is synced before a checkpoint copies it, the
    // database file after.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn run(conn: &Connection, flags: &Flags) {
    let mut warned = false;
    while !flags.stop.load(Ordering::Acquire) {
        if !flags.pending.load(Ordering::Acquire) {
            std::thread::park();
            continue;
        }
        let until = Instant::now() + CHECKPOINT_EVERY;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if flags.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::park_timeout(left);
        }
        flags.pending.store(false, Ordering::Release);
        // A row of three numbers: busy (another checkpoint was running),
        // the log's pages, the pages copied.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = done {
            if !warned {
                warn!(error = %e, "a background checkpoint of the store failed; commits checkpoint the log themselves meanwhile");
                warned = true;
            }
        }
    }
}
