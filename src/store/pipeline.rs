//! Hashes fed on threads of their own. SHA-256 of one file is serial, so a
//! file's integrity hash runs beside whatever reads, decompresses, writes and
//! computes the other digests, in one of two ways:
//!
//! - [`Followed`], for a file being written (import's staging): the hash
//!   follows the staged file. The writer only publishes how far it has
//!   written; the hasher finds the data extents below that offset with
//!   SEEK_DATA / SEEK_HOLE, reads them back (from the page cache) with pread
//!   and hashes holes as zeros without reading. What is hashed is what was
//!   written, the very file that will be promoted, and the writer never
//!   waits for the hasher: memory is one read buffer per file, however far
//!   behind the hash runs.
//! - [`Offloaded`], for a file read from elsewhere (add, verify): the reader
//!   hands blocks through a bounded queue (at most [`DEPTH`] blocks of
//!   [`BLOCK_BYTES`] in flight, reused) and runs of zeros as lengths.
//!
//! With one thread allowed ([`crate::process::threads`]), or for a small
//! file, the sink is fed inline instead: no handoff costs anything there.
//!
//! A hashing thread hashes only while it holds one of the process's hash
//! slots ([`crate::process::slots`]), as many as the threads allowed: it
//! gives the slot back whenever it runs out of input and takes its turn
//! again after every [`SLICE`] bytes, so more files than threads may be in
//! flight ([`large_files_at_once`]) and share the cores evenly.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::model::digest::LogicalSink;
use crate::model::error::{Error, IoContext, Result};
use crate::process::slots::{Slot, hash_slots};
use crate::process::{interrupt, threads};
use crate::store::files::{CHUNK, Piece, read_range};

/// Size of the blocks handed to the hashing thread.
pub const BLOCK_BYTES: usize = 1 << 20;

/// Blocks one file may have in flight: its bound on memory.
pub const DEPTH: usize = 4;

/// Files hashed at once, whatever the cores: each holds up to
/// [`DEPTH`] × [`BLOCK_BYTES`] in its queue plus its reader's buffer (a
/// [`Followed`] hash only its read buffer), so this keeps the whole under
/// 64 MiB.
pub const MAX_FILES: usize = 6;

/// How many files to hash at once here: the threads allowed, at most
/// [`MAX_FILES`].
pub fn files_at_once() -> usize {
    threads::available().clamp(1, MAX_FILES)
}

/// How many large files (from [`OFFLOAD_FROM`]) to have in flight: with
/// more than one thread allowed [`MAX_FILES`], their hashes sharing the
/// threads through the hash slots; else one.
pub fn large_files_at_once() -> usize {
    if threads::available() < 2 {
        1
    } else {
        MAX_FILES
    }
}

/// Whether a file of `len` bytes is hashed on a thread of its own.
pub fn offloads(len: u64) -> bool {
    len >= OFFLOAD_FROM && threads::available() >= 2
}

/// Run `f`, which hashes inline on this thread, holding a hash slot when
/// more than one thread is allowed; `None` when `stopped` (or an interrupt)
/// ends the wait for a slot.
pub fn hash_inline<T>(stopped: &dyn Fn() -> bool, f: impl FnOnce() -> T) -> Option<T> {
    if threads::available() < 2 {
        return Some(f());
    }
    let _slot = hash_slots().take(&|| stopped() || interrupt::pending().is_some())?;
    Some(f())
}

/// Logical bytes a hashing thread hashes before it lets waiting files
/// have their turn.
pub const SLICE: u64 = 48 << 20;

/// Files smaller than this are hashed inline: a thread would cost more than
/// the overlap gains.
pub const OFFLOAD_FROM: u64 = 8 << 20;

/// The most zero bytes hashed between two looks at the stop flag.
const STEP: u64 = 8 << 20;

/// A hashing thread's hold on a hash slot.
struct Turns {
    slot: Option<Slot<'static>>,
    /// Bytes hashed since the slot was taken.
    sliced: u64,
}

impl Turns {
    fn new() -> Turns {
        Turns {
            slot: None,
            sliced: 0,
        }
    }

    /// Hold a slot before hashing; `false` once halted while waiting.
    fn hold(&mut self, gate: &Gate) -> bool {
        if self.slot.is_none() {
            self.slot = hash_slots().take(&|| gate.halted());
            self.sliced = 0;
        }
        self.slot.is_some()
    }

    /// `n` more bytes hashed: after a slice, let waiting files go first;
    /// `false` once halted while waiting.
    fn hashed(&mut self, n: u64, gate: &Gate) -> bool {
        self.sliced += n;
        if self.sliced < SLICE {
            return true;
        }
        self.sliced = 0;
        self.slot = self.slot.take().and_then(|s| s.turn(&|| gate.halted()));
        self.slot.is_some()
    }

    /// Nothing to hash for now: give the slot back.
    fn release(&mut self) {
        self.slot = None;
    }
}

/// Messages to the hashing thread, in logical order.
enum Msg {
    Data(Vec<u8>),
    Zeros(u64),
}

/// A [`LogicalSink`] that feeds `S` on a thread of its own when more than one
/// thread is allowed and the file is large enough, inline otherwise.
pub struct Offloaded<S: LogicalSink + Send + 'static> {
    state: State<S>,
}

enum State<S: LogicalSink + Send + 'static> {
    Inline(S),
    Thread(Feed<S>),
}

/// The reader's end of a hashing thread.
struct Feed<S> {
    tx: Option<SyncSender<Msg>>,
    /// Blocks the thread is done with, for reuse.
    free: Receiver<Vec<u8>>,
    /// Blocks that may still be allocated.
    unallocated: usize,
    /// The block being filled.
    current: Vec<u8>,
    /// Zeros not yet sent (adjacent runs travel as one message).
    zeros: u64,
    /// The thread stopped early (interrupt or stop): nothing more is sent.
    gone: bool,
    worker: Worker<S>,
}

/// A hashing thread and the gate that stops it.
struct Worker<S> {
    gate: Arc<Gate>,
    /// The sink once done, `None` when stopped early.
    handle: Option<JoinHandle<Result<Option<S>>>>,
}

/// What a hashing thread is told: to stop, and for a [`Followed`] hash how
/// far its file is written.
struct Gate {
    stop: AtomicBool,
    written: Mutex<Written>,
    changed: Condvar,
}

struct Written {
    /// Every byte below this is in the file (holes are never written).
    upto: u64,
    /// `upto` is the file's final size.
    closed: bool,
    /// The hasher sleeps until `upto` moves.
    waiting: bool,
    /// The hashing thread has ended.
    ended: bool,
}

/// How long a waiting hasher sleeps before it looks for an interrupt.
const NAP: Duration = Duration::from_millis(100);

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            stop: AtomicBool::new(false),
            written: Mutex::new(Written {
                upto: 0,
                closed: false,
                waiting: false,
                ended: false,
            }),
            changed: Condvar::new(),
        })
    }

    /// Run `f` as the hashing thread, saying when it ends (however it ends).
    fn run<T>(self: Arc<Self>, f: impl FnOnce(&Gate) -> T) -> T {
        struct Ends(Arc<Gate>);
        impl Drop for Ends {
            fn drop(&mut self) {
                let mut w = self.0.written.lock().unwrap_or_else(|p| p.into_inner());
                w.ended = true;
                self.0.changed.notify_all();
            }
        }
        let ends = Ends(self);
        f(&ends.0)
    }

    /// Wait until the hashing thread ends, at most `nap`.
    fn wait_end(&self, nap: Duration) {
        let w = self.written.lock().expect("gate lock");
        let _ = self
            .changed
            .wait_timeout_while(w, nap, |w| !w.ended)
            .expect("gate lock");
    }

    fn halted(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || interrupt::pending().is_some()
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _guard = self.written.lock().expect("gate lock");
        self.changed.notify_all();
    }

    /// The writer has written everything below `upto`; `closed`: that is all.
    fn publish(&self, upto: u64, closed: bool) {
        let mut w = self.written.lock().expect("gate lock");
        w.upto = upto;
        w.closed |= closed;
        if w.waiting {
            w.waiting = false;
            self.changed.notify_all();
        }
    }

    /// Whether more than `pos` bytes are written or the file is closed.
    fn ready(&self, pos: u64) -> bool {
        let w = self.written.lock().expect("gate lock");
        w.upto > pos || w.closed
    }

    /// Wait until more than `pos` bytes are written or the file is closed:
    /// how far it is written and whether that is all, `None` once stopped.
    fn beyond(&self, pos: u64) -> Option<(u64, bool)> {
        let mut w = self.written.lock().expect("gate lock");
        loop {
            if self.halted() {
                return None;
            }
            if w.upto > pos || w.closed {
                return Some((w.upto, w.closed));
            }
            w.waiting = true;
            w = self.changed.wait_timeout(w, NAP).expect("gate lock").0;
        }
    }
}

impl<S: LogicalSink + Send + 'static> Offloaded<S> {
    /// Feed `sink` with the logical bytes of a file of `len` bytes: on its
    /// own thread when that can pay.
    pub fn new(sink: S, len: u64) -> Self {
        if !offloads(len) {
            return Offloaded {
                state: State::Inline(sink),
            };
        }
        Offloaded {
            state: State::Thread(Feed::start(sink)),
        }
    }

    /// Everything is fed: let the hash finish in the background.
    pub fn close(self) -> Pending<S> {
        match self.state {
            State::Inline(s) => Pending(PendingState::Done(s)),
            State::Thread(mut feed) => {
                feed.flush();
                feed.tx = None;
                let worker = std::mem::replace(
                    &mut feed.worker,
                    Worker {
                        gate: Gate::new(),
                        handle: None,
                    },
                );
                Pending(PendingState::Running(worker))
            }
        }
    }

    /// Everything is fed: wait for the hash.
    pub fn finish(self) -> Result<S> {
        self.close().wait()
    }
}

impl<S: LogicalSink + Send + 'static> LogicalSink for Offloaded<S> {
    fn data(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Inline(s) => s.data(data),
            State::Thread(f) => f.data(data),
        }
    }
    fn zeros(&mut self, len: u64) {
        match &mut self.state {
            State::Inline(s) => s.zeros(len),
            State::Thread(f) => {
                if !f.current.is_empty() {
                    f.send_current();
                }
                f.zeros += len;
            }
        }
    }
}

impl<S: LogicalSink + Send + 'static> Feed<S> {
    fn start(mut sink: S) -> Self {
        // Channel slots beyond DEPTH carry zero runs; the blocks are bounded
        // by `unallocated`, not by the slots.
        let (tx, rx) = sync_channel::<Msg>(DEPTH * 2);
        let (free_tx, free) = channel::<Vec<u8>>();
        let gate = Gate::new();
        let stopped = Arc::clone(&gate);
        let handle = std::thread::Builder::new()
            .name("msb-hash".into())
            .spawn(move || {
                stopped.run(|gate| {
                    let mut turns = Turns::new();
                    loop {
                        let msg = match rx.try_recv() {
                            Ok(msg) => msg,
                            Err(TryRecvError::Empty) => {
                                turns.release();
                                match rx.recv() {
                                    Ok(msg) => msg,
                                    Err(_) => break,
                                }
                            }
                            Err(TryRecvError::Disconnected) => break,
                        };
                        if gate.halted() || !turns.hold(gate) {
                            return Ok(None);
                        }
                        match msg {
                            Msg::Data(mut block) => {
                                sink.data(&block);
                                let n = block.len() as u64;
                                block.clear();
                                let _ = free_tx.send(block);
                                if !turns.hashed(n, gate) {
                                    return Ok(None);
                                }
                            }
                            Msg::Zeros(mut n) => {
                                while n > 0 {
                                    let step = n.min(STEP);
                                    sink.zeros(step);
                                    n -= step;
                                    if !turns.hashed(step, gate) || (n > 0 && gate.halted()) {
                                        return Ok(None);
                                    }
                                }
                            }
                        }
                    }
                    Ok(Some(sink))
                })
            })
            .expect("start a hashing thread");
        Feed {
            tx: Some(tx),
            free,
            unallocated: DEPTH,
            current: Vec::new(),
            zeros: 0,
            gone: false,
            worker: Worker {
                gate,
                handle: Some(handle),
            },
        }
    }

    fn data(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.zeros > 0 {
                let n = std::mem::take(&mut self.zeros);
                self.send(Msg::Zeros(n));
            }
            if self.current.capacity() == 0 {
                self.current = self.block();
            }
            let room = BLOCK_BYTES - self.current.len();
            let n = room.min(data.len());
            self.current.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.current.len() == BLOCK_BYTES {
                self.send_current();
            }
        }
    }

    /// An empty block: one the thread gave back, a new one while fewer than
    /// DEPTH exist, else wait for one.
    fn block(&mut self) -> Vec<u8> {
        match self.free.try_recv() {
            Ok(b) => return b,
            Err(TryRecvError::Empty) if self.unallocated > 0 => {
                self.unallocated -= 1;
                return Vec::with_capacity(BLOCK_BYTES);
            }
            Err(_) => {}
        }
        match self.free.recv() {
            Ok(b) => b,
            // The thread stopped; whatever is fed now is dropped.
            Err(_) => {
                self.gone = true;
                Vec::with_capacity(BLOCK_BYTES)
            }
        }
    }

    fn send_current(&mut self) {
        let block = std::mem::take(&mut self.current);
        self.send(Msg::Data(block));
    }

    fn flush(&mut self) {
        if !self.current.is_empty() {
            self.send_current();
        }
        if self.zeros > 0 {
            let n = std::mem::take(&mut self.zeros);
            self.send(Msg::Zeros(n));
        }
    }

    fn send(&mut self, msg: Msg) {
        if self.gone {
            return;
        }
        if let Some(tx) = &self.tx
            && tx.send(msg).is_err()
        {
            self.gone = true;
        }
    }
}

impl<S> Drop for Feed<S> {
    fn drop(&mut self) {
        // Dropped before `close`: the file was abandoned.
        self.worker.gate.stop();
        self.tx = None;
    }
}

impl<S> Worker<S> {
    fn join(&mut self) -> Result<Option<S>> {
        let Some(handle) = self.handle.take() else {
            return Ok(None);
        };
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.gate.stop();
            let _ = self.join();
        }
    }
}

/// A [`LogicalSink`] `S` fed from a file as it is written: on a thread of
/// its own that reads the staged file back behind the writer when more
/// than one thread is allowed and the file is large enough, inline from
/// the writer's pieces otherwise. Either way it hashes what was written.
pub struct Followed<S: LogicalSink + Send + 'static> {
    state: Following<S>,
}

enum Following<S: LogicalSink + Send + 'static> {
    Inline(S),
    Thread(Worker<S>),
}

impl<S: LogicalSink + Send + 'static> Followed<S> {
    /// Feed `sink` with the logical bytes of `file` at `path`, being written
    /// from its start to `len` bytes; `file` must be open for reading.
    pub fn new(sink: S, file: &File, path: &Path, len: u64) -> Result<Self> {
        if !offloads(len) {
            return Ok(Followed {
                state: Following::Inline(sink),
            });
        }
        let file = file.try_clone().at("open", path)?;
        let gate = Gate::new();
        let path = path.to_path_buf();
        let follows = Arc::clone(&gate);
        let handle = std::thread::Builder::new()
            .name("msb-follow".into())
            .spawn(move || follows.run(|gate| follow(sink, &file, &path, gate)))
            .map_err(|e| Error::io("start", "a hashing thread", e))?;
        Ok(Followed {
            state: Following::Thread(Worker {
                gate,
                handle: Some(handle),
            }),
        })
    }

    /// `piece` was written, and everything below `written` is in the file.
    /// Hashed inline, a run of zeros is hashed in steps that each look for
    /// an interrupt first: a hole of many GiB takes minutes to hash.
    pub fn written(&mut self, piece: Piece<'_>, written: u64) -> Result<()> {
        match &mut self.state {
            Following::Inline(s) => match piece {
                Piece::Data(d) => s.data(d),
                Piece::Zeros(mut n) => {
                    while n > 0 {
                        interrupt::check()?;
                        let step = n.min(STEP);
                        s.zeros(step);
                        n -= step;
                    }
                }
            },
            Following::Thread(w) => w.gate.publish(written, false),
        }
        Ok(())
    }

    /// The file is complete at `len` bytes: let the hash finish in the
    /// background.
    pub fn close(self, len: u64) -> Pending<S> {
        match self.state {
            Following::Inline(s) => Pending(PendingState::Done(s)),
            Following::Thread(w) => {
                w.gate.publish(len, true);
                Pending(PendingState::Running(w))
            }
        }
    }
}

/// Hash `file` in order as the writer publishes it, holes as zeros;
/// `None` once stopped.
fn follow<S: LogicalSink>(mut sink: S, file: &File, path: &Path, gate: &Gate) -> Result<Option<S>> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut halted = false;
    let mut turns = Turns::new();
    loop {
        if !gate.ready(pos) {
            turns.release();
        }
        let Some((upto, closed)) = gate.beyond(pos) else {
            return Ok(None);
        };
        if !turns.hold(gate) {
            return Ok(None);
        }
        let walked = read_range(file, path, pos, upto, &mut buf, &mut |piece| {
            let mut n = match piece {
                Piece::Data(d) => {
                    sink.data(d);
                    halted |= !turns.hashed(d.len() as u64, gate);
                    0
                }
                Piece::Zeros(n) => n,
            };
            while n > 0 && !halted {
                let step = n.min(STEP);
                sink.zeros(step);
                n -= step;
                halted |= !turns.hashed(step, gate);
                if n > 0 && gate.halted() {
                    break;
                }
            }
            if halted || gate.halted() {
                halted = true;
                // Ends the walk; the caller sees `halted`, not this.
                return Err(Error::Interrupted {
                    signal: libc::SIGINT,
                    cleaned: String::new(),
                });
            }
            Ok(())
        });
        if halted {
            return Ok(None);
        }
        walked?;
        pos = pos.max(upto);
        if closed {
            return Ok(Some(sink));
        }
    }
}

/// A hash whose input is complete, possibly still running.
pub struct Pending<S>(PendingState<S>);

enum PendingState<S> {
    Done(S),
    Running(Worker<S>),
}

impl<S> Pending<S> {
    /// Whether the hash has ended ([`Pending::wait`] would not block).
    pub fn is_done(&self) -> bool {
        match &self.0 {
            PendingState::Done(_) => true,
            PendingState::Running(w) => w.handle.as_ref().is_none_or(JoinHandle::is_finished),
        }
    }

    /// Block until the hash ends, or at most `nap`.
    pub fn wait_a_while(&self, nap: Duration) {
        if let PendingState::Running(w) = &self.0 {
            w.gate.wait_end(nap);
        }
    }

    /// The sink once it has hashed everything; an interrupt (SIGINT,
    /// SIGTERM) stops it early and is the error.
    pub fn wait(self) -> Result<S> {
        match self.0 {
            PendingState::Done(s) => Ok(s),
            PendingState::Running(mut w) => match w.join()? {
                Some(s) => Ok(s),
                None => {
                    interrupt::check()?;
                    Err(Error::Interrupted {
                        signal: libc::SIGINT,
                        cleaned: String::new(),
                    })
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::{Digest, PlainSha256};

    fn feed(sink: &mut impl LogicalSink, pattern: &[(u8, usize)]) -> Vec<u8> {
        let mut all = Vec::new();
        for &(byte, n) in pattern {
            if byte == 0 {
                sink.zeros(n as u64);
                all.extend(std::iter::repeat_n(0, n));
            } else {
                let data: Vec<u8> = (0..n).map(|i| byte ^ (i as u8)).collect();
                for piece in data.chunks(300_001) {
                    sink.data(piece);
                }
                all.extend(data);
            }
        }
        all
    }

    /// (byte, run length) runs of a test file: data, zeros and odd sizes
    /// across block boundaries.
    const PATTERN: [(u8, usize); 7] = [
        (7, 10),
        (0, 3 << 20),
        (9, 5 << 20),
        (0, 17),
        (0, 1 << 20),
        (3, 1),
        (5, (2 << 20) + 5),
    ];

    #[test]
    fn offloaded_hash_matches_inline() {
        threads::set_limit(4);
        let len: usize = PATTERN.iter().map(|p| p.1).sum();
        let mut off = Offloaded::new(PlainSha256::default(), len as u64);
        assert!(matches!(off.state, State::Thread(_)));
        let bytes = feed(&mut off, &PATTERN);
        assert_eq!(off.finish().unwrap().finish(), Digest::of(&bytes));
    }

    /// Write `pattern` through a [`SparseWriter`] into a new file while a
    /// [`Followed`] hash follows it: the bytes written and the hash.
    fn write_followed(
        path: &Path,
        pattern: &[(u8, usize)],
        len: u64,
    ) -> (Vec<u8>, Pending<PlainSha256>) {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        let mut hash = Followed::new(PlainSha256::default(), &file, path, len).unwrap();
        assert!(matches!(hash.state, Following::Thread(_)));
        let mut writer = crate::store::files::SparseWriter::new(file);
        let mut all = Vec::new();
        for &(byte, n) in pattern {
            // Zero data written as data (zero blocks become holes), and
            // holes as runs: both must hash as zeros.
            let data: Vec<u8> = (0..n)
                .map(|i| if byte == 0 { 0 } else { byte ^ (i as u8) })
                .collect();
            for piece in data.chunks(300_001) {
                let piece = if byte == 0 && piece.len() % 2 == 0 {
                    Piece::Zeros(piece.len() as u64)
                } else {
                    Piece::Data(piece)
                };
                writer.piece(piece).unwrap();
                hash.written(piece, writer.position()).unwrap();
            }
            all.extend(data);
        }
        let pending = hash.close(writer.position());
        writer.finish().unwrap();
        (all, pending)
    }

    #[test]
    fn a_followed_hash_is_the_hash_of_what_was_written() {
        threads::set_limit(4);
        let dir = tempfile::tempdir().unwrap();
        // Ends in a hole: the file's size is only set after the close.
        let pattern: Vec<(u8, usize)> = PATTERN
            .iter()
            .copied()
            .chain([(0, (4 << 20) + 3)])
            .collect();
        let len: usize = pattern.iter().map(|p| p.1).sum();
        let path = dir.path().join("f");
        let (bytes, pending) = write_followed(&path, &pattern, len as u64);
        assert_eq!(bytes.len(), len);
        assert_eq!(pending.wait().unwrap().finish(), Digest::of(&bytes));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn an_abandoned_follow_stops_its_thread() {
        threads::set_limit(4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let mut hash = Followed::new(PlainSha256::default(), &file, &path, 1 << 40).unwrap();
        // A terabyte hole written: dropping the hash must not hash it all,
        // nor wait for the rest of the file.
        hash.written(Piece::Zeros(1 << 40), 1 << 40).unwrap();
        drop(hash);
        let mut waiting = Followed::new(PlainSha256::default(), &file, &path, 1 << 40).unwrap();
        waiting.written(Piece::Data(&[1; 4096]), 4096).unwrap();
        drop(waiting);
    }

    #[test]
    fn an_abandoned_feed_stops_its_thread() {
        threads::set_limit(4);
        let mut off = Offloaded::new(PlainSha256::default(), 1 << 40);
        off.data(&[1; 4096]);
        off.zeros(1 << 40);
        off.data(&[1; 4096]);
        // Dropping it must not hash the terabyte.
        drop(off);
    }
}
