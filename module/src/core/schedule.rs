//! When each queue next needs server-side maintenance (a delayed task
//! falling due, a lease expiring, a result to forget). The module keeps one
//! of these in memory and arms a single timer for the earliest entry, so an
//! idle server does no periodic work at all.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub struct Schedule {
    due_by_queue: HashMap<Vec<u8>, i64>,
    queue_by_due: BTreeSet<(i64, Vec<u8>)>,
}

impl Schedule {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a queue's next due time; `None` forgets the queue.
    pub fn set(&mut self, queue: &[u8], due: Option<i64>) {
        if let Some(old) = self.due_by_queue.remove(queue) {
            self.queue_by_due.remove(&(old, queue.to_vec()));
        }
        if let Some(due) = due {
            self.due_by_queue.insert(queue.to_vec(), due);
            self.queue_by_due.insert((due, queue.to_vec()));
        }
    }

    /// A queue's recorded due time.
    pub fn get(&self, queue: &[u8]) -> Option<i64> {
        self.due_by_queue.get(queue).copied()
    }

    /// Removes and returns every queue due at or before `now`.
    pub fn take_due(&mut self, now: i64) -> Vec<Vec<u8>> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.queue_by_due.first() {
            if *at > now {
                break;
            }
            let (_, queue) = self.queue_by_due.pop_first().expect("checked non-empty");
            self.due_by_queue.remove(&queue);
            due.push(queue);
        }
        due
    }

    pub fn earliest(&self) -> Option<i64> {
        self.queue_by_due.first().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.due_by_queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due_by_queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_queue_first_and_updates_replace() {
        let mut s = Schedule::new();
        s.set(b"{a}", Some(50));
        s.set(b"{b}", Some(20));
        s.set(b"{a}", Some(10));
        assert_eq!(s.earliest(), Some(10));
        assert_eq!(s.take_due(20), vec![b"{a}".to_vec(), b"{b}".to_vec()]);
        assert!(s.is_empty());
        s.set(b"{c}", Some(5));
        s.set(b"{c}", None);
        assert_eq!(s.earliest(), None);
    }
}
