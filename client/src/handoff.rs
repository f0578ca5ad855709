//! Hands a worker's batches straight to a thread that waits for work.
//!
//! A worker that runs tasks on threads of its own (the Python worker's sync
//! tasks) would otherwise receive every batch on one thread (its event
//! loop) and pass it on to a task thread: two wake-ups and, in Python, two
//! turns with the interpreter's lock per batch. With a `Handoff`, a task
//! thread that has nothing to do waits in `take`; the fetch loop `offer`s
//! each batch, and it goes straight to that thread when one waits, or back
//! to the caller (to deliver the usual way) when none does.
//!
//! A batch taken is *in hand* until the thread says it has recorded it
//! (`accepted`): `close` waits for batches in hand, so a worker that stops
//! knows every batch it fetched, to run or to give back.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Handoff<T> {
    state: Mutex<State<T>>,
    /// Signalled when a batch is offered to a waiting thread, or on close.
    offered: Condvar,
    /// Signalled when a batch in hand is accepted.
    accepted: Condvar,
}

struct State<T> {
    /// Threads in `take` that no offered batch has claimed yet.
    waiting: usize,
    /// Batches offered to waiting threads and not taken yet.
    batches: VecDeque<T>,
    /// Batches taken and not yet accepted.
    in_hand: usize,
    closed: bool,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff {
            state: Mutex::new(State {
                waiting: 0,
                batches: VecDeque::new(),
                in_hand: 0,
                closed: false,
            }),
            offered: Condvar::new(),
            accepted: Condvar::new(),
        }
    }
}

impl<T> Handoff<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here panics while holding the lock; a poisoned lock's
        // state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `batch` to a thread waiting in `take`; returns it when no
    /// thread waits (or the handoff is closed), for the caller to deliver
    /// another way. One batch per waiting thread: a second batch offered
    /// before that thread wakes is returned, not left until some thread
    /// next waits.
    pub fn offer(&self, batch: T) -> Option<T> {
        let mut st = self.state();
        if st.closed || st.waiting == 0 {
            return Some(batch);
        }
        st.waiting -= 1;
        st.batches.push_back(batch);
        self.offered.notify_one();
        None
    }

    /// Waits up to `timeout` for a batch offered to this thread. None when
    /// the time is up or the handoff is closed. A batch taken is in hand
    /// until `accepted` is called.
    pub fn take(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        if st.closed {
            return None;
        }
        st.waiting += 1;
        loop {
            // The offer that put it there already counted this thread as
            // no longer waiting.
            if let Some(batch) = st.batches.pop_front() {
                st.in_hand += 1;
                return Some(batch);
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                st.waiting -= 1;
                return None;
            }
            st = self
                .offered
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The thread that took a batch has recorded it.
    pub fn accepted(&self) {
        let mut st = self.state();
        st.in_hand = st.in_hand.saturating_sub(1);
        if st.in_hand == 0 {
            self.accepted.notify_all();
        }
    }

    /// Closes the handoff: `offer` returns every batch from now on, and
    /// `take` returns None. Waits up to `patience` for the batches in hand
    /// to be accepted; returns the batches offered but not taken, and
    /// whether none was left in hand.
    pub fn close(&self, patience: Duration) -> (Vec<T>, bool) {
        let deadline = Instant::now() + patience;
        let mut st = self.state();
        st.closed = true;
        self.offered.notify_all();
        let left: Vec<T> = st.batches.drain(..).collect();
        while st.in_hand > 0 {
            let now = Instant::now();
            if now >= deadline {
                return (left, false);
            }
            st = self
                .accepted
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        (left, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    const LONG: Duration = Duration::from_secs(10);

    /// Waits until a thread waits in `take`.
    fn until_waiting<T>(handoff: &Handoff<T>) {
        let deadline = Instant::now() + LONG;
        while handoff.state().waiting == 0 {
            assert!(Instant::now() < deadline, "no thread came to take");
            thread::yield_now();
        }
    }

    #[test]
    fn a_batch_goes_back_when_no_thread_waits() {
        let handoff = Handoff::new();
        assert_eq!(handoff.offer(1), Some(1));
        assert_eq!(handoff.take(Duration::from_millis(1)), None);
    }

    #[test]
    fn a_waiting_thread_takes_the_batch_offered() {
        let handoff = Arc::new(Handoff::new());
        let taker = {
            let handoff = handoff.clone();
            thread::spawn(move || handoff.take(LONG))
        };
        until_waiting(&handoff);
        assert_eq!(handoff.offer(7), None);
        assert_eq!(taker.join().unwrap(), Some(7));
    }

    #[test]
    fn one_batch_per_waiting_thread() {
        let handoff = Arc::new(Handoff::new());
        let taker = {
            let handoff = handoff.clone();
            thread::spawn(move || handoff.take(LONG))
        };
        until_waiting(&handoff);
        assert_eq!(handoff.offer(1), None);
        // The thread is claimed, even if it has not woken yet.
        assert_eq!(handoff.offer(2), Some(2));
        assert_eq!(taker.join().unwrap(), Some(1));
    }

    #[test]
    fn a_thread_that_gives_up_is_no_longer_offered_batches() {
        let handoff: Handoff<u32> = Handoff::new();
        assert_eq!(handoff.take(Duration::from_millis(5)), None);
        assert_eq!(handoff.offer(3), Some(3));
    }

    #[test]
    fn close_returns_what_was_not_taken_and_waits_for_what_is_in_hand() {
        let handoff = Arc::new(Handoff::new());
        // One batch taken and in hand, one offered and never taken.
        let first = {
            let handoff = handoff.clone();
            thread::spawn(move || handoff.take(LONG))
        };
        until_waiting(&handoff);
        assert_eq!(handoff.offer(1), None);
        assert_eq!(first.join().unwrap(), Some(1));
        // A second thread counted as waiting that has not woken yet.
        handoff.state().waiting = 1;
        assert_eq!(handoff.offer(2), None);

        let closing = {
            let handoff = handoff.clone();
            thread::spawn(move || handoff.close(LONG))
        };
        let deadline = Instant::now() + LONG;
        while !handoff.state().closed {
            assert!(Instant::now() < deadline);
            thread::yield_now();
        }
        assert!(!closing.is_finished());
        handoff.accepted();
        assert_eq!(closing.join().unwrap(), (vec![2], true));
        assert_eq!(handoff.offer(4), Some(4));
        assert_eq!(handoff.take(LONG), None);
    }

    #[test]
    fn close_gives_up_on_a_batch_never_accepted() {
        let handoff = Arc::new(Handoff::new());
        let taker = {
            let handoff = handoff.clone();
            thread::spawn(move || handoff.take(LONG))
        };
        until_waiting(&handoff);
        assert_eq!(handoff.offer(1), None);
        assert_eq!(taker.join().unwrap(), Some(1));
        assert_eq!(handoff.close(Duration::from_millis(20)), (vec![], false));
    }

    #[test]
    fn close_wakes_a_waiting_thread() {
        let handoff: Arc<Handoff<u32>> = Arc::new(Handoff::new());
        let taker = {
            let handoff = handoff.clone();
            thread::spawn(move || handoff.take(LONG))
        };
        until_waiting(&handoff);
        let started = Instant::now();
        assert_eq!(handoff.close(LONG), (vec![], true));
        assert_eq!(taker.join().unwrap(), None);
        assert!(started.elapsed() < LONG);
    }
}
