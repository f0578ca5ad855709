//! Helpers for the module's integration tests; the server harness itself is
//! `vtasks-testkit`.
//!
//! These tests are also the conformance suite of the scripts engine: with
//! `VTASKS_TARGET=scripts-valkey` or `scripts-redis` the server has no
//! module and every `VTASKS.*` command is sent as the scripts engine sends
//! it (`FCALL` of the same arguments; a blocking FETCHN sleeps on the wake
//! lists in between). Tests of what only the module can do carry
//! `module_only` in their names and are left out of those runs.
#![allow(dead_code, unused_imports)]

use std::time::{Duration, Instant};

pub use redis::{Connection, Value};
use vtasks_client::scripts;
pub use vtasks_testkit::{scaled_ms, Server, Target};

/// Runs a command on the current target: `VTASKS.*` commands through the
/// scripts engine when the target has no module, anything else as is.
pub fn run(con: &mut Connection, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
    let name = cmd
        .args_iter()
        .next()
        .and_then(|a| match a {
            redis::Arg::Simple(bytes) => Some(String::from_utf8_lossy(bytes).to_ascii_uppercase()),
            _ => None,
        })
        .unwrap_or_default();
    if !Target::current().uses_scripts() || !name.starts_with("VTASKS.") {
        return cmd.query(con);
    }
    let reply = run_script(con, cmd)?;
    if name != "VTASKS.FETCHN" {
        return Ok(reply);
    }
    sleep_until_fetched(con, cmd, reply)
}

/// A `VTASKS.*` command as the current target sends it (for pipelines;
/// call `prepare_target` first).
pub fn as_target_command(cmd: &redis::Cmd) -> redis::Cmd {
    if Target::current().uses_scripts() {
        scripts::fcall(cmd)
    } else {
        cmd.clone()
    }
}

/// Loads the scripts engine's library when the target uses it.
pub fn prepare_target(con: &mut Connection) {
    if Target::current().uses_scripts() {
        match scripts::load_cmd().query::<Value>(con) {
            Err(e) if !scripts::is_already_loaded(&e) => panic!("FUNCTION LOAD: {e}"),
            _ => {}
        }
    }
}

/// `FCALL`, loading the library first if the server does not have it.
fn run_script(con: &mut Connection, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
    let call = scripts::fcall(cmd);
    match call.query(con) {
        Err(e) if scripts::is_not_loaded(&e) => {
            match scripts::load_cmd().query::<Value>(con) {
                Err(e) if !scripts::is_already_loaded(&e) => return Err(e),
                _ => {}
            }
            call.query(con)
        }
        outcome => outcome,
    }
}

/// The scripts engine's blocking FETCHN, as the client does it: while the
/// reply says "nothing yet, sleep N ms" (and hands a sleeper ticket), wait
/// on the queues' wake lists and fetch again with `SLEPT <ticket>`.
/// Repeating the call repeats its settlements, which then find their tasks
/// settled and change nothing; their first outcomes are kept.
fn sleep_until_fetched(
    con: &mut Connection,
    cmd: &redis::Cmd,
    first: Value,
) -> redis::RedisResult<Value> {
    let words: Vec<Vec<u8>> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
            _ => None,
        })
        .collect();
    let block_ms = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case(b"BLOCK"))
        .and_then(|i| words.get(i + 1))
        .and_then(|w| String::from_utf8_lossy(w).parse::<u64>().ok());
    let n = String::from_utf8_lossy(&words[1])
        .parse::<usize>()
        .unwrap_or(0);
    let wake_keys: Vec<String> = words[2..2 + n]
        .iter()
        .map(|q| format!("{}:wake", String::from_utf8_lossy(q)))
        .collect();
    let started = Instant::now();
    let mut reply = first;
    loop {
        // As the client does: the next occurrences of schedules that ran.
        let (rest, pending) = vtasks_client::schedule::split_pending(reply);
        for schedule in pending {
            if let Ok(next) = schedule.next_cmd() {
                run_script(con, &next)?;
            }
        }
        reply = rest;
        let Value::Array(mut parts) = reply else {
            return Ok(reply);
        };
        if parts.len() != 5 {
            return Ok(Value::Array(parts));
        }
        let ticket = parts.pop().unwrap();
        let sleep = match parts.pop() {
            Some(Value::Int(ms)) => Duration::from_millis(ms.max(1) as u64),
            _ => Duration::from_millis(1),
        };
        let remaining = match block_ms {
            Some(0) | None => Duration::MAX,
            Some(ms) => Duration::from_millis(ms).saturating_sub(started.elapsed()),
        };
        let wait = sleep.min(remaining);
        if wait.is_zero() {
            return Ok(Value::Array(parts));
        }
        let _: Value = redis::cmd("BLPOP")
            .arg(&wake_keys)
            .arg(scripts::blpop_timeout(wait))
            .query(con)?;
        let mut again = cmd.clone();
        again.arg("SLEPT").arg(text(&ticket));
        let Value::Array(mut next) = run_script(con, &again)? else {
            return Ok(Value::Array(parts));
        };
        next[1] = parts[1].clone();
        next[2] = parts[2].clone();
        reply = Value::Array(next);
    }
}

pub fn cmd(words: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(words[0]);
    for w in &words[1..] {
        c.arg(*w);
    }
    c
}

pub fn query(con: &mut Connection, words: &[&str]) -> Value {
    run(con, &cmd(words)).unwrap_or_else(|e| panic!("{words:?} failed: {e}"))
}

pub fn query_err(con: &mut Connection, words: &[&str]) -> String {
    match run(con, &cmd(words)) {
        Ok(v) => panic!("{words:?} should fail but answered {v:?}"),
        Err(e) => error_text(&e),
    }
}

/// The whole error reply, code first, as the server sent it (without the
/// location the server appends to a script's errors).
pub fn error_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => {
            format!("{code} {}", scripts::strip_script_suffix(detail))
        }
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        Value::Nil => "nil".into(),
        Value::Okay => "OK".into(),
        other => format!("{other:?}"),
    }
}

pub fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => text(other)
            .parse()
            .unwrap_or_else(|_| panic!("not an integer: {other:?}")),
    }
}

pub fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        Value::Nil => Vec::new(),
        other => panic!("not an array: {other:?}"),
    }
}

/// A flat name/value reply (GET, STATS) as pairs.
pub fn pairs(v: &Value) -> Vec<(String, Value)> {
    items(v)
        .chunks(2)
        .map(|c| (text(&c[0]), c[1].clone()))
        .collect()
}

pub fn field(v: &Value, name: &str) -> Option<Value> {
    pairs(v)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

pub fn stat(con: &mut Connection, queue: &str, name: &str) -> i64 {
    let reply = query(con, &["VTASKS.STATS", queue]);
    int(&field(&reply, name).unwrap_or_else(|| panic!("no stat {name}")))
}

/// One leased task from a FETCHN reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub queue: String,
    pub id: String,
    pub token: i64,
    pub attempt: i64,
    pub payload: String,
}

pub struct Fetched {
    pub tasks: Vec<Task>,
    pub acks: Vec<String>,
    pub nacks: Vec<String>,
}

pub fn parse_fetch(v: &Value) -> Fetched {
    let parts = items(v);
    assert_eq!(parts.len(), 3, "FETCHN replies [tasks, acks, nacks]: {v:?}");
    let tasks = items(&parts[0])
        .iter()
        .map(|t| {
            let f = items(t);
            Task {
                queue: text(&f[0]),
                id: text(&f[1]),
                token: int(&f[2]),
                attempt: int(&f[3]),
                payload: text(&f[4]),
            }
        })
        .collect();
    let words = |v: &Value| items(v).iter().map(text).collect();
    Fetched {
        tasks,
        acks: words(&parts[1]),
        nacks: words(&parts[2]),
    }
}

pub fn fetch(con: &mut Connection, words: &[&str]) -> Fetched {
    let mut all = vec!["VTASKS.FETCHN"];
    all.extend_from_slice(words);
    parse_fetch(&query(con, &all))
}

pub fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

/// Every key with its type and content, sorted: two servers hold the same
/// queue state exactly when their snapshots are equal.
pub fn snapshot(con: &mut Connection) -> Vec<(String, String, String)> {
    let mut keys: Vec<String> = cmd(&["KEYS", "*"]).query(con).unwrap();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let kind: String = cmd(&["TYPE", &key]).query(con).unwrap();
            let content = match kind.as_str() {
                "hash" => {
                    let mut fields: Vec<(String, String)> =
                        cmd(&["HGETALL", &key]).query(con).unwrap();
                    fields.sort();
                    format!("{fields:?}")
                }
                "zset" => {
                    let members: Vec<(String, i64)> =
                        cmd(&["ZRANGE", &key, "0", "-1", "WITHSCORES"])
                            .query(con)
                            .unwrap();
                    format!("{members:?}")
                }
                // The module's queue: its serialized form is canonical, so
                // two servers hold the same queue exactly when these match.
                "vtasksque" => {
                    let dump: Vec<u8> = cmd(&["DUMP", &key]).query(con).unwrap();
                    format!("{dump:?}")
                }
                other => format!("unexpected type {other}"),
            };
            let ttl: i64 = cmd(&["PTTL", &key]).query(con).unwrap();
            (key, kind, format!("{content} ttl={}", ttl > 0))
        })
        .collect()
}

/// Puts a queue through every state: ready, delayed, leased, done with a
/// result, retrying, dead. Returns the leases still held.
pub fn mixed_workload(con: &mut Connection, queue: &str) -> Vec<Task> {
    let mut enqueue = vec!["VTASKS.ENQUEUE", queue];
    let ids: Vec<String> = (0..30).map(|i| format!("t{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        enqueue.extend_from_slice(&["TASK", id, "{\"args\":[1,2]}", "ATTEMPTS", "2"]);
        if i % 10 == 9 {
            enqueue.extend_from_slice(&["DELAY", "600000"]);
        }
        if i % 7 == 0 {
            enqueue.extend_from_slice(&["PRIORITY", "10"]);
        }
    }
    query(con, &enqueue);
    let got = fetch(
        con,
        &[
            "1", queue, "CONSUMER", "w1", "COUNT", "12", "LEASE", "600000",
        ],
    );
    let (done, rest) = got.tasks.split_at(4);
    let (failed, held) = rest.split_at(4);
    for t in done {
        query(
            con,
            &[
                "VTASKS.ACK",
                queue,
                "1",
                &t.id,
                &t.token.to_string(),
                "\"result\"",
            ],
        );
    }
    for (i, t) in failed.iter().enumerate() {
        let retry = if i % 2 == 0 { "DEAD" } else { "600000" };
        query(
            con,
            &[
                "VTASKS.NACK",
                queue,
                "1",
                &t.id,
                &t.token.to_string(),
                retry,
                "boom",
            ],
        );
    }
    held.to_vec()
}
