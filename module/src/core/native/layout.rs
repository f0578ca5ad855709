//! Moving a queue between the keyspace layout (a hash, five sorted sets and
//! a hash per task, as the scripts engine keeps it; `docs/PROTOCOL.md`) and
//! one `TaskQueue` value: `VTASKS.ADOPT` and `VTASKS.EXPORT`.
//!
//! Both go through the `Store` trait, so `cargo test` checks the round trip
//! on `MemStore` against queues the keyspace-layout core built.

use super::super::error::{VtError, VtResult};
use super::super::keys::QueueKeys;
use super::super::queue::ready_score;
use super::super::record::{State, TaskRecord};
use super::super::store::{KeyKind, Store, Val};
use super::task::TaskImage;
use super::{Counters, Meta, TaskQueue};

/// Counter fields of the queue hash, in `Counters::to_array` order.
const COUNTER_FIELDS: [&str; 13] = [
    "enqueued",
    "acked",
    "failed",
    "retried",
    "expired",
    "dead",
    "released",
    "requeued",
    "cancelled",
    "purged",
    "vanished",
    "leases_cut",
    "dead_lost",
];

/// What a read of the keyspace layout found.
pub struct LayoutQueue {
    pub queue: TaskQueue,
    /// Every key the queue occupied, for the caller to delete.
    pub keys: Vec<Vec<u8>>,
    /// Ids in the queue's sets whose task hash was gone (evicted or
    /// deleted by hand): they are left out.
    pub vanished: u64,
}

fn counter(store: &mut impl Store, keys: &QueueKeys, field: &str) -> VtResult<u64> {
    Ok(store.hget_int(&keys.meta, field)?.unwrap_or(0).max(0) as u64)
}

/// Reads a queue kept in the keyspace layout, or None if `{name}` is not
/// such a queue's hash.
pub fn read(store: &mut impl Store, keys: &QueueKeys) -> VtResult<Option<LayoutQueue>> {
    if store.key_kind(&keys.meta)? != KeyKind::Hash {
        return Ok(None);
    }
    for set in keys.sets() {
        if !matches!(store.key_kind(set)?, KeyKind::Missing | KeyKind::SortedSet) {
            return Err(VtError::WrongType);
        }
    }
    let mut counters = [0u64; 13];
    for (c, field) in counters.iter_mut().zip(COUNTER_FIELDS) {
        *c = counter(store, keys, field)?;
    }
    let meta = Meta {
        seq: counter(store, keys, "seq")?,
        token: counter(store, keys, "token")?,
        paused: store.hget(&keys.meta, "paused")?.as_deref() == Some(b"1"),
        counters: Counters::from_array(counters),
    };
    let mut queue = TaskQueue::with_meta(meta);
    let mut found = LayoutQueue {
        queue: TaskQueue::new(),
        keys: vec![
            keys.meta.clone(),
            keys.ready.clone(),
            keys.delayed.clone(),
            keys.leased.clone(),
            keys.dead.clone(),
            keys.done.clone(),
            keys.wake.clone(),
            keys.waiting.clone(),
            keys.schedules.clone(),
            keys.schedules_due.clone(),
        ],
        vanished: 0,
    };
    let sets = [
        (&keys.ready, State::Ready),
        (&keys.delayed, State::Delayed),
        (&keys.leased, State::Leased),
        (&keys.dead, State::Dead),
        (&keys.done, State::Done),
    ];
    for (set, state) in sets {
        for (id, score) in store.zrange_by_score(set, i64::MIN, i64::MAX, 0, usize::MAX)? {
            let task_key = keys.task(&id);
            if !matches!(store.key_kind(&task_key)?, KeyKind::Hash) {
                // A done record whose key expired is simply gone; anything
                // else missing vanished behind the queue's back.
                if state != State::Done {
                    found.vanished += 1;
                }
                continue;
            }
            let Some(record) = store.hget(&task_key, "record")? else {
                found.vanished += 1;
                continue;
            };
            let mut rec = TaskRecord::decode(&record)?;
            // The set a task is in is what schedules it: its score is the
            // authority for the time that orders it there.
            rec.state = state;
            let mut due = None;
            match state {
                State::Delayed => rec.run_at = Some(score),
                State::Leased | State::Done => due = Some(score),
                State::Dead => rec.finished_at = Some(score),
                State::Ready => {}
            }
            let image = TaskImage {
                payload: store.hget(&task_key, "payload")?.unwrap_or_default(),
                error: store.hget(&task_key, "error")?,
                result: store.hget(&task_key, "result")?,
                id,
                rec,
                due,
            };
            queue.restore(&image)?;
            found.keys.push(task_key);
        }
    }
    for (name, periodic) in crate::core::periodic::layout::read(store, keys)? {
        queue.restore_schedule(name, periodic);
    }
    queue.count_vanished(found.vanished);
    queue.take_changed();
    queue.take_woken();
    found.queue = queue;
    Ok(Some(found))
}

/// Writes a queue in the keyspace layout (the caller removed the native
/// value first).
pub fn write(store: &mut impl Store, keys: &QueueKeys, queue: &TaskQueue) -> VtResult<()> {
    let meta = queue.meta();
    let mut fields: Vec<(&str, Val)> = vec![
        ("seq", Val::Int(meta.seq as i64)),
        ("token", Val::Int(meta.token as i64)),
        ("paused", Val::Int(meta.paused as i64)),
    ];
    for (field, value) in COUNTER_FIELDS.iter().zip(meta.counters.to_array()) {
        if value > 0 {
            fields.push((field, Val::Int(value as i64)));
        }
    }
    store.hset(&keys.meta, &fields)?;
    for image in queue.images() {
        let rec = &image.rec;
        let task_key = keys.task(&image.id);
        let record = rec.encode();
        let mut fields = vec![
            ("payload", Val::Bytes(&image.payload)),
            ("record", Val::Bytes(&record)),
        ];
        if let Some(error) = &image.error {
            fields.push(("error", Val::Bytes(error)));
        }
        if let Some(result) = &image.result {
            fields.push(("result", Val::Bytes(result)));
        }
        store.hset(&task_key, &fields)?;
        let due = image.due.unwrap_or_default();
        let (set, score) = match rec.state {
            State::Ready => (&keys.ready, ready_score(rec.priority, rec.seq)),
            State::Delayed => (&keys.delayed, rec.run_at.unwrap_or_default()),
            State::Leased => (&keys.leased, due),
            State::Dead => (&keys.dead, rec.finished_at.unwrap_or_default()),
            State::Done => {
                store.pexpire_at(&task_key, due)?;
                (&keys.done, due)
            }
        };
        store.zadd(set, score, &image.id)?;
    }
    crate::core::periodic::layout::write(store, keys, queue.schedules())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::queue as old;
    use crate::core::store::MemStore;

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn adopt_then_export_gives_back_the_same_keys() {
        let k = QueueKeys::parse(b"{q}").unwrap();
        let mut s = MemStore::new();
        let ids: Vec<String> = (0..30).map(|i| format!("t{i:02}")).collect();
        let tasks: Vec<old::NewTask> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| old::NewTask {
                priority: (i % 3) as i64,
                max_attempts: 2,
                when: if i % 10 == 9 {
                    old::When::Delay(60_000)
                } else {
                    old::When::Now
                },
                ..old::NewTask::new(id.as_bytes(), b"{\"args\":[1]}")
            })
            .collect();
        old::enqueue(&mut s, &k, &tasks, None, T0).unwrap();
        let got = old::fetch(&mut s, &k, b"w1", 12, 60_000, T0).unwrap();
        for t in &got[..4] {
            let item = old::AckItem {
                id: &t.id,
                token: t.token,
                result: Some(b"\"r\""),
            };
            old::ack(&mut s, &k, &[item], 3_600_000, T0).unwrap();
        }
        for (i, t) in got[4..8].iter().enumerate() {
            let retry = if i % 2 == 0 {
                old::Retry::Never
            } else {
                old::Retry::After(5_000)
            };
            let item = old::NackItem {
                id: &t.id,
                token: t.token,
                retry,
                error: b"boom",
            };
            old::nack(&mut s, &k, &[item], T0).unwrap();
        }
        let release = old::LeaseRef {
            id: &got[8].id,
            token: got[8].token,
        };
        old::release(&mut s, &k, &[release], T0).unwrap();
        old::pause(&mut s, &k).unwrap();
        // Two schedules as the scripts engine writes them: one due later,
        // one that ran and waits for its next occurrence.
        let mut schedules = crate::core::periodic::Schedules::default();
        let def = |spec: &str| crate::core::periodic::Definition {
            spec: spec.as_bytes().to_vec(),
            payload: b"{\"task\":\"t\"}".to_vec(),
            priority: 2,
            max_attempts: 1,
            catch_up: crate::core::periodic::CatchUp::None,
            enabled: true,
        };
        schedules.set(b"later", def("every 60"), T0 + 60_000);
        schedules.set(b"ran", def("every 1"), T0);
        schedules.fire(T0, 10, |_, _| None);
        crate::core::periodic::layout::write(&mut s, &k, &schedules).unwrap();
        let before = s.clone();

        let found = read(&mut s, &k).unwrap().unwrap();
        assert_eq!(found.queue.schedules(), &schedules);
        assert_eq!(found.vanished, 0);
        let mut q = found.queue;
        for id in &ids {
            let o = old::get(&mut s, &k, id.as_bytes()).unwrap();
            assert_eq!(o, q.get(id.as_bytes(), T0), "{id}");
        }
        assert_eq!(old::stats(&mut s, &k, T0, 0).unwrap(), q.stats(T0, 0));
        for key in &found.keys {
            s.del(key).unwrap();
        }
        assert_eq!(s.key_count(), 0, "every key of the queue was found");

        write(&mut s, &k, &q).unwrap();
        assert_eq!(
            format!("{:?}", s.sorted()),
            format!("{:?}", before.sorted())
        );

        // And the adopted queue carries on as the layout would.
        let mut layout = before;
        let o = old::fetch(&mut layout, &k, b"w2", 5, 1000, T0 + 1);
        old::resume(&mut layout, &k).unwrap();
        q.resume();
        let o2 = old::fetch(&mut layout, &k, b"w2", 5, 1000, T0 + 1).unwrap();
        assert!(o.unwrap().is_empty());
        assert_eq!(o2, q.fetch(b"w2", 5, 1000, T0 + 1));
    }
}
