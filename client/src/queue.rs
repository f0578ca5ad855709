//! Queue names: users say `emails`; the wire and the keys say `{emails}`.

use std::fmt;
use std::sync::Arc;

use vtasks_protocol::MAX_QUEUE_NAME;

use crate::error::{Error, Result};

/// A validated queue name. Shared, not copied, when cloned: a worker
/// keeps one per task it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName {
    wire: Arc<str>,
}

impl QueueName {
    /// Accepts `emails` or `{emails}`: 1–`MAX_QUEUE_NAME` (128) characters of `A-Z a-z 0-9 _ . : -`.
    pub fn new(name: &str) -> Result<QueueName> {
        let bare = name
            .strip_prefix('{')
            .and_then(|n| n.strip_suffix('}'))
            .unwrap_or(name);
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_.:-".contains(&b);
        if bare.is_empty() || bare.len() > MAX_QUEUE_NAME || !bare.bytes().all(allowed) {
            return Err(Error::InvalidInput(format!(
                "queue name {name:?}: expected 1-{MAX_QUEUE_NAME} characters of A-Z a-z 0-9 _ . : -"
            )));
        }
        // Built on the stack and allocated once: the Python worker makes
        // one per finished task.
        let mut wire = [0u8; MAX_QUEUE_NAME + 2];
        wire[0] = b'{';
        wire[1..=bare.len()].copy_from_slice(bare.as_bytes());
        wire[bare.len() + 1] = b'}';
        let wire = std::str::from_utf8(&wire[..bare.len() + 2]).expect("checked: ASCII");
        Ok(QueueName { wire: wire.into() })
    }

    /// The name without braces.
    pub fn name(&self) -> &str {
        &self.wire[1..self.wire.len() - 1]
    }

    /// The name as commands take it: `{name}`.
    pub fn wire(&self) -> &str {
        &self.wire
    }

    /// Whether `raw` names this queue, with or without braces.
    pub fn is_named(&self, raw: &[u8]) -> bool {
        raw == self.wire.as_bytes() || raw == self.name().as_bytes()
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_or_without_braces() {
        assert_eq!(QueueName::new("emails").unwrap().wire(), "{emails}");
        assert_eq!(QueueName::new("{emails}").unwrap().name(), "emails");
        let longest = "x".repeat(MAX_QUEUE_NAME);
        assert_eq!(QueueName::new(&longest).unwrap().name(), longest);
        let emails = QueueName::new("emails").unwrap();
        assert!(emails.is_named(b"emails") && emails.is_named(b"{emails}"));
        assert!(!emails.is_named(b"email") && !emails.is_named(b"{emails"));
        for bad in ["", "{}", "a b", "a{b", "é", &"x".repeat(129)] {
            assert!(QueueName::new(bad).is_err(), "{bad:?}");
        }
    }
}
