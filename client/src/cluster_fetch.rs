//! A worker's fetch in a Valkey Cluster.
//!
//! One FETCHN may name only queues of one slot (the server refuses others
//! with CROSSSLOT, on one node too), so the queues are grouped by slot and
//! each group is fetched with its own FETCHN, in the order of preference
//! of its first queue. The fetches go on one connection per node that
//! serves the worker's queues (the leases a fetch takes are held by the
//! connection that took them; the shared command connection is the
//! other): at most two connections per node.
//!
//! A round asks each group in turn, without blocking, until the batch is
//! full. When it finds nothing and the caller may wait:
//! - with the module, each node's connection blocks in one FETCHN on that
//!   node's first group, naming the node's other groups after `WAKE`: the
//!   server ends the wait as soon as any of them has a ready task (and at
//!   once if one has one already, so nothing that arrives between the round
//!   and the wait is missed); the first node to answer ends the others'
//!   waits (`CLIENT UNBLOCK`) and the next round takes the tasks;
//! - with the scripts engine, which cannot block in the server, each
//!   group's fetch of the round registers a sleeper (as a single server's
//!   does) and the worker waits for a message on the groups' shard
//!   channels `{q}:wake`, which the library publishes to when it wakes
//!   sleepers, subscribed on the shared cluster connection (RESP3).
//!
//! A redirection (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) or a lost node reads
//! the slot map again; the next round goes by the new one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::Notify;

use crate::client::{split_sleep, Client, Sleep};
use crate::cluster::{self, key_slot, NodeAddr, SlotMap};
use crate::engine::{Engine, EngineState};
use crate::error::{reply_within, Error, Result};
use crate::protocol::*;
use crate::queue::QueueName;

/// What a worker's fetch came to: the tasks and the outcomes of the
/// settlements it delivered, or the error that stopped it, and the
/// settlements it did not deliver (the worker keeps them for later).
pub(crate) struct FetchOutcome {
    pub result: Result<Fetched>,
    pub unsent_acks: Vec<Ack>,
    pub unsent_nacks: Vec<Nack>,
}

/// Ends a worker's fetch early: shared between the fetcher and whoever
/// decides the fetch is no longer wanted.
#[derive(Default)]
pub(crate) struct Interrupt {
    requested: AtomicBool,
    notify: Notify,
    /// The node connections blocked in a FETCHN right now: (node, CLIENT ID).
    blocked: Mutex<Vec<(NodeAddr, i64)>>,
}

impl Interrupt {
    pub(crate) fn reset(&self) {
        self.requested.store(false, Ordering::SeqCst);
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Asks the fetch to end: a round stops before its next group, a
    /// sleep ends, and every node connection blocked in a FETCHN is
    /// unblocked (call again until the fetch returns: an unblock that
    /// arrives before the FETCHN does finds nothing to end).
    pub(crate) async fn interrupt(&self, client: &Client) {
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_one();
        let blocked = self
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (node, id) in blocked {
            let _ = client.send_to_node(&node, unblock_cmd(id)).await;
        }
    }
}

fn unblock_cmd(id: i64) -> redis::Cmd {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("UNBLOCK").arg(id);
    cmd
}

struct NodeConn {
    conn: MultiplexedConnection,
    id: i64,
}

/// Queues of one slot, in the caller's order, with the settlements of
/// their tasks (as indexes into the caller's lists).
struct Group {
    slot: u16,
    queues: Vec<QueueName>,
    acks: Vec<usize>,
    nacks: Vec<usize>,
}

/// The cluster part of a `BlockingFetcher`.
#[derive(Default)]
pub(crate) struct ClusterFetcher {
    nodes: HashMap<NodeAddr, NodeConn>,
    /// Nodes connected to before: a new connection to one of them means
    /// the worker reconnected.
    known: HashSet<NodeAddr>,
    generation: i64,
    /// The scripts engine: each group's sleeper ticket, handed back with
    /// its next fetch (SLEPT), which ends the registration.
    tickets: HashMap<u16, Vec<u8>>,
    pub(crate) interrupt: Arc<Interrupt>,
}

impl ClusterFetcher {
    pub(crate) fn generation(&self) -> i64 {
        self.generation
    }

    /// Opens the connections to the nodes serving `queues` that are not
    /// open; returns a number that changes whenever a connection had to be
    /// opened again (the leases the closed one held are cut to a short
    /// grace: the worker renews them).
    pub(crate) async fn connect_for(
        &mut self,
        client: &Client,
        queues: &[QueueName],
    ) -> Result<i64> {
        let mut slots = cluster_slots(client).await?;
        for queue in queues {
            let slot = key_slot(queue.wire().as_bytes());
            let node = match slots.node_of(slot) {
                Some(node) => node.clone(),
                None => {
                    slots = client.refresh_slots().await?;
                    match slots.node_of(slot) {
                        Some(node) => node.clone(),
                        None => {
                            return Err(Error::Server {
                                code: "CLUSTERDOWN".into(),
                                message: format!("no node serves the slot of {queue}"),
                            })
                        }
                    }
                }
            };
            self.node(client, &node).await?;
        }
        Ok(self.generation)
    }

    /// The connection to `node`, opened if needed.
    async fn node(&mut self, client: &Client, node: &NodeAddr) -> Result<&mut NodeConn> {
        if !self.nodes.contains_key(node) {
            let crate::client::Target::Cluster(target) = client.target() else {
                return Err(Error::InvalidInput("not a cluster client".into()));
            };
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(client.options().connect_timeout))
                .set_response_timeout(None);
            let mut conn = target
                .node(node)?
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(Error::from)?;
            // The connection has no response timeout (it blocks in
            // fetches): a node that stopped answering ends this wait here.
            let id: i64 = reply_within(client.options().response_timeout, async {
                redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async(&mut conn)
                    .await
                    .map_err(Error::from)
            })
            .await?;
            if !self.known.insert(node.clone()) {
                self.generation += 1;
            }
            self.nodes.insert(node.clone(), NodeConn { conn, id });
        }
        Ok(self.nodes.get_mut(node).expect("just inserted"))
    }

    /// The groups of a fetch's queues, each with its settlements.
    fn groups(fetch: &Fetch) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        for queue in &fetch.queues {
            let slot = key_slot(queue.wire().as_bytes());
            match groups.iter_mut().find(|g| g.slot == slot) {
                Some(group) => {
                    if !group.queues.contains(queue) {
                        group.queues.push(queue.clone());
                    }
                }
                None => groups.push(Group {
                    slot,
                    queues: vec![queue.clone()],
                    acks: Vec::new(),
                    nacks: Vec::new(),
                }),
            }
        }
        let group_of = |queue: &QueueName| {
            let slot = key_slot(queue.wire().as_bytes());
            groups.iter().position(|g| g.slot == slot)
        };
        let ack_groups: Vec<Option<usize>> =
            fetch.acks.iter().map(|a| group_of(&a.queue)).collect();
        let nack_groups: Vec<Option<usize>> =
            fetch.nacks.iter().map(|n| group_of(&n.queue)).collect();
        for (i, g) in ack_groups.into_iter().enumerate() {
            if let Some(g) = g {
                groups[g].acks.push(i);
            }
        }
        for (i, g) in nack_groups.into_iter().enumerate() {
            if let Some(g) = g {
                groups[g].nacks.push(i);
            }
        }
        groups
    }

    /// Fetches up to `fetch.count` tasks from the queues' groups (see the
    /// module's doc), blocking for up to `fetch.block` when none is ready.
    pub(crate) async fn fetch(
        &mut self,
        client: &Client,
        engine: &EngineState,
        fetch: &Fetch,
    ) -> FetchOutcome {
        let mut round = Round::new(fetch);
        let groups = Self::groups(fetch);
        // Settlements of queues the fetch does not name cannot go with it.
        for (i, ack) in fetch.acks.iter().enumerate() {
            if !fetch.queues.contains(&ack.queue) {
                round.unsent_acks.push(i);
            }
        }
        for (i, nack) in fetch.nacks.iter().enumerate() {
            if !fetch.queues.contains(&nack.queue) {
                round.unsent_nacks.push(i);
            }
        }
        let scripts = engine.get() == Engine::Scripts;
        let started = Instant::now();
        let remaining = || match fetch.block {
            Some(block) if block.is_zero() => Some(Duration::MAX),
            Some(block) => Some(block.saturating_sub(started.elapsed())),
            None => None,
        };
        let mut rings = None;
        if scripts && fetch.block.is_some() {
            let channels: Vec<Vec<u8>> = fetch
                .queues
                .iter()
                .map(|q| format!("{}:wake", q.wire()).into_bytes())
                .collect();
            match client.ssubscribe(&channels).await {
                Ok(()) => {
                    if let crate::client::Target::Cluster(target) = client.target() {
                        rings =
                            Some((target.rings(), channels.into_iter().collect::<HashSet<_>>()));
                    }
                }
                Err(err) => round.error(err),
            }
        }
        let mut first = true;
        loop {
            let round_started = Instant::now();
            if let Some((rx, _)) = rings.as_mut() {
                // Only what rings from now on wakes this round.
                while rx.try_recv().is_ok() {}
            }
            let mut sleep: Option<Duration> = None;
            let mut lost = false;
            for group in &groups {
                let settles = first;
                if round.tasks.len() >= fetch.count {
                    if settles {
                        round.settle_apart(client, fetch, group).await;
                    }
                    continue;
                }
                let mut sub = Fetch {
                    queues: group.queues.clone(),
                    count: fetch.count - round.tasks.len(),
                    block: None,
                    ..fetch.clone()
                };
                sub.acks = if settles {
                    group.acks.iter().map(|&i| fetch.acks[i].clone()).collect()
                } else {
                    Vec::new()
                };
                sub.nacks = if settles {
                    group
                        .nacks
                        .iter()
                        .map(|&i| fetch.nacks[i].clone())
                        .collect()
                } else {
                    Vec::new()
                };
                if scripts && fetch.block.is_some() {
                    // Registers a sleeper when nothing is ready.
                    sub.block = Some(remaining().unwrap_or_default().min(Duration::from_secs(60)));
                }
                let ticket = if scripts {
                    self.tickets.remove(&group.slot)
                } else {
                    None
                };
                match self
                    .fetch_group(client, engine, group, &sub, ticket.as_deref())
                    .await
                {
                    Ok((fetched, asleep)) => {
                        if settles {
                            round.settled(group, fetched.acks, fetched.nacks);
                        }
                        round.tasks.extend(fetched.tasks);
                        if let Some(Sleep { ms, ticket }) = asleep {
                            self.tickets.insert(group.slot, ticket);
                            let wait = Duration::from_millis(ms);
                            sleep = Some(sleep.map_or(wait, |s| s.min(wait)));
                        }
                    }
                    Err(err) => {
                        if let Some(ticket) = ticket {
                            self.tickets.insert(group.slot, ticket);
                        }
                        if settles {
                            round.unsent(group);
                        }
                        lost |= err.is_connection() || cluster::is_redirect(&err);
                        round.error(err);
                    }
                }
            }
            first = false;
            if lost {
                // The slot map is stale (a failover, a reshard) or a node
                // is away: read it again, whatever the other groups gave.
                if let Err(err) = client.refresh_slots().await {
                    round.error(err);
                }
            }
            if !round.tasks.is_empty() || self.interrupt.requested() {
                break;
            }
            let Some(left) = remaining() else { break };
            if left.is_zero() {
                break;
            }
            if lost {
                if round.error.as_ref().is_some_and(Error::is_connection) {
                    break; // the caller backs off and tries again
                }
                // Try again after a pause (a slot being moved answers
                // TRYAGAIN until it is done).
                tokio::time::sleep(left.min(Duration::from_millis(100))).await;
                round.error = None;
                continue;
            }
            if scripts {
                let wait = sleep.unwrap_or(left).min(left);
                let Some((rx, channels)) = rings.as_mut() else {
                    break;
                };
                let interrupt = self.interrupt.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = interrupt.notify.notified() => {}
                    _ = async {
                        loop {
                            match rx.recv().await {
                                Ok(channel) if channels.contains(&channel) => return,
                                Ok(_) => {}
                                // Missed some: one of them may be ours.
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                    std::future::pending::<()>().await
                                }
                            }
                        }
                    } => {}
                }
                if self.interrupt.requested() {
                    break;
                }
                continue;
            }
            // A task that became ready in a group after the round looked at
            // it wakes the wait at once.
            let since = round_started.elapsed() + Duration::from_millis(10);
            match self
                .wait_on_nodes(client, fetch, &groups, left, since)
                .await
            {
                Ok(tasks) => {
                    round.tasks.extend(tasks);
                    if !round.tasks.is_empty() {
                        break;
                    }
                }
                Err(err) => {
                    let retry = err.is_connection() || cluster::is_redirect(&err);
                    round.error(err);
                    if !retry {
                        break;
                    }
                    if let Err(err) = client.refresh_slots().await {
                        round.error(err);
                    }
                    if round.error.as_ref().is_some_and(Error::is_connection) {
                        break;
                    }
                    round.error = None;
                    tokio::time::sleep(left.min(Duration::from_millis(100))).await;
                }
            }
            if self.interrupt.requested() {
                break;
            }
        }
        // More than asked for (several nodes answered at once): the rest
        // go back to their places, no attempt counted.
        if round.tasks.len() > fetch.count {
            let extra = round.tasks.split_off(fetch.count);
            give_back(client, &extra).await;
        }
        round.finish(fetch)
    }

    /// One FETCHN of a group on its node's connection. With the scripts
    /// engine and `BLOCK`, the sleep the library asks for when nothing was
    /// ready.
    async fn fetch_group(
        &mut self,
        client: &Client,
        engine: &EngineState,
        group: &Group,
        fetch: &Fetch,
        slept: Option<&[u8]>,
    ) -> Result<(Fetched, Option<Sleep>)> {
        let slots = cluster_slots(client).await?;
        let node = slots
            .node_of(group.slot)
            .cloned()
            .ok_or_else(|| Error::Server {
                code: "CLUSTERDOWN".into(),
                message: format!("no node serves slot {}", group.slot),
            })?;
        let timeout = client.options().response_timeout;
        let mut cmd = fetch.to_cmd()?;
        if let Some(ticket) = slept {
            cmd.arg("SLEPT").arg(ticket);
        }
        let conn = &mut self.node(client, &node).await?.conn;
        let outcome = match tokio::time::timeout(timeout, engine.query(conn, &cmd)).await {
            Ok(reply) => reply,
            Err(_) => Err(Error::Connection(format!(
                "{node}: no reply within {timeout:?}"
            ))),
        };
        let outcome = outcome.and_then(|reply| {
            let (reply, sleep) = split_sleep(reply);
            Ok((fetch.from_reply(reply)?, sleep))
        });
        if outcome.as_ref().is_err_and(Error::is_connection) {
            self.nodes.remove(&node);
        }
        outcome
    }

    /// The module's wait: each node's connection blocks on its first group,
    /// woken by the others (`WAKE`); the first to answer ends the others'
    /// waits. Returns every task the waits took.
    async fn wait_on_nodes(
        &mut self,
        client: &Client,
        fetch: &Fetch,
        groups: &[Group],
        left: Duration,
        since: Duration,
    ) -> Result<Vec<Delivery>> {
        let slots = cluster_slots(client).await?;
        let mut by_node: Vec<(NodeAddr, Vec<&Group>)> = Vec::new();
        for group in groups {
            let Some(node) = slots.node_of(group.slot) else {
                return Err(Error::Server {
                    code: "CLUSTERDOWN".into(),
                    message: format!("no node serves slot {}", group.slot),
                });
            };
            match by_node.iter_mut().find(|(n, _)| n == node) {
                Some((_, list)) => list.push(group),
                None => by_node.push((node.clone(), vec![group])),
            }
        }
        let block = if left == Duration::MAX {
            Duration::ZERO
        } else {
            left.max(Duration::from_millis(1))
        };
        let limit = if block.is_zero() {
            Duration::MAX
        } else {
            block
        };
        let timeout = limit.saturating_add(client.options().response_timeout);
        let mut waits = tokio::task::JoinSet::new();
        let mut pending: Vec<(NodeAddr, i64)> = Vec::new();
        for (node, list) in &by_node {
            let sub = Fetch {
                queues: list[0].queues.clone(),
                block: Some(block),
                acks: Vec::new(),
                nacks: Vec::new(),
                ..fetch.clone()
            };
            let mut cmd = sub.to_cmd()?;
            let others: Vec<&QueueName> = list[1..].iter().flat_map(|g| g.queues.iter()).collect();
            if !others.is_empty() {
                cmd.arg("WAKE")
                    .arg(since.as_millis() as u64)
                    .arg(others.len());
                for q in others {
                    cmd.arg(q.wire());
                }
            }
            let conn = self.node(client, node).await?;
            let mut handle = conn.conn.clone();
            pending.push((node.clone(), conn.id));
            let node = node.clone();
            waits.spawn(async move {
                let reply =
                    tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut handle)).await;
                let reply = match reply {
                    Ok(reply) => reply.map_err(Error::from),
                    Err(_) => Err(Error::Connection(format!(
                        "{node}: no reply within {timeout:?}"
                    ))),
                };
                (node, reply.and_then(|r| sub.from_reply(r)))
            });
        }
        *self
            .interrupt
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = pending.clone();
        let mut tasks = Vec::new();
        let mut error = None;
        let mut retry: Option<Duration> = None;
        loop {
            let next = tokio::select! {
                next = waits.join_next() => next,
                _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {
                    for (node, id) in &pending {
                        let _ = client.send_to_node(node, unblock_cmd(*id)).await;
                    }
                    retry = retry.map(|r| (r * 2).clamp(Duration::from_millis(5), Duration::from_millis(100)));
                    continue;
                }
            };
            let Some(joined) = next else { break };
            let (node, outcome) =
                joined.map_err(|e| Error::Connection(format!("a wait failed: {e}")))?;
            pending.retain(|(n, _)| *n != node);
            *self
                .interrupt
                .blocked
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = pending.clone();
            match outcome {
                Ok(fetched) => tasks.extend(fetched.tasks),
                Err(err) => {
                    if err.is_connection() {
                        self.nodes.remove(&node);
                    }
                    error.get_or_insert(err);
                }
            }
            // One answered (tasks, a wake-up, the block's end): the others
            // end too, and the next round looks at every group.
            if retry.is_none() {
                retry = Some(Duration::ZERO);
            }
        }
        self.interrupt
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        match error {
            Some(err) if tasks.is_empty() => Err(err),
            _ => Ok(tasks),
        }
    }
}

/// The client's slot map, read first if it has none yet.
async fn cluster_slots(client: &Client) -> Result<SlotMap> {
    let crate::client::Target::Cluster(target) = client.target() else {
        return Err(Error::InvalidInput("not a cluster client".into()));
    };
    let slots = target.slots();
    if slots.is_empty() {
        client.refresh_slots().await
    } else {
        Ok(slots)
    }
}

/// Gives back tasks never started (no attempt counted); a failure leaves
/// them to their lease.
async fn give_back(client: &Client, tasks: &[Delivery]) {
    let mut by_queue: HashMap<&QueueName, Vec<(String, i64)>> = HashMap::new();
    for task in tasks {
        by_queue
            .entry(&task.queue)
            .or_default()
            .push((task.id.clone(), task.token));
    }
    for (queue, items) in by_queue {
        let _ = client.release(queue, &items).await;
    }
}

/// What a fetch gathers across its groups.
struct Round {
    tasks: Vec<Delivery>,
    acks: Vec<Settled>,
    nacks: Vec<NackOutcome>,
    unsent_acks: Vec<usize>,
    unsent_nacks: Vec<usize>,
    error: Option<Error>,
    settled_any: bool,
}

impl Round {
    fn new(fetch: &Fetch) -> Round {
        Round {
            tasks: Vec::new(),
            acks: Vec::with_capacity(fetch.acks.len()),
            nacks: Vec::with_capacity(fetch.nacks.len()),
            unsent_acks: Vec::new(),
            unsent_nacks: Vec::new(),
            error: None,
            settled_any: false,
        }
    }

    fn error(&mut self, err: Error) {
        self.error.get_or_insert(err);
    }

    fn settled(&mut self, group: &Group, acks: Vec<Settled>, nacks: Vec<NackOutcome>) {
        self.settled_any |= !group.acks.is_empty() || !group.nacks.is_empty();
        self.acks.extend(acks);
        self.nacks.extend(nacks);
    }

    fn unsent(&mut self, group: &Group) {
        self.unsent_acks.extend(&group.acks);
        self.unsent_nacks.extend(&group.nacks);
    }

    /// Settles a group's tasks with ACK and NACK commands, when the batch
    /// filled before its turn came.
    async fn settle_apart(&mut self, client: &Client, fetch: &Fetch, group: &Group) {
        for queue in &group.queues {
            let acks: Vec<usize> = group
                .acks
                .iter()
                .copied()
                .filter(|&i| fetch.acks[i].queue == *queue)
                .collect();
            if !acks.is_empty() {
                let items: Vec<(String, i64, Option<Vec<u8>>)> = acks
                    .iter()
                    .map(|&i| {
                        let a = &fetch.acks[i];
                        (a.id.clone(), a.token, a.result.clone())
                    })
                    .collect();
                match client.ack(queue, &items, fetch.keep).await {
                    Ok(outcomes) => {
                        self.settled_any = true;
                        self.acks.extend(outcomes);
                    }
                    Err(err) => {
                        self.unsent_acks.extend(acks);
                        self.error(err);
                    }
                }
            }
            let nacks: Vec<usize> = group
                .nacks
                .iter()
                .copied()
                .filter(|&i| fetch.nacks[i].queue == *queue)
                .collect();
            if !nacks.is_empty() {
                let items: Vec<(String, i64, Retry, String)> = nacks
                    .iter()
                    .map(|&i| {
                        let n = &fetch.nacks[i];
                        (n.id.clone(), n.token, n.retry, n.error.clone())
                    })
                    .collect();
                match client.nack(queue, &items).await {
                    Ok(outcomes) => {
                        self.settled_any = true;
                        self.nacks.extend(outcomes);
                    }
                    Err(err) => {
                        self.unsent_nacks.extend(nacks);
                        self.error(err);
                    }
                }
            }
        }
    }

    fn finish(self, fetch: &Fetch) -> FetchOutcome {
        let unsent_acks = self
            .unsent_acks
            .iter()
            .map(|&i| fetch.acks[i].clone())
            .collect();
        let unsent_nacks = self
            .unsent_nacks
            .iter()
            .map(|&i| fetch.nacks[i].clone())
            .collect();
        let result = match self.error {
            // Nothing came of it: the caller backs off and tries again.
            Some(err) if self.tasks.is_empty() && !self.settled_any => Err(err),
            _ => Ok(Fetched {
                tasks: self.tasks,
                acks: self.acks,
                nacks: self.nacks,
            }),
        };
        FetchOutcome {
            result,
            unsent_acks,
            unsent_nacks,
        }
    }
}
