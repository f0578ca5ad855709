//! Key names of one queue and the documented limits. The layout is the
//! contract shared with the scripts engine; see `docs/PROTOCOL.md`.

use super::error::{VtError, VtResult};

// The limits and defaults live in the `vtasks-protocol` crate, shared with
// the client, the scripts engine's Lua library and the Python package.
pub use vtasks_protocol::{
    BULK_BATCH, DEFAULT_KEEP_MS, DEFAULT_LEASE_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_LOST_LEASES,
    LEASE_GRACE_MS, MAINTENANCE_BATCH, MAX_ATTEMPTS, MAX_CONSUMER_LEN, MAX_DURATION_MS,
    MAX_ENQUEUE_BATCH, MAX_ERROR_TEXT, MAX_FETCH_COUNT, MAX_ID_LEN, MAX_LOST_LEASES, MAX_PAYLOAD,
    MAX_PRIORITY, MAX_QUEUES, MAX_QUEUE_NAME, MAX_SCHEDULES, MAX_SCHEDULE_NAME,
    MAX_SCHEDULE_PAYLOAD, MAX_SCHEDULE_SPEC, MAX_TIMESTAMP_MS, MIN_PRIORITY, VANISHED_PER_FETCH,
};
use vtasks_protocol::{QUEUE_KEY_SUFFIXES, TASK_KEY_INFIX};

/// Every key of one queue. All share the hash tag `{name}`, so a queue lives
/// in one cluster slot and an ACL pattern `~{name}*` covers all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// `{name}`: the queue key itself, a hash of counters and settings.
    pub meta: Vec<u8>,
    pub ready: Vec<u8>,
    pub delayed: Vec<u8>,
    pub leased: Vec<u8>,
    pub dead: Vec<u8>,
    pub done: Vec<u8>,
    /// Wake-up tokens for the scripts engine's sleeping consumers (a list).
    pub wake: Vec<u8>,
    /// Those sleepers, each until when it sleeps (a sorted set).
    pub waiting: Vec<u8>,
    /// The scripts engine's schedules: name -> record (a hash).
    pub schedules: Vec<u8>,
    /// Their next occurrences: name -> unix ms, or minus the time of the
    /// run when the next is still to be computed (a sorted set).
    pub schedules_due: Vec<u8>,
    task_prefix: Vec<u8>,
}

impl QueueKeys {
    /// Validates a queue argument of the form `{name}` and derives its keys.
    pub fn parse(arg: &[u8]) -> VtResult<QueueKeys> {
        let invalid = || VtError::InvalidQueue(crate::core::error::shown(arg));
        let name = arg
            .strip_prefix(b"{")
            .and_then(|rest| rest.strip_suffix(b"}"))
            .ok_or_else(invalid)?;
        let allowed = |c: &u8| c.is_ascii_alphanumeric() || b"_.:-".contains(c);
        if name.is_empty() || name.len() > MAX_QUEUE_NAME || !name.iter().all(allowed) {
            return Err(invalid());
        }
        let [meta, ready, delayed, leased, dead, done, wake, waiting, schedules, schedules_due] =
            QUEUE_KEY_SUFFIXES.map(|suffix| [arg, suffix.as_bytes()].concat());
        Ok(QueueKeys {
            meta,
            ready,
            delayed,
            leased,
            dead,
            done,
            wake,
            waiting,
            schedules,
            schedules_due,
            task_prefix: [arg, TASK_KEY_INFIX.as_bytes()].concat(),
        })
    }

    /// The queue as clients name it: `{name}`.
    pub fn queue(&self) -> &[u8] {
        &self.meta
    }

    pub fn queue_str(&self) -> String {
        String::from_utf8_lossy(&self.meta).into_owned()
    }

    /// The hash that holds one task.
    pub fn task(&self, id: &[u8]) -> Vec<u8> {
        [self.task_prefix.as_slice(), id].concat()
    }

    /// The sorted sets whose types every command checks before writing.
    pub fn sets(&self) -> [&[u8]; 5] {
        [
            &self.ready,
            &self.delayed,
            &self.leased,
            &self.dead,
            &self.done,
        ]
    }
}

pub fn validate_id(id: &[u8]) -> VtResult<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(VtError::InvalidId);
    }
    Ok(())
}

pub fn validate_consumer(name: &[u8]) -> VtResult<()> {
    let allowed = |c: &u8| c.is_ascii_alphanumeric() || b"_.:-@/".contains(c);
    if name.is_empty() || name.len() > MAX_CONSUMER_LEN || !name.iter().all(allowed) {
        return Err(VtError::InvalidConsumer);
    }
    Ok(())
}

pub fn validate_schedule_name(name: &[u8]) -> VtResult<()> {
    let allowed = |c: &u8| c.is_ascii_alphanumeric() || b"_.:-@/".contains(c);
    if name.is_empty() || name.len() > MAX_SCHEDULE_NAME || !name.iter().all(allowed) {
        return Err(VtError::InvalidScheduleName);
    }
    Ok(())
}

/// A schedule's timing is opaque to the commands (clients compute its
/// occurrences); it only has to be a short line of printable ASCII, which
/// both engines can check alike.
pub fn validate_schedule_spec(spec: &[u8]) -> VtResult<()> {
    let printable = |c: &u8| (0x20..0x7f).contains(c);
    if spec.is_empty() || spec.len() > MAX_SCHEDULE_SPEC || !spec.iter().all(printable) {
        return Err(VtError::InvalidScheduleSpec);
    }
    Ok(())
}

pub fn validate_payload(what: &'static str, bytes: &[u8]) -> VtResult<()> {
    if bytes.len() > MAX_PAYLOAD {
        return Err(VtError::TooLarge {
            what,
            size: bytes.len(),
            limit: MAX_PAYLOAD,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_share_the_hash_tag() {
        let keys = QueueKeys::parse(b"{emails}").unwrap();
        assert_eq!(keys.meta, b"{emails}");
        assert_eq!(keys.ready, b"{emails}:ready");
        assert_eq!(keys.task(b"42"), b"{emails}:t:42");
    }

    #[test]
    fn bad_queue_names_are_refused() {
        for bad in [
            &b"emails"[..],
            b"{}",
            b"{a b}",
            b"{a{b}",
            b"{emails",
            b"emails}",
            &[b'{', 0xff, b'}'],
        ] {
            assert!(QueueKeys::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{{{}}}", "x".repeat(MAX_QUEUE_NAME + 1));
        assert!(QueueKeys::parse(long.as_bytes()).is_err());
        let longest = format!("{{{}}}", "x".repeat(MAX_QUEUE_NAME));
        assert!(QueueKeys::parse(longest.as_bytes()).is_ok());
    }
}
