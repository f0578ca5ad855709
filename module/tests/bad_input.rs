//! Bad input: every wrong argument gets a clear error reply, nothing is
//! written, and the server keeps answering.

mod common;
use common::*;

const BIG: usize = 16 * 1024 * 1024 + 1;

#[test]
fn bad_arguments_get_clear_errors_and_the_server_stays_up() {
    let mut server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let long_id = "i".repeat(257);
    let long_queue = format!("{{{}}}", "q".repeat(129));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // arity
        (
            vec!["VTASKS.ENQUEUE", "{q}", "TASK"],
            "wrong number of arguments",
        ),
        (
            vec!["VTASKS.FETCHN", "1", "{q}"],
            "wrong number of arguments",
        ),
        (vec!["VTASKS.GET", "{q}"], "wrong number of arguments"),
        (vec!["VTASKS.STATS"], "wrong number of arguments"),
        (vec!["VTASKS.CLEAR"], "wrong number of arguments"),
        (
            vec!["VTASKS.CLEAR", "{q}", "ALL"],
            "wrong number of arguments",
        ),
        (
            vec!["VTASKS.SCHEDULE", "{q}", "n", "every 1", "{}", "NEXT"],
            "wrong number of arguments",
        ),
        (vec!["VTASKS.SCHEDULES"], "wrong number of arguments"),
        (
            vec!["VTASKS.SCHEDULENEXT", "{q}", "n", "1"],
            "wrong number of arguments",
        ),
        // schedules
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                "a b",
                "every 1",
                "{}",
                "NEXT",
                "1",
            ],
            "schedule name must be 1-128 characters",
        ),
        (
            vec!["VTASKS.SCHEDULE", "{q}", "n", "", "{}", "NEXT", "1"],
            "schedule timing must be 1-256 bytes of printable ASCII",
        ),
        (
            vec!["VTASKS.SCHEDULE", "{q}", "n", "every 1", "{}", "NEXT", "-1"],
            "NEXT must be between 0 and",
        ),
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                "n",
                "every 1",
                "{}",
                "NEXT",
                "1",
                "ATTEMPTS",
                "0",
            ],
            "ATTEMPTS must be between 1 and 10000",
        ),
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                "n",
                "every 1",
                "{}",
                "NEXT",
                "1",
                "CATCHUP",
            ],
            "CATCHUP must be LAST or NONE",
        ),
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                "n",
                "every 1",
                "{}",
                "DISABLED",
                "1",
            ],
            "unknown option '1'",
        ),
        (
            vec!["VTASKS.SCHEDULENEXT", "{q}", "n", "1", "2", "3"],
            "wrong number of arguments",
        ),
        (
            vec!["VTASKS.UNSCHEDULE", "{q}", ""],
            "schedule name must be",
        ),
        // queue names
        (
            vec!["VTASKS.ENQUEUE", "q", "TASK", "t", "{}"],
            "invalid queue 'q'",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{}", "TASK", "t", "{}"],
            "invalid queue",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{a b}", "TASK", "t", "{}"],
            "invalid queue",
        ),
        (
            vec!["VTASKS.ENQUEUE", &long_queue, "TASK", "t", "{}"],
            "invalid queue",
        ),
        (vec!["VTASKS.STATS", "{unknown}"], "NOQUEUE"),
        (vec!["VTASKS.DEADLIST", "{unknown}"], "NOQUEUE"),
        (vec!["VTASKS.PURGE", "{unknown}", "ALL"], "NOQUEUE"),
        (vec!["VTASKS.CLEAR", "{unknown}"], "NOQUEUE"),
        (vec!["VTASKS.CLEAR", "q"], "invalid queue 'q'"),
        // ENQUEUE
        (
            vec!["VTASKS.ENQUEUE", "{q}", "TASKS", "t", "{}"],
            "expected TASK",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{q}", "TASK", "", "{}"],
            "task id must be 1-256 bytes",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{q}", "TASK", &long_id, "{}"],
            "task id must be 1-256 bytes",
        ),
        (
            vec![
                "VTASKS.ENQUEUE",
                "{q}",
                "TASK",
                "t",
                "{}",
                "PRIORITY",
                "101",
            ],
            "PRIORITY must be between -100 and 100",
        ),
        (
            vec![
                "VTASKS.ENQUEUE",
                "{q}",
                "TASK",
                "t",
                "{}",
                "PRIORITY",
                "high",
            ],
            "PRIORITY must be an integer",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}", "DELAY", "-1"],
            "DELAY must be between",
        ),
        (
            vec![
                "VTASKS.ENQUEUE",
                "{q}",
                "TASK",
                "t",
                "{}",
                "DELAY",
                "99999999999999999999999",
            ],
            "DELAY must be an integer",
        ),
        (
            vec![
                "VTASKS.ENQUEUE",
                "{q}",
                "TASK",
                "t",
                "{}",
                "DELAY",
                "1",
                "RUNAT",
                "5",
            ],
            "cannot be combined",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}", "ATTEMPTS", "0"],
            "ATTEMPTS must be between 1 and 10000",
        ),
        (
            vec![
                "VTASKS.ENQUEUE",
                "{q}",
                "TASK",
                "t",
                "{}",
                "LOSTLEASES",
                "0",
            ],
            "LOSTLEASES must be between 1 and 10000",
        ),
        (
            vec![
                "VTASKS.ENQUEUE",
                "{q}",
                "TASK",
                "t",
                "{}",
                "LOSTLEASES",
                "x",
            ],
            "LOSTLEASES must be an integer",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}", "COLOR", "red"],
            "unknown option 'COLOR'",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}", "PRIORITY"],
            "missing PRIORITY",
        ),
        (
            vec!["VTASKS.ENQUEUE", "{q}", "MAXLEN", "-3", "TASK", "t", "{}"],
            "MAXLEN must be between",
        ),
        // FETCHN
        (
            vec!["VTASKS.FETCHN", "0", "{q}", "CONSUMER", "w"],
            "numqueues must be between 1 and 64",
        ),
        (
            vec!["VTASKS.FETCHN", "x", "{q}", "CONSUMER", "w"],
            "numqueues must be an integer",
        ),
        (
            vec!["VTASKS.FETCHN", "3", "{q}", "CONSUMER", "w"],
            "invalid queue 'CONSUMER'",
        ),
        (
            vec!["VTASKS.FETCHN", "1", "{q}", "COUNT", "5", "LEASE", "10"],
            "CONSUMER <name> is required",
        ),
        (
            vec!["VTASKS.FETCHN", "1", "{q}", "CONSUMER", "bad name"],
            "consumer name must be",
        ),
        (
            vec!["VTASKS.FETCHN", "1", "{q}", "CONSUMER", "w", "COUNT", "0"],
            "COUNT must be between 1 and 1000",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "COUNT",
                "1001",
            ],
            "COUNT must be between 1 and 1000",
        ),
        (
            vec!["VTASKS.FETCHN", "1", "{q}", "CONSUMER", "w", "LEASE", "0"],
            "LEASE must be between",
        ),
        (
            vec!["VTASKS.FETCHN", "1", "{q}", "CONSUMER", "w", "BLOCK", "-5"],
            "BLOCK must be between",
        ),
        (
            vec!["VTASKS.FETCHN", "1", "{q}", "CONSUMER", "w", "WAIT", "5"],
            "unknown option 'WAIT'",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "WAKE",
                "-1",
                "1",
                "{r}",
            ],
            "WAKE must be between",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "WAKE",
                "0",
                "0",
                "{r}",
            ],
            "WAKE queue count must be between 1 and 64",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "WAKE",
                "0",
                "1",
                "r",
            ],
            "invalid queue 'r'",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "WAKE",
                "0",
                "2",
                "{r}",
            ],
            "missing queue",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "ACK",
                "2",
                "{q}",
                "t",
                "1",
                "",
            ],
            "ACK announces 2 items",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "ACK",
                "1",
                "{other}",
                "t",
                "1",
                "",
            ],
            "not among the queues",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "ACK",
                "1",
                "{q}",
                "t",
                "zero",
                "",
            ],
            "token must be an integer",
        ),
        (
            vec![
                "VTASKS.FETCHN",
                "1",
                "{q}",
                "CONSUMER",
                "w",
                "NACK",
                "1",
                "{q}",
                "t",
                "1",
                "soon",
                "e",
            ],
            "retry delay must be an integer",
        ),
        // ACK / NACK / EXTEND / RELEASE
        (
            vec!["VTASKS.ACK", "{q}", "1", "t", "0", "", "KEEP", "5"],
            "token must be between 1 and",
        ),
        (
            vec!["VTASKS.ACK", "{q}", "1", "t", "1", "", "KEEP", "-1"],
            "KEEP must be between",
        ),
        (
            vec!["VTASKS.ACK", "{q}", "1", "t", "1", "", "EXTRA"],
            "unknown option 'EXTRA'",
        ),
        (
            vec!["VTASKS.ACK", "{q}", "0", "t", "1", ""],
            "item count must be between",
        ),
        (
            vec!["VTASKS.NACK", "{q}", "1", "t", "1", "-1", "e"],
            "retry delay must be between",
        ),
        (
            vec!["VTASKS.NACK", "{q}", "1", "t", "1", "0", "e", "leftover"],
            "unexpected argument 'leftover'",
        ),
        (
            vec!["VTASKS.EXTEND", "{q}", "0", "1", "t", "1"],
            "lease must be between",
        ),
        (
            vec!["VTASKS.EXTEND", "{q}", "100", "2", "t", "1"],
            "EXTEND announces 2 items",
        ),
        (
            vec!["VTASKS.RELEASE", "{q}", "1", "t", "1", "x"],
            "unexpected argument 'x'",
        ),
        // others
        (vec!["VTASKS.GET", "{q}", ""], "task id must be 1-256 bytes"),
        (
            vec!["VTASKS.DEADLIST", "{q}", "COUNT", "0"],
            "COUNT must be between",
        ),
        (vec!["VTASKS.REQUEUE", "{q}", "SOME"], "expected ALL or IDS"),
        (
            vec!["VTASKS.REQUEUE", "{q}", "IDS"],
            "IDS needs at least one task id",
        ),
        (
            vec!["VTASKS.PURGE", "{q}", "ALL", "now"],
            "unexpected argument 'now'",
        ),
        (
            vec!["VTASKS.PAUSE", "{q}", "x"],
            "wrong number of arguments",
        ),
        // The clock reading only replication and AOF replays carry.
        (
            vec!["VTASKS.ENQUEUE", "{q}", "NOW", "5", "TASK", "t", "{}"],
            "expected TASK, got 'NOW'",
        ),
        (
            vec!["VTASKS.ACK", "{q}", "1", "t", "1", "", "NOW", "5"],
            "unknown option 'NOW'",
        ),
        (
            vec!["VTASKS.NACK", "{q}", "1", "t", "1", "0", "e", "NOW", "5"],
            "unexpected argument 'NOW'",
        ),
    ];
    for (words, expected) in &cases {
        let err = query_err(&mut con, words);
        assert!(
            err.contains(expected),
            "{words:?}: expected '{expected}' in '{err}'"
        );
        assert!(
            err.starts_with("ERR") || err.starts_with("NOQUEUE") || err.starts_with("WRONGTYPE"),
            "error replies carry a code: {err}"
        );
    }
    // Arguments quoted in errors are cut to 64 bytes and control characters
    // shown as '?': a hostile argument neither bloats an error nor breaks it.
    let long = "y".repeat(100_000);
    assert_eq!(
        query_err(&mut con, &["VTASKS.PURGE", "{q}", "ALL", &long]),
        format!(
            "ERR syntax error: unexpected argument '{}...'",
            "y".repeat(64)
        )
    );
    assert_eq!(
        query_err(
            &mut con,
            &["VTASKS.ACK", "{q}", "1", "t", "1", "", "a\r\nb"]
        ),
        "ERR syntax error: unknown option 'A??B'"
    );
    let err = query_err(&mut con, &["VTASKS.STATS", &format!("{{{long}}}")]);
    assert!(
        err.starts_with(&format!("ERR invalid queue '{{{}...'", "y".repeat(63))) && err.len() < 300,
        "{}",
        &err[..err.len().min(300)]
    );
    assert!(server.alive());
    assert_eq!(text(&query(&mut con, &["PING"])), "PONG");
    // Nothing any of those calls did changed the queue.
    assert_eq!(stat(&mut con, "{q}", "ready"), 1);
    assert_eq!(stat(&mut con, "{q}", "enqueued"), 1);
}

#[test]
fn oversized_payloads_and_results_are_refused() {
    let server = Server::start();
    let mut con = server.connect();
    let big = "x".repeat(BIG);
    let err = query_err(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", &big]);
    assert!(
        err.contains("payload of 16777217 bytes exceeds the limit of 16777216 bytes"),
        "{err}"
    );
    query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
    let t = fetch(&mut con, &["1", "{q}", "CONSUMER", "w"])
        .tasks
        .remove(0);
    let err = query_err(
        &mut con,
        &["VTASKS.ACK", "{q}", "1", "t", &t.token.to_string(), &big],
    );
    assert!(err.contains("result of 16777217 bytes exceeds"), "{err}");
    assert_eq!(
        stat(&mut con, "{q}", "leased"),
        1,
        "the refused ACK changed nothing"
    );
}

#[test]
fn too_many_tasks_in_one_enqueue_are_refused() {
    let server = Server::start();
    let mut con = server.connect();
    let mut c = redis::cmd("VTASKS.ENQUEUE");
    c.arg("{q}");
    for i in 0..10_001 {
        c.arg("TASK").arg(format!("t{i}")).arg("{}");
    }
    let err = error_text(&run(&mut con, &c).unwrap_err());
    assert!(
        err.contains("number of tasks in one ENQUEUE must be between 1 and 10000"),
        "{err}"
    );
    assert!(query_err(&mut con, &["VTASKS.STATS", "{q}"]).starts_with("NOQUEUE"));
}

#[test]
fn keys_of_the_wrong_type_are_refused_without_writing() {
    let server = Server::start();
    let mut con = server.connect();
    if !Target::current().uses_scripts() {
        // The module's queue is the one key `{name}`: another type there
        // is refused; keys that only the keyspace layout uses mean nothing.
        query(&mut con, &["SET", "{s}", "not a queue"]);
        query(&mut con, &["SET", "{q}:ready", "not a zset"]);
        for words in [
            vec!["VTASKS.ENQUEUE", "{s}", "TASK", "t", "{}"],
            vec!["VTASKS.PAUSE", "{s}"],
            vec!["VTASKS.FETCHN", "2", "{q}", "{s}", "CONSUMER", "w"],
            vec!["VTASKS.STATS", "{s}"],
            vec!["VTASKS.GET", "{s}", "t"],
            vec!["VTASKS.ACK", "{s}", "1", "t", "1", ""],
            vec!["VTASKS.CANCEL", "{s}", "t"],
            vec!["VTASKS.CLEAR", "{s}"],
            vec!["VTASKS.ADOPT", "{s}"],
        ] {
            let err = query_err(&mut con, &words);
            assert!(err.starts_with("WRONGTYPE"), "{words:?}: {err}");
        }
        let mut keys: Vec<String> = cmd(&["KEYS", "*"]).query(&mut con).unwrap();
        keys.sort();
        assert_eq!(keys, ["{q}:ready", "{s}"], "no key was created");
        query(&mut con, &["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"]);
        assert_eq!(stat(&mut con, "{q}", "ready"), 1);
        return;
    }
    query(&mut con, &["SET", "{q}:ready", "not a zset"]);
    query(&mut con, &["SET", "{s}", "not a hash"]);
    for words in [
        vec!["VTASKS.ENQUEUE", "{q}", "TASK", "t", "{}"],
        vec!["VTASKS.FETCHN", "1", "{q}", "CONSUMER", "w"],
        vec!["VTASKS.STATS", "{q}"],
        vec!["VTASKS.ENQUEUE", "{s}", "TASK", "t", "{}"],
        vec!["VTASKS.PAUSE", "{s}"],
        vec!["VTASKS.CLEAR", "{s}"],
    ] {
        let err = query_err(&mut con, &words);
        assert!(err.starts_with("WRONGTYPE"), "{words:?}: {err}");
    }
    query(
        &mut con,
        &["SET", "{r}:t:x", "a string where a task hash belongs"],
    );
    let err = query_err(&mut con, &["VTASKS.ENQUEUE", "{r}", "TASK", "x", "{}"]);
    assert!(err.starts_with("WRONGTYPE"), "{err}");
    let keys: Vec<String> = cmd(&["KEYS", "*"]).query(&mut con).unwrap();
    assert_eq!(keys.len(), 3, "no key was created: {keys:?}");

    // An enqueue checks only the keys it uses; a fetch uses every set.
    query(&mut con, &["SET", "{d}:dead", "not a zset"]);
    query(&mut con, &["VTASKS.ENQUEUE", "{d}", "TASK", "t", "{}"]);
    let err = query_err(&mut con, &["VTASKS.FETCHN", "1", "{d}", "CONSUMER", "w"]);
    assert!(err.starts_with("WRONGTYPE"), "{err}");
    assert_eq!(stat_or_err(&mut con, "{d}"), "WRONGTYPE");
}

#[test]
fn foreign_keys_in_place_of_the_wake_keys_only_mean_no_wake_ups() {
    let server = Server::start();
    let mut con = server.connect();
    query(&mut con, &["SET", "{w}:waiting", "not a zset"]);
    query(
        &mut con,
        &["ZADD", "{v}:waiting", "99999999999999", "sleeper"],
    );
    query(&mut con, &["SET", "{v}:wake", "not a list"]);
    for queue in ["{w}", "{v}"] {
        let added = query(&mut con, &["VTASKS.ENQUEUE", queue, "TASK", "t", "{}"]);
        assert_eq!(int(&items(&added)[0]), 1, "{queue}: enqueued");
        let got = fetch(&mut con, &["1", queue, "CONSUMER", "c"]);
        assert_eq!(ids(&got.tasks), ["t"], "{queue}: fetched");
    }
}

fn stat_or_err(con: &mut Connection, queue: &str) -> String {
    match run(con, &cmd(&["VTASKS.STATS", queue])) {
        Ok(_) => "OK".into(),
        Err(e) => error_text(&e).split(' ').next().unwrap().to_string(),
    }
}

/// Valid commands the fuzz mutates: every command with its options.
const TEMPLATES: &[&[&str]] = &[
    &[
        "VTASKS.ENQUEUE",
        "{q}",
        "MAXLEN",
        "1000",
        "TASK",
        "t1",
        "{}",
        "PRIORITY",
        "5",
        "DELAY",
        "10",
        "ATTEMPTS",
        "2",
        "LOSTLEASES",
        "2",
        "TASK",
        "t2",
        "{\"a\":1}",
        "RUNAT",
        "1",
        "REPLACEFINISHED",
    ],
    &[
        "VTASKS.FETCHN",
        "2",
        "{q}",
        "{r}",
        "CONSUMER",
        "w",
        "COUNT",
        "10",
        "LEASE",
        "50",
        "KEEP",
        "0",
        "ACK",
        "1",
        "{q}",
        "t1",
        "1",
        "r",
        "NACK",
        "1",
        "{r}",
        "t2",
        "2",
        "DEAD",
        "e",
    ],
    &[
        "VTASKS.ACK",
        "{q}",
        "2",
        "t1",
        "1",
        "r",
        "t2",
        "2",
        "",
        "KEEP",
        "100",
    ],
    &[
        "VTASKS.NACK",
        "{q}",
        "2",
        "t1",
        "1",
        "0",
        "e",
        "t2",
        "2",
        "DEAD",
        "e",
    ],
    &["VTASKS.EXTEND", "{q}", "1000", "2", "t1", "1", "t2", "2"],
    &["VTASKS.RELEASE", "{q}", "2", "t1", "1", "t2", "2"],
    &["VTASKS.GET", "{q}", "t1"],
    &["VTASKS.STATS", "{q}"],
    &["VTASKS.DEADLIST", "{q}", "OFFSET", "0", "COUNT", "10"],
    &["VTASKS.REQUEUE", "{q}", "IDS", "t1", "t2"],
    &["VTASKS.PURGE", "{q}", "ALL"],
    &["VTASKS.PAUSE", "{q}"],
    &["VTASKS.RESUME", "{q}"],
    &["VTASKS.CANCEL", "{q}", "t1", "t2"],
    &["VTASKS.CLEAR", "{q}"],
    &[
        "VTASKS.SCHEDULE",
        "{q}",
        "nightly",
        "cron UTC 0 3 * * *",
        "{}",
        "NEXT",
        "1",
        "PRIORITY",
        "5",
        "ATTEMPTS",
        "2",
        "CATCHUP",
        "NONE",
        "DISABLED",
    ],
    &["VTASKS.UNSCHEDULE", "{q}", "nightly", "other"],
    &["VTASKS.SCHEDULES", "{q}"],
    &["VTASKS.SCHEDULENEXT", "{q}", "nightly", "1", "2"],
];

/// The fuzz: `VTASKS_FUZZ_COMMANDS` commands (20,000 by default; `make
/// fuzz` sends 1,000,000), half random words from a vocabulary of command
/// names, options, numbers and junk, half valid commands with one to three
/// mutations (a word dropped, repeated, swapped, or replaced by junk). They
/// go in pipelines of 100. Every reply must be a well-formed reply or an
/// error reply with a code, and the server must stay up and keep working.
#[test]
fn random_and_mutated_commands_never_take_the_server_down() {
    let commands: usize = std::env::var("VTASKS_FUZZ_COMMANDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let mut server = Server::start();
    let mut con = server.connect();
    prepare_target(&mut con);
    let vocab = [
        "VTASKS.ENQUEUE",
        "VTASKS.FETCHN",
        "VTASKS.ACK",
        "VTASKS.NACK",
        "VTASKS.EXTEND",
        "VTASKS.RELEASE",
        "VTASKS.GET",
        "VTASKS.STATS",
        "VTASKS.DEADLIST",
        "VTASKS.REQUEUE",
        "VTASKS.PURGE",
        "VTASKS.PAUSE",
        "VTASKS.RESUME",
        "VTASKS.CANCEL",
        "VTASKS.CLEAR",
        "{q}",
        "{r}",
        "q",
        "TASK",
        "CONSUMER",
        "COUNT",
        "BLOCK",
        "LEASE",
        "KEEP",
        "ACK",
        "NACK",
        "PRIORITY",
        "DELAY",
        "RUNAT",
        "ATTEMPTS",
        "LOSTLEASES",
        "MAXLEN",
        "ALL",
        "IDS",
        "DEAD",
        "OFFSET",
        "0",
        "1",
        "2",
        "3",
        "-1",
        "100",
        "-100",
        "9223372036854775807",
        "-9223372036854775808",
        "1e3",
        "",
        "x",
        "{}",
        "\u{0}",
        "t",
        "🙂",
    ];
    let mut seed = 0x9e3779b97f4a7c15u64 ^ commands as u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pick = |n: usize, next: &mut dyn FnMut() -> u64| (next() % n as u64) as usize;
    let long = "x".repeat(300);
    let mut errors = 0;
    let mut sent = 0;
    while sent < commands {
        let mut batch: Vec<Vec<String>> = Vec::with_capacity(100);
        while batch.len() < 100 && sent + batch.len() < commands {
            let mut words: Vec<String> = if next() % 2 == 0 {
                let len = 1 + pick(12, &mut next);
                let mut words: Vec<String> = (0..len)
                    .map(|_| vocab[pick(vocab.len(), &mut next)].to_string())
                    .collect();
                words[0] = vocab[pick(15, &mut next)].to_string();
                words
            } else {
                let template = TEMPLATES[pick(TEMPLATES.len(), &mut next)];
                let mut words: Vec<String> = template.iter().map(|w| w.to_string()).collect();
                for _ in 0..1 + pick(3, &mut next) {
                    let i = 1 + pick(words.len().max(2) - 1, &mut next);
                    if i >= words.len() {
                        continue;
                    }
                    match pick(5, &mut next) {
                        0 => {
                            words.remove(i);
                        }
                        1 => words.insert(i, words[i].clone()),
                        2 => {
                            let j = 1 + pick(words.len() - 1, &mut next);
                            words.swap(i, j);
                        }
                        3 => words[i] = long.clone(),
                        _ => words[i] = vocab[pick(vocab.len(), &mut next)].to_string(),
                    }
                }
                words
            };
            // Blocking would stall the pipeline; the fuzz is about parsing.
            if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("BLOCK")) {
                words.truncate(i);
            }
            if words.len() < 2 {
                continue;
            }
            batch.push(words);
        }
        sent += batch.len();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for words in &batch {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            pipe.add_command(as_target_command(&cmd(&words)));
        }
        let replies: Vec<redis::RedisResult<Value>> = pipe
            .query(&mut con)
            .unwrap_or_else(|e| panic!("the pipeline failed as a whole: {e}"));
        assert_eq!(replies.len(), batch.len(), "one reply per command");
        for (words, reply) in batch.iter().zip(replies) {
            match reply {
                Ok(Value::ServerError(e)) => {
                    assert!(!e.code().is_empty(), "{words:?}: an error without a code");
                    errors += 1;
                }
                Err(e) => {
                    assert!(
                        e.code().is_some(),
                        "{words:?}: not a server error reply: {e}"
                    );
                    errors += 1;
                }
                Ok(_) => {}
            }
        }
        if sent % 100_000 < 100 {
            assert_eq!(
                text(&query(&mut con, &["PING"])),
                "PONG",
                "after {sent} commands"
            );
        }
    }
    assert!(
        errors > commands / 10,
        "the fuzz produces mostly bad commands ({errors} errors)"
    );
    assert!(server.alive());
    assert_eq!(text(&query(&mut con, &["PING"])), "PONG");
    // And the queue still works.
    query(&mut con, &["VTASKS.ENQUEUE", "{after}", "TASK", "a", "{}"]);
    let got = fetch(&mut con, &["1", "{after}", "CONSUMER", "w"]);
    assert_eq!(ids(&got.tasks), ["a"]);
}
