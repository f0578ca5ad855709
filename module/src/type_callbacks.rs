//! The bodies of the data type's callbacks (`data_type.rs` names them):
//! persistence, AOF rewrite, memory, digest, freeing, copying and
//! defragmentation of a `TaskQueue`. Each is a thin translation between the
//! server's API and `core::native`; none lets a panic cross into the server.

use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::raw;

use crate::core::native::codec::{self, Decoder, CHUNK_BYTES, ENCODING_VERSION};
use crate::core::native::TaskQueue;
use crate::metrics;

/// Logs through an RDB/AOF handle (the server names the key being loaded).
fn log_io(io: *mut raw::RedisModuleIO, message: &str) {
    let text = CString::new(message.replace('\0', "?")).unwrap_or_default();
    unsafe {
        raw::RedisModule_LogIOError.unwrap()(
            io,
            c"warning".as_ptr(),
            c"%s".as_ptr(),
            text.as_ptr(),
        );
    }
}

/// The internal command an AOF rewrite emits, one per chunk of a queue:
/// the first chunk replaces the key, the next ones add to it.
pub const LOAD_CHUNK_COMMAND: &str = "VTASKS.LOADCHUNK";

pub unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if encver > ENCODING_VERSION as c_int {
            return Err(format!(
                "vtasks: queue encoding version {encver} is newer than this module's \
                 ({ENCODING_VERSION}); load it with the module version that saved it"
            ));
        }
        let mut decoder = Decoder::new();
        loop {
            let mut len = 0usize;
            let ptr = unsafe { raw::RedisModule_LoadStringBuffer.unwrap()(rdb, &mut len) };
            if unsafe { raw::RedisModule_IsIOError.unwrap()(rdb) } != 0 || ptr.is_null() {
                return Err("vtasks: reading a queue failed".to_string());
            }
            let chunk = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
            let fed = if len == 0 {
                None
            } else {
                Some(decoder.feed(chunk))
            };
            unsafe { raw::RedisModule_Free.unwrap()(ptr.cast::<c_void>()) };
            match fed {
                None => break,
                Some(Err(err)) => return Err(format!("vtasks: refusing a queue: {err}")),
                Some(Ok(())) => {}
            }
        }
        decoder.finish().map_err(|err| format!("vtasks: {err}"))
    }));
    match outcome {
        Ok(Ok(queue)) => {
            metrics::queue_created(&queue);
            Box::into_raw(Box::new(queue)).cast::<c_void>()
        }
        Ok(Err(message)) => {
            log_io(rdb, &message);
            std::ptr::null_mut()
        }
        Err(_) => {
            log_io(rdb, "vtasks: loading a queue panicked");
            std::ptr::null_mut()
        }
    }
}

/// The queue behind a value pointer the server hands back.
///
/// # Safety
/// `value` is a pointer this module created with `Box::into_raw` of a
/// `TaskQueue` and the server has not freed.
unsafe fn queue<'a>(value: *const c_void) -> &'a TaskQueue {
    unsafe { &*value.cast::<TaskQueue>() }
}

/// Chunks, then an empty string as the end mark.
pub unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let save = unsafe { raw::RedisModule_SaveStringBuffer.unwrap() };
        codec::encode(unsafe { queue(value) }, CHUNK_BYTES, |chunk| unsafe {
            save(rdb, chunk.as_ptr().cast::<c_char>(), chunk.len())
        });
        unsafe { save(rdb, c"".as_ptr(), 0) };
    }));
}

/// One `VTASKS.LOADCHUNK <key> <chunk>` per chunk, so no command in the
/// rewritten AOF is larger than about one chunk.
pub unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let command = CString::new(LOAD_CHUNK_COMMAND).expect("constant");
        codec::encode(unsafe { queue(value) }, CHUNK_BYTES, |chunk| unsafe {
            raw::RedisModule_EmitAOF.unwrap()(
                aof,
                command.as_ptr(),
                c"sb".as_ptr(),
                key,
                chunk.as_ptr().cast::<c_char>(),
                chunk.len(),
            )
        });
    }));
}

pub unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    catch_unwind(AssertUnwindSafe(|| unsafe { queue(value) }.heap_bytes())).unwrap_or(0)
}

/// The canonical encoding, so a primary and a replica with the same state
/// give the same `DEBUG DIGEST-VALUE`.
pub unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let add = unsafe { raw::RedisModule_DigestAddStringBuffer.unwrap() };
        codec::encode(unsafe { queue(value) }, CHUNK_BYTES, |chunk| unsafe {
            add(md, chunk.as_ptr().cast::<c_char>(), chunk.len())
        });
        unsafe { raw::RedisModule_DigestEndSequence.unwrap()(md) };
    }));
}

/// Frees a queue; the server calls this on a background thread for a
/// large queue (`free_effort`), which the allocator (the server's own)
/// allows.
pub unsafe extern "C" fn free(value: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let queue = unsafe { Box::from_raw(value.cast::<TaskQueue>()) };
        metrics::queue_freed(&queue);
        drop(queue);
    }));
}

/// About one allocation per task: above the server's threshold (64), `DEL`
/// with lazy freeing and `UNLINK` free the queue off the main thread.
pub unsafe extern "C" fn free_effort(
    _key: *mut raw::RedisModuleString,
    value: *const c_void,
) -> usize {
    catch_unwind(AssertUnwindSafe(|| unsafe { queue(value) }.len() + 1)).unwrap_or(1)
}

pub unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    match catch_unwind(AssertUnwindSafe(|| unsafe { queue(value) }.clone())) {
        Ok(copy) => {
            metrics::queue_created(&copy);
            Box::into_raw(Box::new(copy)).cast::<c_void>()
        }
        Err(_) => std::ptr::null_mut(),
    }
}

/// Moves each task's allocations where the allocator wants them, a slice
/// of the slab at a time: the server calls again with the cursor left where
/// it was told to stop.
pub unsafe extern "C" fn defrag(
    ctx: *mut raw::RedisModuleDefragCtx,
    _key: *mut raw::RedisModuleString,
    value: *mut *mut c_void,
) -> c_int {
    let (Some(alloc), Some(should_stop), Some(cursor_get), Some(cursor_set)) = (unsafe {
        (
            raw::RedisModule_DefragAlloc,
            raw::RedisModule_DefragShouldStop,
            raw::RedisModule_DefragCursorGet,
            raw::RedisModule_DefragCursorSet,
        )
    }) else {
        return 0;
    };
    catch_unwind(AssertUnwindSafe(|| {
        let queue = unsafe { &mut *(*value).cast::<TaskQueue>() };
        let mut cursor: std::ffi::c_ulong = 0;
        let start = if unsafe { cursor_get(ctx, &mut cursor) } == raw::REDISMODULE_OK as c_int {
            cursor as u32
        } else {
            0
        };
        // SAFETY: the queue's allocations come from the server's allocator
        // (the module's global allocator); `DefragAlloc` either leaves one
        // in place (null) or copies it and frees the old one, and the queue
        // then uses the new address only.
        let next = queue.relocate_allocations(
            start,
            |ptr, _len| unsafe { alloc(ctx, ptr.cast::<c_void>()).cast::<u8>() },
            || unsafe { should_stop(ctx) } != 0,
        );
        match next {
            Some(slot) => {
                unsafe { cursor_set(ctx, slot as std::ffi::c_ulong) };
                1
            }
            None => 0,
        }
    }))
    .unwrap_or(0)
}
