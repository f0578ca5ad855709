//! Command metadata (arity, flags, ACL categories, key specs) as `COMMAND
//! INFO` reports it, `COMMAND GETKEYS` for every command, and ACL users
//! restricted to one queue.

mod common;
use common::*;

/// (command, arity, flags, ACL categories). Flags are exact: only commands
/// that add work (ENQUEUE, REQUEUE, SCHEDULE) are `denyoom`, so a server at its
/// `maxmemory` still drains, settles and answers reads (docs/PROTOCOL.md,
/// "Memory").
const COMMANDS: &[(&str, i64, &[&str], &[&str])] = &[
    (
        "vtasks.enqueue",
        -5,
        &["write", "denyoom", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.fetchn",
        -5,
        &["write", "module", "movablekeys"],
        &["@write", "@slow", "@blocking", "@vtasks"],
    ),
    (
        "vtasks.ack",
        -6,
        &["write", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.nack",
        -7,
        &["write", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.extend",
        -6,
        &["write", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.release",
        -5,
        &["write", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.get",
        3,
        &["readonly", "module", "fast"],
        &["@read", "@fast", "@vtasks"],
    ),
    (
        "vtasks.stats",
        2,
        &["readonly", "module"],
        &["@read", "@slow", "@vtasks"],
    ),
    (
        "vtasks.deadlist",
        -2,
        &["readonly", "module"],
        &["@read", "@slow", "@vtasks"],
    ),
    (
        "vtasks.requeue",
        -3,
        &["write", "denyoom", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.purge",
        -3,
        &["write", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.pause",
        2,
        &["write", "module", "fast"],
        &["@write", "@fast", "@vtasks"],
    ),
    (
        "vtasks.resume",
        2,
        &["write", "module", "fast"],
        &["@write", "@fast", "@vtasks"],
    ),
    (
        "vtasks.cancel",
        -3,
        &["write", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.clear",
        2,
        &["write", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.schedule",
        -7,
        &["write", "denyoom", "module"],
        &["@write", "@slow", "@vtasks"],
    ),
    (
        "vtasks.unschedule",
        -3,
        &["write", "module", "fast"],
        &["@write", "@fast", "@vtasks"],
    ),
    (
        "vtasks.schedulenext",
        5,
        &["write", "module", "fast"],
        &["@write", "@fast", "@vtasks"],
    ),
    (
        "vtasks.schedules",
        2,
        &["readonly", "module"],
        &["@read", "@slow", "@vtasks"],
    ),
];

#[test]
fn command_info_reports_arity_flags_categories_and_key_specs() {
    let server = Server::start();
    let mut con = server.connect();
    for (name, arity, flags, categories) in COMMANDS {
        let info = items(&query(&mut con, &["COMMAND", "INFO", name]));
        let info = items(&info[0]);
        assert_eq!(text(&info[0]).to_lowercase(), *name);
        assert_eq!(int(&info[1]), *arity, "{name} arity");
        let got_flags: Vec<String> = items(&info[2]).iter().map(text).collect();
        assert_eq!(&got_flags, flags, "{name} flags");
        let got_categories: Vec<String> = items(&info[6]).iter().map(text).collect();
        assert_eq!(&got_categories, categories, "{name} ACL categories");
        let key_specs = items(&info[8]);
        // FETCHN also declares its first queue by position: Valkey 8.0
        // redirects a module command in a cluster by that spec, not by
        // the one counting the queues (a FETCHN sent to a node that no
        // longer serves its queue's slot was answered, empty).
        let specs = if *name == "vtasks.fetchn" { 2 } else { 1 };
        assert_eq!(key_specs.len(), specs, "{name} declares {specs} key specs");
        let spec = pairs(&key_specs[0]);
        let spec_flags: Vec<String> = items(&spec.iter().find(|(n, _)| n == "flags").unwrap().1)
            .iter()
            .map(text)
            .collect();
        let readonly = flags.contains(&"readonly");
        assert!(
            spec_flags.contains(&(if readonly { "RO" } else { "RW" }).to_string()),
            "{name}: {spec_flags:?}"
        );
    }
}

#[test]
fn command_getkeys_names_the_queues() {
    let server = Server::start();
    let mut con = server.connect();
    let cases: &[(&[&str], &[&str])] = &[
        (&["VTASKS.ENQUEUE", "{a}", "TASK", "t", "{}"], &["{a}"]),
        (
            &[
                "VTASKS.FETCHN",
                "2",
                "{a}",
                "{b}",
                "CONSUMER",
                "w",
                "COUNT",
                "5",
            ],
            &["{a}", "{b}", "{a}"],
        ),
        (
            &[
                "VTASKS.FETCHN",
                "1",
                "{a}",
                "CONSUMER",
                "w",
                "ACK",
                "1",
                "{a}",
                "t",
                "1",
                "",
            ],
            &["{a}", "{a}"],
        ),
        (&["VTASKS.ACK", "{a}", "1", "t", "1", ""], &["{a}"]),
        (&["VTASKS.NACK", "{a}", "1", "t", "1", "0", "e"], &["{a}"]),
        (&["VTASKS.EXTEND", "{a}", "100", "1", "t", "1"], &["{a}"]),
        (&["VTASKS.RELEASE", "{a}", "1", "t", "1"], &["{a}"]),
        (&["VTASKS.GET", "{a}", "t"], &["{a}"]),
        (&["VTASKS.STATS", "{a}"], &["{a}"]),
        (&["VTASKS.DEADLIST", "{a}"], &["{a}"]),
        (&["VTASKS.REQUEUE", "{a}", "ALL"], &["{a}"]),
        (&["VTASKS.PURGE", "{a}", "ALL"], &["{a}"]),
        (&["VTASKS.PAUSE", "{a}"], &["{a}"]),
        (&["VTASKS.RESUME", "{a}"], &["{a}"]),
        (&["VTASKS.CANCEL", "{a}", "t"], &["{a}"]),
        (&["VTASKS.CLEAR", "{a}"], &["{a}"]),
        (
            &["VTASKS.SCHEDULE", "{a}", "n", "every 1", "{}", "NEXT", "1"],
            &["{a}"],
        ),
        (&["VTASKS.UNSCHEDULE", "{a}", "n"], &["{a}"]),
        (&["VTASKS.SCHEDULENEXT", "{a}", "n", "1", "2"], &["{a}"]),
        (&["VTASKS.SCHEDULES", "{a}"], &["{a}"]),
    ];
    for (words, expected) in cases {
        let mut all = vec!["COMMAND", "GETKEYS"];
        all.extend_from_slice(words);
        let keys: Vec<String> = items(&query(&mut con, &all)).iter().map(text).collect();
        assert_eq!(&keys, expected, "{words:?}");
    }
    assert_eq!(
        COMMANDS.len(),
        cases.len() - 1,
        "every command has a GETKEYS case"
    );
}

#[test]
fn an_acl_user_limited_to_one_queue_can_use_exactly_that_queue() {
    let server = Server::start();
    let mut admin = server.connect();
    query(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            "mailer",
            "on",
            ">secret",
            "~{emails}*",
            "+@vtasks",
            "+ping",
        ],
    );
    let mut con = redis::Client::open(format!("redis://mailer:secret@127.0.0.1:{}/", server.port))
        .unwrap()
        .get_connection()
        .unwrap();
    query(&mut con, &["VTASKS.ENQUEUE", "{emails}", "TASK", "t", "{}"]);
    let got = fetch(&mut con, &["1", "{emails}", "CONSUMER", "w"]);
    assert_eq!(ids(&got.tasks), ["t"]);
    query(
        &mut con,
        &[
            "VTASKS.ACK",
            "{emails}",
            "1",
            "t",
            &got.tasks[0].token.to_string(),
            "",
        ],
    );
    assert_eq!(stat(&mut con, "{emails}", "acked"), 1);

    for words in [
        vec!["VTASKS.ENQUEUE", "{billing}", "TASK", "t", "{}"],
        vec!["VTASKS.FETCHN", "1", "{billing}", "CONSUMER", "w"],
        vec![
            "VTASKS.FETCHN",
            "2",
            "{emails}",
            "{billing}",
            "CONSUMER",
            "w",
        ],
        vec!["VTASKS.STATS", "{billing}"],
    ] {
        let err = query_err(&mut con, &words);
        assert!(err.starts_with("NOPERM"), "{words:?}: {err}");
    }
    // Plain data commands are outside the vtasks category.
    assert!(query_err(&mut con, &["HGETALL", "{emails}"]).starts_with("NOPERM"));
    let keys: Vec<String> = cmd(&["KEYS", "{billing}*"]).query(&mut admin).unwrap();
    assert!(keys.is_empty(), "the refused calls wrote nothing");
}
