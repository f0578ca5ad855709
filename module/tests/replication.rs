//! A primary and a replica, both with the module: the replica ends with the
//! same data; timers act only on the primary; a promoted replica takes over
//! the server-side duties.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn wait_synced(primary: &mut Connection, replica: &mut Connection) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let acked: i64 = cmd(&["WAIT", "1", "1000"]).query(primary).unwrap();
        if acked == 1 && snapshot(primary) == snapshot(replica) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica never caught up:\nprimary {:?}\nreplica {:?}",
            snapshot(primary),
            snapshot(replica)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_pair() -> (Server, Server) {
    let primary = Server::start();
    let replica = Server::start_replica_of(&primary);
    (primary, replica)
}

#[test]
fn the_replica_ends_in_the_primarys_state() {
    let (primary, replica) = start_pair();
    let mut p = primary.connect();
    let mut r = replica.connect();
    mixed_workload(&mut p, "{q}");
    // Effects made by the timer and by a woken blocked consumer replicate too.
    query(
        &mut p,
        &[
            "VTASKS.ENQUEUE",
            "{s}",
            "TASK",
            "soon",
            "{}",
            "DELAY",
            "100",
        ],
    );
    let got = fetch(
        &mut p,
        &["1", "{s}", "CONSUMER", "w", "BLOCK", "5000", "LEASE", "150"],
    );
    assert_eq!(ids(&got.tasks), ["soon"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut p, "{s}", "expired") < 1 {
        assert!(Instant::now() < deadline, "lease never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_synced(&mut p, &mut r);
    assert_eq!(
        stat(&mut r, "{q}", "enqueued"),
        30,
        "the replica holds the queue"
    );
    let err = query_err(&mut r, &["VTASKS.ENQUEUE", "{q}", "TASK", "x", "{}"]);
    assert!(err.starts_with("READONLY"), "{err}");
}

/// CLEAR replicates as itself (it reads no clock): the replica deletes the
/// same waiting tasks and keeps the same leased, done and dead ones.
#[test]
fn a_clear_reaches_the_replica() {
    let (primary, replica) = start_pair();
    let mut p = primary.connect();
    let mut r = replica.connect();
    let held = mixed_workload(&mut p, "{q}");
    wait_synced(&mut p, &mut r);
    let waiting = stat(&mut p, "{q}", "ready") + stat(&mut p, "{q}", "delayed");
    assert!(waiting > 0);
    assert_eq!(int(&query(&mut p, &["VTASKS.CLEAR", "{q}"])), waiting);
    wait_synced(&mut p, &mut r);
    assert_eq!(
        stat(&mut r, "{q}", "ready") + stat(&mut r, "{q}", "delayed"),
        0
    );
    assert_eq!(stat(&mut r, "{q}", "leased"), held.len() as i64);
    let info: String = cmd(&["INFO", "commandstats"]).query(&mut r).unwrap();
    assert!(
        info.to_lowercase().contains("cmdstat_vtasks.clear:calls=1"),
        "replicated as VTASKS.CLEAR: {info}"
    );
}

#[test]
fn timers_act_only_on_the_primary_until_a_replica_is_promoted() {
    let (mut primary, replica) = start_pair();
    let mut p = primary.connect();
    let mut r = replica.connect();
    query(&mut p, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let lease = scaled_ms(300);
    fetch(
        &mut p,
        &["1", "{q}", "CONSUMER", "lost", "LEASE", &lease.to_string()],
    );
    wait_synced(&mut p, &mut r);
    primary.stop();

    std::thread::sleep(Duration::from_millis(2 * lease));
    assert_eq!(
        stat(&mut r, "{q}", "overdue_leases"),
        1,
        "the replica left the lease alone"
    );
    assert_eq!(stat(&mut r, "{q}", "expired"), 0);

    query(&mut r, &["REPLICAOF", "NO", "ONE"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut r, "{q}", "expired") < 1 {
        assert!(
            Instant::now() < deadline,
            "the promoted replica never expired the lease"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = fetch(&mut r, &["1", "{q}", "CONSUMER", "new"])
        .tasks
        .remove(0);
    assert_eq!((again.id.as_str(), again.attempt), ("t", 2));
}

/// The leases of a closed connection are cut by the primary's timer; the
/// cut and the expiry after it reach the replica as written.
#[test]
fn a_disconnect_driven_cut_reaches_the_replica() {
    let (primary, replica) = start_pair();
    let mut p = primary.connect();
    let mut r = replica.connect();
    query(
        &mut p,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "a",
            "{}",
            "TASK",
            "b",
            "{}",
        ],
    );
    {
        let mut worker = primary.connect();
        fetch(
            &mut worker,
            &[
                "1", "{q}", "CONSUMER", "killed", "COUNT", "2", "LEASE", "600000",
            ],
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut p, "{q}", "leases_cut") < 2 {
        assert!(Instant::now() < deadline, "the leases were never cut");
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_synced(&mut p, &mut r);
    let deadline_of = |con: &mut Connection| {
        int(&field(&query(con, &["VTASKS.GET", "{q}", "a"]), "deadline").unwrap())
    };
    let cut = deadline_of(&mut r);
    let now = {
        let t: Vec<String> = cmd(&["TIME"]).query(&mut r).unwrap();
        t[0].parse::<i64>().unwrap() * 1000
    };
    assert!(cut < now + 60_000, "the replica holds the cut deadline");
    while stat(&mut p, "{q}", "expired") < 2 {
        assert!(Instant::now() < deadline, "the cut leases never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_synced(&mut p, &mut r);
    assert_eq!(stat(&mut r, "{q}", "ready"), 2);
}

fn schedule_runs(con: &mut Connection, queue: &str) -> i64 {
    let listed = query(con, &["VTASKS.SCHEDULES", queue]);
    let first = items(&listed);
    pairs(&first[0])
        .into_iter()
        .find(|(name, _)| name == "runs")
        .map(|(_, v)| int(&v))
        .unwrap()
}

/// A schedule fired by the primary's timer reaches the replica as the
/// same occurrences (the timer's maintenance replicates with its clock
/// reading); a promoted replica goes on firing it, from the next
/// occurrence, with no occurrence twice.
#[test]
fn a_schedule_replicates_and_a_promoted_replica_fires_it() {
    let (primary, replica) = start_pair();
    let mut p = primary.connect();
    let mut r = replica.connect();
    let next = (vtasks_client::schedule::now_ms() / 1000 + 1) * 1000;
    query(
        &mut p,
        &[
            "VTASKS.SCHEDULE",
            "{s}",
            "tick",
            "every 1",
            "{}",
            "NEXT",
            &next.to_string(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while schedule_runs(&mut p, "{s}") < 2 {
        assert!(Instant::now() < deadline, "the primary never fired");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_synced(&mut p, &mut r);
    // Timers stay off on the replica; once promoted it fires on its own.
    drop(p);
    drop(primary);
    query(&mut r, &["REPLICAOF", "NO", "ONE"]);
    let runs = schedule_runs(&mut r, "{s}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while schedule_runs(&mut r, "{s}") < runs + 2 {
        assert!(
            Instant::now() < deadline,
            "the promoted replica never fired"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every task is an occurrence of its own second.
    let got = fetch(&mut r, &["1", "{s}", "CONSUMER", "w", "COUNT", "100"]);
    let mut at: Vec<i64> = got
        .tasks
        .iter()
        .map(|t| t.id.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    at.sort();
    assert!(at.len() as i64 >= runs + 2, "{at:?}");
    assert!(
        at.windows(2).all(|w| w[1] > w[0] && w[0] % 1000 == 0),
        "{at:?}"
    );
}
