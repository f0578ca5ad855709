//! What the server does when its memory is full (`maxmemory` and
//! `maxmemory-policy`, from `INFO memory`), and whether that can lose task
//! data. Queues need `noeviction`: an evicting policy deletes task records
//! whose ids still sit in the queues (`allkeys-*`), or kept results, which
//! have a TTL (`volatile-*`).

/// The server's memory limit and eviction policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// Bytes; 0 means no limit (the server never evicts).
    pub maxmemory: u64,
    /// `noeviction`, `allkeys-lru`, `volatile-ttl`, ...
    pub policy: String,
}

impl MemoryPolicy {
    /// Reads the two fields from the text of `INFO memory`; None if the
    /// policy is not there (a server that hides it).
    pub fn from_info(info: &str) -> Option<MemoryPolicy> {
        let field = |name: &str| {
            info.lines().find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(|value| value.trim().to_string())
            })
        };
        Some(MemoryPolicy {
            policy: field("maxmemory_policy")?,
            maxmemory: field("maxmemory").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }

    /// A warning, naming the policy and the fix, when this policy can evict
    /// task data; None for `noeviction`, for an unknown policy, and when no
    /// limit is set (nothing is evicted then).
    pub fn eviction_warning(&self) -> Option<String> {
        if self.maxmemory == 0 {
            return None;
        }
        let what = if self.policy.starts_with("allkeys-") {
            "any key, so waiting and running tasks can vanish without ever running \
             (their ids stay queued, their records are gone) and the queues' counters reset"
        } else if self.policy.starts_with("volatile-") {
            "keys that have a TTL, so the kept results of finished tasks can vanish \
             before their time is up"
        } else {
            return None;
        };
        Some(format!(
            "Valkey's maxmemory-policy is {policy}: when its memory reaches maxmemory it \
             evicts {what}. Task queues need `maxmemory-policy noeviction` (then a full \
             server refuses new tasks with ServerFull and workers drain it): set it in \
             valkey.conf, with `CONFIG SET maxmemory-policy noeviction`, or in the managed \
             service's parameter group, and keep caches on another Valkey",
            policy = self.policy
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, maxmemory: u64) -> MemoryPolicy {
        MemoryPolicy {
            maxmemory,
            policy: name.to_string(),
        }
    }

    #[test]
    fn info_memory_is_parsed() {
        let info = "# Memory\r\nused_memory:1000\r\nmaxmemory:8388608\r\n\
                    maxmemory_human:8.00M\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(
            MemoryPolicy::from_info(info),
            Some(policy("allkeys-lru", 8 << 20))
        );
        assert_eq!(
            MemoryPolicy::from_info("# Memory\r\nused_memory:1\r\n"),
            None
        );
    }

    #[test]
    fn evicting_policies_are_warned_about() {
        for name in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            let warning = policy(name, 1 << 20).eviction_warning().unwrap();
            assert!(warning.contains(name), "{warning}");
            assert!(warning.contains("waiting and running tasks"), "{warning}");
            assert!(warning.contains("noeviction"), "{warning}");
        }
        for name in [
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            let warning = policy(name, 1 << 20).eviction_warning().unwrap();
            assert!(warning.contains(name), "{warning}");
            assert!(warning.contains("kept results"), "{warning}");
        }
        assert_eq!(policy("noeviction", 1 << 20).eviction_warning(), None);
        // No limit: nothing is ever evicted.
        assert_eq!(policy("allkeys-lru", 0).eviction_warning(), None);
    }
}
