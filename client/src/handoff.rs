//! Hands a worker's batches straight to the threads that run its tasks.
//!
//! A worker that runs tasks on threads of its own (the Python worker's sync
//! tasks) would otherwise receive every batch on one thread (its event
//! loop) and pass it on to a task thread: two wake-ups and, in Python, two
//! turns with the interpreter's lock per batch. With a `Handoff`, the fetch
//! loop `offer`s each batch:
//!
//! - to a thread waiting in `take`, if one is (one batch per waiting
//!   thread);
//! - else, if the last thread to `take` asked for it (its tasks are short),
//!   it is *parked* for the next thread that comes, which takes it without
//!   waiting: a thread running short tasks takes the next batch when it
//!   has run the last one, and nothing else wakes up. The caller gives it
//!   a deadline (`unpark_with`), after which it is delivered the usual way,
//!   so a batch is not held up behind threads busy with a long task;
//! - else it is declined, for the caller to deliver the usual way.
//!
//! A batch taken is *in hand* until the thread says it has recorded it
//! (`accepted`): `close` waits for batches in hand, so a worker that stops
//! knows every batch it fetched, to run or to give back.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Handoff<T> {
    state: Mutex<State<T>>,
    /// Signalled when a batch is handed to a waiting thread, or on close.
    offered: Condvar,
    /// Signalled when the last batch in hand is accepted.
    accepted: Condvar,
}

/// What became of an offered batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Handed to a waiting thread.
    Handed,
    /// Parked for the next thread that comes to take; the id is for
    /// `unpark_with`.
    Parked(u64),
    /// No thread takes batches (or the handoff is closed): deliver it
    /// another way.
    Declined(T),
}

struct State<T> {
    /// Threads in `take` that no handed batch has claimed yet.
    waiting: usize,
    /// Batches handed to waiting threads and not taken yet.
    handed: VecDeque<T>,
    /// Batches waiting for the next thread, oldest first, with their ids.
    parked: VecDeque<(u64, T)>,
    next_id: u64,
    /// Whether batches no thread waits for are parked (the last `take`
    /// asked for it); until a thread comes, they are declined (a worker
    /// whose tasks never use threads).
    parking: bool,
    /// Batches taken and not yet accepted.
    in_hand: usize,
    closed: bool,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff {
            state: Mutex::new(State {
                waiting: 0,
                handed: VecDeque::new(),
                parked: VecDeque::new(),
                next_id: 0,
                parking: false,
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

    /// Offers a batch: see the module's documentation.
    pub fn offer(&self, batch: T) -> Offer<T> {
        let mut st = self.state();
        if st.closed {
            return Offer::Declined(batch);
        }
        if st.waiting > 0 {
            st.waiting -= 1;
            st.handed.push_back(batch);
            self.offered.notify_one();
            return Offer::Handed;
        }
        if !st.parking {
            return Offer::Declined(batch);
        }
        let id = st.next_id;
        st.next_id += 1;
        st.parked.push_back((id, batch));
        Offer::Parked(id)
    }

    /// Whether batches that come while no thread waits are parked (until
    /// the next `take`, which says again).
    pub fn set_parking(&self, park: bool) {
        self.state().parking = park;
    }

    /// Takes the parked batch `id` if no thread has, and passes it to
    /// `deliver` under the handoff's lock (so a `close` or
    /// `drain_parked_with` that comes later finds it delivered).
    pub fn unpark_with(&self, id: u64, deliver: impl FnOnce(T)) {
        let mut st = self.state();
        if let Some(at) = st.parked.iter().position(|(parked, _)| *parked == id) {
            if let Some((_, batch)) = st.parked.remove(at) {
                deliver(batch);
            }
        }
    }

    /// Passes every parked batch to `deliver`, oldest first, under the
    /// handoff's lock.
    pub fn drain_parked_with(&self, mut deliver: impl FnMut(T)) {
        let mut st = self.state();
        while let Some((_, batch)) = st.parked.pop_front() {
            deliver(batch);
        }
    }

    /// A parked batch at once, or waits up to `timeout` for a batch handed
    /// to this thread. None when the time is up or the handoff is closed. A
    /// batch taken is in hand until `accepted` is called. `park`: whether
    /// batches that come while no thread waits are parked from now on.
    pub fn take(&self, timeout: Duration, park: bool) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        if st.closed {
            return None;
        }
        st.parking = park;
        if let Some((_, batch)) = st.parked.pop_front() {
            st.in_hand += 1;
            return Some(batch);
        }
        st.waiting += 1;
        loop {
            // The offer that put it there already counted this thread as
            // no longer waiting.
            if let Some(batch) = st.handed.pop_front() {
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

    /// Closes the handoff: `offer` declines every batch from now on, and
    /// `take` returns None. Waits up to `patience` for the batches in hand
    /// to be accepted; returns the batches handed or parked but not taken,
    /// and whether none was left in hand.
    pub fn close(&self, patience: Duration) -> (Vec<T>, bool) {
        let deadline = Instant::now() + patience;
        let mut st = self.state();
        st.closed = true;
        self.offered.notify_all();
        let mut left: Vec<T> = st.handed.drain(..).collect();
        left.extend(st.parked.drain(..).map(|(_, batch)| batch));
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
    const SHORT: Duration = Duration::from_millis(1);

    /// Waits until a thread waits in `take`.
    fn until_waiting<T>(handoff: &Handoff<T>) {
        let deadline = Instant::now() + LONG;
        while handoff.state().waiting == 0 {
            assert!(Instant::now() < deadline, "no thread came to take");
            thread::yield_now();
        }
    }

    fn waiting_taker(handoff: &Arc<Handoff<u32>>) -> thread::JoinHandle<Option<u32>> {
        let taker = {
            let handoff = handoff.clone();
            thread::spawn(move || handoff.take(LONG, true))
        };
        until_waiting(handoff);
        taker
    }

    #[test]
    fn batches_are_declined_until_a_thread_comes_to_take() {
        let handoff = Handoff::new();
        assert_eq!(handoff.offer(1), Offer::Declined(1));
        assert_eq!(handoff.take(SHORT, true), None);
        assert_eq!(handoff.offer(2), Offer::Parked(0));
        assert_eq!(handoff.take(SHORT, true), Some(2));
    }

    #[test]
    fn a_waiting_thread_takes_the_batch_offered() {
        let handoff = Arc::new(Handoff::new());
        let taker = waiting_taker(&handoff);
        assert_eq!(handoff.offer(7), Offer::Handed);
        assert_eq!(taker.join().unwrap(), Some(7));
    }

    #[test]
    fn one_batch_per_waiting_thread_the_next_is_parked() {
        let handoff = Arc::new(Handoff::new());
        let taker = waiting_taker(&handoff);
        assert_eq!(handoff.offer(1), Offer::Handed);
        // The thread is claimed, even if it has not woken yet.
        assert_eq!(handoff.offer(2), Offer::Parked(0));
        assert_eq!(taker.join().unwrap(), Some(1));
        assert_eq!(handoff.take(SHORT, true), Some(2));
    }

    #[test]
    fn batches_are_declined_once_a_thread_asks_for_no_parking() {
        let handoff = Handoff::new();
        assert_eq!(handoff.take(SHORT, true), None);
        assert_eq!(handoff.offer(1), Offer::Parked(0));
        assert_eq!(handoff.take(SHORT, false), Some(1));
        assert_eq!(handoff.offer(2), Offer::Declined(2));
    }

    #[test]
    fn a_parked_batch_not_taken_in_time_is_delivered_once() {
        let handoff = Handoff::new();
        assert_eq!(handoff.take(SHORT, true), None);
        let Offer::Parked(first) = handoff.offer(1) else {
            panic!("not parked")
        };
        let Offer::Parked(second) = handoff.offer(2) else {
            panic!("not parked")
        };
        let mut delivered = vec![];
        handoff.unpark_with(second, |b| delivered.push(b));
        handoff.unpark_with(second, |b| delivered.push(b));
        assert_eq!(delivered, vec![2]);
        // Taken before its deadline: nothing to deliver.
        assert_eq!(handoff.take(SHORT, true), Some(1));
        handoff.unpark_with(first, |b| delivered.push(b));
        assert_eq!(delivered, vec![2]);
    }

    #[test]
    fn draining_delivers_the_parked_batches_in_order() {
        let handoff = Handoff::new();
        assert_eq!(handoff.take(SHORT, true), None);
        for b in 1..=3 {
            assert!(matches!(handoff.offer(b), Offer::Parked(_)));
        }
        let mut delivered = vec![];
        handoff.drain_parked_with(|b| delivered.push(b));
        assert_eq!(delivered, vec![1, 2, 3]);
        assert_eq!(handoff.take(SHORT, true), None);
    }

    #[test]
    fn close_returns_what_was_not_taken_and_waits_for_what_is_in_hand() {
        let handoff = Arc::new(Handoff::new());
        let taker = waiting_taker(&handoff);
        assert_eq!(handoff.offer(1), Offer::Handed);
        assert_eq!(handoff.offer(2), Offer::Parked(0));
        assert_eq!(taker.join().unwrap(), Some(1));

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
        assert_eq!(handoff.offer(4), Offer::Declined(4));
        assert_eq!(handoff.take(LONG, true), None);
    }

    #[test]
    fn close_gives_up_on_a_batch_never_accepted() {
        let handoff = Arc::new(Handoff::new());
        let taker = waiting_taker(&handoff);
        assert_eq!(handoff.offer(1), Offer::Handed);
        assert_eq!(taker.join().unwrap(), Some(1));
        assert_eq!(handoff.close(Duration::from_millis(20)), (vec![], false));
    }

    #[test]
    fn close_wakes_a_waiting_thread() {
        let handoff = Arc::new(Handoff::new());
        let taker = waiting_taker(&handoff);
        assert_eq!(handoff.close(LONG), (vec![], true));
        assert_eq!(taker.join().unwrap(), None);
    }
}
