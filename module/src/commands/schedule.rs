//! Periodic schedules kept by the server (`docs/PROTOCOL.md`, "Schedules"):
//! set, remove, list, and the compare-and-set of a pending next occurrence.
//! The queue's maintenance fires them (`core::periodic`).

use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::{bulk, read_one, write_one, Clock};
use crate::core::keys::{validate_schedule_name, MAX_TIMESTAMP_MS};
use crate::core::periodic::{Next, Periodic};
use crate::parse::parse_schedule;
use crate::queue_key::View;

/// VTASKS.SCHEDULE <queue> <name> <timing> <payload> NEXT <unix-ms> [PRIORITY <p>] [ATTEMPTS <n>] [CATCHUP LAST|NONE] [DISABLED]
#[command({
    name: "VTASKS.SCHEDULE",
    flags: [Write, DenyOOM],
    arity: -7,
    summary: "Adds or changes a periodic schedule whose occurrences the server enqueues",
    complexity: "O(log S) for S schedules of the queue",
    since: "0.3.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_schedule(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::Unused, |access, a, _now| {
        let (name, def, next) = parse_schedule(a)?;
        let queue_name = access.keys().queue().to_vec();
        let outcome = access
            .queue_or_create()?
            .set_schedule(&queue_name, name, def, next)?;
        Ok(RedisValue::SimpleStringStatic(outcome.name()))
    })
}

/// VTASKS.UNSCHEDULE <queue> <name> [<name> ...]
#[command({
    name: "VTASKS.UNSCHEDULE",
    flags: [Write, Fast],
    arity: -3,
    summary: "Removes periodic schedules; tasks they enqueued stay",
    complexity: "O(N log S) for N names",
    since: "0.3.0",
    acl_categories: [Write, Fast, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Delete],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_unschedule(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::Unused, |access, a, _now| {
        let mut names = Vec::new();
        while !a.is_empty() {
            let name = a.next_bytes("schedule name")?;
            validate_schedule_name(name)?;
            names.push(name);
        }
        let removed = match access.queue()? {
            Some(queue) => queue.remove_schedules(&names),
            None => 0,
        };
        Ok(RedisValue::Integer(removed as i64))
    })
}

/// VTASKS.SCHEDULENEXT <queue> <name> <after> <next-unix-ms | NONE>
#[command({
    name: "VTASKS.SCHEDULENEXT",
    flags: [Write, Fast],
    arity: 5,
    summary: "Sets the next occurrence of a schedule pending since a run, if it still is",
    complexity: "O(log S) for S schedules of the queue",
    since: "0.3.0",
    acl_categories: [Write, Fast, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_schedulenext(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::Unused, |access, a, _now| {
        let name = a.next_bytes("schedule name")?;
        validate_schedule_name(name)?;
        let after = a.next_int("after", 0, MAX_TIMESTAMP_MS)?;
        let next = if a.take_keyword("NONE") {
            None
        } else {
            Some(a.next_int("next", 0, MAX_TIMESTAMP_MS)?)
        };
        a.finish()?;
        let set = match access.queue()? {
            Some(queue) => queue.set_schedule_next(name, after, next),
            None => false,
        };
        Ok(RedisValue::Integer(set as i64))
    })
}

/// One schedule as `SCHEDULES` lists it: name/value pairs.
pub(crate) fn schedule_reply(name: &[u8], p: &Periodic) -> RedisValue {
    let mut out = vec![
        RedisValue::SimpleStringStatic("name"),
        bulk(name),
        RedisValue::SimpleStringStatic("timing"),
        bulk(p.def.spec.clone()),
        RedisValue::SimpleStringStatic("payload"),
        bulk(p.def.payload.clone()),
        RedisValue::SimpleStringStatic("priority"),
        RedisValue::Integer(p.def.priority),
        RedisValue::SimpleStringStatic("attempts"),
        RedisValue::Integer(p.def.max_attempts),
        RedisValue::SimpleStringStatic("catch_up"),
        RedisValue::SimpleStringStatic(p.def.catch_up.name()),
        RedisValue::SimpleStringStatic("enabled"),
        RedisValue::Integer(p.def.enabled as i64),
    ];
    match p.next {
        Next::At(at) => out.extend([
            RedisValue::SimpleStringStatic("next"),
            RedisValue::Integer(at),
        ]),
        Next::Pending { after } => out.extend([
            RedisValue::SimpleStringStatic("pending_since"),
            RedisValue::Integer(after),
        ]),
        Next::Never => {}
    }
    if let Some(last) = p.last {
        out.extend([
            RedisValue::SimpleStringStatic("last"),
            RedisValue::Integer(last),
            RedisValue::SimpleStringStatic("last_id"),
            bulk(crate::core::periodic::task_id(name, last)),
        ]);
    }
    out.extend([
        RedisValue::SimpleStringStatic("runs"),
        RedisValue::Integer(p.runs as i64),
        RedisValue::SimpleStringStatic("skipped"),
        RedisValue::Integer(p.skipped as i64),
    ]);
    RedisValue::Array(out)
}

/// VTASKS.SCHEDULES <queue>
#[command({
    name: "VTASKS.SCHEDULES",
    flags: [ReadOnly],
    arity: 2,
    summary: "A queue's periodic schedules with their next and last runs",
    complexity: "O(S) for S schedules of the queue",
    since: "0.3.0",
    acl_categories: [Read, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadOnly, Access],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_schedules(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    read_one(ctx, &args, |access, keys, a, _now| {
        a.finish()?;
        let listed: Vec<RedisValue> = match access.view()? {
            View::Missing => Vec::new(),
            View::Native(queue) => queue
                .schedules()
                .iter()
                .map(|(name, p)| schedule_reply(name, p))
                .collect(),
            View::Layout(mut store) => crate::core::periodic::layout::read(&mut store, keys)?
                .iter()
                .map(|(name, p)| schedule_reply(name, p))
                .collect(),
        };
        Ok(RedisValue::Array(listed))
    })
}
