//! Periodic schedules (`VTASKS.SCHEDULE`, `UNSCHEDULE`, `SCHEDULES`,
//! `SCHEDULENEXT`) on a real server: set, list, change, remove, fire once
//! per occurrence, persist. Runs on both engines; tests of the module's
//! timer carry `module_only` in their names.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn now_ms() -> i64 {
    vtasks_client::schedule::now_ms()
}

fn schedule(
    con: &mut Connection,
    queue: &str,
    name: &str,
    timing: &str,
    next: i64,
    extra: &[&str],
) -> String {
    let next = next.to_string();
    let mut words = vec![
        "VTASKS.SCHEDULE",
        queue,
        name,
        timing,
        r#"{"task":"t"}"#,
        "NEXT",
        &next,
    ];
    words.extend_from_slice(extra);
    text(&query(con, &words))
}

fn listed(con: &mut Connection, queue: &str) -> Vec<Vec<(String, Value)>> {
    items(&query(con, &["VTASKS.SCHEDULES", queue]))
        .iter()
        .map(pairs)
        .collect()
}

fn get<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[test]
fn set_list_change_and_remove() {
    let server = Server::start();
    let mut con = server.connect();
    prepare_target(&mut con);
    assert!(
        listed(&mut con, "{q}").is_empty(),
        "a queue never used lists none"
    );
    let far = 4_000_000_000_000i64;
    assert_eq!(
        schedule(
            &mut con,
            "{q}",
            "nightly",
            "cron Europe/Berlin 0 3 * * *",
            far,
            &[]
        ),
        "added"
    );
    assert_eq!(
        schedule(
            &mut con,
            "{q}",
            "beat",
            "every 30",
            far,
            &["PRIORITY", "5", "ATTEMPTS", "2", "CATCHUP", "none"]
        ),
        "added"
    );
    // The same definition again (a worker applying its settings at start)
    // keeps the schedule's state, whatever NEXT it brings.
    assert_eq!(
        schedule(
            &mut con,
            "{q}",
            "nightly",
            "cron Europe/Berlin 0 3 * * *",
            far + 5,
            &[]
        ),
        "unchanged"
    );
    let all = listed(&mut con, "{q}");
    assert_eq!(all.len(), 2);
    assert_eq!(text(get(&all[0], "name").unwrap()), "beat", "by name");
    assert_eq!(text(get(&all[0], "timing").unwrap()), "every 30");
    assert_eq!(int(get(&all[0], "priority").unwrap()), 5);
    assert_eq!(int(get(&all[0], "attempts").unwrap()), 2);
    assert_eq!(text(get(&all[0], "catch_up").unwrap()), "none");
    assert_eq!(int(get(&all[0], "enabled").unwrap()), 1);
    assert_eq!(int(get(&all[1], "next").unwrap()), far);
    assert_eq!(text(get(&all[1], "payload").unwrap()), r#"{"task":"t"}"#);
    assert!(get(&all[1], "last").is_none());
    // A changed definition takes effect at once.
    assert_eq!(
        schedule(
            &mut con,
            "{q}",
            "nightly",
            "cron Europe/Berlin 0 4 * * *",
            far + 9,
            &["DISABLED"]
        ),
        "changed"
    );
    let all = listed(&mut con, "{q}");
    assert_eq!(int(get(&all[1], "next").unwrap()), far + 9);
    assert_eq!(int(get(&all[1], "enabled").unwrap()), 0);
    // The queue exists once it holds a schedule.
    assert_eq!(stat(&mut con, "{q}", "ready"), 0);
    let removed = query(&mut con, &["VTASKS.UNSCHEDULE", "{q}", "nightly", "nosuch"]);
    assert_eq!(int(&removed), 1);
    assert_eq!(listed(&mut con, "{q}").len(), 1);
    assert_eq!(
        int(&query(&mut con, &["VTASKS.UNSCHEDULE", "{other}", "x"])),
        0
    );
    // Nothing to set: the schedule is not pending since that time.
    assert_eq!(
        int(&query(
            &mut con,
            &["VTASKS.SCHEDULENEXT", "{q}", "beat", "123", "456"]
        )),
        0
    );
}

#[test]
fn bad_schedules_are_refused() {
    let server = Server::start();
    let mut con = server.connect();
    prepare_target(&mut con);
    let big = "x".repeat(64 * 1024 + 1);
    let long_name = "n".repeat(129);
    let cases: Vec<(Vec<&str>, &str)> = vec![
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
            "ERR schedule name must be 1-128 characters",
        ),
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                &long_name,
                "every 1",
                "{}",
                "NEXT",
                "1",
            ],
            "ERR schedule name must be",
        ),
        (
            vec!["VTASKS.SCHEDULE", "{q}", "a", "every\n1", "{}", "NEXT", "1"],
            "ERR schedule timing must be 1-256 bytes of printable ASCII",
        ),
        (
            vec!["VTASKS.SCHEDULE", "{q}", "a", "every 1", &big, "NEXT", "1"],
            "ERR schedule payload of 65537 bytes exceeds the limit of 65536 bytes",
        ),
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                "a",
                "every 1",
                "{}",
                "PRIORITY",
                "1",
            ],
            "ERR syntax error: NEXT <unix-ms> is required",
        ),
        (
            vec!["VTASKS.SCHEDULE", "{q}", "a", "every 1", "{}", "NEXT", "x"],
            "ERR NEXT must be an integer",
        ),
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                "a",
                "every 1",
                "{}",
                "NEXT",
                "1",
                "CATCHUP",
                "ALL",
            ],
            "ERR syntax error: CATCHUP must be LAST or NONE",
        ),
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                "a",
                "every 1",
                "{}",
                "NEXT",
                "1",
                "PRIORITY",
                "101",
            ],
            "ERR PRIORITY must be between -100 and 100",
        ),
        (
            vec![
                "VTASKS.SCHEDULE",
                "{q}",
                "a",
                "every 1",
                "{}",
                "NEXT",
                "1",
                "SOON",
            ],
            "ERR syntax error: unknown option 'SOON'",
        ),
        (
            vec!["VTASKS.SCHEDULE", "q", "a", "every 1", "{}", "NEXT", "1"],
            "ERR invalid queue 'q'",
        ),
        (
            vec!["VTASKS.SCHEDULE", "{q}", "a", "every 1", "{}", "NEXT"],
            "ERR wrong number of arguments",
        ),
        (
            vec!["VTASKS.UNSCHEDULE", "{q}", "a b"],
            "ERR schedule name must be",
        ),
        (
            vec!["VTASKS.SCHEDULENEXT", "{q}", "a", "x", "1"],
            "ERR after must be an integer",
        ),
        (
            vec!["VTASKS.SCHEDULENEXT", "{q}", "a", "1", "soon"],
            "ERR next must be an integer",
        ),
        (
            vec!["VTASKS.SCHEDULES", "{q}", "extra"],
            "ERR wrong number of arguments",
        ),
    ];
    for (words, expected) in cases {
        let err = query_err(&mut con, &words);
        assert!(err.starts_with(expected), "{words:?}: {err}");
    }
    assert!(listed(&mut con, "{q}").is_empty(), "nothing was written");
    // A key of another type.
    let _: () = redis::cmd("SET")
        .arg("{s}")
        .arg("x")
        .query(&mut con)
        .unwrap();
    let err = query_err(
        &mut con,
        &["VTASKS.SCHEDULE", "{s}", "a", "every 1", "{}", "NEXT", "1"],
    );
    assert!(err.starts_with("WRONGTYPE"), "{err}");
}

#[test]
fn each_occurrence_is_one_task_and_the_next_follows() {
    let server = Server::start();
    let mut con = server.connect();
    prepare_target(&mut con);
    // Every second, first due in about half a second.
    let next = (now_ms() / 1000 + 1) * 1000;
    schedule(&mut con, "{q}", "tick", "every 1", next, &["PRIORITY", "3"]);
    let block = scaled_ms(10_000).to_string();
    let got = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "BLOCK", &block]);
    assert_eq!(ids(&got.tasks), [format!("schedule:tick:{next}")]);
    assert_eq!(got.tasks[0].payload, r#"{"task":"t"}"#);
    let all = listed(&mut con, "{q}");
    assert_eq!(int(get(&all[0], "last").unwrap()), next);
    assert_eq!(
        text(get(&all[0], "last_id").unwrap()),
        format!("schedule:tick:{next}")
    );
    assert_eq!(int(get(&all[0], "runs").unwrap()), 1);
    let following = int(get(&all[0], "next").unwrap());
    assert!(following > next && following % 1000 == 0, "{following}");
    let info = query(
        &mut con,
        &["VTASKS.GET", "{q}", &format!("schedule:tick:{next}")],
    );
    assert_eq!(text(&field(&info, "priority").unwrap()), "3");
    // The next second's run comes too, to a blocked consumer.
    let got = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "BLOCK", &block]);
    assert_eq!(ids(&got.tasks), [format!("schedule:tick:{following}")]);
    // Removed: nothing more.
    query(&mut con, &["VTASKS.UNSCHEDULE", "{q}", "tick"]);
    let got = fetch(&mut con, &["1", "{q}", "CONSUMER", "w", "BLOCK", "1500"]);
    assert!(got.tasks.is_empty(), "{:?}", ids(&got.tasks));
}

#[test]
fn module_only_the_timer_fires_with_no_consumer_and_the_schedules_persist() {
    let mut server = Server::start_with(&["--appendonly", "yes"]);
    let mut con = server.connect();
    let next = (now_ms() / 1000 + 1) * 1000;
    schedule(&mut con, "{q}", "tick", "every 1", next, &[]);
    schedule(
        &mut con,
        "{q}",
        "later",
        "cron UTC 0 3 * * *",
        4_000_000_000_000,
        &["CATCHUP", "NONE"],
    );
    let deadline = Instant::now() + Duration::from_millis(scaled_ms(10_000));
    while stat(&mut con, "{q}", "ready") < 2 {
        assert!(
            Instant::now() < deadline,
            "the timer enqueued no occurrences"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = query(&mut con, &["VTASKS.SCHEDULES", "{q}"]);
    server.restart();
    let mut con = server.connect();
    let after = query(&mut con, &["VTASKS.SCHEDULES", "{q}"]);
    let defs = |v: &Value| -> Vec<(String, String, i64)> {
        items(v)
            .iter()
            .map(|s| {
                let f = pairs(s);
                (
                    text(get(&f, "name").unwrap()),
                    text(get(&f, "timing").unwrap()),
                    int(get(&f, "enabled").unwrap()),
                )
            })
            .collect()
    };
    assert_eq!(defs(&before), defs(&after));
    let later = pairs(&items(&after)[0]);
    assert_eq!(text(get(&later, "catch_up").unwrap()), "none");
    // And it goes on firing after the restart.
    let ready = stat(&mut con, "{q}", "ready");
    let deadline = Instant::now() + Duration::from_millis(scaled_ms(10_000));
    while stat(&mut con, "{q}", "ready") <= ready {
        assert!(Instant::now() < deadline, "no occurrence after the restart");
        std::thread::sleep(Duration::from_millis(50));
    }
}
