//! State survives a restart, with AOF and with RDB; after the restart the
//! queue carries on (leases expire, tasks are fetched and acknowledged).

mod common;
use common::*;
use std::time::{Duration, Instant};

fn survives_restart(server: &mut Server) {
    let mut con = server.connect();
    let held = mixed_workload(&mut con, "{q}");
    // A short lease that expires while the server is down.
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "short",
            "{}",
            "PRIORITY",
            "100",
        ],
    );
    let lease = scaled_ms(300);
    let short = fetch(
        &mut con,
        &["1", "{q}", "CONSUMER", "w2", "LEASE", &lease.to_string()],
    )
    .tasks
    .remove(0);
    assert_eq!(short.id, "short");
    let before = snapshot(&mut con);
    // The connection stays open until the server stops: closing it first
    // would cut the leases it holds, and the state would not be `before`.
    let _open_until_the_restart = con;

    server.restart();
    let mut con = server.connect();
    assert_eq!(snapshot(&mut con), before, "every key and value came back");

    // The short lease is over: it comes back for its second attempt.
    std::thread::sleep(Duration::from_millis(lease));
    let again = fetch(&mut con, &["1", "{q}", "CONSUMER", "w3"])
        .tasks
        .remove(0);
    assert_eq!((again.id.as_str(), again.attempt), ("short", 2));

    // Leases held before the restart are still valid and fenced.
    let t = &held[0];
    let r = query(
        &mut con,
        &["VTASKS.ACK", "{q}", "1", &t.id, &t.token.to_string(), ""],
    );
    assert_eq!(text(&items(&r)[0]), "OK");
    let r = query(
        &mut con,
        &["VTASKS.ACK", "{q}", "1", &t.id, &t.token.to_string(), ""],
    );
    assert_eq!(text(&items(&r)[0]), "STALE");
}

#[test]
fn state_survives_a_restart_with_aof() {
    let mut server = Server::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    survives_restart(&mut server);
}

#[test]
fn state_survives_a_restart_with_rdb() {
    let mut server = Server::start_with(&["--save", "3600 1"]);
    survives_restart(&mut server);
    assert!(server.dir.join("dump.rdb").exists());
}

#[test]
fn module_only_timers_pick_up_leases_after_a_restart() {
    let mut server = Server::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut con = server.connect();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "LEASE", "300"]);
    drop(con);
    server.restart();
    let mut con = server.connect();
    // No consumer touches the queue: the timer, rearmed from the loaded
    // data, returns the expired lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut con, "{q}", "expired") < 1 {
        assert!(
            Instant::now() < deadline,
            "the expired lease was never returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stat(&mut con, "{q}", "ready"), 1);
}
