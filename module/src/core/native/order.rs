//! The orders a queue keeps over its tasks, as slot numbers into the slab:
//! the ready order (priority, then sequence number) and the time orders of
//! delayed tasks, leases, dead letters and kept results.
//!
//! Ties in a time order are broken by task id, byte by byte, the way a
//! sorted set orders members of equal score: the scripts engine keeps these
//! orders in sorted sets, and both engines must hand out and list tasks in
//! the same order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Slots per block of a `SlotDeque`: 1 KiB blocks keep the slack of a large
/// lane under one block and a small lane small.
const BLOCK: usize = 256;

/// A first-in first-out queue of slot numbers in fixed blocks: 4 bytes an
/// entry, at most one block of slack, and no reallocation (and copy) of the
/// whole queue as it grows.
#[derive(Default, Clone)]
pub struct SlotDeque {
    blocks: VecDeque<Box<[u32; BLOCK]>>,
    /// Index of the first entry in the first block.
    head: usize,
    len: usize,
}

impl SlotDeque {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_back(&mut self, slot: u32) {
        let end = self.head + self.len;
        if end == self.blocks.len() * BLOCK {
            self.blocks.push_back(Box::new([0; BLOCK]));
        }
        self.blocks[end / BLOCK][end % BLOCK] = slot;
        self.len += 1;
    }

    pub fn front(&self) -> Option<u32> {
        (self.len > 0).then(|| self.blocks[0][self.head])
    }

    pub fn back(&self) -> Option<u32> {
        (self.len > 0).then(|| {
            let last = self.head + self.len - 1;
            self.blocks[last / BLOCK][last % BLOCK]
        })
    }

    pub fn pop_front(&mut self) -> Option<u32> {
        let slot = self.front()?;
        self.head += 1;
        self.len -= 1;
        if self.head == BLOCK || self.len == 0 {
            // An empty deque keeps no block; a drained first block goes.
            if self.len == 0 {
                self.blocks.clear();
            } else {
                self.blocks.pop_front();
            }
            self.head = 0;
        }
        Some(slot)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (self.head..self.head + self.len).map(|i| self.blocks[i / BLOCK][i % BLOCK])
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<usize>() + self.blocks.len() * BLOCK * 4
    }
}

/// The tasks of one priority that are ready: those that became ready in
/// sequence order sit in `fifo` (new sequence numbers are always the
/// queue's highest, so appending keeps it sorted); a task returned to its
/// old place (a release) goes to `returned`, ordered by its old sequence
/// number. Fetching takes the lower of the two fronts.
///
/// A cancelled task leaves a tombstone in `fifo` (its slot stays reserved
/// until the entry reaches the front), so `fifo` never needs a removal from
/// its middle.
#[derive(Default, Clone)]
pub struct Lane {
    pub fifo: SlotDeque,
    pub returned: BTreeSet<(u64, u32)>,
}

/// Every ready lane, highest priority first. A queue uses a handful of
/// priorities, so a short sorted vector beats a map.
#[derive(Default, Clone)]
pub struct Lanes {
    lanes: Vec<(i8, Lane)>,
}

impl Lanes {
    /// The lane of `priority`, created if missing.
    pub fn lane_mut(&mut self, priority: i8) -> &mut Lane {
        let at = match self.lanes.binary_search_by(|(p, _)| priority.cmp(p)) {
            Ok(at) => at,
            Err(at) => {
                self.lanes.insert(at, (priority, Lane::default()));
                at
            }
        };
        &mut self.lanes[at].1
    }

    pub fn lane(&self, priority: i8) -> Option<&Lane> {
        self.lanes
            .binary_search_by(|(p, _)| priority.cmp(p))
            .ok()
            .map(|at| &self.lanes[at].1)
    }

    /// Drops the lane of `priority` if it holds nothing.
    pub fn drop_if_empty(&mut self, priority: i8) {
        if let Ok(at) = self.lanes.binary_search_by(|(p, _)| priority.cmp(p)) {
            let lane = &self.lanes[at].1;
            if lane.fifo.is_empty() && lane.returned.is_empty() {
                self.lanes.remove(at);
            }
        }
    }

    /// Lanes, highest priority first.
    pub fn iter(&self) -> impl Iterator<Item = (i8, &Lane)> {
        self.lanes.iter().map(|(p, l)| (*p, l))
    }

    pub fn priorities(&self) -> Vec<i8> {
        self.lanes.iter().map(|(p, _)| *p).collect()
    }

    pub fn clear(&mut self) {
        self.lanes.clear();
    }

    pub fn heap_bytes(&self) -> usize {
        self.lanes.capacity() * std::mem::size_of::<(i8, Lane)>()
            + self
                .lanes
                .iter()
                .map(|(_, l)| l.fifo.heap_bytes() + l.returned.len() * 24)
                .sum::<usize>()
    }
}

/// The first eight bytes of an id, big-endian and zero-padded: comparing
/// these first orders most ids without reading them from their tasks.
fn prefix(id: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = id.len().min(8);
    b[..n].copy_from_slice(&id[..n]);
    u64::from_be_bytes(b)
}

/// A slot in a time order, with its id's prefix.
#[derive(Clone, Copy)]
struct Entry {
    prefix: u64,
    slot: u32,
}

/// Slots that share one time, in id order. Most times hold one task.
#[derive(Clone)]
enum Group {
    One(Entry),
    Many(Vec<Entry>),
}

impl Group {
    fn as_slice(&self) -> &[Entry] {
        match self {
            Group::One(entry) => std::slice::from_ref(entry),
            Group::Many(entries) => entries,
        }
    }
}

/// Where an entry for `id` goes in a group sorted by id.
fn position<'a>(entries: &[Entry], id: &[u8], id_of: &impl Fn(u32) -> &'a [u8]) -> usize {
    let p = prefix(id);
    entries.partition_point(|e| e.prefix < p || (e.prefix == p && id_of(e.slot) < id))
}

/// Tasks ordered by a time (run-at, lease deadline, death, expiry), ties by
/// id. The ids live in the slab, so every operation that compares ids is
/// handed a way to read them.
#[derive(Default, Clone)]
pub struct TimeIndex {
    by_time: BTreeMap<i64, Group>,
    len: usize,
}

impl TimeIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn first_time(&self) -> Option<i64> {
        self.by_time.keys().next().copied()
    }

    pub fn insert<'a>(&mut self, at: i64, slot: u32, id_of: impl Fn(u32) -> &'a [u8]) {
        self.len += 1;
        let id = id_of(slot);
        let entry = Entry {
            prefix: prefix(id),
            slot,
        };
        match self.by_time.get_mut(&at) {
            None => {
                self.by_time.insert(at, Group::One(entry));
            }
            Some(group) => {
                let mut entries = match std::mem::replace(group, Group::Many(Vec::new())) {
                    Group::One(other) => {
                        let mut v = Vec::with_capacity(4);
                        v.push(other);
                        v
                    }
                    Group::Many(entries) => entries,
                };
                let pos = position(&entries, id, &id_of);
                entries.insert(pos, entry);
                *group = Group::Many(entries);
            }
        }
    }

    /// Removes `slot` filed under `at`; false if it was not there.
    pub fn remove<'a>(&mut self, at: i64, slot: u32, id_of: impl Fn(u32) -> &'a [u8]) -> bool {
        let Some(group) = self.by_time.get_mut(&at) else {
            return false;
        };
        let removed = match group {
            Group::One(e) if e.slot == slot => {
                self.by_time.remove(&at);
                true
            }
            Group::One(_) => false,
            Group::Many(entries) => {
                let pos = position(entries, id_of(slot), &id_of);
                if entries.get(pos).is_some_and(|e| e.slot == slot) {
                    entries.remove(pos);
                    match entries.len() {
                        0 => {
                            self.by_time.remove(&at);
                        }
                        1 => *group = Group::One(entries[0]),
                        _ => {}
                    }
                    true
                } else {
                    false
                }
            }
        };
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Removes and returns up to `limit` entries with a time `<= upto`, in
    /// order.
    pub fn pop_due(&mut self, upto: i64, limit: usize) -> Vec<(i64, u32)> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(mut entry) = self.by_time.first_entry() else {
                break;
            };
            let at = *entry.key();
            if at > upto {
                break;
            }
            let room = limit - out.len();
            match entry.get_mut() {
                Group::One(e) => {
                    out.push((at, e.slot));
                    entry.remove();
                }
                Group::Many(entries) if entries.len() <= room => {
                    out.extend(entries.iter().map(|e| (at, e.slot)));
                    entry.remove();
                }
                Group::Many(entries) => {
                    out.extend(entries.drain(..room).map(|e| (at, e.slot)));
                    if entries.len() == 1 {
                        let last = entries[0];
                        *entry.get_mut() = Group::One(last);
                    }
                }
            }
        }
        self.len -= out.len();
        out
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, u32)> + '_ {
        self.by_time
            .iter()
            .flat_map(|(at, group)| group.as_slice().iter().map(move |e| (*at, e.slot)))
    }

    /// How many entries have a time `<= upto`: a walk over the due times
    /// only, which the timer keeps few.
    pub fn count_upto(&self, upto: i64) -> usize {
        self.by_time
            .range(..=upto)
            .map(|(_, g)| g.as_slice().len())
            .sum()
    }

    pub fn clear(&mut self) {
        self.by_time.clear();
        self.len = 0;
    }

    /// An estimate of the heap bytes, in constant time: B-tree nodes hold
    /// eleven entries and run about two-thirds full; entries that share a
    /// time take sixteen bytes each in their group.
    pub fn heap_bytes(&self) -> usize {
        let groups = self.by_time.len();
        groups * (std::mem::size_of::<(i64, Group)>() * 3 / 2)
            + (self.len - groups) * std::mem::size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deque_is_fifo_across_blocks() {
        let mut d = SlotDeque::default();
        for i in 0..(3 * BLOCK as u32 + 7) {
            d.push_back(i);
        }
        assert_eq!(d.len(), 3 * BLOCK + 7);
        for i in 0..(2 * BLOCK as u32) {
            assert_eq!(d.pop_front(), Some(i));
        }
        d.push_back(9999);
        assert_eq!(d.back(), Some(9999));
        let rest: Vec<u32> = d.iter().collect();
        assert_eq!(rest.len(), BLOCK + 8);
        assert_eq!(rest[0], 2 * BLOCK as u32);
        assert_eq!(*rest.last().unwrap(), 9999);
        while d.pop_front().is_some() {}
        assert!(d.is_empty());
        assert_eq!(d.blocks.len(), 0, "an empty deque holds no block");
    }

    #[test]
    fn lanes_iterate_highest_priority_first() {
        let mut lanes = Lanes::default();
        for p in [0i8, 100, -100, 5] {
            lanes.lane_mut(p).fifo.push_back(p as u32);
        }
        assert_eq!(lanes.priorities(), [100, 5, 0, -100]);
        lanes.lane_mut(5).fifo.pop_front();
        lanes.drop_if_empty(5);
        assert_eq!(lanes.priorities(), [100, 0, -100]);
    }

    #[test]
    fn time_index_orders_by_time_then_id() {
        let ids: Vec<&[u8]> = vec![b"d", b"a", b"c", b"b", b"e"];
        let id_of = |s: u32| ids[s as usize];
        let mut t = TimeIndex::default();
        t.insert(20, 0, id_of); // d@20
        t.insert(10, 2, id_of); // c@10
        t.insert(20, 1, id_of); // a@20
        t.insert(10, 3, id_of); // b@10
        t.insert(30, 4, id_of); // e@30
        let order: Vec<&[u8]> = t.iter().map(|(_, s)| id_of(s)).collect();
        assert_eq!(order, [b"b", b"c", b"a", b"d", b"e"]);
        assert_eq!(t.count_upto(20), 4);
        assert!(t.remove(20, 1, id_of));
        assert!(!t.remove(20, 1, id_of));
        assert_eq!(t.pop_due(25, 2), [(10, 3), (10, 2)]);
        // Ids longer than the prefix, sharing it, still order by their bytes.
        let long: Vec<&[u8]> = vec![b"task-000b", b"task-000a", b"task-000", b"task-00"];
        let long_of = |s: u32| long[s as usize];
        let mut l = TimeIndex::default();
        for s in 0..4 {
            l.insert(1, s, long_of);
        }
        let order: Vec<&[u8]> = l.iter().map(|(_, s)| long_of(s)).collect();
        assert_eq!(
            order,
            [&b"task-00"[..], b"task-000", b"task-000a", b"task-000b"]
        );
        assert!(l.remove(1, 0, long_of) && l.remove(1, 2, long_of));
        assert_eq!(t.pop_due(25, 5), [(20, 0)]);
        assert_eq!(t.first_time(), Some(30));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_partial_pop_leaves_the_rest_of_a_group() {
        let ids: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i]).collect();
        let id_of = |s: u32| ids[s as usize].as_slice();
        let mut t = TimeIndex::default();
        for s in (0..5).rev() {
            t.insert(7, s, id_of);
        }
        assert_eq!(t.pop_due(7, 4), [(7, 0), (7, 1), (7, 2), (7, 3)]);
        assert_eq!(t.iter().collect::<Vec<_>>(), [(7, 4)]);
        assert!(t.remove(7, 4, id_of));
        assert!(t.is_empty());
    }
}
