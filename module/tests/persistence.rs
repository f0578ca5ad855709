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

/// Waits until no AOF rewrite is running or scheduled.
fn wait_rewritten(con: &mut Connection) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = cmd(&["INFO", "persistence"]).query(con).unwrap();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            return;
        }
        assert!(Instant::now() < deadline, "the AOF rewrite never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Without the RDB preamble an AOF rewrite writes each queue as the
/// module's `VTASKS.LOADCHUNK` commands; replaying them restores the exact
/// state, timers included.
#[test]
fn module_only_an_aof_rewrite_restores_the_exact_state_and_its_timers() {
    let mut server = Server::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--aof-use-rdb-preamble",
        "no",
    ]);
    let mut con = server.connect();
    mixed_workload(&mut con, "{q}");
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
    let lease = scaled_ms(300).to_string();
    fetch(&mut con, &["1", "{q}", "CONSUMER", "w2", "LEASE", &lease]);
    wait_rewritten(&mut con);
    let _: Value = cmd(&["BGREWRITEAOF"]).query(&mut con).unwrap();
    wait_rewritten(&mut con);
    let written: String = std::fs::read_dir(server.dir.join("appendonlydir"))
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect();
    assert!(
        written.contains("VTASKS.LOADCHUNK"),
        "the rewrite used the module's command"
    );
    let before = snapshot(&mut con);
    // The connection stays open until the server stops: closing it first
    // would cut the leases it holds, and the state would not be `before`.
    let _open_until_the_restart = con;

    server.restart();
    let mut con = server.connect();
    assert_eq!(snapshot(&mut con), before, "the queue came back as it was");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut con, "{q}", "expired") < 1 {
        assert!(
            Instant::now() < deadline,
            "the timer never returned the lease"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Clients cannot send the internal commands.
    let err = query_err(&mut con, &["VTASKS.LOADCHUNK", "{x}", "chunk"]);
    assert!(err.starts_with("ERR syntax error"), "{err}");
    let err = query_err(&mut con, &["VTASKS.MAINTAIN", "{q}", "NOW", "1"]);
    assert!(err.starts_with("ERR syntax error"), "{err}");
}

/// `DEBUG RELOAD` saves and loads the RDB in place: the queue is unchanged.
#[test]
fn module_only_debug_reload_keeps_the_state() {
    let server = Server::start_with(&["--enable-debug-command", "local"]);
    let mut con = server.connect();
    mixed_workload(&mut con, "{q}");
    let before = snapshot(&mut con);
    let digest: String = cmd(&["DEBUG", "DIGEST-VALUE", "{q}"])
        .query::<Vec<String>>(&mut con)
        .unwrap()
        .remove(0);
    let _: () = cmd(&["DEBUG", "RELOAD"]).query(&mut con).unwrap();
    assert_eq!(snapshot(&mut con), before);
    let after: Vec<String> = cmd(&["DEBUG", "DIGEST-VALUE", "{q}"])
        .query(&mut con)
        .unwrap();
    assert_eq!(after[0], digest);
    assert_ne!(digest, "0".repeat(40), "the queue has a digest");
}

/// A queue key moves like any other: `DUMP`/`RESTORE`, `COPY`, and
/// `MIGRATE` to another server (what cluster resharding does). The moved
/// queue carries on there, its timer included.
#[test]
fn module_only_dump_restore_copy_and_migrate_move_a_queue() {
    let server = Server::start();
    let other = Server::start();
    let mut con = server.connect();
    let held = mixed_workload(&mut con, "{q}");
    let lease = scaled_ms(300).to_string();
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
    fetch(&mut con, &["1", "{q}", "CONSUMER", "w2", "LEASE", &lease]);
    // Every count and total (the age of the oldest ready task grows).
    let counts = |reply: Value| -> Vec<(String, Value)> {
        pairs(&reply)
            .into_iter()
            .filter(|(name, _)| name != "oldest_ready_age_ms")
            .collect()
    };
    let stats = counts(query(&mut con, &["VTASKS.STATS", "{q}"]));
    let dump: Vec<u8> = cmd(&["DUMP", "{q}"]).query(&mut con).unwrap();

    let _: () = redis::cmd("RESTORE")
        .arg("{r}")
        .arg(0)
        .arg(&dump)
        .query(&mut con)
        .unwrap();
    let _: i64 = cmd(&["COPY", "{q}", "{c}"]).query(&mut con).unwrap();
    for copy in ["{r}", "{c}"] {
        let got: Vec<u8> = cmd(&["DUMP", copy]).query(&mut con).unwrap();
        assert_eq!(got, dump, "{copy} holds the same queue");
        let t = &held[1];
        let acked = query(
            &mut con,
            &["VTASKS.ACK", copy, "1", &t.id, &t.token.to_string(), ""],
        );
        assert_eq!(text(&items(&acked)[0]), "OK", "{copy}: leases carried over");
    }

    let _: Value = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(other.port)
        .arg("{q}")
        .arg(0)
        .arg(5000)
        .query(&mut con)
        .unwrap();
    let exists: i64 = cmd(&["EXISTS", "{q}"]).query(&mut con).unwrap();
    assert_eq!(exists, 0, "MIGRATE moved the key");
    let mut there = other.connect();
    let moved: Vec<u8> = cmd(&["DUMP", "{q}"]).query(&mut there).unwrap();
    assert_eq!(moved, dump);
    assert_eq!(counts(query(&mut there, &["VTASKS.STATS", "{q}"])), stats);
    // Nobody touches the queue on the new server: its timer returns the
    // lease that expires there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut there, "{q}", "expired") < 1 {
        assert!(
            Instant::now() < deadline,
            "the moved queue's timer never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
