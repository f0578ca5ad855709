//! The command layer: each `VTASKS.*` command parses its arguments, calls the
//! queue core and builds its reply. Syntax, replies and errors are specified
//! in `docs/PROTOCOL.md`.

mod ack;
mod adopt;
mod cancel;
mod dead;
mod enqueue;
mod extend;
pub mod fetchn;
mod get;
mod internal;
mod nack;
mod pause;
mod release;
mod schedule;
mod stats;

use std::os::raw::c_char;

use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

use crate::args::{parse_int, Args};
use crate::core::error::VtResult;
use crate::core::keys::{QueueKeys, MAX_TIMESTAMP_MS};
use crate::guard;
use crate::queue_key::{QueueAccess, ReadAccess};
use crate::server_time;

/// Where a command that reads the clock carries the reading when it is
/// replicated (see "Replication" in docs/PROTOCOL.md). Replicas and AOF
/// replays run the command with that reading, so they reach the same state.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// `NOW <ms>` right after the queue argument.
    AfterQueue,
    /// `NOW <ms>` as the last two arguments.
    AtEnd,
    /// The command does not read the clock; it replicates verbatim.
    Unused,
}

/// True when the command comes from the primary or from the AOF.
pub(crate) fn replaying(ctx: &Context) -> bool {
    ctx.get_flags()
        .intersects(ContextFlags::REPLICATED | ContextFlags::LOADING)
}

/// The clock reading to use and the arguments to parse. Only a replayed
/// command carries `NOW`: clients cannot set the server's clock.
pub(crate) fn clock_and_args<'a>(
    ctx: &Context,
    args: &[&'a [u8]],
    clock: Clock,
) -> VtResult<(i64, Vec<&'a [u8]>)> {
    let mut args = args.to_vec();
    let at = match clock {
        Clock::AfterQueue => 1,
        Clock::AtEnd => args.len().saturating_sub(2),
        Clock::Unused => return Ok((server_time::now_ms(), args)),
    };
    let carried = replaying(ctx) && args.len() >= at + 2 && args[at].eq_ignore_ascii_case(b"NOW");
    if !carried {
        return Ok((server_time::now_ms(), args));
    }
    let now = parse_int(args[at + 1], "NOW", 0, MAX_TIMESTAMP_MS)?;
    args.drain(at..at + 2);
    Ok((now, args))
}

/// Replicates a command as `name args...` with `NOW <now>` inserted at
/// `clock_at` (an index into `args`), skipping `args[skip]`.
pub(crate) fn replicate(
    ctx: &Context,
    name: &RedisString,
    args: &[RedisString],
    clock_at: Option<usize>,
    now: i64,
    skip: &[usize],
) {
    let now_word = ctx.create_string("NOW");
    let now_value = ctx.create_string(now.to_string());
    let mut argv: Vec<*mut raw::RedisModuleString> = Vec::with_capacity(args.len() + 2);
    for (i, arg) in args.iter().enumerate() {
        if clock_at == Some(i) {
            argv.extend([now_word.inner, now_value.inner]);
        }
        if !skip.contains(&i) {
            argv.push(arg.inner);
        }
    }
    if clock_at == Some(args.len()) {
        argv.extend([now_word.inner, now_value.inner]);
    }
    let name = std::ffi::CString::new(name.as_slice()).unwrap_or_default();
    unsafe {
        raw::RedisModule_Replicate.unwrap()(
            ctx.ctx,
            name.as_ptr().cast::<c_char>(),
            c"v".as_ptr(),
            argv.as_mut_ptr(),
            argv.len(),
        );
    }
}

pub(crate) fn to_reply(outcome: VtResult<RedisValue>) -> RedisResult {
    outcome.map_err(|err| RedisError::String(err.to_string()))
}

/// A write command on one queue: the clock, the queue, replication of the
/// command when it changed anything (with its clock reading), waking
/// blocked consumers and rescheduling the queue's maintenance.
fn write_one(
    ctx: &Context,
    args: &[RedisString],
    clock: Clock,
    body: impl FnOnce(&mut QueueAccess, &mut Args, i64) -> VtResult<RedisValue>,
) -> RedisResult {
    let raw_args: Vec<&[u8]> = args.iter().skip(1).map(|a| a.as_slice()).collect();
    to_reply(guard(|| {
        let (now, parse_args) = clock_and_args(ctx, &raw_args, clock)?;
        let mut a = Args::new(&parse_args);
        let keys = QueueKeys::parse(a.next_bytes("queue")?)?;
        let mut access = QueueAccess::new(ctx, keys);
        let reply = body(&mut access, &mut a, now);
        // Replicated even when the command failed part-way: the replica
        // fails at the same point and keeps the same partial effect.
        if access.finish() {
            match clock {
                Clock::Unused => ctx.replicate_verbatim(),
                Clock::AfterQueue => replicate(ctx, &args[0], &args[1..], Some(1), now, &[]),
                Clock::AtEnd => {
                    replicate(ctx, &args[0], &args[1..], Some(parse_args.len()), now, &[])
                }
            }
        }
        reply
    }))
}

/// A read-only command on one queue.
fn read_one(
    ctx: &Context,
    args: &[RedisString],
    body: impl FnOnce(&ReadAccess, &QueueKeys, &mut Args, i64) -> VtResult<RedisValue>,
) -> RedisResult {
    let raw_args: Vec<&[u8]> = args.iter().skip(1).map(|a| a.as_slice()).collect();
    to_reply(guard(|| {
        let mut a = Args::new(&raw_args);
        let keys = QueueKeys::parse(a.next_bytes("queue")?)?;
        let access = ReadAccess::open(ctx, &keys);
        body(&access, &keys, &mut a, server_time::now_ms())
    }))
}

fn bulk(bytes: impl Into<Vec<u8>>) -> RedisValue {
    RedisValue::StringBuffer(bytes.into())
}

fn statuses<T>(items: impl IntoIterator<Item = T>, name: impl Fn(T) -> &'static str) -> RedisValue {
    RedisValue::Array(
        items
            .into_iter()
            .map(|s| RedisValue::SimpleStringStatic(name(s)))
            .collect(),
    )
}

fn flags(items: impl IntoIterator<Item = bool>) -> RedisValue {
    RedisValue::Array(
        items
            .into_iter()
            .map(|b| RedisValue::Integer(b as i64))
            .collect(),
    )
}
