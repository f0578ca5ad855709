//! Queue names: users say `emails`; the wire and the keys say `{emails}`.

use std::fmt;

use vtasks_protocol::MAX_QUEUE_NAME;

use crate::error::{Error, Result};

/// A validated queue name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName {
    wire: String,
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
        // Built by hand: the Python worker makes one per finished task.
        let mut wire = String::with_capacity(bare.len() + 2);
        wire.push('{');
        wire.push_str(bare);
        wire.push('}');
        Ok(QueueName { wire })
    }

    /// The name without braces.
    pub fn name(&self) -> &str {
        &self.wire[1..self.wire.len() - 1]
    }

    /// The name as commands take it: `{name}`.
    pub fn wire(&self) -> &str {
        &self.wire
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
        for bad in ["", "{}", "a b", "a{b", "é", &"x".repeat(129)] {
            assert!(QueueName::new(bad).is_err(), "{bad:?}");
        }
    }
}
