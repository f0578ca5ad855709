//! `Store` over Valkey's module key API: how the module reads and writes a
//! queue kept in the keyspace layout (the scripts engine's), to adopt it
//! into its own data type, to export one back, and to answer read-only
//! commands on a queue not adopted yet. Writes are not replicated here: the
//! command that made them is.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::{c_char, c_int};
use std::ptr;
use std::sync::Mutex;

use redis_module::raw;

use crate::core::error::{VtError, VtResult};
use crate::core::store::{KeyKind, Store, Val};
use vtasks_protocol::WARN_EVERY_MS;

const MODE_READ: c_int = raw::REDISMODULE_READ as c_int;
const MODE_WRITE: c_int = raw::REDISMODULE_WRITE as c_int;
const OK: c_int = raw::REDISMODULE_OK as c_int;
const HASH_NONE: c_int = raw::REDISMODULE_HASH_NONE as c_int;

/// FNV-1a: key names are short and not attacker-chosen in bulk within one
/// command, and SipHash showed up in profiles of the hot path.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf29ce484222325
        } else {
            self.0
        };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        self.0 = h;
    }
}

type OpenKeys = HashMap<Vec<u8>, *mut raw::RedisModuleKey, BuildHasherDefault<Fnv>>;

/// Field names as module strings, created once and kept for the life of
/// the module, so setting a field allocates nothing for its name.
struct FieldNames(Vec<(&'static str, usize)>);

static FIELD_NAMES: Mutex<FieldNames> = Mutex::new(FieldNames(Vec::new()));

fn field_string(name: &str) -> *mut raw::RedisModuleString {
    let mut names = FIELD_NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, ptr)) = names.0.iter().find(|(n, _)| *n == name) {
        return *ptr as *mut raw::RedisModuleString;
    }
    let ptr = unsafe {
        raw::RedisModule_CreateString.unwrap()(ptr::null_mut(), name.as_ptr().cast(), name.len())
    };
    names
        .0
        .push((Box::leak(name.to_string().into_boxed_str()), ptr as usize));
    ptr
}

/// A value as a module string; integers are formatted without allocating.
fn value_string(ctx: *mut raw::RedisModuleCtx, value: &Val) -> ModString {
    match value {
        Val::Bytes(b) => ModString::new(ctx, b),
        Val::Int(n) => {
            let mut buf = [0u8; 24];
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            std::io::Write::write_fmt(&mut cursor, format_args!("{n}")).expect("fits 24 bytes");
            let len = cursor.position() as usize;
            ModString::new(ctx, &buf[..len])
        }
    }
}

/// A module string owned by us, freed on drop.
struct ModString {
    ctx: *mut raw::RedisModuleCtx,
    ptr: *mut raw::RedisModuleString,
}

impl ModString {
    fn new(ctx: *mut raw::RedisModuleCtx, bytes: &[u8]) -> Self {
        let ptr = unsafe {
            raw::RedisModule_CreateString.unwrap()(
                ctx,
                bytes.as_ptr().cast::<c_char>(),
                bytes.len(),
            )
        };
        ModString { ctx, ptr }
    }
}

impl Drop for ModString {
    fn drop(&mut self) {
        unsafe { raw::RedisModule_FreeString.unwrap()(self.ctx, self.ptr) }
    }
}

/// Copies a module string we were handed ownership of, then frees it.
fn take_bytes(ctx: *mut raw::RedisModuleCtx, s: *mut raw::RedisModuleString) -> Vec<u8> {
    let mut len = 0usize;
    let bytes = unsafe {
        let p = raw::RedisModule_StringPtrLen.unwrap()(s, &mut len);
        std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec()
    };
    unsafe { raw::RedisModule_FreeString.unwrap()(ctx, s) };
    bytes
}

pub struct ValkeyStore {
    ctx: *mut raw::RedisModuleCtx,
    mode: c_int,
    /// Keys opened during this command; a command touches each key several
    /// times, so each is opened once and closed when the store drops.
    open: OpenKeys,
}

impl ValkeyStore {
    fn new(ctx: *mut raw::RedisModuleCtx, mode: c_int) -> Self {
        ValkeyStore {
            ctx,
            mode,
            open: OpenKeys::with_capacity_and_hasher(32, Default::default()),
        }
    }

    /// For a command, which replicates itself.
    pub fn for_command(ctx: *mut raw::RedisModuleCtx) -> Self {
        Self::new(ctx, MODE_READ | MODE_WRITE)
    }

    pub fn read_only(ctx: *mut raw::RedisModuleCtx) -> Self {
        Self::new(ctx, MODE_READ)
    }

    fn key(&mut self, name: &[u8]) -> *mut raw::RedisModuleKey {
        if let Some(key) = self.open.get(name) {
            return *key;
        }
        let name_str = ModString::new(self.ctx, name);
        let key = unsafe { raw::RedisModule_OpenKey.unwrap()(self.ctx, name_str.ptr, self.mode) };
        self.open.insert(name.to_vec(), key);
        key
    }

    fn kind_of(key: *mut raw::RedisModuleKey) -> KeyKind {
        if key.is_null() {
            return KeyKind::Missing;
        }
        match unsafe { raw::RedisModule_KeyType.unwrap()(key) } as isize {
            raw::REDISMODULE_KEYTYPE_EMPTY => KeyKind::Missing,
            raw::REDISMODULE_KEYTYPE_HASH => KeyKind::Hash,
            raw::REDISMODULE_KEYTYPE_ZSET => KeyKind::SortedSet,
            raw::REDISMODULE_KEYTYPE_LIST => KeyKind::List,
            _ => KeyKind::Other,
        }
    }

    fn expect(&mut self, name: &[u8], kind: KeyKind) -> VtResult<Option<*mut raw::RedisModuleKey>> {
        let key = self.key(name);
        match Self::kind_of(key) {
            KeyKind::Missing => Ok(None),
            k if k == kind => Ok(Some(key)),
            _ => Err(VtError::WrongType),
        }
    }

    fn ensure_writable(&self) -> VtResult<()> {
        if self.mode & MODE_WRITE == 0 {
            return Err(VtError::Internal("write through a read-only store".into()));
        }
        Ok(())
    }

    fn writable_key(&mut self, name: &[u8], kind: KeyKind) -> VtResult<*mut raw::RedisModuleKey> {
        self.ensure_writable()?;
        let key = self.key(name);
        match Self::kind_of(key) {
            KeyKind::Missing => Ok(key),
            k if k == kind => Ok(key),
            _ => Err(VtError::WrongType),
        }
    }
}

impl Drop for ValkeyStore {
    fn drop(&mut self) {
        for (_, key) in self.open.drain() {
            if !key.is_null() {
                unsafe { raw::RedisModule_CloseKey.unwrap()(key) };
            }
        }
    }
}

impl Store for ValkeyStore {
    fn zadd(&mut self, key: &[u8], score: i64, member: &[u8]) -> VtResult<()> {
        let k = self.writable_key(key, KeyKind::SortedSet)?;
        let m = ModString::new(self.ctx, member);
        let status =
            unsafe { raw::RedisModule_ZsetAdd.unwrap()(k, score as f64, m.ptr, ptr::null_mut()) };
        if status != OK {
            return Err(VtError::WrongType);
        }
        Ok(())
    }

    fn zrem(&mut self, key: &[u8], member: &[u8]) -> VtResult<bool> {
        let Some(k) = self.expect(key, KeyKind::SortedSet)? else {
            return Ok(false);
        };
        self.ensure_writable()?;
        let m = ModString::new(self.ctx, member);
        let mut deleted: c_int = 0;
        unsafe { raw::RedisModule_ZsetRem.unwrap()(k, m.ptr, &mut deleted) };

        Ok(deleted != 0)
    }

    fn zscore(&mut self, key: &[u8], member: &[u8]) -> VtResult<Option<i64>> {
        let Some(k) = self.expect(key, KeyKind::SortedSet)? else {
            return Ok(None);
        };
        let m = ModString::new(self.ctx, member);
        let mut score = 0f64;
        let status = unsafe { raw::RedisModule_ZsetScore.unwrap()(k, m.ptr, &mut score) };
        Ok((status == OK).then_some(score as i64))
    }

    fn zcard(&mut self, key: &[u8]) -> VtResult<u64> {
        Ok(match self.expect(key, KeyKind::SortedSet)? {
            Some(k) => (unsafe { raw::RedisModule_ValueLength.unwrap()(k) }) as u64,
            None => 0,
        })
    }

    fn zrange_by_score(
        &mut self,
        key: &[u8],
        min: i64,
        max: i64,
        offset: usize,
        limit: usize,
    ) -> VtResult<Vec<(Vec<u8>, i64)>> {
        let Some(k) = self.expect(key, KeyKind::SortedSet)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        unsafe {
            let status =
                raw::RedisModule_ZsetFirstInScoreRange.unwrap()(k, min as f64, max as f64, 0, 0);
            if status != OK {
                return Ok(out);
            }
            let mut skipped = 0;
            while raw::RedisModule_ZsetRangeEndReached.unwrap()(k) == 0 {
                if skipped < offset {
                    skipped += 1;
                } else {
                    let mut score = 0f64;
                    let ele = raw::RedisModule_ZsetRangeCurrentElement.unwrap()(k, &mut score);
                    out.push((take_bytes(self.ctx, ele), score as i64));
                    if out.len() == limit {
                        break;
                    }
                }
                if raw::RedisModule_ZsetRangeNext.unwrap()(k) == 0 {
                    break;
                }
            }
            raw::RedisModule_ZsetRangeStop.unwrap()(k);
        }
        Ok(out)
    }

    fn zcount(&mut self, key: &[u8], min: i64, max: i64) -> VtResult<u64> {
        // ZCOUNT is O(log n) in the server; the key API can only iterate.
        if self.expect(key, KeyKind::SortedSet)?.is_none() {
            return Ok(0);
        }
        let ctx = redis_module::Context::new(self.ctx);
        let key = String::from_utf8_lossy(key).into_owned();
        match ctx.call(
            "ZCOUNT",
            &[key.as_str(), &min.to_string(), &max.to_string()],
        ) {
            Ok(redis_module::RedisValue::Integer(n)) => Ok(n as u64),
            other => Err(VtError::Internal(format!("ZCOUNT answered {other:?}"))),
        }
    }

    fn hget(&mut self, key: &[u8], field: &str) -> VtResult<Option<Vec<u8>>> {
        let Some(k) = self.expect(key, KeyKind::Hash)? else {
            return Ok(None);
        };
        let mut value: *mut raw::RedisModuleString = ptr::null_mut();
        unsafe {
            raw::RedisModule_HashGet.unwrap()(
                k,
                HASH_NONE,
                field_string(field),
                &mut value as *mut *mut raw::RedisModuleString,
                ptr::null_mut::<c_char>(),
            );
        }
        Ok((!value.is_null()).then(|| take_bytes(self.ctx, value)))
    }

    fn hset(&mut self, key: &[u8], fields: &[(&str, Val)]) -> VtResult<()> {
        let k = self.writable_key(key, KeyKind::Hash)?;
        let values: Vec<ModString> = fields
            .iter()
            .map(|(_, v)| value_string(self.ctx, v))
            .collect();
        let pairs: Vec<(*mut raw::RedisModuleString, *mut raw::RedisModuleString)> = fields
            .iter()
            .zip(&values)
            .map(|((n, _), v)| (field_string(n), v.ptr))
            .collect();
        // RedisModule_HashSet is variadic: up to four pairs per call.
        let set = unsafe { raw::RedisModule_HashSet.unwrap() };
        let end = ptr::null_mut::<c_char>();
        for chunk in pairs.chunks(4) {
            unsafe {
                match *chunk {
                    [(f1, v1)] => set(k, HASH_NONE, f1, v1, end),
                    [(f1, v1), (f2, v2)] => set(k, HASH_NONE, f1, v1, f2, v2, end),
                    [(f1, v1), (f2, v2), (f3, v3)] => {
                        set(k, HASH_NONE, f1, v1, f2, v2, f3, v3, end)
                    }
                    [(f1, v1), (f2, v2), (f3, v3), (f4, v4)] => {
                        set(k, HASH_NONE, f1, v1, f2, v2, f3, v3, f4, v4, end)
                    }
                    _ => unreachable!("chunks of one to four"),
                };
            }
        }
        Ok(())
    }

    fn hdel(&mut self, key: &[u8], fields: &[&str]) -> VtResult<()> {
        if self.expect(key, KeyKind::Hash)?.is_none() {
            return Ok(());
        }
        let k = self.writable_key(key, KeyKind::Hash)?;
        for name in fields {
            unsafe {
                raw::RedisModule_HashSet.unwrap()(
                    k,
                    HASH_NONE,
                    field_string(name),
                    raw::REDISMODULE_HASH_DELETE as *mut raw::RedisModuleString,
                    ptr::null_mut::<c_char>(),
                );
            }
        }
        Ok(())
    }

    fn key_kind(&mut self, key: &[u8]) -> VtResult<KeyKind> {
        let k = self.key(key);
        Ok(Self::kind_of(k))
    }

    fn del(&mut self, key: &[u8]) -> VtResult<()> {
        self.ensure_writable()?;
        let k = self.key(key);
        if Self::kind_of(k) != KeyKind::Missing {
            unsafe { raw::RedisModule_DeleteKey.unwrap()(k) };
        }
        Ok(())
    }

    fn pexpire_at(&mut self, key: &[u8], at_ms: i64) -> VtResult<()> {
        self.ensure_writable()?;
        let k = self.key(key);
        if Self::kind_of(k) == KeyKind::Missing {
            return Ok(());
        }
        unsafe { raw::RedisModule_SetAbsExpire.unwrap()(k, at_ms) };
        Ok(())
    }

    fn wake(&mut self, ready_key: &[u8]) {
        let name = ModString::new(self.ctx, ready_key);
        unsafe { raw::RedisModule_SignalKeyAsReady.unwrap()(self.ctx, name.ptr) };
    }

    fn llen(&mut self, key: &[u8]) -> VtResult<u64> {
        Ok(match self.expect(key, KeyKind::List)? {
            Some(k) => (unsafe { raw::RedisModule_ValueLength.unwrap()(k) }) as u64,
            None => 0,
        })
    }

    fn warn(&mut self, message: &str) {
        // At most one line per WARN_EVERY_MS, so a burst of findings (every
        // fetch of every worker meeting vanished tasks) cannot flood the log.
        static LAST: Mutex<(i64, u64)> = Mutex::new((i64::MIN, 0));
        let now = crate::server_time::now_ms();
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(last.0) < WARN_EVERY_MS {
            last.1 += 1;
            return;
        }
        let suppressed = std::mem::replace(&mut *last, (now, 0)).1;
        let line = match suppressed {
            0 => format!("vtasks: {message}"),
            n => format!("vtasks: {message} ({n} more such findings since the last such line)"),
        };
        redis_module::Context::new(self.ctx).log_warning(&line);
    }

    fn push_tokens(&mut self, key: &[u8], n: u64) -> VtResult<()> {
        let k = self.writable_key(key, KeyKind::List)?;
        let token = ModString::new(self.ctx, b"1");
        for _ in 0..n {
            let status = unsafe {
                raw::RedisModule_ListPush.unwrap()(k, raw::REDISMODULE_LIST_TAIL as i32, token.ptr)
            };
            if status != OK {
                return Err(VtError::Internal("could not push a wake-up token".into()));
            }
        }
        Ok(())
    }
}
