//! Every command's normal path against a real server with the module.

mod common;
use common::*;

#[test]
fn enqueue_fetch_ack_round_trip() {
    let server = Server::start();
    let mut con = server.connect();
    let added = query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "a",
            "{\"n\":1}",
            "TASK",
            "b",
            "{\"n\":2}",
        ],
    );
    assert_eq!(items(&added).iter().map(int).collect::<Vec<_>>(), [1, 1]);

    let got = fetch(&mut con, &["1", "{q}", "CONSUMER", "w1", "COUNT", "10"]);
    assert_eq!(ids(&got.tasks), ["a", "b"]);
    assert_eq!(got.tasks[0].payload, "{\"n\":1}");
    assert_eq!(got.tasks[0].attempt, 1);
    assert_eq!(got.tasks[0].queue, "{q}");
    assert_eq!(stat(&mut con, "{q}", "leased"), 2);

    let a = &got.tasks[0];
    let b = &got.tasks[1];
    let acked = query(
        &mut con,
        &[
            "VTASKS.ACK",
            "{q}",
            "2",
            "a",
            &a.token.to_string(),
            "\"done-a\"",
            "b",
            &b.token.to_string(),
            "",
            "KEEP",
            "60000",
        ],
    );
    assert_eq!(
        items(&acked).iter().map(text).collect::<Vec<_>>(),
        ["OK", "OK"]
    );
    let task = query(&mut con, &["VTASKS.GET", "{q}", "a"]);
    assert_eq!(text(&field(&task, "status").unwrap()), "done");
    assert_eq!(text(&field(&task, "result").unwrap()), "\"done-a\"");
    assert_eq!(text(&field(&task, "workers").unwrap()), "w1");
    let task_b = query(&mut con, &["VTASKS.GET", "{q}", "b"]);
    assert!(
        field(&task_b, "result").is_none(),
        "an empty result means none"
    );
    if Target::current().uses_scripts() {
        // The keyspace layout keeps a finished task as a hash with a TTL.
        let ttl: i64 = cmd(&["PTTL", "{q}:t:a"]).query(&mut con).unwrap();
        assert!(
            ttl > 50_000 && ttl <= 60_000,
            "result kept for KEEP ms, got {ttl}"
        );
    }
    assert_eq!(stat(&mut con, "{q}", "done"), 2);
    assert_eq!(stat(&mut con, "{q}", "acked"), 2);
    assert_eq!(query(&mut con, &["VTASKS.GET", "{q}", "nope"]), Value::Nil);
}

#[test]
fn priority_then_fifo() {
    let server = Server::start();
    let mut con = server.connect();
    let order = [
        ("l1", "-5"),
        ("m1", "0"),
        ("h", "100"),
        ("m2", "0"),
        ("lowest", "-100"),
        ("l2", "-5"),
    ];
    for (id, priority) in order {
        query(
            &mut con,
            &[
                "VTASKS.ENQUEUE",
                "{q}",
                "TASK",
                id,
                "{}",
                "PRIORITY",
                priority,
            ],
        );
    }
    let got = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "COUNT", "100"]);
    assert_eq!(ids(&got.tasks), ["h", "m1", "m2", "l1", "l2", "lowest"]);
}

#[test]
fn fetch_serves_queues_in_the_order_given() {
    let server = Server::start();
    let mut con = server.connect();
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{low}",
            "TASK",
            "x1",
            "{}",
            "TASK",
            "x2",
            "{}",
        ],
    );
    query(&mut con, &["VTASKS.ENQUEUE", "{high}", "TASK", "y1", "{}"]);
    let got = fetch(
        &mut con,
        &["2", "{high}", "{low}", "CONSUMER", "w", "COUNT", "2"],
    );
    assert_eq!(ids(&got.tasks), ["y1", "x1"]);
    assert_eq!(got.tasks[0].queue, "{high}");
    assert_eq!(got.tasks[1].queue, "{low}");
    // Settle tasks of both queues in the next call.
    let acks = [
        "ACK",
        "2",
        "{high}",
        "y1",
        &got.tasks[0].token.to_string(),
        "",
        "{low}",
        "x1",
        &got.tasks[1].token.to_string(),
        "",
    ];
    let mut words = vec!["2", "{high}", "{low}", "CONSUMER", "w", "COUNT", "5"];
    words.extend_from_slice(&acks);
    let next = fetch(&mut con, &words);
    assert_eq!(next.acks, ["OK", "OK"]);
    assert_eq!(ids(&next.tasks), ["x2"]);
}

#[test]
fn enqueue_is_idempotent() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "a", "first"]);
    let again = query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "a",
            "second",
            "TASK",
            "b",
            "x",
        ],
    );
    assert_eq!(items(&again).iter().map(int).collect::<Vec<_>>(), [0, 1]);
    let got = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "COUNT", "10"]);
    assert_eq!(ids(&got.tasks), ["a", "b"]);
    assert_eq!(got.tasks[0].payload, "first");
    // Still refused while the task is leased, and while its result is kept.
    let t = &got.tasks[0];
    assert_eq!(
        int(&items(&query(
            &mut con,
            &["VTASKS.ENQUEUE", "{q}", "TASK", "a", "third"]
        ))[0]),
        0
    );
    query(
        &mut con,
        &["VTASKS.ACK", "{q}", "1", "a", &t.token.to_string(), ""],
    );
    assert_eq!(
        int(&items(&query(
            &mut con,
            &["VTASKS.ENQUEUE", "{q}", "TASK", "a", "third"]
        ))[0]),
        0
    );
}

#[test]
fn stale_tokens_are_fenced() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let first = fetch(&mut con, &["1", "{q}", "CONSUMER", "old", "LEASE", "50"])
        .tasks
        .remove(0);
    // The lease runs out; the task goes to another consumer.
    let second = fetch(&mut con, &["1", "{q}", "CONSUMER", "new", "BLOCK", "5000"])
        .tasks
        .remove(0);
    assert_eq!(second.id, "t");
    assert_eq!(second.attempt, 2);
    let old = first.token.to_string();
    for words in [
        vec!["VTASKS.ACK", "{q}", "1", "t", &old, "late"],
        vec!["VTASKS.EXTEND", "{q}", "1000", "1", "t", &old],
        vec!["VTASKS.RELEASE", "{q}", "1", "t", &old],
        vec!["VTASKS.NACK", "{q}", "1", "t", &old, "0", "late failure"],
    ] {
        assert_eq!(
            text(&items(&query(&mut con, &words))[0]),
            "STALE",
            "{words:?}"
        );
    }
    let task = query(&mut con, &["VTASKS.GET", "{q}", "t"]);
    assert_eq!(text(&field(&task, "status").unwrap()), "leased");
    assert_eq!(text(&field(&task, "consumer").unwrap()), "new");
    assert_eq!(text(&field(&task, "workers").unwrap()), "old,new");
    let ok = query(
        &mut con,
        &[
            "VTASKS.ACK",
            "{q}",
            "1",
            "t",
            &second.token.to_string(),
            "r",
        ],
    );
    assert_eq!(text(&items(&ok)[0]), "OK");
    let unknown = query(&mut con, &["VTASKS.ACK", "{q}", "1", "zz", "1", ""]);
    assert_eq!(text(&items(&unknown)[0]), "NOTASK");
}

#[test]
fn nack_retries_with_delay_then_dead_letters_and_requeue_purge() {
    let server = Server::start();
    let mut con = server.connect();
    query(
        &mut con,
        &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}", "ATTEMPTS", "2"],
    );
    let t = fetch(&mut con, &["1", "{q}", "CONSUMER", "w"])
        .tasks
        .remove(0);
    let r = query(
        &mut con,
        &[
            "VTASKS.NACK",
            "{q}",
            "1",
            "t",
            &t.token.to_string(),
            "100",
            "ValueError: boom",
        ],
    );
    assert_eq!(text(&items(&r)[0]), "RETRY");
    assert_eq!(
        text(&field(&query(&mut con, &["VTASKS.GET", "{q}", "t"]), "status").unwrap()),
        "delayed"
    );
    let t = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "BLOCK", "5000"])
        .tasks
        .remove(0);
    assert_eq!(t.attempt, 2);
    let r = query(
        &mut con,
        &[
            "VTASKS.NACK",
            "{q}",
            "1",
            "t",
            &t.token.to_string(),
            "100",
            "ValueError: again",
        ],
    );
    assert_eq!(text(&items(&r)[0]), "DEAD");

    let dead = items(&query(&mut con, &["VTASKS.DEADLIST", "{q}"]));
    assert_eq!(dead.len(), 1);
    let entry = items(&dead[0]);
    assert_eq!(text(&entry[0]), "t");
    assert_eq!(int(&entry[2]), 2);
    assert_eq!(text(&entry[3]), "ValueError: again");

    assert_eq!(
        int(&query(
            &mut con,
            &["VTASKS.REQUEUE", "{q}", "IDS", "t", "missing"]
        )),
        1
    );
    let t = fetch(&mut con, &["1", "{q}", "CONSUMER", "w"])
        .tasks
        .remove(0);
    assert_eq!(t.attempt, 1);
    let r = query(
        &mut con,
        &[
            "VTASKS.NACK",
            "{q}",
            "1",
            "t",
            &t.token.to_string(),
            "DEAD",
            "unknown task",
        ],
    );
    assert_eq!(text(&items(&r)[0]), "DEAD");
    assert_eq!(int(&query(&mut con, &["VTASKS.PURGE", "{q}", "ALL"])), 1);
    assert_eq!(query(&mut con, &["VTASKS.GET", "{q}", "t"]), Value::Nil);
    assert_eq!(stat(&mut con, "{q}", "dead"), 0);
    assert_eq!(stat(&mut con, "{q}", "purged"), 1);
}

#[test]
fn extend_keeps_a_long_task_leased_and_release_gives_it_back() {
    let server = Server::start();
    let mut con = server.connect();
    query(
        &mut con,
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
    let lease = scaled_ms(300).to_string();
    let got = fetch(
        &mut con,
        &["1", "{q}", "CONSUMER", "w", "COUNT", "2", "LEASE", &lease],
    );
    let (a, b) = (&got.tasks[0], &got.tasks[1]);
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(scaled_ms(150)));
        let r = query(
            &mut con,
            &[
                "VTASKS.EXTEND",
                "{q}",
                &lease,
                "1",
                "a",
                &a.token.to_string(),
            ],
        );
        assert_eq!(text(&items(&r)[0]), "OK");
    }
    // 600 ms after the 300 ms lease began, "a" is still held thanks to
    // renewal. "b"'s lease is over: returned already (the module's timer)
    // or overdue until the next fetch returns it (the scripts engine).
    assert_eq!(
        stat(&mut con, "{q}", "expired") + stat(&mut con, "{q}", "overdue_leases"),
        1,
        "only the unrenewed task expired"
    );
    let held = query(&mut con, &["VTASKS.GET", "{q}", "a"]);
    assert_eq!(text(&field(&held, "status").unwrap()), "leased");
    let r = query(
        &mut con,
        &["VTASKS.RELEASE", "{q}", "1", "a", &a.token.to_string()],
    );
    assert_eq!(text(&items(&r)[0]), "OK");
    let again = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "COUNT", "2"]);
    assert_eq!(ids(&again.tasks), ["a", "b"]);
    assert_eq!(
        again.tasks[0].attempt, 1,
        "a released task's attempt does not count"
    );
    assert_eq!(
        again.tasks[1].attempt, 2,
        "an expired lease counts as an attempt"
    );
    assert_ne!(again.tasks[1].token, b.token);
}

#[test]
fn pause_and_resume() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.PAUSE", "{q}"]);
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    assert!(fetch(&mut con, &["1", "{q}", "CONSUMER", "w"])
        .tasks
        .is_empty());
    assert_eq!(stat(&mut con, "{q}", "paused"), 1);
    query(&mut con, &["VTASKS.RESUME", "{q}"]);
    assert_eq!(
        ids(&fetch(&mut con, &["1", "{q}", "CONSUMER", "w"]).tasks),
        ["t"]
    );
}

#[test]
fn cancel_and_maxlen() {
    let server = Server::start();
    let mut con = server.connect();
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "MAXLEN",
            "2",
            "TASK",
            "a",
            "{}",
            "TASK",
            "b",
            "{}",
            "DELAY",
            "60000",
        ],
    );
    let err = query_err(
        &mut con,
        &["VTASKS.ENQUEUE", "{q}", "MAXLEN", "2", "TASK", "c", "{}"],
    );
    assert!(err.starts_with("QUEUEFULL"), "{err}");
    let r = query(&mut con, &["VTASKS.CANCEL", "{q}", "a", "b", "zz"]);
    assert_eq!(items(&r).iter().map(int).collect::<Vec<_>>(), [1, 1, 0]);
    assert_eq!(stat(&mut con, "{q}", "cancelled"), 2);
    query(
        &mut con,
        &["VTASKS.ENQUEUE", "{q}", "MAXLEN", "2", "TASK", "c", "{}"],
    );
    assert_eq!(stat(&mut con, "{q}", "ready"), 1);
}

#[test]
fn clear_deletes_waiting_tasks_and_nothing_else() {
    let server = Server::start();
    let mut con = server.connect();
    let err = query_err(&mut con, &["VTASKS.CLEAR", "{never}"]);
    assert!(err.starts_with("NOQUEUE"), "{err}");
    let mut enqueue = vec!["VTASKS.ENQUEUE", "{q}"];
    for id in ["run", "ok", "die", "r1", "r2"] {
        enqueue.extend(["TASK", id, "{}", "ATTEMPTS", "1"]);
    }
    enqueue.extend(["TASK", "urgent", "{}", "PRIORITY", "9"]);
    enqueue.extend(["TASK", "later", "{}", "DELAY", "600000"]);
    query(&mut con, &enqueue);
    let got = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "COUNT", "4"]);
    assert_eq!(ids(&got.tasks), ["urgent", "run", "ok", "die"]);
    let token = |id: &str| {
        got.tasks
            .iter()
            .find(|t| t.id == id)
            .unwrap()
            .token
            .to_string()
    };
    query(
        &mut con,
        &["VTASKS.ACK", "{q}", "1", "ok", &token("ok"), "\"r\""],
    );
    query(
        &mut con,
        &["VTASKS.NACK", "{q}", "1", "die", &token("die"), "0", "boom"],
    );
    // "urgent" goes back to the queue; "run" stays leased.
    query(
        &mut con,
        &["VTASKS.RELEASE", "{q}", "1", "urgent", &token("urgent")],
    );
    query(&mut con, &["VTASKS.PAUSE", "{q}"]);

    // A paused queue is cleared too: r1, r2, urgent and later.
    assert_eq!(int(&query(&mut con, &["VTASKS.CLEAR", "{q}"])), 4);
    assert_eq!(int(&query(&mut con, &["VTASKS.CLEAR", "{q}"])), 0);
    for id in ["r1", "r2", "urgent", "later"] {
        assert_eq!(
            query(&mut con, &["VTASKS.GET", "{q}", id]),
            Value::Nil,
            "{id}"
        );
    }
    let status = |con: &mut Connection, id| {
        text(&field(&query(con, &["VTASKS.GET", "{q}", id]), "status").unwrap())
    };
    assert_eq!(status(&mut con, "run"), "leased");
    assert_eq!(status(&mut con, "ok"), "done");
    assert_eq!(status(&mut con, "die"), "dead");
    for (name, value) in [
        ("ready", 0),
        ("delayed", 0),
        ("leased", 1),
        ("dead", 1),
        ("done", 1),
        ("cancelled", 4),
        ("paused", 1),
    ] {
        assert_eq!(stat(&mut con, "{q}", name), value, "{name}");
    }
    let r = query(
        &mut con,
        &["VTASKS.ACK", "{q}", "1", "run", &token("run"), ""],
    );
    assert_eq!(
        text(&items(&r)[0]),
        "OK",
        "the running task settles as usual"
    );
    // A cleared id is free, as a cancelled one.
    let r = query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "r1", "{}"]);
    assert_eq!(int(&items(&r)[0]), 1);
    // Lower case, as any command.
    assert_eq!(int(&query(&mut con, &["vtasks.clear", "{q}"])), 1);
}

#[test]
fn stats_report_every_count() {
    let server = Server::start();
    let mut con = server.connect();
    let err = query_err(&mut con, &["VTASKS.STATS", "{never}"]);
    assert!(err.starts_with("NOQUEUE"), "{err}");
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "r1",
            "{}",
            "TASK",
            "r2",
            "{}",
            "TASK",
            "d",
            "{}",
            "DELAY",
            "60000",
        ],
    );
    fetch(&mut con, &["1", "{q}", "CONSUMER", "w"]);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let reply = query(&mut con, &["VTASKS.STATS", "{q}"]);
    let get = |name: &str| int(&field(&reply, name).unwrap_or_else(|| panic!("{name}")));
    assert_eq!(
        (
            get("ready"),
            get("delayed"),
            get("leased"),
            get("dead"),
            get("done")
        ),
        (1, 1, 1, 0, 0)
    );
    assert_eq!(get("enqueued"), 3);
    assert!(
        get("oldest_ready_age_ms") >= 30,
        "r2 has waited at least 30 ms"
    );
    let names: Vec<String> = pairs(&reply).into_iter().map(|(n, _)| n).collect();
    for expected in [
        "blocked",
        "paused",
        "overdue_leases",
        "acked",
        "failed",
        "retried",
        "expired",
        "dead_lettered",
        "released",
        "requeued",
        "cancelled",
        "purged",
        "vanished",
    ] {
        assert!(names.contains(&expected.to_string()), "missing {expected}");
    }
}

/// The module keeps a whole queue as one value of its own type under
/// `{name}`; the scripts engine keeps the keyspace layout of
/// docs/PROTOCOL.md, every key under the queue's hash tag.
#[test]
fn data_lives_under_the_queue_hash_tag() {
    let server = Server::start();
    let mut con = server.connect();
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "a",
            "{}",
            "TASK",
            "b",
            "{}",
            "DELAY",
            "9000",
        ],
    );
    fetch(&mut con, &["1", "{q}", "CONSUMER", "w"]);
    let mut keys: Vec<String> = cmd(&["KEYS", "*"]).query(&mut con).unwrap();
    keys.sort();
    if !Target::current().uses_scripts() {
        assert_eq!(keys, ["{q}"]);
        let t: String = cmd(&["TYPE", "{q}"]).query(&mut con).unwrap();
        assert_eq!(t, "vtasksque");
        return;
    }
    assert_eq!(
        keys,
        ["{q}", "{q}:delayed", "{q}:leased", "{q}:t:a", "{q}:t:b"]
    );
    for (key, kind) in [
        ("{q}", "hash"),
        ("{q}:delayed", "zset"),
        ("{q}:leased", "zset"),
        ("{q}:t:a", "hash"),
    ] {
        let t: String = cmd(&["TYPE", key]).query(&mut con).unwrap();
        assert_eq!(t, kind, "{key}");
    }
}

#[test]
fn replace_finished_keeps_one_active_task_per_id() {
    let server = Server::start();
    let mut con = server.connect();
    fn unique(payload: &str) -> Vec<&str> {
        vec![
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "u",
            payload,
            "REPLACEFINISHED",
        ]
    }
    assert_eq!(int(&items(&query(&mut con, &unique("1")))[0]), 1);
    assert_eq!(
        int(&items(&query(&mut con, &unique("2")))[0]),
        0,
        "waiting: unchanged"
    );
    let t = fetch(&mut con, &["1", "{q}", "CONSUMER", "w"])
        .tasks
        .remove(0);
    query(
        &mut con,
        &["VTASKS.ACK", "{q}", "1", "u", &t.token.to_string(), "r"],
    );
    assert_eq!(
        int(&items(&query(&mut con, &unique("3")))[0]),
        1,
        "finished: replaced"
    );
    let again = fetch(&mut con, &["1", "{q}", "CONSUMER", "w"])
        .tasks
        .remove(0);
    assert_eq!((again.payload.as_str(), again.attempt), ("3", 1));
}

/// Waits (fetching, which runs the queue's maintenance on either engine)
/// until STATS `vanished` reaches `n`.
fn fetch_until_vanished(con: &mut Connection, queue: &str, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stat(con, queue, "vanished") < n {
        assert!(
            std::time::Instant::now() < deadline,
            "vanished never reached {n}"
        );
        let got = fetch(con, &["1", queue, "CONSUMER", "w", "BLOCK", "50"]);
        assert!(got.tasks.is_empty(), "nothing is left to hand out");
    }
}

#[test]
fn tasks_whose_record_vanished_are_counted_dropped_and_logged() {
    let server = Server::start();
    let mut con = server.connect();
    if !Target::current().uses_scripts() {
        // A queue of the module's type holds its tasks inside its one value,
        // so none can vanish on its own. A queue kept in the keyspace layout
        // (written here by the scripts engine) can lose task hashes; the
        // module's adoption counts those ids as vanished and logs them.
        vanished_tasks_are_counted_when_a_layout_queue_is_adopted(&server, &mut con);
        return;
    }
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{v}",
            "TASK",
            "gone",
            "{}",
            "TASK",
            "a",
            "{}",
            "TASK",
            "b",
            "{}",
            "TASK",
            "held",
            "{}",
            "TASK",
            "later",
            "{}",
            "DELAY",
            "100",
        ],
    );
    // Evicted, or deleted by hand, while the id is ready: the fetch drops
    // it and hands out the next tasks instead.
    query(&mut con, &["DEL", "{v}:t:gone"]);
    let got = fetch(&mut con, &["1", "{v}", "CONSUMER", "w", "COUNT", "2"]);
    assert_eq!(ids(&got.tasks), ["a", "b"]);
    assert_eq!(stat(&mut con, "{v}", "vanished"), 1);
    // While leased, and while delayed: dropped when their deadline comes.
    let got = fetch(&mut con, &["1", "{v}", "CONSUMER", "w", "LEASE", "100"]);
    assert_eq!(ids(&got.tasks), ["held"]);
    query(&mut con, &["DEL", "{v}:t:held", "{v}:t:later"]);
    fetch_until_vanished(&mut con, "{v}", 3);
    let reply = query(&mut con, &["VTASKS.STATS", "{v}"]);
    let get = |name: &str| int(&field(&reply, name).unwrap());
    // Only a and b are left, leased.
    assert_eq!((get("ready"), get("delayed"), get("leased")), (0, 0, 2));
    assert_eq!(get("enqueued"), 5);
    let log = server.log();
    assert!(
        log.contains("queue {v}: 1 task(s) in the ready set had no record"),
        "{log}"
    );
}

fn vanished_tasks_are_counted_when_a_layout_queue_is_adopted(
    server: &Server,
    con: &mut Connection,
) {
    use vtasks_client::scripts;
    let _: Value = scripts::load_cmd().query(con).unwrap();
    let enqueue = cmd(&[
        "VTASKS.ENQUEUE",
        "{v}",
        "TASK",
        "gone",
        "{}",
        "TASK",
        "a",
        "{}",
        "TASK",
        "held",
        "{}",
    ]);
    let _: Value = scripts::fcall(&enqueue).query(con).unwrap();
    let lease = cmd(&["VTASKS.FETCHN", "1", "{v}", "CONSUMER", "w", "COUNT", "3"]);
    let _: Value = scripts::fcall(&lease).query(con).unwrap();
    query(con, &["DEL", "{v}:t:gone", "{v}:t:held"]);
    assert_eq!(int(&query(con, &["VTASKS.ADOPT", "{v}"])), 1);
    let reply = query(con, &["VTASKS.STATS", "{v}"]);
    let get = |name: &str| int(&field(&reply, name).unwrap());
    assert_eq!((get("leased"), get("vanished"), get("enqueued")), (1, 2, 3));
    let log = server.log();
    assert!(
        log.contains("adopting {v}: 2 queued ids had no task record"),
        "{log}"
    );
}

/// The lease of the task leased to `consumer` expires: a second consumer's
/// blocked fetch gets it back (the server wakes it at the deadline).
fn lose_lease(con: &mut Connection, id: &str, lease_ms: u64) -> Task {
    let first = fetch(
        con,
        &[
            "1",
            "{q}",
            "CONSUMER",
            "crashed",
            "LEASE",
            &lease_ms.to_string(),
        ],
    );
    assert_eq!(ids(&first.tasks), [id]);
    let again = fetch(con, &["1", "{q}", "CONSUMER", "w", "BLOCK", "20000"]);
    assert_eq!(ids(&again.tasks), [id], "the lease expired and came back");
    again.tasks[0].clone()
}

fn get_int(con: &mut Connection, id: &str, name: &str) -> i64 {
    let task = query(con, &["VTASKS.GET", "{q}", id]);
    int(&field(&task, name).unwrap_or_else(|| panic!("no field {name}")))
}

#[test]
fn failed_attempts_and_lost_leases_are_counted_separately() {
    let server = Server::start();
    let mut con = server.connect();
    // Django's default: one attempt may fail; a lost lease is not a failure.
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "t",
            "{}",
            "ATTEMPTS",
            "1",
            "LOSTLEASES",
            "2",
        ],
    );
    let t = lose_lease(&mut con, "t", 100);
    assert_eq!(t.attempt, 2);
    let budgets = |con: &mut Connection| {
        [
            "attempts",
            "max_attempts",
            "failed_attempts",
            "lost_leases",
            "max_lost_leases",
        ]
        .map(|name| get_int(con, "t", name))
    };
    assert_eq!(budgets(&mut con), [2, 1, 0, 1, 2]);
    let task = query(&mut con, &["VTASKS.GET", "{q}", "t"]);
    assert_eq!(text(&field(&task, "status").unwrap()), "leased");
    assert_eq!(
        text(&field(&task, "error").unwrap()),
        "lease lost on attempt 1 (1 of 2 lost leases allowed): the worker running it \
         stopped (crash, kill, or lost connection) before finishing it"
    );
    let r = query(
        &mut con,
        &[
            "VTASKS.NACK",
            "{q}",
            "1",
            "t",
            &t.token.to_string(),
            "0",
            "ValueError: boom",
        ],
    );
    assert_eq!(text(&items(&r)[0]), "DEAD", "its one failed attempt");
    assert_eq!(budgets(&mut con), [2, 1, 1, 1, 2]);
    assert_eq!(stat(&mut con, "{q}", "failed"), 1);
    assert_eq!(stat(&mut con, "{q}", "expired"), 1);
    assert_eq!(stat(&mut con, "{q}", "dead_lettered"), 1);
    assert_eq!(stat(&mut con, "{q}", "dead_lost"), 0);

    // A task that keeps losing its lease (it takes its worker down) ends
    // dead once its lost-lease budget is used, with a reason naming that.
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "k",
            "{}",
            "LOSTLEASES",
            "2",
        ],
    );
    let k = lose_lease(&mut con, "k", 100);
    assert_eq!(k.attempt, 2);
    // Its second holder vanishes too: its lease is shortened as a lease
    // running out would be, and a fetch runs the maintenance that finds it.
    query(
        &mut con,
        &[
            "VTASKS.EXTEND",
            "{q}",
            "100",
            "1",
            "k",
            &k.token.to_string(),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stat(&mut con, "{q}", "dead_lost") < 1 {
        assert!(std::time::Instant::now() < deadline, "k never died");
        fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "BLOCK", "200"]);
    }
    let k = query(&mut con, &["VTASKS.GET", "{q}", "k"]);
    assert_eq!(text(&field(&k, "status").unwrap()), "dead");
    assert_eq!(
        text(&field(&k, "error").unwrap()),
        "lease lost 2 times, its budget: the worker running it stopped (crash, kill, or lost \
         connection) before finishing it (last on attempt 2)"
    );
    assert_eq!(get_int(&mut con, "k", "failed_attempts"), 0);
    assert_eq!(stat(&mut con, "{q}", "dead_lost"), 1);
    assert_eq!(stat(&mut con, "{q}", "dead_lettered"), 2);
}

#[test]
fn a_redelivered_task_runs_before_tasks_enqueued_after_it() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "a", "{}"]);
    fetch(
        &mut con,
        &["1", "{q}", "CONSUMER", "crashed", "LEASE", "100"],
    );
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "b",
            "{}",
            "TASK",
            "c",
            "{}",
        ],
    );
    // Paused, the queue hands out nothing while a's lease runs out (a
    // fetch still runs its maintenance, which the scripts engine needs).
    query(&mut con, &["VTASKS.PAUSE", "{q}"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stat(&mut con, "{q}", "expired") < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "a's lease never expired"
        );
        fetch(&mut con, &["1", "{q}", "CONSUMER", "w"]);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    query(&mut con, &["VTASKS.RESUME", "{q}"]);
    let got = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "COUNT", "3"]);
    assert_eq!(ids(&got.tasks), ["a", "b", "c"]);
    assert_eq!(got.tasks[0].attempt, 2);
}

#[test]
fn a_queue_written_by_the_previous_release_keeps_working() {
    let server = Server::start();
    let mut con = server.connect();
    // Version-1 records, as the previous release stored them: `old` had one
    // attempt that failed and waits for its retry; `running` is leased.
    let now: i64 = {
        let t: Vec<String> = cmd(&["TIME"]).query(&mut con).unwrap();
        t[0].parse::<i64>().unwrap() * 1000
    };
    let seeded: Vec<Vec<String>> = vec![
        vec![
            "HSET".into(),
            "{q}".into(),
            "seq".into(),
            "2".into(),
            "token".into(),
            "7".into(),
            "enqueued".into(),
            "2".into(),
        ],
        vec![
            "HSET".into(),
            "{q}:t:old".into(),
            "payload".into(),
            "{}".into(),
            "record".into(),
            format!("1 ready 0 3 1 1 6 {now} - 0 0 0 - w0 w0"),
            "error".into(),
            "boom".into(),
        ],
        vec![
            "ZADD".into(),
            "{q}:ready".into(),
            (100i64 << 44 | 1).to_string(),
            "old".into(),
        ],
        vec![
            "HSET".into(),
            "{q}:t:running".into(),
            "payload".into(),
            "{}".into(),
            "record".into(),
            format!("1 leased 0 3 1 2 7 {now} - 0 0 0 - w0 w0"),
        ],
        vec![
            "ZADD".into(),
            "{q}:leased".into(),
            (now + 600_000).to_string(),
            "running".into(),
        ],
    ];
    for words in &seeded {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        query(&mut con, &words);
    }
    // Read with the attempts they used as failed attempts.
    let budgets = |con: &mut Connection, id: &str| {
        [
            "attempts",
            "failed_attempts",
            "lost_leases",
            "max_lost_leases",
        ]
        .map(|n| get_int(con, id, n))
    };
    assert_eq!(budgets(&mut con, "old"), [1, 1, 0, 3]);
    assert_eq!(budgets(&mut con, "running"), [1, 0, 0, 3]);
    // The running task's worker finishes it under its old token.
    let r = query(
        &mut con,
        &["VTASKS.ACK", "{q}", "1", "running", "7", "\"ok\""],
    );
    assert_eq!(text(&items(&r)[0]), "OK");
    // The waiting one runs (its second attempt) and fails twice more.
    let mut outcomes = Vec::new();
    for attempt in [2, 3] {
        let t = fetch(&mut con, &["1", "{q}", "CONSUMER", "w1", "BLOCK", "5000"])
            .tasks
            .remove(0);
        assert_eq!((t.id.as_str(), t.attempt), ("old", attempt));
        let r = query(
            &mut con,
            &[
                "VTASKS.NACK",
                "{q}",
                "1",
                "old",
                &t.token.to_string(),
                "0",
                "again",
            ],
        );
        outcomes.push(text(&items(&r)[0]));
    }
    assert_eq!(outcomes, ["RETRY", "DEAD"], "three failed attempts in all");
    if Target::current().uses_scripts() {
        let record: String = cmd(&["HGET", "{q}:t:old", "record"])
            .query(&mut con)
            .unwrap();
        assert!(
            record.starts_with("2 dead "),
            "written back as version 2: {record}"
        );
    } else {
        // The module adopted the queue into its own type at the first write.
        let kind: String = cmd(&["TYPE", "{q}"]).query(&mut con).unwrap();
        assert_eq!(kind, "vtasksque");
    }
    let done = query(&mut con, &["VTASKS.GET", "{q}", "running"]);
    assert_eq!(text(&field(&done, "status").unwrap()), "done");
    assert_eq!(text(&field(&done, "workers").unwrap()), "w0");
}
