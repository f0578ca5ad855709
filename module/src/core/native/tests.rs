//! The native queue against the keyspace layout's core (`core::queue` over
//! `MemStore`, the semantics the scripts engine implements): the same
//! random command sequences, with the same clock, must give the same
//! outcomes, the same `GET`/`STATS`/`DEADLIST` views and the same next
//! deadline, step by step. Then persistence: encode/decode and copies give
//! back the same state, and corrupt encodings are refused, never a panic.
//!
//! `VTASKS_NATIVE_DIFF_CASES` sets the number of sequences (default 150).

use super::codec::{self, Decoder};
use super::*;
use crate::core::keys::QueueKeys;
use crate::core::queue as old;
use crate::core::store::{MemStore, Store};

const T0: i64 = 1_700_000_000_000;

/// xorshift64*: deterministic, so a failure names the seed that found it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const IDS: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "ab", "ba"];
const CONSUMERS: [&str; 3] = ["w1", "w2", "w10"];

fn keys() -> QueueKeys {
    QueueKeys::parse(b"{q}").unwrap()
}

/// What maintenance moved. How many kept records it dropped differs by
/// design: the keyspace layout also drops index entries of records whose
/// keys already expired, the native queue drops a record once.
fn moved(m: old::Maintained) -> (u64, u64) {
    (m.promoted, m.expired)
}

struct Pair {
    old: MemStore,
    new: TaskQueue,
    now: i64,
    /// Leases handed out, for settlements to name (some become stale).
    leases: Vec<(Vec<u8>, i64)>,
    log: Vec<String>,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            old: MemStore::new(),
            new: TaskQueue::new(),
            now: T0,
            leases: Vec::new(),
            log: Vec::new(),
        }
    }

    fn check<T: PartialEq + std::fmt::Debug>(&self, what: &str, old: T, new: T) {
        if old != new {
            let images: Vec<String> = self
                .new
                .images()
                .map(|i| format!("{} {:?}", String::from_utf8_lossy(&i.id), i.rec))
                .collect();
            panic!(
                "{what} differs after:\n{}\nold: {old:?}\nnew: {new:?}\nnative tasks:\n{}",
                self.log.join("\n"),
                images.join("\n")
            );
        }
    }

    /// Everything a client can read, from both.
    fn compare_views(&mut self) {
        let k = keys();
        self.old.advance_to(self.now);
        for id in IDS {
            let o = old::get(&mut self.old, &k, id.as_bytes()).unwrap();
            let n = self.new.get(id.as_bytes(), self.now);
            self.check(&format!("GET {id}"), o, n);
        }
        if self.old.key_kind(&k.meta).unwrap() != crate::core::store::KeyKind::Missing {
            let o = old::stats(&mut self.old, &k, self.now, 0).unwrap();
            let n = self.new.stats(self.now, 0);
            self.check("STATS", o, n);
        }
        let o = old::dead_list(&mut self.old, &k, 0, 100).unwrap();
        let n = self.new.dead_list(0, 100);
        self.check("DEADLIST", o, n);
        // When nothing is overdue: the keyspace layout keeps the index entry
        // of a kept record whose key expired until maintenance drops it,
        // which only makes the timer run once for nothing.
        let o = old::next_due(&mut self.old, &k).unwrap();
        if o.is_none_or(|due| due > self.now) {
            self.check("next due", o, self.new.next_due());
        }
    }

    fn lease_ref(&mut self, rng: &mut Rng) -> (Vec<u8>, i64) {
        if self.leases.is_empty() || rng.chance(10) {
            let id = IDS[rng.below(IDS.len() as u64) as usize];
            return (id.as_bytes().to_vec(), 1 + rng.below(40) as i64);
        }
        self.leases[rng.below(self.leases.len() as u64) as usize].clone()
    }

    fn step(&mut self, rng: &mut Rng) {
        let k = keys();
        self.now += [0, 0, 1, 3, 10, 40][rng.below(6) as usize];
        self.old.advance_to(self.now);
        let now = self.now;
        match rng.below(14) {
            0..=2 => {
                let n = 1 + rng.below(4) as usize;
                let payloads: Vec<Vec<u8>> = (0..n)
                    .map(|i| format!("{{\"n\":{i}}}").into_bytes())
                    .collect();
                let tasks: Vec<old::NewTask> = payloads
                    .iter()
                    .map(|p| {
                        let mut t = old::NewTask::new(
                            IDS[rng.below(IDS.len() as u64) as usize].as_bytes(),
                            p,
                        );
                        t.priority = [-1, 0, 0, 5][rng.below(4) as usize];
                        t.max_attempts = 1 + rng.below(3) as i64;
                        t.max_lost_leases = 1 + rng.below(3) as i64;
                        t.replace_finished = rng.chance(30);
                        t.when = match rng.below(5) {
                            0 => old::When::Delay(rng.below(30) as i64),
                            1 => old::When::At(now - 5 + rng.below(20) as i64),
                            _ => old::When::Now,
                        };
                        t
                    })
                    .collect();
                let maxlen = rng.chance(20).then(|| rng.below(8));
                self.log
                    .push(format!("{now} ENQUEUE {tasks:?} MAXLEN {maxlen:?}"));
                let o = old::enqueue(&mut self.old, &k, &tasks, maxlen, now);
                let n = self.new.enqueue(b"{q}", &tasks, maxlen, now);
                self.check("ENQUEUE", o, n);
            }
            3 | 4 => {
                let consumer = CONSUMERS[rng.below(3) as usize].as_bytes();
                let count = 1 + rng.below(4) as usize;
                let lease = 5 + rng.below(40) as i64;
                self.log.push(format!("{now} FETCH {count} LEASE {lease}"));
                let limit = 1 + rng.below(3) as usize;
                let o = old::maintain(&mut self.old, &k, now, limit).unwrap();
                let n = self.new.maintain(now, limit).unwrap();
                self.check("maintain before fetch", moved(o), moved(n));
                let o = old::fetch(&mut self.old, &k, consumer, count, lease, now).unwrap();
                let n = self.new.fetch(consumer, count, lease, now);
                self.check("FETCH", &o, &n);
                self.leases.extend(n.into_iter().map(|l| (l.id, l.token)));
            }
            5 => {
                let refs: Vec<(Vec<u8>, i64)> =
                    (0..1 + rng.below(3)).map(|_| self.lease_ref(rng)).collect();
                let items: Vec<old::AckItem> = refs
                    .iter()
                    .map(|(id, token)| old::AckItem {
                        id,
                        token: *token,
                        result: rng.chance(50).then_some(&b"\"r\""[..]),
                    })
                    .collect();
                let keep = [0, 5, 50][rng.below(3) as usize];
                self.log.push(format!("{now} ACK {items:?} KEEP {keep}"));
                let o = old::ack(&mut self.old, &k, &items, keep, now).unwrap();
                let n = self.new.ack(&items, keep, now);
                self.check("ACK", o, n);
            }
            6 => {
                let refs: Vec<(Vec<u8>, i64)> =
                    (0..1 + rng.below(3)).map(|_| self.lease_ref(rng)).collect();
                let items: Vec<old::NackItem> = refs
                    .iter()
                    .map(|(id, token)| old::NackItem {
                        id,
                        token: *token,
                        retry: match rng.below(4) {
                            0 => old::Retry::Never,
                            1 => old::Retry::After(0),
                            _ => old::Retry::After(rng.below(30) as i64),
                        },
                        error: b"boom",
                    })
                    .collect();
                self.log.push(format!("{now} NACK {items:?}"));
                let o = old::nack(&mut self.old, &k, &items, now).unwrap();
                let n = self.new.nack(&items, now).unwrap();
                self.check("NACK", o, n);
            }
            7 => {
                let refs: Vec<(Vec<u8>, i64)> =
                    (0..1 + rng.below(3)).map(|_| self.lease_ref(rng)).collect();
                let items: Vec<old::LeaseRef> = refs
                    .iter()
                    .map(|(id, token)| old::LeaseRef { id, token: *token })
                    .collect();
                if rng.chance(20) {
                    let until = now + rng.below(20) as i64;
                    self.log.push(format!("{now} CUT {until} {items:?}"));
                    let o = old::cut_leases(&mut self.old, &k, &items, until).unwrap();
                    let n = self.new.cut_leases(&items, until, now);
                    self.check("CUT", o, n);
                } else if rng.chance(50) {
                    let lease = 5 + rng.below(40) as i64;
                    self.log.push(format!("{now} EXTEND {lease} {items:?}"));
                    let o = old::extend(&mut self.old, &k, &items, lease, now).unwrap();
                    let n = self.new.extend(&items, lease, now);
                    self.check("EXTEND", o, n);
                } else {
                    self.log.push(format!("{now} RELEASE {items:?}"));
                    let o = old::release(&mut self.old, &k, &items, now).unwrap();
                    let n = self.new.release(&items, now);
                    self.check("RELEASE", o, n);
                }
            }
            8 => {
                let limit = 1 + rng.below(3) as usize;
                self.log.push(format!("{now} MAINTAIN {limit}"));
                let o = old::maintain(&mut self.old, &k, now, limit).unwrap();
                let n = self.new.maintain(now, limit).unwrap();
                self.check("MAINTAIN", moved(o), moved(n));
            }
            9 => {
                let ids: Vec<&[u8]> = (0..1 + rng.below(3))
                    .map(|_| IDS[rng.below(IDS.len() as u64) as usize].as_bytes())
                    .collect();
                let selection = if rng.chance(30) {
                    old::Selection::All
                } else {
                    old::Selection::Ids(ids)
                };
                if rng.chance(60) {
                    self.log.push(format!("{now} REQUEUE {selection:?}"));
                    let o = old::requeue(&mut self.old, &k, &selection, now).unwrap();
                    let n = self.new.requeue(&selection, now).unwrap();
                    self.check("REQUEUE", o, n);
                } else {
                    self.log.push(format!("{now} PURGE {selection:?}"));
                    let o = old::purge(&mut self.old, &k, &selection).unwrap();
                    let n = self.new.purge(&selection);
                    self.check("PURGE", o, n);
                }
            }
            10 if rng.chance(25) => {
                // A small bound, so that the order in which the two clear
                // (ready in fetch order, then delayed by due time) shows.
                let limit = 1 + rng.below(4) as usize;
                self.log.push(format!("{now} CLEAR {limit}"));
                let o = old::clear(&mut self.old, &k, limit).unwrap();
                let n = self.new.clear(limit);
                self.check("CLEAR", o, n);
            }
            10 => {
                let ids: Vec<&[u8]> = (0..1 + rng.below(3))
                    .map(|_| IDS[rng.below(IDS.len() as u64) as usize].as_bytes())
                    .collect();
                self.log.push(format!("{now} CANCEL {ids:?}"));
                let o = old::cancel(&mut self.old, &k, &ids).unwrap();
                let n = self.new.cancel(&ids);
                self.check("CANCEL", o, n);
            }
            11 => {
                if rng.chance(50) {
                    self.log.push(format!("{now} PAUSE"));
                    old::pause(&mut self.old, &k).unwrap();
                    self.new.pause();
                } else {
                    self.log.push(format!("{now} RESUME"));
                    old::resume(&mut self.old, &k).unwrap();
                    self.new.resume();
                }
            }
            12 => {
                let (offset, count) = (rng.below(4) as usize, 1 + rng.below(4) as usize);
                let o = old::dead_list(&mut self.old, &k, offset, count).unwrap();
                let n = self.new.dead_list(offset, count);
                self.check("DEADLIST", o, n);
            }
            _ => {
                // A round trip through the encoding, or a copy, mid-run:
                // the rest of the run must not tell the difference.
                let copy = if rng.chance(50) {
                    let mut d = Decoder::new();
                    codec::encode(&self.new, 1 + rng.below(200) as usize, |c| {
                        d.feed(c).unwrap()
                    });
                    d.finish().unwrap()
                } else {
                    self.new.clone()
                };
                let before: Vec<TaskImage> = self.new.images().collect();
                self.check(
                    "images of the reloaded queue",
                    before,
                    copy.images().collect(),
                );
                self.check("meta of the reloaded queue", self.new.meta(), copy.meta());
                self.new = copy;
                self.log.push(format!("{now} RELOAD"));
            }
        }
        self.compare_views();
    }
}

#[test]
fn random_sequences_match_the_keyspace_layout() {
    let cases: u64 = std::env::var("VTASKS_NATIVE_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for seed in 1..=cases {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut pair = Pair::new();
        pair.log.push(format!("seed {seed}"));
        for _ in 0..120 {
            pair.step(&mut rng);
        }
    }
}

fn uuid(i: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        i,
        i % 65536,
        i % 4096,
        i % 4096,
        i * 7919
    )
}

/// CLEAR of more waiting tasks than one call takes: both cores delete the
/// same tasks in the same order (ready in fetch order, a released task in
/// its old place, then delayed by due time and id), call after call, and
/// leave the leased tasks leased and acknowledgeable.
#[test]
fn clear_takes_a_large_queue_in_bounded_calls_and_leaves_leases_alone() {
    let k = keys();
    let mut store = MemStore::new();
    store.advance_to(T0);
    let mut q = TaskQueue::new();
    let ids: Vec<String> = (0..BULK_BATCH as u64 + 2_500).map(uuid).collect();
    let tasks: Vec<NewTask> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| NewTask {
            priority: (i % 3) as i64,
            when: if i % 5 == 0 {
                When::Delay(60_000 + (i % 2) as i64)
            } else {
                When::Now
            },
            ..NewTask::new(id.as_bytes(), b"{}")
        })
        .collect();
    for chunk in tasks.chunks(5_000) {
        let o = old::enqueue(&mut store, &k, chunk, None, T0).unwrap();
        assert_eq!(o, q.enqueue(b"{q}", chunk, None, T0).unwrap());
    }
    let o = old::fetch(&mut store, &k, b"w", 7, 60_000, T0).unwrap();
    let leased = q.fetch(b"w", 7, 60_000, T0);
    assert_eq!(o, leased);
    let back = [old::LeaseRef {
        id: &leased[0].id,
        token: leased[0].token,
    }];
    assert_eq!(
        old::release(&mut store, &k, &back, T0).unwrap(),
        q.release(&back, T0)
    );

    let same_tasks = |store: &mut MemStore, q: &TaskQueue| {
        for id in &ids {
            let o = old::get(store, &k, id.as_bytes()).unwrap();
            assert_eq!(o, q.get(id.as_bytes(), T0), "task {id}");
        }
        assert_eq!(old::stats(store, &k, T0, 0).unwrap(), q.stats(T0, 0));
    };
    let waiting = ids.len() as u64 - 6;
    let mut calls = Vec::new();
    loop {
        let o = old::clear(&mut store, &k, BULK_BATCH).unwrap();
        let n = q.clear(BULK_BATCH);
        assert_eq!(o, n);
        calls.push(n);
        same_tasks(&mut store, &q);
        if n == 0 {
            break;
        }
    }
    assert_eq!(calls, [BULK_BATCH as u64, waiting - BULK_BATCH as u64, 0]);
    let stats: std::collections::HashMap<_, _> = q.stats(T0, 0).into_iter().collect();
    assert_eq!(
        (stats["ready"], stats["delayed"], stats["leased"]),
        (0, 0, 6)
    );
    assert_eq!(stats["cancelled"], waiting as i64);
    let acks: Vec<old::AckItem> = leased[1..]
        .iter()
        .map(|l| old::AckItem {
            id: &l.id,
            token: l.token,
            result: None,
        })
        .collect();
    assert_eq!(
        old::ack(&mut store, &k, &acks, 1000, T0).unwrap(),
        vec![Settled::Ok; 6]
    );
    assert_eq!(q.ack(&acks, 1000, T0), vec![Settled::Ok; 6]);
}

#[test]
fn a_large_queue_encodes_in_chunks_and_decodes_to_the_same_state() {
    let mut q = TaskQueue::new();
    let payload = vec![b'x'; 100];
    let ids: Vec<String> = (0..5_000).map(uuid).collect();
    let tasks: Vec<NewTask> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| NewTask {
            priority: (i % 3) as i64,
            when: if i % 10 == 0 {
                When::Delay(1000)
            } else {
                When::Now
            },
            ..NewTask::new(id.as_bytes(), &payload)
        })
        .collect();
    q.enqueue(b"{q}", &tasks, None, T0).unwrap();
    let leased = q.fetch(b"w1", 300, 1000, T0);
    q.ack(
        &[old::AckItem {
            id: &leased[0].id,
            token: leased[0].token,
            result: Some(b"1"),
        }],
        60_000,
        T0,
    );
    q.release(
        &[old::LeaseRef {
            id: &leased[1].id,
            token: leased[1].token,
        }],
        T0,
    );
    let chunks = codec::to_bytes(&q);
    let mut small = Vec::new();
    codec::encode(&q, 4096, |c| small.push(c.to_vec()));
    assert!(small.len() > 100);
    let mut d = Decoder::new();
    for c in &small {
        d.feed(c).unwrap();
    }
    let back = d.finish().unwrap();
    assert!(back.images().eq(q.images()));
    assert_eq!(back.meta(), q.meta());
    assert_eq!(codec::to_bytes(&back), chunks, "the encoding is canonical");
}

#[test]
fn corrupt_or_newer_encodings_are_refused_without_panicking() {
    let mut q = TaskQueue::new();
    let tasks: Vec<NewTask> = (0..20)
        .map(|i| NewTask::new(IDS[i % IDS.len()].as_bytes(), b"{}"))
        .collect();
    q.enqueue(b"{q}", &tasks, None, T0).unwrap();
    q.fetch(b"w1", 3, 100, T0);
    add_schedules(&mut q);
    let chunk = codec::to_bytes(&q).remove(0);

    let mut newer = chunk.clone();
    newer[0] = codec::ENCODING_VERSION + 1;
    let err = codec::decode_head(&newer).err().unwrap().to_string();
    assert!(err.contains("newer than this module"), "{err}");

    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let mut bad = chunk.clone();
        match rng.below(3) {
            0 => bad.truncate(rng.below(chunk.len() as u64) as usize),
            1 => {
                let at = rng.below(bad.len() as u64) as usize;
                bad[at] ^= 1 << rng.below(8);
            }
            _ => {
                let at = rng.below(bad.len() as u64) as usize;
                bad[at] = 0xff;
            }
        }
        // Any outcome but a panic; what loads must be a consistent queue.
        if let Ok(loaded) = codec::decode_head(&bad) {
            let again = codec::to_bytes(&loaded);
            let mut d = Decoder::new();
            for c in &again {
                d.feed(c).unwrap();
            }
        }
    }
    // Versions 1 (no task count in the head) and 2 (no separate budgets)
    // are still read, the budgets as a version-1 task record implies them.
    let as_before_budgets = |image: TaskImage| {
        let mut image = image;
        let running = (image.rec.state == State::Leased) as i64;
        image.rec.failures = (image.rec.attempts - running).max(0);
        image.rec.lost = 0;
        image.rec.max_lost = crate::core::keys::DEFAULT_MAX_LOST_LEASES;
        image
    };
    for version in [1, 2] {
        let mut d = Decoder::new();
        codec::encode_as(&q, version, codec::CHUNK_BYTES, |c| d.feed(c).unwrap());
        let old = d.finish().unwrap();
        assert!(
            old.images().eq(q.images().map(as_before_budgets)),
            "version {version}"
        );
        assert!(old.schedules().is_empty());
    }
    // Version 3 (no schedules) reads every task as it was.
    let mut d = Decoder::new();
    codec::encode_as(&q, 3, codec::CHUNK_BYTES, |c| d.feed(c).unwrap());
    let v3 = d.finish().unwrap();
    assert!(v3.images().eq(q.images()));
    assert!(v3.schedules().is_empty());

    // A length prefix far beyond the limits is refused before allocating.
    let mut huge = vec![codec::ENCODING_VERSION, 0, 0, 0, 0];
    huge.extend([0u8; 10]);
    huge.extend([1, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(codec::decode_head(&huge).is_err());
}

#[test]
fn a_drained_queue_gives_its_memory_back() {
    let mut q = TaskQueue::new();
    let ids: Vec<String> = (0..3_000).map(uuid).collect();
    let tasks: Vec<NewTask> = ids
        .iter()
        .map(|id| NewTask::new(id.as_bytes(), &[b'x'; 100]))
        .collect();
    let empty = q.heap_bytes();
    q.enqueue(b"{q}", &tasks, None, T0).unwrap();
    let full = q.heap_bytes();
    assert!(full > empty + 3_000 * 136);
    let leased = q.fetch(b"w", 3_000, 1000, T0);
    let acks: Vec<old::AckItem> = leased
        .iter()
        .map(|l| old::AckItem {
            id: &l.id,
            token: l.token,
            result: None,
        })
        .collect();
    q.ack(&acks, 0, T0);
    assert!(q.is_empty());
    assert!(q.heap_bytes() < empty + 4096, "{} left", q.heap_bytes());
}

#[test]
fn cancelled_ready_tasks_leave_no_trace_in_the_order() {
    let mut q = TaskQueue::new();
    let tasks: Vec<NewTask> = IDS
        .iter()
        .map(|id| NewTask::new(id.as_bytes(), b""))
        .collect();
    q.enqueue(b"{q}", &tasks, None, T0).unwrap();
    assert_eq!(q.cancel(&[b"b", b"c", b"b"]), [true, true, false]);
    q.cancel(&[b"a"]);
    let got: Vec<Vec<u8>> = q.fetch(b"w", 3, 10, T0).into_iter().map(|l| l.id).collect();
    assert_eq!(got, [b"d".to_vec(), b"e".to_vec(), b"f".to_vec()]);
    // The slots of cancelled tasks are reused once they leave the order.
    q.enqueue(b"{q}", &[NewTask::new(b"new", b"")], None, T0)
        .unwrap();
    assert_eq!(q.stats(T0, 0)[0], ("ready", 5));
    assert_eq!(q.images().count(), 8);
}

/// Three schedules in each of their states: due later, fired and pending
/// (as the scripts engine leaves one), and disabled with no next.
fn add_schedules(q: &mut TaskQueue) {
    use crate::core::periodic::{CatchUp, Definition};
    let def = |spec: &str, catch_up, enabled| Definition {
        spec: spec.as_bytes().to_vec(),
        payload: br#"{"task": "app.tasks.tick", "args": [], "kwargs": {}}"#.to_vec(),
        priority: 5,
        max_attempts: 2,
        catch_up,
        enabled,
    };
    q.set_schedule(
        b"{q}",
        b"tick",
        def("every 10", CatchUp::Last, true),
        T0 + 10_000,
    )
    .unwrap();
    q.set_schedule(
        b"{q}",
        b"odd",
        def("cron UTC 99 * * * *", CatchUp::None, true),
        T0,
    )
    .unwrap();
    q.set_schedule(
        b"{q}",
        b"off",
        def("cron Europe/Berlin 0 3 * * *", CatchUp::Last, false),
        T0,
    )
    .unwrap();
    q.maintain(T0, 1_000).unwrap();
}

#[test]
fn schedules_survive_the_encoding_and_a_copy() {
    let mut q = TaskQueue::new();
    add_schedules(&mut q);
    assert_eq!(q.schedules().len(), 3);
    let odd = q.schedules().get(b"odd").unwrap();
    assert_eq!(odd.next, crate::core::periodic::Next::Pending { after: T0 });
    assert_eq!(odd.runs, 1);
    let mut d = Decoder::new();
    for c in codec::to_bytes(&q) {
        d.feed(&c).unwrap();
    }
    let loaded = d.finish().unwrap();
    assert_eq!(loaded.schedules(), q.schedules());
    assert!(loaded.images().eq(q.images()));
    assert_eq!(q.clone().schedules(), q.schedules());
    // The fired occurrence is a task like any other, with its schedule's
    // options and its derived id.
    let task = loaded
        .get(format!("schedule:odd:{T0}").as_bytes(), T0)
        .unwrap();
    let field = |name: &str| task.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    assert_eq!(field("priority"), b"5");
    assert_eq!(field("max_attempts"), b"2");
}

#[test]
fn a_schedule_enqueues_each_occurrence_once() {
    let mut q = TaskQueue::new();
    add_schedules(&mut q);
    let before = q.len();
    // Due at T0 + 10 s: one task; maintaining again at the same time or
    // applying the same schedule again adds nothing.
    q.maintain(T0 + 10_000, 1_000).unwrap();
    q.maintain(T0 + 10_000, 1_000).unwrap();
    assert_eq!(q.len(), before + 1);
    assert_eq!(q.next_due(), Some(T0 + 20_000));
    let tick = q.schedules().get(b"tick").unwrap();
    assert_eq!((tick.runs, tick.last), (1, Some(T0 + 10_000)));
    // Down for three occurrences: one run on the way back.
    q.maintain(T0 + 55_000, 1_000).unwrap();
    assert_eq!(q.len(), before + 2);
    assert_eq!(q.next_due(), Some(T0 + 60_000));
}
