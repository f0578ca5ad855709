//! vtasks: a task queue whose primitives run inside Valkey.
//!
//! Layers: `core` holds the queue logic with no FFI in it (`core::native`
//! is the queue as one value, the module's data type); `data_type` names
//! the type and `type_callbacks` holds its callbacks; `queue_key` opens a
//! queue key for a command; `commands` parse arguments, call the core and
//! build replies; `server_time` and `blocking` hold the timer and the
//! blocked-consumer glue; `valkey_store` reads and writes the keyspace
//! layout of the scripts engine, for adopting and exporting queues. This
//! file holds only the module table.

pub mod args;
pub mod core;
pub mod parse;
#[cfg(test)]
mod parse_fuzz;

#[cfg(not(test))]
mod blocking;
#[cfg(not(test))]
mod commands;
#[cfg(not(test))]
mod data_type;
#[cfg(not(test))]
mod metrics;
#[cfg(not(test))]
mod queue_key;
#[cfg(not(test))]
mod server_time;
#[cfg(not(test))]
mod type_callbacks;
#[cfg(not(test))]
mod valkey_store;

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::core::error::{VtError, VtResult};

/// Runs `f`, turning a panic into an error so that no panic ever unwinds into
/// Valkey (which would abort the server).
pub fn guard<T>(f: impl FnOnce() -> VtResult<T>) -> VtResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(VtError::Internal(detail))
        }
    }
}

#[cfg(not(test))]
mod module_table {
    use redis_module::{
        redis_module, AclCategory, Context, InfoContext, NotifyEvent, RedisResult, RedisString,
        Status,
    };

    use crate::data_type::QUEUE_TYPE;

    fn init(ctx: &Context, _args: &[RedisString]) -> Status {
        if !crate::server_time::subscribe(ctx) {
            ctx.log_warning("vtasks: cannot subscribe to client disconnections");
            return Status::Err;
        }
        ctx.log_notice(&format!("vtasks {} loaded", env!("CARGO_PKG_VERSION")));
        Status::Ok
    }

    /// `INFO vtasks`: queues of the module's type, their tasks and bytes.
    fn info(ctx: &InfoContext, _for_crash_report: bool) {
        let (queues, tasks, bytes) = crate::metrics::totals();
        let _ = ctx
            .builder()
            .add_section("queues")
            .field("queues", queues)
            .and_then(|s| s.field("tasks", tasks))
            .and_then(|s| s.field("memory_bytes", bytes))
            .and_then(|s| s.build_section())
            .and_then(|b| b.build_info());
    }

    fn on_generic_event(ctx: &Context, _kind: NotifyEvent, event: &str, key: &[u8]) {
        crate::server_time::on_key_event(ctx, event, key);
    }

    redis_module! {
        name: "vtasks",
        version: 1,
        allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
        data_types: [QUEUE_TYPE],
        acl_categories: [AclCategory::from("vtasks"), ],
        init: init,
        info: info,
        commands: [],
        event_handlers: [
            [@GENERIC: on_generic_event],
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_reply() {
        let outcome: VtResult<()> = guard(|| panic!("index out of bounds"));
        let err = outcome.unwrap_err();
        assert_eq!(err, VtError::Internal("index out of bounds".into()));
        assert!(err.to_string().starts_with("ERR internal error"));
        let formatted: VtResult<()> = guard(|| panic!("bad {}", 42));
        assert_eq!(formatted.unwrap_err(), VtError::Internal("bad 42".into()));
    }
}
