//! A hash fed on a thread of its own. SHA-256 of one file is serial, so a
//! file's integrity hash runs beside whatever reads, decompresses, writes and
//! computes the other digests: the reader hands it blocks through a bounded
//! queue (at most [`DEPTH`] blocks of [`BLOCK_BYTES`] in flight, reused) and
//! runs of zeros as lengths, so a hole costs the reader nothing and the hash
//! never waits for the reader's other work.
//!
//! With one thread allowed ([`crate::process::threads`]), or for a small
//! file, the sink is fed inline instead: no handoff costs anything there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, channel, sync_channel};
use std::thread::JoinHandle;

use crate::model::digest::LogicalSink;
use crate::model::error::{Error, Result};
use crate::process::{interrupt, threads};

/// Size of the blocks handed to the hashing thread.
pub const BLOCK_BYTES: usize = 1 << 20;

/// Blocks one file may have in flight: its bound on memory.
pub const DEPTH: usize = 4;

/// Files hashed at once, whatever the cores: each holds up to
/// [`DEPTH`] × [`BLOCK_BYTES`] in its queue plus its reader's buffer, so
/// this keeps the whole under 64 MiB.
pub const MAX_FILES: usize = 6;

/// How many files to hash at once here: the threads allowed, at most
/// [`MAX_FILES`].
pub fn files_at_once() -> usize {
    threads::available().clamp(1, MAX_FILES)
}

/// Files smaller than this are hashed inline: a thread would cost more than
/// the overlap gains.
pub const OFFLOAD_FROM: u64 = 8 << 20;

/// The most zero bytes hashed between two looks at the stop flag.
const STEP: u64 = 8 << 20;

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

/// A hashing thread and the flag that stops it.
struct Worker<S> {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<S>>>,
}

impl<S: LogicalSink + Send + 'static> Offloaded<S> {
    /// Feed `sink` with the logical bytes of a file of `len` bytes: on its
    /// own thread when that can pay.
    pub fn new(sink: S, len: u64) -> Self {
        if len < OFFLOAD_FROM || threads::available() < 2 {
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
                        stop: Arc::new(AtomicBool::new(false)),
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
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let halt = move || stopped.load(Ordering::Relaxed) || interrupt::pending().is_some();
        let handle = std::thread::Builder::new()
            .name("msb-hash".into())
            .spawn(move || {
                for msg in rx {
                    if halt() {
                        return None;
                    }
                    match msg {
                        Msg::Data(mut block) => {
                            sink.data(&block);
                            block.clear();
                            let _ = free_tx.send(block);
                        }
                        Msg::Zeros(mut n) => {
                            while n > 0 {
                                let step = n.min(STEP);
                                sink.zeros(step);
                                n -= step;
                                if n > 0 && halt() {
                                    return None;
                                }
                            }
                        }
                    }
                }
                Some(sink)
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
                stop,
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
        self.worker.stop.store(true, Ordering::Relaxed);
        self.tx = None;
    }
}

impl<S> Worker<S> {
    fn join(&mut self) -> Option<S> {
        let handle = self.handle.take()?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = self.join();
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
    /// The sink once it has hashed everything; an interrupt (SIGINT,
    /// SIGTERM) stops it early and is the error.
    pub fn wait(self) -> Result<S> {
        match self.0 {
            PendingState::Done(s) => Ok(s),
            PendingState::Running(mut w) => match w.join() {
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

    #[test]
    fn offloaded_hash_matches_inline() {
        threads::set_limit(4);
        let pattern = [
            (7, 10),
            (0, 3 << 20),
            (9, 5 << 20),
            (0, 17),
            (0, 1 << 20),
            (3, 1),
            (5, (2 << 20) + 5),
        ];
        let len: usize = pattern.iter().map(|p| p.1).sum();
        let mut off = Offloaded::new(PlainSha256::default(), len as u64);
        assert!(matches!(off.state, State::Thread(_)));
        let bytes = feed(&mut off, &pattern);
        assert_eq!(off.finish().unwrap().finish(), Digest::of(&bytes));
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
