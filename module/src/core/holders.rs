//! Which client connections hold which leases, so that the leases of a
//! worker whose connections closed (the process crashed, was killed, lost
//! its network) come back in seconds instead of at their full deadline.
//!
//! A lease is held by the connection that took it (the worker's fetch
//! connection) and by every connection that renewed it (the worker's
//! command connection). Only when the last of them closes is the lease
//! orphaned: it then waits in `pending` until the module's timer cuts it to
//! a short grace (`queue::cut_leases`). A renewal adds its connection and
//! calls off a pending cut, so a worker whose connections dropped and that
//! renews its running leases as soon as it reconnects keeps them, even when
//! the server notices the old connection closing only after the renewal.
//! The index lives in the memory of a primary only and is lost on restart
//! or failover; leases then run to their full deadline, as before. Plain
//! Rust, no FFI: the module keeps one instance and feeds it.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Valkey's `CLIENT ID`: unique for the life of the server, never reused.
pub type ClientId = u64;

type TaskRef = (Vec<u8>, Vec<u8>); // (queue, id)

#[derive(Debug)]
struct Held {
    token: i64,
    /// Open connections that took or renewed this lease (one or two).
    clients: Vec<ClientId>,
}

#[derive(Debug, Default)]
pub struct Holders {
    held: HashMap<TaskRef, Held>,
    by_client: HashMap<ClientId, HashSet<TaskRef>>,
    /// Orphaned leases waiting to be cut: queue -> id -> token.
    pending: BTreeMap<Vec<u8>, HashMap<Vec<u8>, i64>>,
}

impl Holders {
    pub fn new() -> Self {
        Self::default()
    }

    /// `client` took the lease `token` on the task (a new lease: any
    /// record of an earlier lease on the task is dropped).
    pub fn took(&mut self, client: ClientId, queue: &[u8], id: &[u8], token: i64) {
        self.hold(client, (queue.to_vec(), id.to_vec()), token);
    }

    /// `client` renewed the lease `token`: it holds it too, and a cut
    /// waiting for the lease is called off.
    pub fn renewed(&mut self, client: ClientId, queue: &[u8], id: &[u8], token: i64) {
        self.hold(client, (queue.to_vec(), id.to_vec()), token);
    }

    /// The lease `token` on the task ended (acknowledged, failed, released).
    pub fn settled(&mut self, queue: &[u8], id: &[u8], token: i64) {
        let key = (queue.to_vec(), id.to_vec());
        if self.held.get(&key).is_some_and(|h| h.token == token) {
            self.drop_lease(&key);
        }
        self.unpend(queue, id, Some(token));
    }

    /// The connection closed: the leases only it held wait to be cut.
    /// Returns the queues that now have cuts pending.
    pub fn disconnected(&mut self, client: ClientId) -> Vec<Vec<u8>> {
        let Some(tasks) = self.by_client.remove(&client) else {
            return Vec::new();
        };
        let mut queues = Vec::new();
        for key in tasks {
            let Some(held) = self.held.get_mut(&key) else {
                continue;
            };
            held.clients.retain(|c| *c != client);
            if !held.clients.is_empty() {
                continue;
            }
            let token = held.token;
            self.held.remove(&key);
            let (queue, id) = key;
            if !self.pending.contains_key(&queue) {
                queues.push(queue.clone());
            }
            self.pending.entry(queue).or_default().insert(id, token);
        }
        queues
    }

    /// The cuts waiting for `queue`: (id, token) of each lease.
    pub fn take_pending(&mut self, queue: &[u8]) -> Vec<(Vec<u8>, i64)> {
        self.pending
            .remove(queue)
            .map(|tasks| tasks.into_iter().collect())
            .unwrap_or_default()
    }

    /// Leases currently tracked (held or waiting to be cut).
    pub fn len(&self) -> usize {
        self.held.len() + self.pending.values().map(HashMap::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hold(&mut self, client: ClientId, key: TaskRef, token: i64) {
        self.unpend(&key.0, &key.1, None);
        if self.held.get(&key).is_some_and(|h| h.token != token) {
            self.drop_lease(&key); // an earlier lease on the task is over
        }
        let held = self.held.entry(key.clone()).or_insert(Held {
            token,
            clients: Vec::new(),
        });
        if !held.clients.contains(&client) {
            held.clients.push(client);
        }
        self.by_client.entry(client).or_default().insert(key);
    }

    fn drop_lease(&mut self, key: &TaskRef) {
        let Some(held) = self.held.remove(key) else {
            return;
        };
        for client in held.clients {
            if let Some(tasks) = self.by_client.get_mut(&client) {
                tasks.remove(key);
                if tasks.is_empty() {
                    self.by_client.remove(&client);
                }
            }
        }
    }

    fn unpend(&mut self, queue: &[u8], id: &[u8], token: Option<i64>) {
        if let Some(tasks) = self.pending.get_mut(queue) {
            if token.is_none_or(|t| tasks.get(id) == Some(&t)) {
                tasks.remove(id);
            }
            if tasks.is_empty() {
                self.pending.remove(queue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_leaves_its_leases_to_be_cut() {
        let mut h = Holders::new();
        h.took(1, b"{q}", b"a", 10);
        h.took(1, b"{q}", b"b", 11);
        h.took(1, b"{r}", b"c", 12);
        h.took(2, b"{q}", b"d", 13);
        h.settled(b"{q}", b"b", 11);
        let mut queues = h.disconnected(1);
        queues.sort();
        assert_eq!(queues, [b"{q}".to_vec(), b"{r}".to_vec()]);
        assert_eq!(h.take_pending(b"{q}"), [(b"a".to_vec(), 10)]);
        assert_eq!(h.take_pending(b"{r}"), [(b"c".to_vec(), 12)]);
        assert!(h.take_pending(b"{q}").is_empty());
        assert!(h.disconnected(1).is_empty());
        assert_eq!(h.len(), 1, "d is still held by connection 2");
    }

    #[test]
    fn a_lease_is_cut_only_once_every_connection_holding_it_closed() {
        let mut h = Holders::new();
        h.took(1, b"{q}", b"a", 10);
        // Renewed over the command connection: both hold it now.
        h.renewed(2, b"{q}", b"a", 10);
        assert!(h.disconnected(2).is_empty());
        // The fetch connection alone holds it again; it closes.
        assert_eq!(h.disconnected(1), [b"{q}".to_vec()]);
        // The worker reconnected and renewed before the cut.
        h.renewed(3, b"{q}", b"a", 10);
        assert!(h.take_pending(b"{q}").is_empty());
        // A renewal that reaches the server before it notices the old
        // connection closing keeps the lease as well.
        h.renewed(4, b"{q}", b"a", 10);
        assert!(h.disconnected(3).is_empty());
        assert_eq!(h.disconnected(4), [b"{q}".to_vec()]);
        assert_eq!(h.take_pending(b"{q}"), [(b"a".to_vec(), 10)]);
        assert!(h.is_empty());
    }

    #[test]
    fn a_lease_taken_again_moves_to_its_new_holder() {
        let mut h = Holders::new();
        h.took(1, b"{q}", b"a", 10);
        h.took(2, b"{q}", b"a", 20); // the first lease expired; a new one
        assert!(h.disconnected(1).is_empty());
        // A stale settlement (old token) leaves the new lease tracked.
        h.settled(b"{q}", b"a", 10);
        assert_eq!(h.disconnected(2), [b"{q}".to_vec()]);
        h.settled(b"{q}", b"a", 20);
        assert!(h.is_empty());
    }
}
