//! The scripts engine: the `VTASKS.*` commands as one Valkey/Redis function
//! library (`scripts/vtasks.lua`), for servers that cannot load the module.
//!
//! A module command becomes `FCALL <function> <numkeys> <keys> <NAME> <args>`
//! with the module command's own arguments, so both engines share every
//! request builder and reply parser. The keys are derived here from the
//! arguments: each queue's ten keys, then the task keys of the ids the
//! arguments name (see the library's header).
//!
//! A function library rather than `EVALSHA`: the server runs a library's
//! top level once, at `FUNCTION LOAD`, while a script's runs on every call;
//! for this library that was ~20 µs of closure and table creation per call,
//! more than the commands' own work. Libraries also persist in RDB/AOF and
//! replicate, so a restart or a failover does not lose them.

use std::sync::OnceLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, Value};

use crate::error::{Error, Result};

/// The library's text as written: its limits and its name are
/// placeholders (`__MAX_PRIORITY__`, `__FUNCTION_NAME__`).
const TEMPLATE: &str = include_str!("scripts/vtasks.lua");

/// Suffixes of a queue's keys, in the order the library takes them.
pub use vtasks_protocol::QUEUE_KEY_SUFFIXES;
use vtasks_protocol::TASK_KEY_INFIX;

/// The template with every `__NAME__` of `vtasks_protocol::LIMITS` replaced
/// by its value, so the library checks exactly what the module checks.
fn with_limits() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        vtasks_protocol::LIMITS
            .iter()
            .fold(TEMPLATE.to_string(), |text, (name, value)| {
                text.replace(&format!("__{name}__"), &value.to_string())
            })
            .replace(
                "__SCHEDULE_ID_PREFIX__",
                vtasks_protocol::SCHEDULE_ID_PREFIX,
            )
    })
}

/// The library's name, which is also the name of its function for commands
/// that add work: `vtasks_` and the first 16 hex digits of the SHA1 of its
/// text with the limits filled in. Another vtasks version (other code or
/// other limits) has another name, so versions sharing a server never
/// replace each other's code.
pub fn function_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let hash = redis::Script::new(with_limits()).get_hash().to_string();
        format!("vtasks_{}", &hash[..16])
    })
}

/// The library as `FUNCTION LOAD` takes it.
pub fn library() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| {
        format!(
            "#!lua name={}\n{}",
            function_name(),
            with_limits().replace("__FUNCTION_NAME__", function_name())
        )
    })
}

/// `FUNCTION LOAD` of the library; a library of that name already loaded
/// (by another client) is the same code.
pub fn load_cmd() -> Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg(library());
    cmd
}

/// Whether an error says the library is not on the server: nothing ran.
pub fn is_not_loaded(err: &redis::RedisError) -> bool {
    err.detail()
        .is_some_and(|d| d.starts_with("Function not found"))
}

/// Whether a `FUNCTION LOAD` failed only because the library is there.
pub fn is_already_loaded(err: &redis::RedisError) -> bool {
    err.detail().is_some_and(|d| d.contains("already exists"))
}

/// The arguments of a module command, name first.
fn words(cmd: &Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => bytes,
            _ => &b""[..], // cursors belong to SCAN-like commands, not ours
        })
        .collect()
}

/// What a command does when the server is at its `maxmemory`, which picks
/// the library function that runs it (their flags differ; see the end of
/// `scripts/vtasks.lua` and "Memory" in docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Adds work (ENQUEUE, REQUEUE): refused by a full server.
    Work,
    /// Drains, settles, frees or flags: runs on a full server (`allow-oom`).
    Settle,
    /// Reads only: `no-writes`, called with `FCALL_RO`.
    Read,
}

impl Kind {
    /// The kind of a module command (`VTASKS.` prefix optional); unknown
    /// names go to the work function, which refuses them as the module does.
    pub fn of(name: &[u8]) -> Kind {
        match String::from_utf8_lossy(strip_prefix(name))
            .to_ascii_uppercase()
            .as_str()
        {
            "FETCHN" | "ACK" | "NACK" | "EXTEND" | "RELEASE" | "PURGE" | "CANCEL" | "CLEAR"
            | "PAUSE" | "RESUME" | "UNSCHEDULE" | "SCHEDULENEXT" => Kind::Settle,
            "GET" | "STATS" | "DEADLIST" | "SCHEDULES" => Kind::Read,
            _ => Kind::Work,
        }
    }

    /// The library function that runs commands of this kind.
    pub fn function(self) -> &'static str {
        static NAMES: OnceLock<[String; 2]> = OnceLock::new();
        let [settle, read] = NAMES.get_or_init(|| {
            [
                format!("{}_settle", function_name()),
                format!("{}_read", function_name()),
            ]
        });
        match self {
            Kind::Work => function_name(),
            Kind::Settle => settle,
            Kind::Read => read,
        }
    }

    /// `FCALL_RO` for the read-only function, else `FCALL`.
    pub fn call_command(self) -> &'static str {
        match self {
            Kind::Read => "FCALL_RO",
            _ => "FCALL",
        }
    }
}

/// The `FCALL` (or `FCALL_RO`) that runs `cmd` (a `VTASKS.*` command) with
/// the library function for its kind.
pub fn fcall(cmd: &Cmd) -> Cmd {
    let words = words(cmd);
    let keys = declared_keys(&words);
    let name = words
        .first()
        .map(|w| strip_prefix(w).to_vec())
        .unwrap_or_default();
    let kind = Kind::of(&name);
    let mut eval = redis::cmd(kind.call_command());
    eval.arg(kind.function()).arg(keys.len());
    for key in &keys {
        eval.arg(key);
    }
    eval.arg(name);
    for word in words.iter().skip(1) {
        eval.arg(*word);
    }
    eval
}

fn strip_prefix(name: &[u8]) -> &[u8] {
    if name.len() > 7 && name[..7].eq_ignore_ascii_case(b"VTASKS.") {
        &name[7..]
    } else {
        name
    }
}

/// Runs a `VTASKS.*` command with the library. A server without it
/// (`FUNCTION FLUSH`, a new server) answers "Function not found" without
/// running anything, so loading it and sending the call again cannot run
/// anything twice.
pub async fn query(conn: &mut impl ConnectionLike, cmd: &Cmd) -> Result<Value> {
    Ok(query_then(conn, cmd, None).await?.0)
}

/// As `query`; with `then`, that command is sent right behind the call in
/// one pipeline, and its reply returned too.
pub async fn query_then(
    conn: &mut impl ConnectionLike,
    cmd: &Cmd,
    then: Option<&Cmd>,
) -> Result<(Value, Option<Value>)> {
    let call = fcall(cmd);
    match send_pipelined(conn, &call, then).await {
        Err(err) if is_not_loaded(&err) => {
            match load_cmd().query_async::<Value>(conn).await {
                Err(err) if !is_already_loaded(&err) => return Err(Error::from(err)),
                _ => {}
            }
            send_pipelined(conn, &call, then)
                .await
                .map_err(script_error)
        }
        outcome => outcome.map_err(script_error),
    }
}

/// `first`, and `then` right behind it in the same write on the same
/// connection when given; a server error in either fails the whole.
pub(crate) async fn send_pipelined(
    conn: &mut impl ConnectionLike,
    first: &Cmd,
    then: Option<&Cmd>,
) -> redis::RedisResult<(Value, Option<Value>)> {
    let Some(then) = then else {
        return Ok((first.query_async(conn).await?, None));
    };
    let mut pipe = redis::pipe();
    // Errors come back per command, each as the same error a lone command
    // gets, so the engines' retries recognise them.
    pipe.add_command(first.clone())
        .add_command(then.clone())
        .ignore_errors();
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let [reply, then_reply]: [Value; 2] = replies.try_into().map_err(|_| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "a pipeline of 2 got another number of replies",
        ))
    })?;
    match (reply, then_reply) {
        (Value::ServerError(err), _) | (_, Value::ServerError(err)) => Err(err.into()),
        (reply, then_reply) => Ok((reply, Some(then_reply))),
    }
}

/// The server appends where in the library an error was raised
/// (` script: <name>, on @user_function:<line>.`); the error the library
/// meant is the part before, the same text the module replies with.
pub fn script_error(err: redis::RedisError) -> Error {
    match Error::from(err) {
        Error::Server { code, message } => Error::Server {
            code,
            message: strip_script_suffix(&message).to_string(),
        },
        Error::ServerFull(message) => Error::ServerFull(strip_script_suffix(&message).to_string()),
        other => other,
    }
}

/// `BLPOP`'s timeout for a sleep of `wait` (non-zero): seconds with
/// millisecond precision, rounded up. Rounded to the nearest, a wait under
/// half a millisecond (what is left of a fetch's BLOCK after a sleep that
/// ran to its end) would be sent as `0.000`, which BLPOP reads as "block
/// forever".
pub fn blpop_timeout(wait: std::time::Duration) -> String {
    let ms = wait.as_micros().div_ceil(1000).max(1);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

pub fn strip_script_suffix(message: &str) -> &str {
    match message.rfind(" script: ") {
        Some(at) => message[..at].trim_end(),
        None => message,
    }
}

/// Every key a module command's arguments name, in the order the script
/// expects: each queue argument's ten keys, then `{q}:t:<id>` for each
/// task id. Malformed arguments yield what could be derived; the script
/// then refuses the call with the module's error.
pub fn declared_keys(words: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut keys = KeyList::default();
    let Some(name) = words.first() else {
        return Vec::new();
    };
    let args = &words[1..];
    let name = String::from_utf8_lossy(strip_prefix(name)).to_ascii_uppercase();
    match name.as_str() {
        "ENQUEUE" => enqueue_keys(args, &mut keys),
        "FETCHN" => fetch_keys(args, &mut keys),
        "ACK" => items_after(args, 2, 3, &mut keys),
        "NACK" => items_after(args, 2, 4, &mut keys),
        "RELEASE" => items_after(args, 2, 2, &mut keys),
        "EXTEND" => items_after(args, 3, 2, &mut keys),
        "GET" => {
            if let Some(q) = keys.queue(args.first()) {
                keys.tasks(&q, args.get(1..2).unwrap_or_default());
            }
        }
        "CANCEL" => {
            if let Some(q) = keys.queue(args.first()) {
                keys.tasks(&q, &args[1..]);
            }
        }
        "REQUEUE" | "PURGE" => {
            if let Some(q) = keys.queue(args.first()) {
                if args.get(1).is_some_and(|w| w.eq_ignore_ascii_case(b"IDS")) {
                    keys.tasks(&q, &args[2..]);
                }
            }
        }
        _ => {
            keys.queue(args.first());
        }
    }
    keys.finish()
}

#[derive(Default)]
struct KeyList {
    queues: Vec<Vec<u8>>,
    tasks: Vec<Vec<u8>>,
}

impl KeyList {
    /// Declares a queue's keys; returns the queue name for its task keys.
    fn queue(&mut self, arg: Option<&&[u8]>) -> Option<Vec<u8>> {
        let queue = arg?.to_vec();
        for suffix in QUEUE_KEY_SUFFIXES {
            self.queues.push([&queue[..], suffix.as_bytes()].concat());
        }
        Some(queue)
    }

    fn task(&mut self, queue: &[u8], id: &[u8]) {
        self.tasks
            .push([queue, TASK_KEY_INFIX.as_bytes(), id].concat());
    }

    fn tasks(&mut self, queue: &[u8], ids: &[&[u8]]) {
        for id in ids {
            self.task(queue, id);
        }
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        self.queues.append(&mut self.tasks);
        self.queues
    }
}

fn count_at(args: &[&[u8]], at: usize) -> usize {
    args.get(at)
        .and_then(|w| std::str::from_utf8(w).ok())
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0)
}

/// `<queue> ... <n> (<id> ...){n}`: the item count at `count_at`, each item
/// `width` words with the id first.
fn items_after(args: &[&[u8]], count_index: usize, width: usize, keys: &mut KeyList) {
    let Some(q) = keys.queue(args.first()) else {
        return;
    };
    let n = count_at(args, count_index - 1);
    for i in 0..n {
        match args.get(count_index + i * width) {
            Some(id) => keys.task(&q, id),
            None => return,
        }
    }
}

fn is(word: Option<&&[u8]>, keyword: &str) -> bool {
    word.is_some_and(|w| w.eq_ignore_ascii_case(keyword.as_bytes()))
}

fn enqueue_keys(args: &[&[u8]], keys: &mut KeyList) {
    let Some(q) = keys.queue(args.first()) else {
        return;
    };
    let mut i = 1;
    if is(args.get(i), "MAXLEN") {
        i += 2;
    }
    while i < args.len() {
        if !is(args.get(i), "TASK") {
            return;
        }
        if let Some(id) = args.get(i + 1) {
            keys.task(&q, id);
        }
        i += 3; // TASK <id> <payload>
        while i < args.len() && !is(args.get(i), "TASK") {
            let option = String::from_utf8_lossy(args[i]).to_ascii_uppercase();
            i += match option.as_str() {
                "PRIORITY" | "ATTEMPTS" | "DELAY" | "RUNAT" => 2,
                _ => 1,
            };
        }
    }
}

fn fetch_keys(args: &[&[u8]], keys: &mut KeyList) {
    if args.is_empty() {
        return;
    }
    let n = count_at(args, 0).min(args.len().saturating_sub(1));
    for q in &args[1..=n] {
        keys.queue(Some(q));
    }
    let mut i = 1 + n;
    while i < args.len() {
        let option = String::from_utf8_lossy(args[i]).to_ascii_uppercase();
        let width = match option.as_str() {
            "ACK" => 4,
            "NACK" => 5,
            // WAKE <ms> <n> <queue>...: queues the call does not touch.
            "WAKE" => {
                i += 3 + count_at(args, i + 2);
                continue;
            }
            _ => {
                i += 2; // CONSUMER, COUNT, LEASE, BLOCK, KEEP and their value
                continue;
            }
        };
        let items = count_at(args, i + 1);
        i += 2;
        for _ in 0..items {
            let (Some(q), Some(id)) = (args.get(i), args.get(i + 1)) else {
                return;
            };
            keys.task(q, id);
            i += width;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blpop_timeout_is_never_zero() {
        use std::time::Duration;
        assert_eq!(blpop_timeout(Duration::from_micros(400)), "0.001");
        assert_eq!(blpop_timeout(Duration::from_nanos(1)), "0.001");
        assert_eq!(blpop_timeout(Duration::from_micros(99_400)), "0.100");
        assert_eq!(blpop_timeout(Duration::from_millis(20_000)), "20.000");
        assert_eq!(blpop_timeout(Duration::from_millis(1_234)), "1.234");
    }

    fn keys_of(words: &[&str]) -> Vec<String> {
        let words: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
        declared_keys(&words)
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect()
    }

    fn queue(q: &str) -> Vec<String> {
        QUEUE_KEY_SUFFIXES
            .iter()
            .map(|s| format!("{q}{s}"))
            .collect()
    }

    #[test]
    fn the_library_takes_every_limit_from_the_protocol_crate() {
        let text = library();
        // Only `__FUNCTION_NAME__`'s substitution could leave a `__X__`
        // behind; any other is a limit the crate does not define.
        let leftover = text.split("__").skip(1).step_by(2).find(|word| {
            !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
        assert_eq!(leftover, None, "a placeholder the crate does not fill");
        let mut substituted = 0;
        for (name, value) in vtasks_protocol::LIMITS {
            if TEMPLATE.contains(&format!("__{name}__")) {
                assert!(
                    text.contains(&format!("local {name} = {value}\n")),
                    "{name}"
                );
                substituted += 1;
            }
        }
        assert!(substituted >= 15, "only {substituted} limits substituted");
        // The library's name follows its limits, so two builds with
        // different limits never share a library on one server.
        assert!(text.starts_with(&format!("#!lua name={}\n", function_name())));
        assert!(!with_limits().contains("__MAX_PRIORITY__"));
    }

    #[test]
    fn enqueue_declares_the_queue_then_each_task() {
        let keys = keys_of(&[
            "VTASKS.ENQUEUE",
            "{q}",
            "MAXLEN",
            "10",
            "TASK",
            "a",
            "TASK", // a payload that reads like a keyword
            "PRIORITY",
            "5",
            "delay",
            "100",
            "REPLACEFINISHED",
            "task",
            "b",
            "x",
        ]);
        let mut expected = queue("{q}");
        expected.extend(["{q}:t:a".to_string(), "{q}:t:b".to_string()]);
        assert_eq!(keys, expected);
    }

    #[test]
    fn fetch_declares_every_queue_and_settled_task() {
        let keys = keys_of(&[
            "VTASKS.FETCHN",
            "2",
            "{a}",
            "{b}",
            "CONSUMER",
            "w",
            "ACK",
            "1",
            "{b}",
            "7",
            "3",
            "",
            "NACK",
            "1",
            "{a}",
            "8",
            "4",
            "DEAD",
            "boom",
            "COUNT",
            "5",
        ]);
        let mut expected = queue("{a}");
        expected.extend(queue("{b}"));
        expected.extend(["{b}:t:7".to_string(), "{a}:t:8".to_string()]);
        assert_eq!(keys, expected);
    }

    #[test]
    fn settlements_and_selections_declare_their_tasks() {
        let q_with = |ids: &[&str]| {
            let mut k = queue("{q}");
            k.extend(ids.iter().map(|id| format!("{{q}}:t:{id}")));
            k
        };
        assert_eq!(
            keys_of(&[
                "VTASKS.ACK",
                "{q}",
                "2",
                "a",
                "1",
                "",
                "b",
                "2",
                "r",
                "KEEP",
                "5"
            ]),
            q_with(&["a", "b"])
        );
        assert_eq!(
            keys_of(&["VTASKS.EXTEND", "{q}", "1000", "1", "a", "1"]),
            q_with(&["a"])
        );
        assert_eq!(
            keys_of(&["VTASKS.NACK", "{q}", "1", "a", "1", "0", "err"]),
            q_with(&["a"])
        );
        assert_eq!(keys_of(&["VTASKS.GET", "{q}", "a"]), q_with(&["a"]));
        assert_eq!(
            keys_of(&["VTASKS.CANCEL", "{q}", "a", "b"]),
            q_with(&["a", "b"])
        );
        assert_eq!(
            keys_of(&["VTASKS.PURGE", "{q}", "IDS", "a"]),
            q_with(&["a"])
        );
        assert_eq!(keys_of(&["VTASKS.REQUEUE", "{q}", "ALL"]), q_with(&[]));
        // The tasks CLEAR deletes carry the queue's hash tag, as a fetch's.
        assert_eq!(keys_of(&["VTASKS.CLEAR", "{q}"]), q_with(&[]));
        assert_eq!(keys_of(&["VTASKS.STATS", "{q}"]), q_with(&[]));
    }

    #[test]
    fn malformed_arguments_declare_what_they_can() {
        let queue_keys = QUEUE_KEY_SUFFIXES.len();
        assert_eq!(
            keys_of(&["VTASKS.ACK", "{q}", "5", "a"]).len(),
            queue_keys + 1
        );
        assert_eq!(keys_of(&["VTASKS.FETCHN", "9", "{q}"]), queue("{q}"));
        assert!(keys_of(&["VTASKS.STATS"]).is_empty());
        assert!(keys_of(&["VTASKS.FETCHN"]).is_empty());
        let huge = keys_of(&[
            "VTASKS.FETCHN",
            "1",
            "{q}",
            "ACK",
            "999999999999",
            "{q}",
            "a",
        ]);
        assert_eq!(huge.len(), queue_keys + 1);
    }

    #[test]
    fn each_command_goes_to_the_function_of_its_kind() {
        let call = |words: &[&str]| {
            let mut cmd = redis::cmd(words[0]);
            for w in &words[1..] {
                cmd.arg(*w);
            }
            let call = fcall(&cmd);
            let words: Vec<String> = super::words(&call)
                .iter()
                .take(2)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            (words[0].clone(), words[1].clone())
        };
        let lib = function_name();
        for name in [
            "VTASKS.ENQUEUE",
            "VTASKS.REQUEUE",
            "VTASKS.SCHEDULE",
            "VTASKS.NOSUCH",
        ] {
            assert_eq!(call(&[name, "{q}"]), ("FCALL".into(), lib.to_string()));
        }
        for name in [
            "VTASKS.FETCHN",
            "VTASKS.ACK",
            "vtasks.nack",
            "VTASKS.EXTEND",
            "VTASKS.RELEASE",
            "VTASKS.PURGE",
            "VTASKS.CANCEL",
            "VTASKS.CLEAR",
            "VTASKS.PAUSE",
            "VTASKS.RESUME",
            "VTASKS.UNSCHEDULE",
            "VTASKS.SCHEDULENEXT",
        ] {
            assert_eq!(
                call(&[name, "{q}"]),
                ("FCALL".into(), format!("{lib}_settle"))
            );
        }
        for name in [
            "VTASKS.GET",
            "VTASKS.STATS",
            "VTASKS.DEADLIST",
            "VTASKS.SCHEDULES",
        ] {
            assert_eq!(
                call(&[name, "{q}"]),
                ("FCALL_RO".into(), format!("{lib}_read"))
            );
        }
    }

    #[test]
    fn the_script_location_is_cut_from_errors() {
        assert_eq!(
            strip_script_suffix("syntax error: missing id script: 0123abcd, on @user_script:62."),
            "syntax error: missing id"
        );
        assert_eq!(strip_script_suffix("plain"), "plain");
    }
}
