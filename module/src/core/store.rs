//! The storage the queue core runs on: Valkey's native types, reduced to the
//! handful of operations the core needs. The module implements it over the
//! key API (replicating each write as a native command); `MemStore` implements
//! it in memory so the core is tested with plain `cargo test`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::error::{VtError, VtResult};

/// A hash field value: integers are written as decimal strings, as Valkey
/// itself stores them.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Int(i64),
    Bytes(&'a [u8]),
}

impl Val<'_> {
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            Val::Int(n) => n.to_string().into_bytes(),
            Val::Bytes(b) => b.to_vec(),
        }
    }
}

pub trait Store {
    fn zadd(&mut self, key: &[u8], score: i64, member: &[u8]) -> VtResult<()>;
    /// Removes a member; true if it was there.
    fn zrem(&mut self, key: &[u8], member: &[u8]) -> VtResult<bool>;
    fn zscore(&mut self, key: &[u8], member: &[u8]) -> VtResult<Option<i64>>;
    fn zcard(&mut self, key: &[u8]) -> VtResult<u64>;
    /// Members with `min <= score <= max`, lowest first, skipping `offset`.
    fn zrange_by_score(
        &mut self,
        key: &[u8],
        min: i64,
        max: i64,
        offset: usize,
        limit: usize,
    ) -> VtResult<Vec<(Vec<u8>, i64)>>;
    /// Number of members with `min <= score <= max`.
    fn zcount(&mut self, key: &[u8], min: i64, max: i64) -> VtResult<u64>;

    fn hget(&mut self, key: &[u8], field: &str) -> VtResult<Option<Vec<u8>>>;
    fn hset(&mut self, key: &[u8], fields: &[(&str, Val)]) -> VtResult<()>;
    fn hdel(&mut self, key: &[u8], fields: &[&str]) -> VtResult<()>;
    /// Adds to an integer field; written (and replicated) as the resolved
    /// value, so replay does not depend on the order of increments.
    fn hincrby(&mut self, key: &[u8], field: &str, delta: i64) -> VtResult<i64> {
        let next = self.hget_int(key, field)?.unwrap_or(0) + delta;
        self.hset(key, &[(field, Val::Int(next))])?;
        Ok(next)
    }

    /// Type of a key: checked before a command writes anything.
    fn key_kind(&mut self, key: &[u8]) -> VtResult<KeyKind>;
    fn del(&mut self, key: &[u8]) -> VtResult<()>;
    /// Expire a key at an absolute unix time in ms.
    fn pexpire_at(&mut self, key: &[u8], at_ms: i64) -> VtResult<()>;

    /// Tell blocked consumers that a ready set gained tasks.
    fn wake(&mut self, ready_key: &[u8]);

    /// Length of a list (the wake list of the scripts engine's sleepers).
    fn llen(&mut self, key: &[u8]) -> VtResult<u64>;
    /// Appends `n` wake-up tokens to a list.
    fn push_tokens(&mut self, key: &[u8], n: u64) -> VtResult<()>;

    /// Reports something the operator should know (the module writes it to
    /// the server log, at most one such line per few seconds).
    fn warn(&mut self, message: &str);

    fn hget_int(&mut self, key: &[u8], field: &str) -> VtResult<Option<i64>> {
        match self.hget(key, field)? {
            None => Ok(None),
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| {
                    VtError::Internal(format!("field {field} of a task is not an integer"))
                }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Missing,
    Hash,
    SortedSet,
    List,
    Other,
}

#[derive(Debug, Clone)]
enum MemValue {
    Hash(BTreeMap<String, Vec<u8>>),
    Zset {
        scores: HashMap<Vec<u8>, i64>,
        order: BTreeSet<(i64, Vec<u8>)>,
    },
    /// A list of wake-up tokens: only its length matters.
    List(u64),
    /// Stands for any other type, to test WRONGTYPE handling.
    Other,
}

/// An in-memory `Store` with the same semantics as Valkey for the operations
/// the core uses, including key expiry against an injected clock.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    data: HashMap<Vec<u8>, MemValue>,
    expires: HashMap<Vec<u8>, i64>,
    pub woken: Vec<Vec<u8>>,
    pub warnings: Vec<String>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops keys whose expiry time has passed, as Valkey would.
    pub fn advance_to(&mut self, now_ms: i64) {
        let gone: Vec<Vec<u8>> = self
            .expires
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.expires.remove(&key);
            self.data.remove(&key);
        }
    }

    pub fn put_other(&mut self, key: &[u8]) {
        self.data.insert(key.to_vec(), MemValue::Other);
    }

    pub fn key_count(&self) -> usize {
        self.data.len()
    }

    /// Every key with its content and expiry, in key order: two stores
    /// hold the same data exactly when these are equal.
    pub fn sorted(&self) -> Vec<(Vec<u8>, String, Option<i64>)> {
        let mut out: Vec<_> = self
            .data
            .iter()
            .map(|(key, value)| {
                let content = match value {
                    MemValue::Zset { order, .. } => format!("{order:?}"),
                    other => format!("{other:?}"),
                };
                (key.clone(), content, self.expires.get(key).copied())
            })
            .collect();
        out.sort();
        out
    }

    fn zset(&mut self, key: &[u8], create: bool) -> VtResult<Option<&mut MemValue>> {
        if create && !self.data.contains_key(key) {
            self.data.insert(
                key.to_vec(),
                MemValue::Zset {
                    scores: HashMap::new(),
                    order: BTreeSet::new(),
                },
            );
        }
        match self.data.get_mut(key) {
            None => Ok(None),
            Some(v @ MemValue::Zset { .. }) => Ok(Some(v)),
            Some(_) => Err(VtError::WrongType),
        }
    }

    fn hash(
        &mut self,
        key: &[u8],
        create: bool,
    ) -> VtResult<Option<&mut BTreeMap<String, Vec<u8>>>> {
        if create && !self.data.contains_key(key) {
            self.data
                .insert(key.to_vec(), MemValue::Hash(BTreeMap::new()));
        }
        match self.data.get_mut(key) {
            None => Ok(None),
            Some(MemValue::Hash(h)) => Ok(Some(h)),
            Some(_) => Err(VtError::WrongType),
        }
    }

    fn drop_if_empty(&mut self, key: &[u8]) {
        let empty = match self.data.get(key) {
            Some(MemValue::Hash(h)) => h.is_empty(),
            Some(MemValue::Zset { scores, .. }) => scores.is_empty(),
            _ => false,
        };
        if empty {
            self.data.remove(key);
            self.expires.remove(key);
        }
    }
}

impl Store for MemStore {
    fn zadd(&mut self, key: &[u8], score: i64, member: &[u8]) -> VtResult<()> {
        if let Some(MemValue::Zset { scores, order }) = self.zset(key, true)? {
            if let Some(old) = scores.insert(member.to_vec(), score) {
                order.remove(&(old, member.to_vec()));
            }
            order.insert((score, member.to_vec()));
        }
        Ok(())
    }

    fn zrem(&mut self, key: &[u8], member: &[u8]) -> VtResult<bool> {
        let removed = match self.zset(key, false)? {
            Some(MemValue::Zset { scores, order }) => match scores.remove(member) {
                Some(old) => {
                    order.remove(&(old, member.to_vec()));
                    true
                }
                None => false,
            },
            _ => false,
        };
        self.drop_if_empty(key);
        Ok(removed)
    }

    fn zscore(&mut self, key: &[u8], member: &[u8]) -> VtResult<Option<i64>> {
        Ok(match self.zset(key, false)? {
            Some(MemValue::Zset { scores, .. }) => scores.get(member).copied(),
            _ => None,
        })
    }

    fn zcard(&mut self, key: &[u8]) -> VtResult<u64> {
        Ok(match self.zset(key, false)? {
            Some(MemValue::Zset { scores, .. }) => scores.len() as u64,
            _ => 0,
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
        Ok(match self.zset(key, false)? {
            Some(MemValue::Zset { order, .. }) => order
                .range((min, Vec::new())..)
                .take_while(|(s, _)| *s <= max)
                .skip(offset)
                .take(limit)
                .map(|(s, m)| (m.clone(), *s))
                .collect(),
            _ => Vec::new(),
        })
    }

    fn zcount(&mut self, key: &[u8], min: i64, max: i64) -> VtResult<u64> {
        Ok(self.zrange_by_score(key, min, max, 0, usize::MAX)?.len() as u64)
    }

    fn hget(&mut self, key: &[u8], field: &str) -> VtResult<Option<Vec<u8>>> {
        Ok(self.hash(key, false)?.and_then(|h| h.get(field).cloned()))
    }

    fn hset(&mut self, key: &[u8], fields: &[(&str, Val)]) -> VtResult<()> {
        if let Some(h) = self.hash(key, true)? {
            for (name, value) in fields {
                h.insert(name.to_string(), value.to_bytes());
            }
        }
        Ok(())
    }

    fn hdel(&mut self, key: &[u8], fields: &[&str]) -> VtResult<()> {
        if let Some(h) = self.hash(key, false)? {
            for name in fields {
                h.remove(*name);
            }
        }
        self.drop_if_empty(key);
        Ok(())
    }

    fn key_kind(&mut self, key: &[u8]) -> VtResult<KeyKind> {
        Ok(match self.data.get(key) {
            None => KeyKind::Missing,
            Some(MemValue::Hash(_)) => KeyKind::Hash,
            Some(MemValue::Zset { .. }) => KeyKind::SortedSet,
            Some(MemValue::List(_)) => KeyKind::List,
            Some(MemValue::Other) => KeyKind::Other,
        })
    }

    fn del(&mut self, key: &[u8]) -> VtResult<()> {
        self.data.remove(key);
        self.expires.remove(key);
        Ok(())
    }

    fn pexpire_at(&mut self, key: &[u8], at_ms: i64) -> VtResult<()> {
        if self.data.contains_key(key) {
            self.expires.insert(key.to_vec(), at_ms);
        }
        Ok(())
    }

    fn wake(&mut self, ready_key: &[u8]) {
        self.woken.push(ready_key.to_vec());
    }

    fn llen(&mut self, key: &[u8]) -> VtResult<u64> {
        match self.data.get(key) {
            None => Ok(0),
            Some(MemValue::List(n)) => Ok(*n),
            Some(_) => Err(VtError::WrongType),
        }
    }

    fn warn(&mut self, message: &str) {
        self.warnings.push(message.to_string());
    }

    fn push_tokens(&mut self, key: &[u8], n: u64) -> VtResult<()> {
        match self.data.entry(key.to_vec()).or_insert(MemValue::List(0)) {
            MemValue::List(len) => {
                *len += n;
                Ok(())
            }
            _ => Err(VtError::WrongType),
        }
    }
}
