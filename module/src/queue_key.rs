//! A command's access to one queue key `{name}`: the module's data type,
//! a queue still in the keyspace layout (the scripts engine's), or a key of
//! another type.
//!
//! A write command adopts a keyspace-layout queue first (`VTASKS.ADOPT`
//! does the same on its own), so the module always works on its own type;
//! a read-only command reads a layout queue where it is, which works on a
//! replica too. After a command, `finish` wakes blocked consumers, updates
//! the timer and the `INFO` counters, and says whether to replicate.

use std::os::raw::c_int;
use std::ptr;

use redis_module::{raw, Context};

use crate::core::error::{VtError, VtResult};
use crate::core::keys::QueueKeys;
use crate::core::native::{layout, TaskQueue};
use crate::core::store::Store;
use crate::data_type::QUEUE_TYPE;
use crate::metrics::{self, Footprint};
use crate::server_time;
use crate::valkey_store::ValkeyStore;

const OK: c_int = raw::REDISMODULE_OK as c_int;

/// What a queue key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Native,
    /// `{name}` is a hash: a queue in the keyspace layout.
    Layout,
    Foreign,
}

/// An open key, closed on drop.
struct RawKey {
    key: *mut raw::RedisModuleKey,
}

impl RawKey {
    fn open(ctx: *mut raw::RedisModuleCtx, name: &[u8], write: bool) -> RawKey {
        let mode = raw::REDISMODULE_READ | if write { raw::REDISMODULE_WRITE } else { 0 };
        let key = unsafe {
            let name =
                raw::RedisModule_CreateString.unwrap()(ctx, name.as_ptr().cast(), name.len());
            let key = raw::RedisModule_OpenKey.unwrap()(ctx, name, mode as c_int);
            raw::RedisModule_FreeString.unwrap()(ctx, name);
            key
        };
        RawKey { key }
    }

    fn kind(&self) -> Kind {
        if self.key.is_null() {
            return Kind::Missing;
        }
        match unsafe { raw::RedisModule_KeyType.unwrap()(self.key) } as isize {
            raw::REDISMODULE_KEYTYPE_EMPTY => Kind::Missing,
            raw::REDISMODULE_KEYTYPE_HASH => Kind::Layout,
            raw::REDISMODULE_KEYTYPE_MODULE
                if unsafe { raw::RedisModule_ModuleTypeGetType.unwrap()(self.key) }
                    == *QUEUE_TYPE.raw_type.borrow() =>
            {
                Kind::Native
            }
            _ => Kind::Foreign,
        }
    }

    /// The queue, if the key holds one.
    fn queue<'a>(&self) -> Option<&'a mut TaskQueue> {
        if self.kind() != Kind::Native {
            return None;
        }
        let value = unsafe { raw::RedisModule_ModuleTypeGetValue.unwrap()(self.key) };
        // SAFETY: a value of our type is a boxed TaskQueue; the key stays
        // open (and the value alive) while the command runs.
        (!value.is_null()).then(|| unsafe { &mut *value.cast::<TaskQueue>() })
    }

    fn set(&self, queue: TaskQueue) -> VtResult<()> {
        metrics::queue_created(&queue);
        let value = Box::into_raw(Box::new(queue));
        let status = unsafe {
            raw::RedisModule_ModuleTypeSetValue.unwrap()(
                self.key,
                *QUEUE_TYPE.raw_type.borrow(),
                value.cast(),
            )
        };
        if status != OK {
            // Not taken: free it ourselves.
            let queue = unsafe { Box::from_raw(value) };
            metrics::queue_freed(&queue);
            return Err(VtError::Internal("could not store the queue".into()));
        }
        Ok(())
    }

    fn delete(&self) {
        unsafe { raw::RedisModule_DeleteKey.unwrap()(self.key) };
    }
}

impl Drop for RawKey {
    fn drop(&mut self) {
        if !self.key.is_null() {
            unsafe { raw::RedisModule_CloseKey.unwrap()(self.key) };
        }
    }
}

/// Converts a keyspace-layout queue into the module's type, in place.
/// Returns how many tasks it moved, or None if `{name}` holds no such
/// queue.
pub fn adopt(ctx: &Context, keys: &QueueKeys) -> VtResult<Option<u64>> {
    let found = {
        let mut store = ValkeyStore::for_command(ctx.ctx);
        let Some(found) = layout::read(&mut store, keys)? else {
            return Ok(None);
        };
        for key in &found.keys {
            store.del(key)?;
        }
        found
    };
    if found.vanished > 0 {
        ctx.log_warning(&format!(
            "vtasks: adopting {}: {} queued ids had no task record and were left out",
            keys.queue_str(),
            found.vanished
        ));
    }
    let moved = found.queue.len() as u64;
    let key = RawKey::open(ctx.ctx, keys.queue(), true);
    key.set(found.queue)?;
    if let Some(queue) = key.queue() {
        server_time::reschedule(ctx, keys.queue(), queue.next_due());
    }
    Ok(Some(moved))
}

/// Writes a native queue back in the keyspace layout. Returns how many
/// tasks it wrote, or None if `{name}` holds no native queue.
pub fn export(ctx: &Context, keys: &QueueKeys) -> VtResult<Option<u64>> {
    let copy = {
        let key = RawKey::open(ctx.ctx, keys.queue(), true);
        let Some(queue) = key.queue() else {
            return Ok(None);
        };
        let copy = queue.clone();
        key.delete();
        copy
    };
    let mut store = ValkeyStore::for_command(ctx.ctx);
    layout::write(&mut store, keys, &copy)?;
    server_time::reschedule(ctx, keys.queue(), None);
    Ok(Some(copy.len() as u64))
}

/// A write command's access to its queue. Opened on first use, after the
/// command has parsed its arguments, so syntax errors come before type
/// errors, as in the keyspace layout.
pub struct QueueAccess<'c> {
    ctx: &'c Context,
    keys: QueueKeys,
    key: Option<RawKey>,
    /// The queue's footprint when opened, for the `INFO` counters.
    before: Footprint,
    created: bool,
    adopted: bool,
}

impl<'c> QueueAccess<'c> {
    pub fn new(ctx: &'c Context, keys: QueueKeys) -> Self {
        QueueAccess {
            ctx,
            keys,
            key: None,
            before: Footprint::default(),
            created: false,
            adopted: false,
        }
    }

    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    fn open(&mut self) -> VtResult<&RawKey> {
        if self.key.is_none() {
            let mut key = RawKey::open(self.ctx.ctx, self.keys.queue(), true);
            match key.kind() {
                Kind::Foreign => return Err(VtError::WrongType),
                Kind::Layout => {
                    drop(key);
                    adopt(self.ctx, &self.keys)?;
                    self.adopted = true;
                    key = RawKey::open(self.ctx.ctx, self.keys.queue(), true);
                }
                Kind::Missing | Kind::Native => {}
            }
            if let Some(queue) = key.queue() {
                self.before = Footprint::of(queue);
            }
            self.key = Some(key);
        }
        Ok(self.key.as_ref().expect("opened above"))
    }

    /// The queue, or None if there is none.
    pub fn queue(&mut self) -> VtResult<Option<&mut TaskQueue>> {
        Ok(self.open()?.queue())
    }

    /// The queue, created empty if there is none. A queue created for a
    /// command that then changed nothing is removed again.
    pub fn queue_or_create(&mut self) -> VtResult<&mut TaskQueue> {
        if self.open()?.kind() == Kind::Missing {
            let key = self.open()?;
            key.set(TaskQueue::new())?;
            let before = key.queue().map(|q| Footprint::of(q)).unwrap_or_default();
            self.created = true;
            self.before = before;
        }
        self.open()?
            .queue()
            .ok_or_else(|| VtError::Internal("queue missing after creation".into()))
    }

    /// Puts `queue` in place of whatever the key holds.
    pub fn replace(&mut self, queue: TaskQueue) -> VtResult<()> {
        let key = self.open()?;
        if key.kind() != Kind::Missing {
            key.delete();
        }
        key.set(queue)?;
        if let Some(queue) = key.queue() {
            queue.take_changed();
            self.before = Footprint::of(queue);
            server_time::reschedule(self.ctx, self.keys.queue(), queue.next_due());
        }
        Ok(())
    }

    /// After the command: wakes consumers of tasks that became ready,
    /// reschedules the timer, updates the counters. True if the command
    /// changed anything (and so must be replicated).
    pub fn finish(self) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        let Some(queue) = key.queue() else {
            return self.adopted;
        };
        let changed = queue.take_changed();
        let woken = queue.take_woken();
        metrics::changed(self.before, Footprint::of(queue));
        if self.created && !changed {
            key.delete();
            return self.adopted;
        }
        if changed {
            server_time::reschedule(self.ctx, self.keys.queue(), queue.next_due());
        }
        if woken > 0 {
            signal_ready(self.ctx, self.keys.queue());
        }
        changed || self.adopted
    }
}

/// When the queue under `name` next needs maintenance, if `name` holds a
/// queue of the module's type.
pub fn next_due_of(ctx: &Context, name: &[u8]) -> Option<Option<i64>> {
    RawKey::open(ctx.ctx, name, false)
        .queue()
        .map(|queue| queue.next_due())
}

/// What `{name}` holds.
pub fn kind_of(ctx: &Context, keys: &QueueKeys) -> Kind {
    RawKey::open(ctx.ctx, keys.queue(), false).kind()
}

/// Wakes consumers blocked on a queue, and those watching it (`WAKE`).
pub fn signal_ready(ctx: &Context, queue: &[u8]) {
    let name = ctx.create_string(queue);
    unsafe { raw::RedisModule_SignalKeyAsReady.unwrap()(ctx.ctx, name.inner) };
    crate::blocking::ready_in(ctx, queue, server_time::now_ms());
}

/// What a read-only command finds under `{name}`.
pub enum View<'a> {
    Missing,
    Native(&'a TaskQueue),
    /// A keyspace-layout queue, read where it is.
    Layout(ValkeyStore),
}

/// A read-only command's view of its queue.
pub struct ReadAccess {
    key: RawKey,
    ctx: *mut raw::RedisModuleCtx,
}

impl ReadAccess {
    pub fn open(ctx: &Context, keys: &QueueKeys) -> ReadAccess {
        ReadAccess {
            key: RawKey::open(ctx.ctx, keys.queue(), false),
            ctx: ctx.ctx,
        }
    }

    pub fn view(&self) -> VtResult<View<'_>> {
        Ok(match self.key.kind() {
            Kind::Missing => View::Missing,
            Kind::Foreign => return Err(VtError::WrongType),
            Kind::Native => match self.key.queue() {
                Some(queue) => View::Native(queue),
                None => View::Missing,
            },
            Kind::Layout => View::Layout(ValkeyStore::read_only(self.ctx)),
        })
    }
}

/// Every queue of the module's type in the keyspace, by one scan (after a
/// load and on promotion to primary, to arm the timer).
pub fn native_queues(ctx: &Context) -> Vec<(Vec<u8>, Option<i64>)> {
    extern "C" fn collect(
        _ctx: *mut raw::RedisModuleCtx,
        key_name: *mut raw::RedisModuleString,
        key: *mut raw::RedisModuleKey,
        found: *mut std::ffi::c_void,
    ) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `found` is the vector passed to RedisModule_Scan below;
            // the key and its name are valid during the callback.
            let found = unsafe { &mut *found.cast::<Vec<(Vec<u8>, Option<i64>)>>() };
            if key.is_null()
                || unsafe { raw::RedisModule_ModuleTypeGetType.unwrap()(key) }
                    != *QUEUE_TYPE.raw_type.borrow()
            {
                return;
            }
            let value = unsafe { raw::RedisModule_ModuleTypeGetValue.unwrap()(key) };
            if value.is_null() {
                return;
            }
            let queue = unsafe { &*value.cast::<TaskQueue>() };
            let mut len = 0usize;
            let ptr = unsafe { raw::RedisModule_StringPtrLen.unwrap()(key_name, &mut len) };
            let name = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
            found.push((name.to_vec(), queue.next_due()));
        }));
    }
    let mut found: Vec<(Vec<u8>, Option<i64>)> = Vec::new();
    unsafe {
        let cursor = raw::RedisModule_ScanCursorCreate.unwrap()();
        while raw::RedisModule_Scan.unwrap()(
            ctx.ctx,
            cursor,
            Some(collect),
            ptr::addr_of_mut!(found).cast(),
        ) != 0
        {}
        raw::RedisModule_ScanCursorDestroy.unwrap()(cursor);
    }
    found
}
