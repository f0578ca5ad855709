//! The task life cycle on an in-memory store with an injected clock.

use super::error::VtError;
use super::keys::QueueKeys;
use super::queue::*;
use super::store::MemStore;

const T0: i64 = 1_700_000_000_000;
const LEASE: i64 = 1_000;

fn q() -> QueueKeys {
    QueueKeys::parse(b"{q}").unwrap()
}

fn add(store: &mut MemStore, tasks: &[NewTask]) -> Vec<bool> {
    enqueue(store, &q(), tasks, None, T0).unwrap()
}

fn fetch_ids(store: &mut MemStore, count: usize, now: i64) -> Vec<Leased> {
    fetch(store, &q(), b"w1", count, LEASE, now).unwrap()
}

fn ids(leased: &[Leased]) -> Vec<String> {
    leased
        .iter()
        .map(|l| String::from_utf8(l.id.clone()).unwrap())
        .collect()
}

fn with_priority<'a>(id: &'a str, priority: i64) -> NewTask<'a> {
    NewTask {
        priority,
        ..NewTask::new(id.as_bytes(), b"{}")
    }
}

fn field(store: &mut MemStore, id: &str, name: &str) -> Option<String> {
    get(store, &q(), id.as_bytes())
        .unwrap()?
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| String::from_utf8(v).unwrap())
}

fn stat(store: &mut MemStore, name: &str, now: i64) -> i64 {
    stats(store, &q(), now, 0)
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no stat {name}"))
        .1
}

#[test]
fn higher_priority_first_then_fifo() {
    let mut s = MemStore::new();
    add(
        &mut s,
        &[
            with_priority("low1", -5),
            with_priority("mid1", 0),
            with_priority("high", 100),
            with_priority("mid2", 0),
            with_priority("lowest", -100),
            with_priority("low2", -5),
        ],
    );
    let got = fetch_ids(&mut s, 10, T0);
    assert_eq!(
        ids(&got),
        ["high", "mid1", "mid2", "low1", "low2", "lowest"]
    );
    assert!(got.iter().all(|l| l.attempt == 1 && l.payload == b"{}"));
}

#[test]
fn enqueue_is_idempotent_by_id() {
    let mut s = MemStore::new();
    assert_eq!(add(&mut s, &[NewTask::new(b"a", b"1")]), [true]);
    assert_eq!(
        add(
            &mut s,
            &[
                NewTask::new(b"a", b"2"),
                NewTask::new(b"b", b"3"),
                NewTask::new(b"b", b"4")
            ]
        ),
        [false, true, false]
    );
    let got = fetch_ids(&mut s, 10, T0);
    assert_eq!(ids(&got), ["a", "b"]);
    assert_eq!(got[0].payload, b"1", "the first enqueue wins");
    assert_eq!(stat(&mut s, "enqueued", T0), 2);
}

#[test]
fn delayed_task_becomes_ready_when_due() {
    let mut s = MemStore::new();
    let task = NewTask {
        when: When::Delay(500),
        ..NewTask::new(b"later", b"{}")
    };
    let at = NewTask {
        when: When::At(T0 + 200),
        ..NewTask::new(b"at", b"{}")
    };
    add(&mut s, &[task, at]);
    assert!(s.woken.is_empty(), "nothing ready yet, nobody to wake");
    assert!(fetch_ids(&mut s, 10, T0).is_empty());
    assert_eq!(next_due(&mut s, &q()).unwrap(), Some(T0 + 200));

    let report = maintain(&mut s, &q(), T0 + 199, 100).unwrap();
    assert_eq!(report.promoted, 0);
    let report = maintain(&mut s, &q(), T0 + 200, 100).unwrap();
    assert_eq!(report.promoted, 1);
    assert_eq!(s.woken, vec![q().ready.clone()]);
    assert_eq!(ids(&fetch_ids(&mut s, 10, T0 + 200)), ["at"]);
    maintain(&mut s, &q(), T0 + 500, 100).unwrap();
    assert_eq!(ids(&fetch_ids(&mut s, 10, T0 + 500)), ["later"]);
}

#[test]
fn expired_lease_redelivers_and_counts_a_lost_lease_until_dead() {
    let mut s = MemStore::new();
    // One attempt allowed to fail (Django's default), two leases to lose.
    let task = NewTask {
        max_attempts: 1,
        max_lost_leases: 2,
        ..NewTask::new(b"t", b"{}")
    };
    add(&mut s, &[task]);
    let first = fetch_ids(&mut s, 1, T0);
    assert_eq!(first[0].attempt, 1);
    assert_eq!(next_due(&mut s, &q()).unwrap(), Some(T0 + LEASE));

    let report = maintain(&mut s, &q(), T0 + LEASE, 100).unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(field(&mut s, "t", "status").as_deref(), Some("ready"));
    assert_eq!(field(&mut s, "t", "lost_leases").as_deref(), Some("1"));
    assert_eq!(field(&mut s, "t", "failed_attempts").as_deref(), Some("0"));
    assert_eq!(
        field(&mut s, "t", "error").as_deref(),
        Some(
            "lease lost on attempt 1 (1 of 2 lost leases allowed): the worker running it \
             stopped (crash, kill, or lost connection) before finishing it"
        )
    );
    let second = fetch_ids(&mut s, 1, T0 + LEASE);
    assert_eq!(second[0].attempt, 2);
    assert_ne!(second[0].token, first[0].token);

    maintain(&mut s, &q(), T0 + 2 * LEASE, 100).unwrap();
    assert!(fetch_ids(&mut s, 1, T0 + 2 * LEASE).is_empty());
    assert_eq!(field(&mut s, "t", "status").as_deref(), Some("dead"));
    assert_eq!(
        field(&mut s, "t", "error").as_deref(),
        Some(
            "lease lost 2 times, its budget: the worker running it stopped (crash, kill, or lost \
             connection) before finishing it (last on attempt 2)"
        )
    );
    assert_eq!(field(&mut s, "t", "lost_leases").as_deref(), Some("2"));
    assert_eq!(field(&mut s, "t", "max_lost_leases").as_deref(), Some("2"));
    assert_eq!(stat(&mut s, "dead", T0 + 2 * LEASE), 1);
    assert_eq!(stat(&mut s, "expired", T0 + 2 * LEASE), 2);
    assert_eq!(stat(&mut s, "dead_lost", T0 + 2 * LEASE), 1);
    assert_eq!(stat(&mut s, "failed", T0 + 2 * LEASE), 0);
}

#[test]
fn failed_attempts_and_lost_leases_count_against_separate_budgets() {
    let mut s = MemStore::new();
    let task = NewTask {
        max_attempts: 2,
        max_lost_leases: 2,
        ..NewTask::new(b"t", b"{}")
    };
    add(&mut s, &[task]);
    // A lost lease, a failure, a lost lease would be 3 of 2 under one
    // budget; here neither budget is used up until the second failure.
    fetch_ids(&mut s, 1, T0);
    maintain(&mut s, &q(), T0 + LEASE, 100).unwrap();
    let l = fetch_ids(&mut s, 1, T0 + LEASE).remove(0);
    let failure = |token| NackItem {
        id: b"t",
        token,
        retry: Retry::After(0),
        error: b"boom",
    };
    assert_eq!(
        nack(&mut s, &q(), &[failure(l.token)], T0 + LEASE).unwrap(),
        [NackOutcome::Retrying]
    );
    let now = T0 + LEASE;
    fetch_ids(&mut s, 1, now);
    maintain(&mut s, &q(), now + LEASE, 100).unwrap();
    assert_eq!(field(&mut s, "t", "status").as_deref(), Some("dead"));
    assert_eq!(field(&mut s, "t", "attempts").as_deref(), Some("3"));
    assert_eq!(field(&mut s, "t", "failed_attempts").as_deref(), Some("1"));
    assert_eq!(field(&mut s, "t", "lost_leases").as_deref(), Some("2"));

    // And the other way round: failures use up max_attempts alone.
    let task = NewTask {
        max_attempts: 2,
        max_lost_leases: 2,
        ..NewTask::new(b"u", b"{}")
    };
    enqueue(&mut s, &q(), &[task], None, now).unwrap();
    let mut now = now + LEASE;
    let mut outcomes = Vec::new();
    for lose in [true, false, false] {
        let l = fetch_ids(&mut s, 1, now).remove(0);
        if lose {
            now += LEASE;
            maintain(&mut s, &q(), now, 100).unwrap();
        } else {
            let item = NackItem {
                id: b"u",
                token: l.token,
                retry: Retry::After(0),
                error: b"boom",
            };
            outcomes.push(nack(&mut s, &q(), &[item], now).unwrap()[0]);
        }
    }
    assert_eq!(outcomes, [NackOutcome::Retrying, NackOutcome::Dead]);
    assert_eq!(field(&mut s, "u", "failed_attempts").as_deref(), Some("2"));
    assert_eq!(field(&mut s, "u", "lost_leases").as_deref(), Some("1"));
    assert_eq!(field(&mut s, "u", "error").as_deref(), Some("boom"));
    assert_eq!(stat(&mut s, "failed", now), 3);
    assert_eq!(stat(&mut s, "expired", now), 3);
    assert_eq!(stat(&mut s, "dead_lost", now), 1);
    assert_eq!(stat(&mut s, "dead_lettered", now), 2);
}

#[test]
fn a_lost_lease_returns_ahead_of_tasks_enqueued_after_it() {
    let mut s = MemStore::new();
    add(
        &mut s,
        &[NewTask::new(b"a", b"{}"), NewTask::new(b"b", b"{}")],
    );
    fetch_ids(&mut s, 1, T0);
    enqueue(&mut s, &q(), &[NewTask::new(b"c", b"{}")], None, T0 + 1).unwrap();
    maintain(&mut s, &q(), T0 + LEASE, 100).unwrap();
    assert_eq!(ids(&fetch_ids(&mut s, 3, T0 + LEASE)), ["a", "b", "c"]);
}

#[test]
fn cut_leases_shortens_only_leases_still_held_under_their_token() {
    let mut s = MemStore::new();
    add(
        &mut s,
        &[
            NewTask::new(b"a", b"{}"),
            NewTask::new(b"b", b"{}"),
            NewTask::new(b"c", b"{}"),
        ],
    );
    let got = fetch_ids(&mut s, 3, T0);
    // b was acknowledged; c's token is not the current one.
    ack(
        &mut s,
        &q(),
        &[AckItem {
            id: b"b",
            token: got[1].token,
            result: None,
        }],
        1000,
        T0,
    )
    .unwrap();
    let refs = [
        LeaseRef {
            id: b"a",
            token: got[0].token,
        },
        LeaseRef {
            id: b"b",
            token: got[1].token,
        },
        LeaseRef {
            id: b"c",
            token: got[2].token + 100,
        },
    ];
    let until = T0 + 200;
    assert_eq!(cut_leases(&mut s, &q(), &refs, until).unwrap(), 1);
    assert_eq!(
        field(&mut s, "a", "deadline").as_deref(),
        Some(until.to_string().as_str())
    );
    assert_eq!(
        field(&mut s, "c", "deadline").as_deref(),
        Some((T0 + LEASE).to_string().as_str())
    );
    // A deadline already earlier than the cut stays.
    assert_eq!(cut_leases(&mut s, &q(), &refs[..1], T0 + 500).unwrap(), 0);
    assert_eq!(stat(&mut s, "leases_cut", T0), 1);
    // Renewing restores the full lease (a worker that came back in time).
    extend(&mut s, &q(), &refs[..1], LEASE, T0 + 100).unwrap();
    assert_eq!(
        field(&mut s, "a", "deadline").as_deref(),
        Some((T0 + 100 + LEASE).to_string().as_str())
    );
    maintain(&mut s, &q(), until, 100).unwrap();
    assert_eq!(field(&mut s, "a", "status").as_deref(), Some("leased"));
}

#[test]
fn a_stale_token_is_fenced_off() {
    let mut s = MemStore::new();
    add(&mut s, &[NewTask::new(b"t", b"{}")]);
    let old = fetch_ids(&mut s, 1, T0).remove(0);
    maintain(&mut s, &q(), T0 + LEASE, 100).unwrap();
    let new = fetch_ids(&mut s, 1, T0 + LEASE).remove(0);

    let stale = AckItem {
        id: b"t",
        token: old.token,
        result: None,
    };
    assert_eq!(
        ack(&mut s, &q(), &[stale], 1000, T0 + LEASE).unwrap(),
        [Settled::Stale]
    );
    let lease = LeaseRef {
        id: b"t",
        token: old.token,
    };
    assert_eq!(
        extend(&mut s, &q(), &[lease], LEASE, T0 + LEASE).unwrap(),
        [Settled::Stale]
    );
    assert_eq!(
        release(&mut s, &q(), &[lease], T0 + LEASE).unwrap(),
        [Settled::Stale]
    );
    let nack_old = NackItem {
        id: b"t",
        token: old.token,
        retry: Retry::Never,
        error: b"x",
    };
    assert_eq!(
        nack(&mut s, &q(), &[nack_old], T0 + LEASE).unwrap(),
        [NackOutcome::Refused(Settled::Stale)]
    );
    assert_eq!(field(&mut s, "t", "status").as_deref(), Some("leased"));

    let good = AckItem {
        id: b"t",
        token: new.token,
        result: Some(b"42"),
    };
    assert_eq!(
        ack(&mut s, &q(), std::slice::from_ref(&good), 1000, T0 + LEASE).unwrap(),
        [Settled::Ok]
    );
    assert_eq!(
        ack(&mut s, &q(), &[good], 1000, T0 + LEASE).unwrap(),
        [Settled::Stale]
    );
    let unknown = AckItem {
        id: b"nope",
        token: 1,
        result: None,
    };
    assert_eq!(
        ack(&mut s, &q(), &[unknown], 1000, T0).unwrap(),
        [Settled::NoTask]
    );
}

#[test]
fn ack_keeps_the_result_for_its_ttl() {
    let mut s = MemStore::new();
    add(&mut s, &[NewTask::new(b"t", b"{}")]);
    let l = fetch_ids(&mut s, 1, T0).remove(0);
    let item = AckItem {
        id: b"t",
        token: l.token,
        result: Some(b"\"ok\""),
    };
    ack(&mut s, &q(), &[item], 5_000, T0 + 10).unwrap();
    let got = get(&mut s, &q(), b"t").unwrap().unwrap();
    let value = |name: &str| got.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    assert_eq!(value("status").unwrap(), b"done");
    assert_eq!(value("result").unwrap(), b"\"ok\"");
    assert_eq!(
        value("finished_at").unwrap(),
        (T0 + 10).to_string().as_bytes()
    );
    assert_eq!(value("workers").unwrap(), b"w1");
    assert_eq!(stat(&mut s, "done", T0 + 10), 1);
    assert_eq!(stat(&mut s, "leased", T0 + 10), 0);

    s.advance_to(T0 + 5_010);
    assert_eq!(get(&mut s, &q(), b"t").unwrap(), None);
    assert_eq!(stat(&mut s, "done", T0 + 5_010), 0);
    assert_eq!(maintain(&mut s, &q(), T0 + 5_010, 100).unwrap().pruned, 1);
    assert_eq!(next_due(&mut s, &q()).unwrap(), None);
}

#[test]
fn ack_with_zero_keep_deletes_the_task() {
    let mut s = MemStore::new();
    add(&mut s, &[NewTask::new(b"t", b"{}")]);
    let l = fetch_ids(&mut s, 1, T0).remove(0);
    let item = AckItem {
        id: b"t",
        token: l.token,
        result: None,
    };
    ack(&mut s, &q(), &[item], 0, T0).unwrap();
    assert_eq!(get(&mut s, &q(), b"t").unwrap(), None);
    assert_eq!(s.key_count(), 1, "only the queue hash remains");
}

#[test]
fn nack_retries_after_delay_then_dead_letters() {
    let mut s = MemStore::new();
    let task = NewTask {
        max_attempts: 2,
        ..NewTask::new(b"t", b"{}")
    };
    add(&mut s, &[task]);
    let l = fetch_ids(&mut s, 1, T0).remove(0);
    let failure = |token| NackItem {
        id: b"t",
        token,
        retry: Retry::After(300),
        error: b"ValueError: boom",
    };
    assert_eq!(
        nack(&mut s, &q(), &[failure(l.token)], T0).unwrap(),
        [NackOutcome::Retrying]
    );
    assert_eq!(field(&mut s, "t", "status").as_deref(), Some("delayed"));
    assert_eq!(
        field(&mut s, "t", "error").as_deref(),
        Some("ValueError: boom")
    );
    maintain(&mut s, &q(), T0 + 299, 100).unwrap();
    assert!(fetch_ids(&mut s, 1, T0 + 299).is_empty());
    maintain(&mut s, &q(), T0 + 300, 100).unwrap();
    let l = fetch_ids(&mut s, 1, T0 + 300).remove(0);
    assert_eq!(l.attempt, 2);
    assert_eq!(
        nack(&mut s, &q(), &[failure(l.token)], T0 + 300).unwrap(),
        [NackOutcome::Dead]
    );

    let dead = dead_list(&mut s, &q(), 0, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, b"t");
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].error, b"ValueError: boom");
    assert_eq!(stat(&mut s, "failed", T0 + 300), 2);
    assert_eq!(stat(&mut s, "retried", T0 + 300), 1);
    assert_eq!(stat(&mut s, "dead_lettered", T0 + 300), 1);
}

#[test]
fn nack_with_zero_delay_requeues_at_once_and_never_dead_letters_now() {
    let mut s = MemStore::new();
    add(
        &mut s,
        &[NewTask::new(b"a", b"{}"), NewTask::new(b"b", b"{}")],
    );
    let got = fetch_ids(&mut s, 2, T0);
    let items = [
        NackItem {
            id: b"a",
            token: got[0].token,
            retry: Retry::After(0),
            error: b"e",
        },
        NackItem {
            id: b"b",
            token: got[1].token,
            retry: Retry::Never,
            error: b"unknown task",
        },
    ];
    assert_eq!(
        nack(&mut s, &q(), &items, T0).unwrap(),
        [NackOutcome::Retrying, NackOutcome::Dead]
    );
    assert_eq!(ids(&fetch_ids(&mut s, 5, T0)), ["a"]);
}

#[test]
fn release_returns_tasks_to_their_place_without_counting_an_attempt() {
    let mut s = MemStore::new();
    add(
        &mut s,
        &[NewTask::new(b"a", b"{}"), NewTask::new(b"b", b"{}")],
    );
    let got = fetch_ids(&mut s, 1, T0);
    let late = NewTask::new(b"c", b"{}");
    add(&mut s, &[late]);
    let lease = LeaseRef {
        id: b"a",
        token: got[0].token,
    };
    assert_eq!(release(&mut s, &q(), &[lease], T0).unwrap(), [Settled::Ok]);
    let again = fetch_ids(&mut s, 3, T0);
    assert_eq!(ids(&again), ["a", "b", "c"]);
    assert_eq!(again[0].attempt, 1);
    assert_eq!(stat(&mut s, "released", T0), 1);
}

#[test]
fn extend_moves_the_deadline() {
    let mut s = MemStore::new();
    add(&mut s, &[NewTask::new(b"t", b"{}")]);
    let l = fetch_ids(&mut s, 1, T0).remove(0);
    let lease = LeaseRef {
        id: b"t",
        token: l.token,
    };
    assert_eq!(
        extend(&mut s, &q(), &[lease], 5_000, T0 + 900).unwrap(),
        [Settled::Ok]
    );
    assert_eq!(maintain(&mut s, &q(), T0 + 5_000, 100).unwrap().expired, 0);
    assert_eq!(maintain(&mut s, &q(), T0 + 5_900, 100).unwrap().expired, 1);
}

#[test]
fn paused_queue_accepts_but_hands_out_nothing() {
    let mut s = MemStore::new();
    pause(&mut s, &q()).unwrap();
    add(&mut s, &[NewTask::new(b"t", b"{}")]);
    assert!(fetch_ids(&mut s, 1, T0).is_empty());
    assert_eq!(stat(&mut s, "paused", T0), 1);
    s.woken.clear();
    resume(&mut s, &q()).unwrap();
    assert_eq!(s.woken, vec![q().ready.clone()], "resume wakes consumers");
    assert_eq!(ids(&fetch_ids(&mut s, 1, T0)), ["t"]);
}

#[test]
fn maxlen_refuses_the_whole_batch() {
    let mut s = MemStore::new();
    add(&mut s, &[NewTask::new(b"a", b"{}")]);
    let batch = [NewTask::new(b"b", b"{}"), NewTask::new(b"c", b"{}")];
    let err = enqueue(&mut s, &q(), &batch, Some(2), T0).unwrap_err();
    assert!(
        matches!(
            err,
            VtError::QueueFull {
                held: 1,
                limit: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        stat(&mut s, "ready", T0),
        1,
        "nothing of the refused batch was added"
    );
    assert_eq!(
        enqueue(&mut s, &q(), &batch[..1], Some(2), T0).unwrap(),
        [true]
    );
    // A duplicate does not count against the limit.
    assert_eq!(
        enqueue(&mut s, &q(), &batch[..1], Some(2), T0).unwrap(),
        [false]
    );
}

#[test]
fn requeue_and_purge_dead_letters() {
    let mut s = MemStore::new();
    add(
        &mut s,
        &[
            NewTask::new(b"a", b"{}"),
            NewTask::new(b"b", b"{}"),
            NewTask::new(b"c", b"{}"),
        ],
    );
    for l in fetch_ids(&mut s, 3, T0) {
        let item = NackItem {
            id: &l.id,
            token: l.token,
            retry: Retry::Never,
            error: b"bad",
        };
        nack(&mut s, &q(), &[item], T0).unwrap();
    }
    assert_eq!(
        requeue(&mut s, &q(), &Selection::Ids(vec![b"a", b"zzz"]), T0).unwrap(),
        1
    );
    let again = fetch_ids(&mut s, 5, T0);
    assert_eq!(ids(&again), ["a"]);
    assert_eq!(again[0].attempt, 1, "attempts start over");
    assert_eq!(purge(&mut s, &q(), &Selection::All).unwrap(), 2);
    assert!(get(&mut s, &q(), b"b").unwrap().is_none());
    assert_eq!(stat(&mut s, "dead", T0), 0);
    assert_eq!(stat(&mut s, "purged", T0), 2);
}

#[test]
fn cancel_removes_waiting_tasks_only() {
    let mut s = MemStore::new();
    let delayed = NewTask {
        when: When::Delay(10_000),
        ..NewTask::new(b"d", b"{}")
    };
    add(
        &mut s,
        &[
            NewTask::new(b"r", b"{}"),
            delayed,
            NewTask::new(b"l", b"{}"),
        ],
    );
    fetch_ids(&mut s, 1, T0); // leases "r"
    assert_eq!(
        cancel(&mut s, &q(), &[b"r", b"d", b"l", b"x"]).unwrap(),
        [false, true, true, false]
    );
    assert_eq!(stat(&mut s, "cancelled", T0), 2);
    assert_eq!(stat(&mut s, "delayed", T0), 0);
    assert_eq!(stat(&mut s, "ready", T0), 0);
}

#[test]
fn stats_report_counts_and_oldest_ready_age() {
    let mut s = MemStore::new();
    assert!(matches!(
        stats(&mut s, &q(), T0, 0),
        Err(VtError::NoQueue(_))
    ));
    add(&mut s, &[with_priority("old-low", -1)]);
    enqueue(
        &mut s,
        &q(),
        &[with_priority("new-high", 9)],
        None,
        T0 + 700,
    )
    .unwrap();
    assert_eq!(stat(&mut s, "ready", T0 + 1_000), 2);
    assert_eq!(stat(&mut s, "oldest_ready_age_ms", T0 + 1_000), 1_000);
    fetch_ids(&mut s, 1, T0 + 1_000);
    assert_eq!(stat(&mut s, "leased", T0 + 1_000), 1);
    assert_eq!(stat(&mut s, "overdue_leases", T0 + 1_000 + LEASE), 1);
}

#[test]
fn wrong_key_type_fails_before_any_write() {
    let mut s = MemStore::new();
    s.put_other(&q().delayed);
    let err = enqueue(&mut s, &q(), &[NewTask::new(b"a", b"{}")], None, T0).unwrap_err();
    assert_eq!(err, VtError::WrongType);
    assert_eq!(s.key_count(), 1, "nothing written");
    s.put_other(&q().task(b"b"));
    let mut fresh = MemStore::new();
    fresh.put_other(&q().task(b"b"));
    assert_eq!(
        enqueue(&mut fresh, &q(), &[NewTask::new(b"b", b"{}")], None, T0).unwrap_err(),
        VtError::WrongType
    );
}

#[test]
fn maintenance_is_bounded_per_call() {
    let mut s = MemStore::new();
    let ids: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
    let tasks: Vec<NewTask> = ids
        .iter()
        .map(|id| NewTask {
            when: When::Delay(10),
            ..NewTask::new(id.as_bytes(), b"{}")
        })
        .collect();
    add(&mut s, &tasks);
    let first = maintain(&mut s, &q(), T0 + 10, 10).unwrap();
    assert_eq!((first.promoted, first.more), (10, true));
    maintain(&mut s, &q(), T0 + 10, 10).unwrap();
    let last = maintain(&mut s, &q(), T0 + 10, 10).unwrap();
    assert_eq!((last.promoted, last.more), (5, false));
    assert_eq!(fetch_ids(&mut s, 100, T0 + 10).len(), 25);
}

#[test]
fn every_task_is_accounted_for_through_a_mixed_run() {
    // A long randomised life cycle: whatever happens, each task ends in
    // exactly one place, and the counters agree with the sets.
    let mut s = MemStore::new();
    let n = 300;
    let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let tasks: Vec<NewTask> = names
        .iter()
        .enumerate()
        .map(|(i, id)| NewTask {
            priority: (i % 7) as i64 - 3,
            max_attempts: 3,
            when: if i % 5 == 0 {
                When::Delay(50)
            } else {
                When::Now
            },
            ..NewTask::new(id.as_bytes(), b"{}")
        })
        .collect();
    add(&mut s, &tasks);
    let mut now = T0;
    let mut rng = 12345u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut finished = std::collections::HashSet::new();
    for _ in 0..2_000 {
        now += 37;
        maintain(&mut s, &q(), now, 50).unwrap();
        for l in fetch(&mut s, &q(), b"w", 8, 100, now).unwrap() {
            match next() % 4 {
                0 => {} // worker "dies": the lease will expire
                1 => {
                    let item = NackItem {
                        id: &l.id,
                        token: l.token,
                        retry: Retry::After(20),
                        error: b"e",
                    };
                    nack(&mut s, &q(), &[item], now).unwrap();
                }
                _ => {
                    let item = AckItem {
                        id: &l.id,
                        token: l.token,
                        result: None,
                    };
                    assert_eq!(ack(&mut s, &q(), &[item], 0, now).unwrap(), [Settled::Ok]);
                    assert!(finished.insert(l.id.clone()), "acked twice");
                }
            }
        }
    }
    let dead = stat(&mut s, "dead", now) as usize;
    assert_eq!(
        stat(&mut s, "ready", now) + stat(&mut s, "delayed", now) + stat(&mut s, "leased", now),
        0
    );
    assert_eq!(finished.len() + dead, n);
    assert_eq!(stat(&mut s, "acked", now) as usize, finished.len());
}

#[test]
fn replace_finished_allows_one_active_task_per_id() {
    let mut s = MemStore::new();
    let unique = |payload: &'static [u8]| NewTask {
        replace_finished: true,
        ..NewTask::new(b"u", payload)
    };
    assert_eq!(add(&mut s, &[unique(b"1")]), [true]);
    assert_eq!(add(&mut s, &[unique(b"2")]), [false], "waiting: left alone");
    let l = fetch_ids(&mut s, 1, T0).remove(0);
    assert_eq!(add(&mut s, &[unique(b"3")]), [false], "running: left alone");
    let item = AckItem {
        id: b"u",
        token: l.token,
        result: Some(b"r"),
    };
    ack(&mut s, &q(), &[item], 60_000, T0).unwrap();
    assert_eq!(
        add(&mut s, &[NewTask::new(b"u", b"4")]),
        [false],
        "without the flag a kept result blocks"
    );
    assert_eq!(add(&mut s, &[unique(b"5")]), [true], "finished: replaced");
    let again = fetch_ids(&mut s, 1, T0).remove(0);
    assert_eq!((again.payload.as_slice(), again.attempt), (&b"5"[..], 1));
    assert_eq!(stat(&mut s, "done", T0), 0, "the old result is gone");
}

#[test]
fn tasks_whose_record_vanished_are_counted_dropped_and_replaced_in_a_fetch() {
    let mut s = MemStore::new();
    let k = q();
    add(
        &mut s,
        &[
            NewTask::new(b"a", b"{}"),
            NewTask::new(b"gone1", b"{}"),
            NewTask::new(b"gone2", b"{}"),
            NewTask::new(b"b", b"{}"),
            NewTask::new(b"c", b"{}"),
            NewTask {
                when: When::Delay(100),
                ..NewTask::new(b"later", b"{}")
            },
            NewTask::new(b"held", b"{}"),
        ],
    );
    // Evicted, or deleted by hand: the ids stay in the ready and delayed sets.
    use super::store::{Store, Val};
    s.del(&k.task(b"gone1")).unwrap();
    s.del(&k.task(b"later")).unwrap();
    // A hash left without its record is as good as gone.
    s.hdel(&k.task(b"gone2"), &["record"]).unwrap();
    s.hset(&k.task(b"gone2"), &[("payload", Val::Bytes(b"{}"))])
        .unwrap();

    // Three asked for: the vanished ids are dropped and others taken instead.
    assert_eq!(ids(&fetch_ids(&mut s, 3, T0)), ["a", "b", "c"]);
    assert_eq!(stat(&mut s, "vanished", T0), 2);
    assert_eq!(
        s.key_kind(&k.task(b"gone2")).unwrap(),
        super::store::KeyKind::Missing
    );
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains("2 task(s) in the ready set"),
        "{:?}",
        s.warnings
    );
    assert!(s.warnings[0].contains("noeviction"));

    // A leased task vanishing, and a delayed one: maintenance drops them.
    let held = fetch_ids(&mut s, 1, T0);
    assert_eq!(ids(&held), ["held"]);
    s.del(&k.task(b"held")).unwrap();
    let report = maintain(&mut s, &k, T0 + LEASE + 1, 100).unwrap();
    assert_eq!(
        (report.vanished, report.expired, report.promoted),
        (2, 3, 0)
    );
    assert_eq!(stat(&mut s, "vanished", T0 + LEASE + 1), 4);
    assert_eq!(stat(&mut s, "delayed", T0 + LEASE + 1), 0);
    assert_eq!(s.warnings.len(), 3);
    // Settling a vanished task is refused per item, as for any unknown task.
    let gone = AckItem {
        id: b"held",
        token: held[0].token,
        result: None,
    };
    assert_eq!(ack(&mut s, &k, &[gone], 0, T0).unwrap(), [Settled::NoTask]);
}

#[test]
fn a_fetch_drops_a_bounded_number_of_vanished_tasks() {
    use super::keys::VANISHED_PER_FETCH;
    use super::store::Store;
    let mut s = MemStore::new();
    let k = q();
    let n = VANISHED_PER_FETCH as usize + 5;
    let names: Vec<String> = (0..n).map(|i| format!("t{i:06}")).collect();
    for chunk in names.chunks(1000) {
        let tasks: Vec<NewTask> = chunk
            .iter()
            .map(|id| NewTask::new(id.as_bytes(), b"{}"))
            .collect();
        add(&mut s, &tasks);
    }
    for id in &names[..n - 1] {
        s.del(&k.task(id.as_bytes())).unwrap();
    }
    assert!(fetch_ids(&mut s, 1, T0).is_empty());
    assert_eq!(stat(&mut s, "vanished", T0), VANISHED_PER_FETCH);
    assert_eq!(ids(&fetch_ids(&mut s, 1, T0)), [names[n - 1].clone()]);
    assert_eq!(stat(&mut s, "vanished", T0), n as i64 - 1);
}
