//! The module's data type: one `TaskQueue` per queue key `{name}`.
//!
//! This file only names the type and its callbacks; their bodies are in
//! `type_callbacks.rs`, and the queue itself (`core::native`) knows nothing
//! of the server.

use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::core::native::codec::ENCODING_VERSION;
use crate::type_callbacks as callbacks;

/// The name `TYPE {queue}` answers (type names are exactly nine
/// characters).
pub const TYPE_NAME: &str = "vtasksque";

pub static QUEUE_TYPE: RedisType = RedisType::new(
    TYPE_NAME,
    ENCODING_VERSION as i32,
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(callbacks::rdb_load),
        rdb_save: Some(callbacks::rdb_save),
        aof_rewrite: Some(callbacks::aof_rewrite),
        mem_usage: Some(callbacks::mem_usage),
        digest: Some(callbacks::digest),
        free: Some(callbacks::free),
        aux_load: None,
        aux_save: None,
        aux_save_triggers: 0,
        free_effort: Some(callbacks::free_effort),
        unlink: None,
        copy: Some(callbacks::copy),
        defrag: Some(callbacks::defrag),
        mem_usage2: None,
        free_effort2: None,
        unlink2: None,
        copy2: None,
        aux_save2: None,
    },
);
