//! Server-side blocking and server-side time: consumers wake on enqueue, on
//! a delayed task falling due and on an expired lease, with no polling.

mod common;
use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// Long enough that a reply before it can only be a wake-up, not a timeout.
const LONG_BLOCK: &str = "20000";

fn blocked_fetch(server: &Server, queue: &'static str) -> thread::JoinHandle<(Fetched, Duration)> {
    let mut con = server.connect();
    thread::spawn(move || {
        let started = Instant::now();
        let got = fetch(
            &mut con,
            &["1", queue, "CONSUMER", "sleeper", "BLOCK", LONG_BLOCK],
        );
        (got, started.elapsed())
    })
}

fn wait_blocked(con: &mut Connection, queue: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(con, queue, "blocked") != n {
        assert!(Instant::now() < deadline, "consumer never blocked");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn enqueue_wakes_a_blocked_consumer() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.PAUSE", "{q}"]); // creates the queue so STATS answers
    query(&mut con, &["VTASKS.RESUME", "{q}"]);
    let waiter = blocked_fetch(&server, "{q}");
    wait_blocked(&mut con, "{q}", 1);
    let enqueued_at = Instant::now();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let (got, _) = waiter.join().unwrap();
    let woke_after = enqueued_at.elapsed();
    assert_eq!(ids(&got.tasks), ["t"]);
    assert!(
        woke_after < Duration::from_secs(5),
        "woken by the enqueue, not the timeout"
    );
    assert_eq!(stat(&mut con, "{q}", "blocked"), 0);
}

#[test]
fn a_delayed_task_falling_due_wakes_a_blocked_consumer() {
    let server = Server::start();
    let mut con = server.connect();
    // Measured from before the enqueue: the task is due 300 ms after the
    // server took it, however long the blocked fetch took to start.
    let enqueued = Instant::now();
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "later",
            "{}",
            "DELAY",
            "300",
        ],
    );
    let waiter = blocked_fetch(&server, "{q}");
    let (got, waited) = waiter.join().unwrap();
    assert_eq!(ids(&got.tasks), ["later"]);
    let since_enqueue = enqueued.elapsed();
    assert!(
        since_enqueue >= Duration::from_millis(300),
        "not before it is due: {since_enqueue:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the timer promoted it: {waited:?}"
    );
}

/// A deadline written while a consumer already waits, due `due_ms` after
/// `written`: the consumer gets the task once it is due, not when its wait
/// would have ended. The scripts decide a sleep's length when it starts, so
/// this checks that they wake a sleeper that would sleep past it.
fn assert_woken_when_due(waiter: thread::JoinHandle<(Fetched, Duration)>, written: Instant) {
    let (got, _) = waiter.join().unwrap();
    let since = written.elapsed();
    assert_eq!(ids(&got.tasks).len(), 1);
    assert!(
        since >= Duration::from_millis(300),
        "not before it is due: {since:?}"
    );
    assert!(
        since < Duration::from_secs(5),
        "woken when due, not at the end of the wait: {since:?}"
    );
}

#[test]
fn a_delayed_task_enqueued_while_a_consumer_waits_wakes_it_when_due() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.PAUSE", "{q}"]); // creates the queue so STATS answers
    query(&mut con, &["VTASKS.RESUME", "{q}"]);
    let waiter = blocked_fetch(&server, "{q}");
    wait_blocked(&mut con, "{q}", 1);
    let written = Instant::now();
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "later",
            "{}",
            "DELAY",
            "300",
        ],
    );
    assert_woken_when_due(waiter, written);
}

#[test]
fn a_retry_written_while_a_consumer_waits_wakes_it_when_due() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let first = fetch(&mut con, &["1", "{q}", "CONSUMER", "first"]);
    let token = first.tasks[0].token.to_string();
    let waiter = blocked_fetch(&server, "{q}");
    wait_blocked(&mut con, "{q}", 1);
    let written = Instant::now();
    query(
        &mut con,
        &["VTASKS.NACK", "{q}", "1", "t", &token, "300", "failed"],
    );
    assert_woken_when_due(waiter, written);
}

#[test]
fn an_expired_lease_wakes_another_consumer() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let first = fetch(
        &mut con,
        &["1", "{q}", "CONSUMER", "crashed", "LEASE", "200"],
    );
    assert_eq!(first.tasks.len(), 1);
    let (got, waited) = blocked_fetch(&server, "{q}").join().unwrap();
    assert_eq!(ids(&got.tasks), ["t"]);
    assert_eq!(got.tasks[0].attempt, 2);
    assert!(waited < Duration::from_secs(5));
    assert_eq!(stat(&mut con, "{q}", "expired"), 1);
}

#[test]
fn module_only_timers_expire_leases_with_no_consumer_asking() {
    let server = Server::start();
    let mut con = server.connect();
    query(
        &mut con,
        &[
            "VTASKS.ENQUEUE",
            "{q}",
            "TASK",
            "t",
            "{}",
            "LOSTLEASES",
            "1",
        ],
    );
    fetch(
        &mut con,
        &["1", "{q}", "CONSUMER", "crashed", "LEASE", "100"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut con, "{q}", "dead") != 1 {
        assert!(
            Instant::now() < deadline,
            "the timer never dead-lettered the task"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let task = query(&mut con, &["VTASKS.GET", "{q}", "t"]);
    assert!(text(&field(&task, "error").unwrap()).starts_with("lease lost 1 time, its budget"));
}

#[test]
fn block_times_out_with_an_empty_reply_and_reports_settlements() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let t = fetch(&mut con, &["1", "{q}", "CONSUMER", "w"])
        .tasks
        .remove(0);
    let started = Instant::now();
    let token = t.token.to_string();
    let got = fetch(
        &mut con,
        &[
            "1", "{q}", "CONSUMER", "w", "BLOCK", "150", "ACK", "1", "{q}", "t", &token, "42",
        ],
    );
    assert!(got.tasks.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(140));
    assert_eq!(got.acks, ["OK"], "the ACK was applied before blocking");
    assert_eq!(
        text(&field(&query(&mut con, &["VTASKS.GET", "{q}", "t"]), "result").unwrap()),
        "42"
    );
}

#[test]
fn resume_wakes_consumers_of_a_paused_queue() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.PAUSE", "{q}"]);
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let waiter = blocked_fetch(&server, "{q}");
    wait_blocked(&mut con, "{q}", 1);
    query(&mut con, &["VTASKS.RESUME", "{q}"]);
    let (got, _) = waiter.join().unwrap();
    assert_eq!(ids(&got.tasks), ["t"]);
}

#[test]
fn each_task_goes_to_exactly_one_of_many_blocked_consumers() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.PAUSE", "{q}"]);
    query(&mut con, &["VTASKS.RESUME", "{q}"]);
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let mut c = server.connect();
            // The connection outlives the thread: a consumer whose
            // connection closes gives its leases back (after a short grace).
            thread::spawn(move || {
                let tasks = fetch(&mut c, &["1", "{q}", "CONSUMER", "w", "BLOCK", "3000"]).tasks;
                (tasks, c)
            })
        })
        .collect();
    wait_blocked(&mut con, "{q}", 4);
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
    let mut got: Vec<String> = waiters
        .into_iter()
        .map(|w| w.join().unwrap())
        .collect::<Vec<_>>()
        .iter()
        .flat_map(|(tasks, _connection)| ids(tasks))
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["a", "b"],
        "two consumers got one task each, two timed out"
    );
}

#[test]
fn module_only_a_disconnected_blocked_consumer_is_forgotten() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.PAUSE", "{q}"]);
    // Send a blocking fetch and drop the connection without reading the reply.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    use std::io::Write;
    raw.write_all(b"*7\r\n$13\r\nVTASKS.FETCHN\r\n$1\r\n1\r\n$3\r\n{q}\r\n$8\r\nCONSUMER\r\n$1\r\nw\r\n$5\r\nBLOCK\r\n$1\r\n0\r\n").unwrap();
    wait_blocked(&mut con, "{q}", 1);
    drop(raw);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut con, "{q}", "blocked") != 0 {
        assert!(Instant::now() < deadline, "blocked count never dropped");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn module_only_fetch_inside_multi_does_not_block() {
    let server = Server::start();
    let mut con = server.connect();
    let reply: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("VTASKS.FETCHN")
        .arg(1)
        .arg("{q}")
        .arg("CONSUMER")
        .arg("w")
        .arg("BLOCK")
        .arg(0)
        .query(&mut con)
        .unwrap();
    let got = parse_fetch(&reply[0]);
    assert!(got.tasks.is_empty());
}

/// A worker's connection closing (the process was killed) cuts the leases
/// it took to a short grace: they come back in seconds, not at the end of
/// their 10-minute lease.
#[test]
fn module_only_a_closed_connection_s_leases_come_back_within_the_grace() {
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
    {
        let mut worker = server.connect();
        let got = fetch(
            &mut worker,
            &[
                "1", "{q}", "CONSUMER", "killed", "COUNT", "2", "LEASE", "600000",
            ],
        );
        assert_eq!(ids(&got.tasks), ["a", "b"]);
    } // closed here
    let mut back = Vec::new();
    let started = Instant::now();
    while back.len() < 2 {
        let got = fetch(
            &mut con,
            &[
                "1", "{q}", "CONSUMER", "next", "COUNT", "2", "BLOCK", LONG_BLOCK,
            ],
        );
        back.extend(got.tasks);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never came back"
        );
    }
    assert_eq!(ids(&back), ["a", "b"]);
    assert!(back.iter().all(|t| t.attempt == 2));
    assert_eq!(stat(&mut con, "{q}", "leases_cut"), 2);
    assert_eq!(stat(&mut con, "{q}", "expired"), 2);
    let a = query(&mut con, &["VTASKS.GET", "{q}", "a"]);
    assert_eq!(int(&field(&a, "lost_leases").unwrap()), 1);
    assert_eq!(int(&field(&a, "failed_attempts").unwrap()), 0);
}

/// A worker whose connections dropped and that renews its leases once it
/// has reconnected keeps them: before the cut (the server had not yet seen
/// the old connection close) or after it, within the grace.
#[test]
fn module_only_a_worker_that_renews_within_the_grace_keeps_its_leases() {
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
    let mut renewer = server.connect();
    let token_of = |worker: &mut Connection| {
        fetch(worker, &["1", "{q}", "CONSUMER", "w", "LEASE", "600000"])
            .tasks
            .remove(0)
            .token
            .to_string()
    };
    let renew = |renewer: &mut Connection, id: &str, token: &str| {
        let r = query(renewer, &["VTASKS.EXTEND", "{q}", "600000", "1", id, token]);
        assert_eq!(text(&items(&r)[0]), "OK");
    };
    // a: the connection closes, the cut happens, then the renewal.
    let mut worker = server.connect();
    let a = token_of(&mut worker);
    drop(worker);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mut con, "{q}", "leases_cut") < 1 {
        assert!(Instant::now() < deadline, "the lease was never cut");
        thread::sleep(Duration::from_millis(5));
    }
    renew(&mut renewer, "a", &a);
    // b: renewed over another connection before its own one closes.
    let mut worker = server.connect();
    let b = token_of(&mut worker);
    renew(&mut renewer, "b", &b);
    drop(worker);
    // Longer than the grace: neither lease comes back.
    let got = fetch(
        &mut con,
        &["1", "{q}", "CONSUMER", "other", "BLOCK", "4000"],
    );
    assert!(got.tasks.is_empty(), "{:?}", ids(&got.tasks));
    let r = query(
        &mut renewer,
        &["VTASKS.ACK", "{q}", "2", "a", &a, "", "b", &b, ""],
    );
    assert_eq!(items(&r).iter().map(text).collect::<Vec<_>>(), ["OK", "OK"]);
    assert_eq!(stat(&mut con, "{q}", "leases_cut"), 1);
    assert_eq!(stat(&mut con, "{q}", "expired"), 0);
}

/// `WAKE`: a fetch blocked on its own queues also ends (with no tasks) when
/// a task becomes ready in a watched queue it does not fetch from, even if
/// its own queue was never used; and it does not block at all when one
/// became ready within the look-back it names.
#[test]
fn module_only_a_watched_queue_ends_the_wait() {
    let server = Server::start();
    let mut con = server.connect();
    let mut waiting = server.connect();
    let watcher = thread::spawn(move || {
        let started = Instant::now();
        let got = fetch(
            &mut waiting,
            &[
                "1", "{home}", "CONSUMER", "w", "BLOCK", LONG_BLOCK, "WAKE", "0", "2", "{a}", "{b}",
            ],
        );
        (got, started.elapsed())
    });
    // Blocked once the server counts a blocked client.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut con).unwrap();
        if info.contains("blocked_clients:1") {
            break;
        }
        assert!(Instant::now() < deadline, "never blocked");
        thread::sleep(Duration::from_millis(5));
    }
    let enqueued_at = Instant::now();
    query(&mut con, &["VTASKS.ENQUEUE", "{b}", "TASK", "t", "{}"]);
    let (got, _) = watcher.join().unwrap();
    assert!(got.tasks.is_empty(), "it fetches only from its own queue");
    assert!(
        enqueued_at.elapsed() < Duration::from_secs(5),
        "woken by the watched queue, not the timeout"
    );
    // {b} got a task a moment ago: a wait looking back 60 s returns at once,
    // one looking back 10 ms, once they passed, waits for its block.
    let started = Instant::now();
    let got = fetch(
        &mut con,
        &[
            "1", "{home}", "CONSUMER", "w", "BLOCK", LONG_BLOCK, "WAKE", "60000", "1", "{b}",
        ],
    );
    assert!(got.tasks.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    fetch(
        &mut con,
        &[
            "1", "{home}", "CONSUMER", "w", "BLOCK", "300", "WAKE", "10", "1", "{b}",
        ],
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Nothing was written for the watched queues or the fetch's own.
    assert_eq!(stat(&mut con, "{b}", "ready"), 1);
    let exists: i64 = redis::cmd("EXISTS").arg("{home}").query(&mut con).unwrap();
    assert_eq!(exists, 0);
}
