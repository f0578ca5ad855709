//! The command layer: each `VTASKS.*` command parses its arguments, calls the
//! queue core and builds its reply. Syntax, replies and errors are specified
//! in `docs/PROTOCOL.md`.

mod ack;
mod cancel;
mod dead;
mod enqueue;
mod extend;
pub mod fetchn;
mod get;
mod nack;
mod pause;
mod release;
mod stats;

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::args::Args;
use crate::core::error::VtResult;
use crate::core::keys::QueueKeys;
use crate::guard;
use crate::server_time;
use crate::valkey_store::ValkeyStore;

/// Runs a command body with panics caught and errors turned into replies.
/// `args` excludes the command name.
fn run(
    args: &[RedisString],
    body: impl FnOnce(&mut Args) -> VtResult<RedisValue>,
) -> RedisResult {
    let bytes: Vec<&[u8]> = args.iter().skip(1).map(|a| a.as_slice()).collect();
    guard(|| body(&mut Args::new(&bytes))).map_err(|err| RedisError::String(err.to_string()))
}

/// A write command on one queue: the store, the clock, and rescheduling of
/// the queue's maintenance afterwards.
fn write_one(
    ctx: &Context,
    args: &[RedisString],
    body: impl FnOnce(&mut ValkeyStore, &QueueKeys, &mut Args, i64) -> VtResult<RedisValue>,
) -> RedisResult {
    run(args, |a| {
        let keys = QueueKeys::parse(a.next_bytes("queue")?)?;
        let mut store = ValkeyStore::writable(ctx.ctx);
        let reply = body(&mut store, &keys, a, server_time::now_ms())?;
        server_time::reschedule(ctx, &mut store, &keys)?;
        Ok(reply)
    })
}

/// A read-only command on one queue.
fn read_one(
    ctx: &Context,
    args: &[RedisString],
    body: impl FnOnce(&mut ValkeyStore, &QueueKeys, &mut Args, i64) -> VtResult<RedisValue>,
) -> RedisResult {
    run(args, |a| {
        let keys = QueueKeys::parse(a.next_bytes("queue")?)?;
        let mut store = ValkeyStore::read_only(ctx.ctx);
        body(&mut store, &keys, a, server_time::now_ms())
    })
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
    RedisValue::Array(items.into_iter().map(|b| RedisValue::Integer(b as i64)).collect())
}
