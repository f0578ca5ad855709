//! One source of truth for both engines: random command sequences, valid
//! and invalid, go to Valkey with the module and to a second Valkey running
//! the scripts engine; every reply must be the same, and so must every
//! task's state at the end, with times masked (the two servers' clocks are
//! not the same clock).
//!
//! Durations are either 0 or a minute and more, so no lease expires and no
//! delayed task falls due while a sequence runs: both servers see the same
//! states whenever they answer. (What time does is compared step by step
//! with an injected clock in `core/native/tests.rs`.)
//!
//! `VTASKS_DIFF_SEQUENCES` and `VTASKS_DIFF_STEPS` set the size (default 6
//! sequences of 150 commands; about a second).

mod common;
use common::*;
use vtasks_client::scripts;

/// xorshift64*: deterministic, so a failure names the seed that found it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const QUEUES: &[&str] = &["{d1}", "{d2}"];
const IDS: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "ab",
    "a-long-id-0001",
    "a-long-id-0002",
];
const CONSUMERS: &[&str] = &["w1", "w2", "w10"];
const SCHEDULE_NAMES: &[&str] = &["s1", "s2", "nightly-report"];
const DURATIONS: &[&str] = &["0", "60000", "120000"];
/// Arguments that should be refused somewhere: bad numbers, bad names,
/// keywords out of place.
const JUNK: &[&str] = &[
    "",
    "-1",
    "x",
    "99999999999999999999",
    "{}",
    "{a b}",
    "TASK",
    "COUNT",
    "NOW",
    "1e3",
    "DEAD",
    "ALL",
    "IDS",
    "KEEP",
    "101",
    "-101",
    "10001",
    "NEXT",
    "CATCHUP",
    "DISABLED",
];

/// A unix time far in the past (due at once) or far ahead, for RUNAT.
fn run_at(rng: &mut Rng) -> String {
    if rng.chance(50) {
        "1000".into()
    } else {
        "99999999999999".into()
    }
}

/// Tokens the sequence has seen, so settlements name real leases (and
/// stale ones).
struct State {
    leases: Vec<(String, String, i64)>,
}

fn lease_ref(rng: &mut Rng, state: &State) -> (String, String, i64) {
    if state.leases.is_empty() || rng.chance(15) {
        let q = rng.pick(QUEUES).to_string();
        return (q, rng.pick(IDS).to_string(), 1 + rng.below(50) as i64);
    }
    state.leases[rng.below(state.leases.len())].clone()
}

fn random_command(rng: &mut Rng, state: &State) -> Vec<String> {
    let q = rng.pick(QUEUES).to_string();
    let mut w: Vec<String> = Vec::new();
    let s = |x: &str| x.to_string();
    match rng.below(15) {
        0..=2 => {
            w.extend([s("VTASKS.ENQUEUE"), q]);
            if rng.chance(15) {
                w.extend([s("MAXLEN"), rng.below(12).to_string()]);
            }
            for _ in 0..1 + rng.below(4) {
                w.extend([
                    s("TASK"),
                    s(rng.pick(IDS)),
                    format!("{{\"n\":{}}}", rng.below(9)),
                ]);
                if rng.chance(30) {
                    w.extend([s("PRIORITY"), s(rng.pick(&["-100", "-1", "0", "5", "100"]))]);
                }
                match rng.below(6) {
                    0 => w.extend([s("DELAY"), s(rng.pick(DURATIONS))]),
                    1 => w.extend([s("RUNAT"), run_at(rng)]),
                    _ => {}
                }
                if rng.chance(30) {
                    w.extend([s("ATTEMPTS"), s(rng.pick(&["1", "2", "3"]))]);
                }
                if rng.chance(20) {
                    w.extend([s("LOSTLEASES"), s(rng.pick(&["1", "3", "10000", "0"]))]);
                }
                if rng.chance(20) {
                    w.push(s("REPLACEFINISHED"));
                }
            }
        }
        3 | 4 => {
            let n = 1 + rng.below(2);
            w.extend([s("VTASKS.FETCHN"), n.to_string()]);
            for _ in 0..n {
                w.push(s(rng.pick(QUEUES)));
            }
            w.extend([s("CONSUMER"), s(rng.pick(CONSUMERS))]);
            w.extend([s("COUNT"), (1 + rng.below(4)).to_string()]);
            w.extend([s("LEASE"), s(rng.pick(&["60000", "90000"]))]);
            if rng.chance(30) {
                w.extend([s("KEEP"), s(rng.pick(DURATIONS))]);
            }
            let named: Vec<String> = w[2..2 + n].to_vec();
            if rng.chance(40) {
                let items: Vec<_> = (0..1 + rng.below(2))
                    .map(|_| lease_ref(rng, state))
                    .collect();
                w.extend([s("ACK"), items.len().to_string()]);
                for (_, id, token) in items {
                    w.extend([named[0].clone(), id, token.to_string(), s("\"r\"")]);
                }
            }
            if rng.chance(20) {
                let (_, id, token) = lease_ref(rng, state);
                w.extend([s("NACK"), s("1"), named[0].clone(), id, token.to_string()]);
                w.extend([s(rng.pick(&["0", "60000", "DEAD"])), s("boom")]);
            }
        }
        5 => {
            let (q, id, token) = lease_ref(rng, state);
            w.extend([
                s("VTASKS.ACK"),
                q,
                s("1"),
                id,
                token.to_string(),
                s("\"ok\""),
            ]);
            if rng.chance(50) {
                w.extend([s("KEEP"), s(rng.pick(DURATIONS))]);
            }
        }
        6 => {
            let (q, id, token) = lease_ref(rng, state);
            let retry = rng.pick(&["0", "60000", "DEAD"]);
            w.extend([
                s("VTASKS.NACK"),
                q,
                s("1"),
                id,
                token.to_string(),
                s(retry),
                s("err"),
            ]);
        }
        7 => {
            let (q, id, token) = lease_ref(rng, state);
            if rng.chance(50) {
                w.extend([
                    s("VTASKS.EXTEND"),
                    q,
                    s("60000"),
                    s("1"),
                    id,
                    token.to_string(),
                ]);
            } else {
                w.extend([s("VTASKS.RELEASE"), q, s("1"), id, token.to_string()]);
            }
        }
        8 => w.extend([s("VTASKS.GET"), q, s(rng.pick(IDS))]),
        9 => w.extend([s("VTASKS.STATS"), q]),
        10 => {
            w.extend([s("VTASKS.DEADLIST"), q]);
            if rng.chance(50) {
                w.extend([
                    s("OFFSET"),
                    rng.below(3).to_string(),
                    s("COUNT"),
                    (1 + rng.below(3)).to_string(),
                ]);
            }
        }
        11 => {
            let verb = rng.pick(&["VTASKS.REQUEUE", "VTASKS.PURGE"]);
            w.extend([s(verb), q]);
            if rng.chance(30) {
                w.push(s("ALL"));
            } else {
                w.push(s("IDS"));
                for _ in 0..1 + rng.below(3) {
                    w.push(s(rng.pick(IDS)));
                }
            }
        }
        13 => {
            // Schedules, due far ahead: firing differs between the engines
            // by design (the module computes the next occurrence itself, the
            // scripts engine leaves it to the client), so it is not mixed in.
            let verb = rng.pick(&[
                "VTASKS.SCHEDULE",
                "VTASKS.SCHEDULE",
                "VTASKS.UNSCHEDULE",
                "VTASKS.SCHEDULES",
                "VTASKS.SCHEDULENEXT",
            ]);
            w.extend([s(verb), q]);
            match verb {
                "VTASKS.SCHEDULE" => {
                    w.push(s(rng.pick(SCHEDULE_NAMES)));
                    w.push(s(rng.pick(&["every 30", "cron UTC 0 3 * * *"])));
                    w.push(s(rng.pick(&["{}", "{\"task\":\"t\"}"])));
                    w.extend([
                        s("NEXT"),
                        s(rng.pick(&["99999999999999", "99999999999000"])),
                    ]);
                    if rng.chance(30) {
                        w.extend([s("PRIORITY"), s(rng.pick(&["-5", "0", "7"]))]);
                    }
                    if rng.chance(30) {
                        w.extend([s("ATTEMPTS"), s(rng.pick(&["1", "3"]))]);
                    }
                    if rng.chance(30) {
                        w.extend([s("CATCHUP"), s(rng.pick(&["LAST", "none"]))]);
                    }
                    if rng.chance(20) {
                        w.push(s("DISABLED"));
                    }
                }
                "VTASKS.UNSCHEDULE" => {
                    for _ in 0..1 + rng.below(2) {
                        w.push(s(rng.pick(SCHEDULE_NAMES)));
                    }
                }
                "VTASKS.SCHEDULENEXT" => {
                    w.push(s(rng.pick(SCHEDULE_NAMES)));
                    w.extend([s("1000"), s(rng.pick(&["2000", "NONE"]))]);
                }
                _ => {}
            }
        }
        12 => {
            let verb = rng.pick(&[
                "VTASKS.PAUSE",
                "VTASKS.RESUME",
                "VTASKS.CANCEL",
                "VTASKS.CANCEL",
                "VTASKS.CLEAR",
            ]);
            w.extend([s(verb), q]);
            if verb == "VTASKS.CANCEL" {
                for _ in 0..1 + rng.below(3) {
                    w.push(s(rng.pick(IDS)));
                }
            }
        }
        _ => {
            // Invalid: a valid command with one argument replaced, dropped
            // or added.
            let mut base = random_command(rng, state);
            match rng.below(3) {
                0 if base.len() > 1 => {
                    let at = 1 + rng.below(base.len() - 1);
                    base[at] = s(rng.pick(JUNK));
                }
                1 if base.len() > 2 => {
                    base.remove(1 + rng.below(base.len() - 1));
                }
                _ => base.push(s(rng.pick(JUNK))),
            }
            return base;
        }
    }
    w
}

/// A reply with what depends on the server's clock masked: unix times
/// (every integer above 10^12) and the age of the oldest ready task.
fn masked(v: &Value) -> String {
    fn walk(v: &Value, after_age: bool, out: &mut String) {
        match v {
            Value::Int(n) if after_age || *n > 1_000_000_000_000 => out.push_str("<time>"),
            Value::BulkString(b) => {
                let text = String::from_utf8_lossy(b);
                match text.parse::<i64>() {
                    Ok(n) if n > 1_000_000_000_000 => out.push_str("<time>"),
                    _ => out.push_str(&format!("{text:?}")),
                }
            }
            Value::Array(items) => {
                out.push('[');
                let mut age = false;
                for item in items {
                    walk(item, age, out);
                    age = matches!(item, Value::SimpleString(s) if s == "oldest_ready_age_ms");
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&text(other)),
        }
    }
    let mut out = String::new();
    walk(v, false, &mut out);
    out
}

fn outcome(r: redis::RedisResult<Value>) -> String {
    match r {
        Ok(v) => masked(&v),
        Err(e) => format!("error: {}", error_text(&e)),
    }
}

/// Runs a command through the scripts engine (FCALL of the same arguments).
fn via_scripts(con: &mut Connection, words: &[String]) -> redis::RedisResult<Value> {
    let mut c = redis::cmd(&words[0]);
    for w in &words[1..] {
        c.arg(w.as_str());
    }
    if !words[0].to_ascii_uppercase().starts_with("VTASKS.") {
        return c.query(con);
    }
    scripts::fcall(&c).query(con)
}

fn via_module(con: &mut Connection, words: &[String]) -> redis::RedisResult<Value> {
    let mut c = redis::cmd(&words[0]);
    for w in &words[1..] {
        c.arg(w.as_str());
    }
    c.query(con)
}

/// Every task of every queue, the counts and the dead letters.
fn final_state(
    con: &mut Connection,
    run: fn(&mut Connection, &[String]) -> redis::RedisResult<Value>,
) -> Vec<String> {
    let mut out = Vec::new();
    for q in QUEUES {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        out.push(outcome(run(con, &words(&["VTASKS.STATS", q]))));
        out.push(outcome(run(
            con,
            &words(&["VTASKS.DEADLIST", q, "COUNT", "100"]),
        )));
        for id in IDS {
            out.push(outcome(run(con, &words(&["VTASKS.GET", q, id]))));
        }
        out.push(outcome(run(con, &words(&["VTASKS.SCHEDULES", q]))));
    }
    out
}

#[test]
fn module_only_both_engines_answer_every_command_alike() {
    let sequences: u64 = std::env::var("VTASKS_DIFF_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let steps: usize = std::env::var("VTASKS_DIFF_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let module = Server::start_with_module(&[]);
    let plain = Server::start_without_module(&[]);
    let mut m = module.connect();
    let mut p = plain.connect();
    let _: Value = scripts::load_cmd().query(&mut p).unwrap();
    let (mut leased, mut refused, mut answered) = (0, 0, 0);
    for seed in 1..=sequences {
        for con in [&mut m, &mut p] {
            let _: () = redis::cmd("FLUSHALL").query(con).unwrap();
        }
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut state = State { leases: Vec::new() };
        let mut log = Vec::new();
        for _ in 0..steps {
            // Each command at its own millisecond on both servers: tasks that
            // die (or are requeued) in different commands then have times in
            // the same order on both, and ties, which the engines break by
            // id, happen only within one command, on both. (Not a wait for
            // anything: the clocks only need to tick between commands.)
            std::thread::sleep(std::time::Duration::from_millis(1));
            let words = random_command(&mut rng, &state);
            log.push(words.join(" "));
            let from_module = via_module(&mut m, &words);
            let from_scripts = via_scripts(&mut p, &words);
            if let Ok(reply) = &from_module {
                if words[0] == "VTASKS.FETCHN" {
                    for t in parse_fetch(reply).tasks {
                        leased += 1;
                        state.leases.push((t.queue, t.id, t.token));
                    }
                }
            }
            let (a, b) = (outcome(from_module), outcome(from_scripts));
            if a.starts_with("error") {
                refused += 1;
            } else {
                answered += 1;
            }
            assert_eq!(
                a,
                b,
                "seed {seed}: the engines differ on\n{}",
                log.join("\n")
            );
        }
        let (a, b) = (
            final_state(&mut m, via_module),
            final_state(&mut p, via_scripts),
        );
        assert_eq!(
            a,
            b,
            "seed {seed}: final states differ after\n{}",
            log.join("\n")
        );
    }
    // The sequences exercised both the life cycle and the refusals.
    assert!(
        leased > 20 && refused > 20 && answered > 200,
        "{leased} {refused} {answered}"
    );
}
