//! What a client needs to know about Valkey Cluster beyond what the `redis`
//! crate's cluster connection does by itself (routing by the command's
//! first key, following MOVED and ASK, retrying TRYAGAIN and CLUSTERDOWN,
//! refreshing its slot map): the slot of a key, the seed URLs of a
//! multi-node URL, which node serves which slot (for the connections a
//! worker blocks on, which the crate's pool cannot hold), and where a
//! command whose first argument is not a key goes.

use std::collections::BTreeMap;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Value};

use crate::error::{Error, Result};

/// Slots of a Valkey Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM, the checksum Valkey Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key, as `CLUSTER KEYSLOT` computes it: of the part
/// between the first `{` and the next `}` when that is not empty (a hash
/// tag), else of the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// The URLs of the nodes a URL names: `valkey://a:6379,b:6379/...` names
/// two, each with the URL's scheme, credentials, path and query.
pub fn seed_urls(url: &str) -> Result<Vec<String>> {
    let invalid = |why: &str| Error::InvalidInput(format!("URL {:?}: {why}", redact(url)));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected scheme://host:port"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let urls: Vec<String> = hosts
        .split(',')
        .map(|host| format!("{scheme}://{userinfo}{host}{tail}"))
        .collect();
    if hosts.split(',').any(str::is_empty) {
        return Err(invalid("an empty host in the list of nodes"));
    }
    Ok(urls)
}

/// The URL with its password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let userinfo = &url[start + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..start + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A node's address as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl NodeAddr {
    /// Routes a command to this node (the cluster connection's own pool).
    pub fn routing(&self) -> RoutingInfo {
        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: self.host.clone(),
            port: self.port,
        })
    }
}

/// Which primary serves which slot, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, Default)]
pub struct SlotMap {
    /// First slot of each range -> (last slot, its primary).
    ranges: BTreeMap<u16, (u16, NodeAddr)>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id,
    /// ...], replicas...], ...]`. A node announcing an empty host is the
    /// one that answered (`seed`).
    pub fn from_reply(reply: Value, seed: &NodeAddr) -> Result<SlotMap> {
        let bad = |what: &str| Error::protocol(format!("CLUSTER SLOTS: {what}"));
        let Value::Array(ranges) = reply else {
            return Err(bad("not an array"));
        };
        let mut map = SlotMap::default();
        for range in ranges {
            let Value::Array(items) = range else {
                return Err(bad("a range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (items.first(), items.get(1), items.get(2))
            else {
                return Err(bad("a range without start, end and primary"));
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return Err(bad("a node without a host")),
            };
            let Some(Value::Int(port)) = node.get(1) else {
                return Err(bad("a node without a port"));
            };
            let host = if host.is_empty() || host == "?" {
                seed.host.clone()
            } else {
                host
            };
            let (start, end) = (*start as u16, *end as u16);
            map.ranges.insert(
                start,
                (
                    end,
                    NodeAddr {
                        host,
                        port: *port as u16,
                    },
                ),
            );
        }
        Ok(map)
    }

    /// The primary serving `slot`, if any does.
    pub fn node_of(&self, slot: u16) -> Option<&NodeAddr> {
        self.ranges
            .range(..=slot)
            .next_back()
            .filter(|(_, (end, _))| slot <= *end)
            .map(|(_, (_, node))| node)
    }

    /// Every primary, once each.
    pub fn primaries(&self) -> Vec<NodeAddr> {
        let mut nodes: Vec<NodeAddr> = self.ranges.values().map(|(_, n)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// The route of a `VTASKS.*` command whose first argument is not its
/// first key: FETCHN's is the number of queues, and the crate routes an
/// unknown command by its first argument (it does not read the key specs
/// `COMMAND` reports). Every other vtasks command names its queue first,
/// and `FCALL` declares its keys, which the crate does read.
pub fn route_of(cmd: &Cmd) -> Option<RoutingInfo> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        _ => &b""[..],
    });
    let name = args.next()?;
    if !name.eq_ignore_ascii_case(b"VTASKS.FETCHN") {
        return None;
    }
    let queue = args.nth(1)?;
    Some(slot_route(key_slot(queue)))
}

/// The primary of a slot.
pub fn slot_route(slot: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
        slot,
        SlotAddr::Master,
    )))
}

/// Whether a server error says the cluster moved or is moving the slot,
/// or cannot serve it right now: worth a fresh slot map and another try.
/// READONLY is a node the map names as a primary that is a replica now (a
/// failed primary restarted and rejoined as its successor's replica): it
/// answers a write so, not with MOVED.
pub fn is_redirect(err: &Error) -> bool {
    matches!(
        err.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` on Valkey 8.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{emails}"), key_slot(b"emails"));
        assert_eq!(key_slot(b"{emails}:ready"), key_slot(b"emails"));
        assert_eq!(key_slot(b"{}emails"), key_slot(b"{}emails"));
        assert_eq!(key_slot(b"a{}{b}"), crc16(b"a{}{b}") % SLOTS);
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
    }

    #[test]
    fn a_url_with_several_hosts_names_several_nodes() {
        assert_eq!(
            seed_urls("valkey://u:p@a:1,b:2/0?x=1#insecure").unwrap(),
            [
                "valkey://u:p@a:1/0?x=1#insecure",
                "valkey://u:p@b:2/0?x=1#insecure"
            ]
        );
        assert_eq!(seed_urls("redis://h:6379").unwrap(), ["redis://h:6379"]);
        assert!(seed_urls("valkey://a:1,,b:2").is_err());
        assert!(seed_urls("nothing").is_err());
        assert_eq!(
            redact("valkey://u:secret@a:1,b:2"),
            "valkey://u:***@a:1,b:2"
        );
    }

    #[test]
    fn slot_map_finds_the_primary_of_each_slot() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001)]),
        ]);
        let seed = NodeAddr {
            host: "x".into(),
            port: 1,
        };
        let map = SlotMap::from_reply(reply, &seed).unwrap();
        assert_eq!(map.node_of(0).unwrap().port, 7000);
        assert_eq!(map.node_of(5460).unwrap().port, 7000);
        assert_eq!(map.node_of(5461).unwrap().port, 7001);
        assert_eq!(map.primaries().len(), 2);
    }

    #[test]
    fn only_fetchn_is_routed_by_its_second_argument() {
        let mut fetch = redis::cmd("VTASKS.FETCHN");
        fetch.arg(1).arg("{q}").arg("CONSUMER").arg("w");
        assert!(route_of(&fetch).is_some());
        assert!(route_of(redis::cmd("VTASKS.ENQUEUE").arg("{q}")).is_none());
    }
}
