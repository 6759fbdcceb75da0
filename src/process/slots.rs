//! Hash slots: a fair (first come, first served) counting semaphore that
//! keeps the threads hashing at once to [`threads::available`], however
//! many files are in flight. A holder gives its slot back and queues again
//! after each slice of work ([`Slot::turn`]), so files take turns on the
//! cores and none runs alone at the end while the others wait.
//!
//! With the timeline on ([`timeline`]), each wait, take and give-back is a
//! mark made under the queue's lock, so the marks come in the order the
//! slots changed hands and the threads hashing at once can be counted
//! from them.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::process::{threads, timeline};

/// How long a waiter sleeps before it looks at its stop condition again.
const NAP: Duration = Duration::from_millis(100);

/// A fair counting semaphore whose size is read on every admission.
pub struct Slots {
    state: Mutex<Queue>,
    changed: Condvar,
    size: fn() -> usize,
}

struct Queue {
    /// The next ticket handed to a waiter.
    next: u64,
    /// Tickets waiting, oldest first.
    waiting: VecDeque<u64>,
    /// Slots taken.
    held: usize,
}

/// A slot taken from [`Slots`], given back when dropped.
pub struct Slot<'a> {
    slots: &'a Slots,
}

/// The process's hash slots, as many as [`threads::available`].
pub fn hash_slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(|| Slots::new(threads::available))
}

impl Slots {
    /// Slots as many as `size()` says at each admission.
    pub fn new(size: fn() -> usize) -> Slots {
        Slots {
            state: Mutex::new(Queue {
                next: 0,
                waiting: VecDeque::new(),
                held: 0,
            }),
            changed: Condvar::new(),
            size,
        }
    }

    /// Wait for a slot, after every earlier waiter; `None` once `stopped`
    /// says so (it is asked at least every [`NAP`]).
    pub fn take(&self, stopped: &dyn Fn() -> bool) -> Option<Slot<'_>> {
        let mut q = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = q.next;
        q.next += 1;
        q.waiting.push_back(ticket);
        let mut waited = false;
        loop {
            if q.waiting.front() == Some(&ticket) && q.held < (self.size)().max(1) {
                q.waiting.pop_front();
                q.held += 1;
                timeline::mark("hash slot: take");
                // The next in line may fit too.
                self.changed.notify_all();
                return Some(Slot { slots: self });
            }
            if stopped() {
                q.waiting.retain(|&t| t != ticket);
                self.changed.notify_all();
                return None;
            }
            if !waited {
                waited = true;
                timeline::mark("hash slot: wait");
            }
            q = self
                .changed
                .wait_timeout(q, NAP)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn give_back(&self) {
        let mut q = self.state.lock().unwrap_or_else(|p| p.into_inner());
        q.held -= 1;
        timeline::mark("hash slot: give");
        self.changed.notify_all();
    }

    fn anyone_waiting(&self) -> bool {
        let q = self.state.lock().unwrap_or_else(|p| p.into_inner());
        !q.waiting.is_empty()
    }
}

impl<'a> Slot<'a> {
    /// Let earlier waiters have their turn: give the slot back and queue
    /// for it again when anyone waits; `None` once `stopped` says so
    /// while waiting (the slot is then given back).
    pub fn turn(self, stopped: &dyn Fn() -> bool) -> Option<Slot<'a>> {
        if !self.slots.anyone_waiting() {
            return Some(self);
        }
        let slots = self.slots;
        drop(self);
        slots.take(stopped)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn two() -> usize {
        2
    }

    #[test]
    fn no_more_than_the_size_hold_at_once_and_every_waiter_is_served() {
        let slots = Slots::new(two);
        let holding = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let served = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let mut slot = slots.take(&|| false).expect("never stopped");
                    for _ in 0..50 {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        holding.fetch_sub(1, Ordering::SeqCst);
                        slot = slot.turn(&|| false).expect("never stopped");
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(served.load(Ordering::SeqCst), 6);
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(slots.state.lock().unwrap().held, 0);
    }

    #[test]
    fn waiters_are_served_in_order() {
        let slots = Arc::new(Slots::new(|| 1));
        let first = slots.take(&|| false).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (mine, order) = (Arc::clone(&slots), Arc::clone(&order));
            waiters.push(std::thread::spawn(move || {
                let _slot = mine.take(&|| false).unwrap();
                order.lock().unwrap().push(i);
            }));
            // Queue them one after the other.
            while slots.state.lock().unwrap().waiting.len() < i + 1 {
                std::thread::yield_now();
            }
        }
        // The holder's turn goes behind the three waiting.
        let again = first.turn(&|| false).unwrap();
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        drop(again);
        for w in waiters {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_stopped_waiter_returns_and_leaves_the_queue() {
        let slots = Slots::new(|| 1);
        let held = slots.take(&|| false).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| slots.take(&|| stop.load(Ordering::SeqCst)).is_none());
            while slots.state.lock().unwrap().waiting.is_empty() {
                std::thread::yield_now();
            }
            stop.store(true, Ordering::SeqCst);
            assert!(waiter.join().unwrap());
        });
        assert!(slots.state.lock().unwrap().waiting.is_empty());
        drop(held);
        assert!(
            slots.take(&|| true).is_some(),
            "a free slot is taken at once"
        );
    }
}
