//! One queue spread over many slots.
//!
//! A queue lives in one slot, so one busy queue loads one node of a
//! cluster however many there are. A partitioned queue is N queues of its
//! own, each in its own slot: partition 0 is the queue itself (`{emails}`),
//! partition i the queue `{emails:i}`. A task lives in the partition its id
//! picks: the CRC16 slot of the id (of its hash tag when it has one, as
//! `CLUSTER KEYSLOT` computes it) modulo N. So every id has one partition,
//! found again from the id alone (results, cancellation, unique tasks), and
//! random ids spread evenly; ids that share a hash tag (`{customer-17}...`)
//! share a partition, and with it one FIFO order.

use std::collections::BTreeMap;

use vtasks_protocol::MAX_QUEUE_NAME;

use crate::cluster::key_slot;
use crate::error::{Error, Result};
use crate::queue::QueueName;

/// Most partitions of one queue.
pub const MAX_PARTITIONS: u16 = 1024;

/// The partition counts of the queues that have more than one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partitions {
    counts: BTreeMap<QueueName, u16>,
}

impl Partitions {
    /// From `{queue name: count}`; a count of 1 is a plain queue.
    pub fn new<'a>(counts: impl IntoIterator<Item = (&'a str, u16)>) -> Result<Partitions> {
        let mut map = BTreeMap::new();
        for (name, count) in counts {
            let queue = QueueName::new(name)?;
            if count == 0 || count > MAX_PARTITIONS {
                return Err(Error::InvalidInput(format!(
                    "queue {queue}: {count} partitions; expected 1-{MAX_PARTITIONS}"
                )));
            }
            let longest = format!("{}:{}", queue.name(), count - 1);
            if longest.len() > MAX_QUEUE_NAME {
                return Err(Error::InvalidInput(format!(
                    "queue {queue}: the name of its last partition, {longest}, is longer than \
                     {MAX_QUEUE_NAME} characters"
                )));
            }
            if count > 1 {
                map.insert(queue, count);
            }
        }
        let partitions = Partitions { counts: map };
        // A partition of one queue must not be another configured queue.
        for (queue, count) in &partitions.counts {
            for other in partitions.counts.keys() {
                if other != queue && partitions.logical(other) == *queue {
                    return Err(Error::InvalidInput(format!(
                        "queue {other} is a partition of queue {queue} ({count} partitions)"
                    )));
                }
            }
        }
        Ok(partitions)
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// How many partitions `queue` has (1 unless configured).
    pub fn count(&self, queue: &QueueName) -> u16 {
        self.counts.get(queue).copied().unwrap_or(1)
    }

    /// Every partition of `queue`, partition 0 first.
    pub fn all(&self, queue: &QueueName) -> Vec<QueueName> {
        (0..self.count(queue))
            .map(|i| partition(queue, i))
            .collect()
    }

    /// The partition a task of `queue` with this id lives in.
    pub fn of_task(&self, queue: &QueueName, id: &str) -> QueueName {
        match self.counts.get(queue) {
            Some(&n) => partition(queue, index_of(id, n)),
            None => queue.clone(),
        }
    }

    /// The queue a partition belongs to: `{emails:3}` -> `{emails}` when
    /// `emails` has more than 3 partitions; any other queue is its own.
    pub fn logical(&self, queue: &QueueName) -> QueueName {
        if let Some((base, index)) = queue.name().rsplit_once(':') {
            if let (Ok(base), Ok(index)) = (QueueName::new(base), index.parse::<u16>()) {
                // `emails:03` is not a partition name.
                let canonical = index.to_string() == queue.name().rsplit_once(':').unwrap().1;
                if canonical && index > 0 && index < self.count(&base) {
                    return base;
                }
            }
        }
        queue.clone()
    }

    /// Whether `queue` is a partitioned queue's own name.
    pub fn is_partitioned(&self, queue: &QueueName) -> bool {
        self.counts.contains_key(queue)
    }
}

/// Partition `i` of `queue`: the queue itself for 0, else `{name:i}`.
pub fn partition(queue: &QueueName, i: u16) -> QueueName {
    if i == 0 {
        return queue.clone();
    }
    QueueName::new(&format!("{}:{i}", queue.name())).expect("checked when configured")
}

/// The partition index of a task id among `n`.
pub fn index_of(id: &str, n: u16) -> u16 {
    key_slot(id.as_bytes()) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> QueueName {
        QueueName::new(name).unwrap()
    }

    #[test]
    fn partitions_are_named_after_their_queue() {
        let p = Partitions::new([("emails", 4), ("plain", 1)]).unwrap();
        assert_eq!(
            p.all(&q("emails")),
            [q("emails"), q("emails:1"), q("emails:2"), q("emails:3")]
        );
        assert_eq!(p.all(&q("plain")), [q("plain")]);
        assert!(!p.is_partitioned(&q("plain")));
        assert_eq!(p.logical(&q("emails:3")), q("emails"));
        assert_eq!(p.logical(&q("emails:4")), q("emails:4"));
        assert_eq!(p.logical(&q("emails:03")), q("emails:03"));
        assert_eq!(p.logical(&q("emails")), q("emails"));
        assert_eq!(p.logical(&q("other:1")), q("other:1"));
    }

    #[test]
    fn a_task_id_picks_one_partition_and_ids_spread_evenly() {
        let p = Partitions::new([("emails", 16)]).unwrap();
        let mut per = [0u32; 16];
        for i in 0..16_000 {
            let id = format!("{i:032x}");
            let part = p.of_task(&q("emails"), &id);
            assert_eq!(part, p.of_task(&q("emails"), &id));
            let index = p.all(&q("emails")).iter().position(|x| *x == part).unwrap();
            per[index] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
        // Ids sharing a hash tag share a partition.
        let a = p.of_task(&q("emails"), "{customer-17}a");
        assert_eq!(a, p.of_task(&q("emails"), "{customer-17}b"));
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(Partitions::new([("emails", 0)]).is_err());
        assert!(Partitions::new([("emails", 1025)]).is_err());
        assert!(Partitions::new([("bad name", 2)]).is_err());
        assert!(Partitions::new([("emails", 4), ("emails:2", 2)]).is_err());
        assert!(Partitions::new([(&"x".repeat(127)[..], 11)]).is_err());
    }
}
