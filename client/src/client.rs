//! `Client`: every module command over one multiplexed connection that
//! reconnects by itself. Clones share the connection, and concurrent calls
//! are pipelined on it.

use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushInfo,
    PushKind, RedisFuture, Value,
};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::broadcast;

use crate::cluster::{self, NodeAddr, SlotMap};
use crate::cluster_fetch::{ClusterFetcher, FetchOutcome, Interrupt};
use crate::partitions::Partitions;
use crate::sentinel::{self, SentinelConn, SentinelTarget};
use futures_util::future::join_all;

use crate::engine::{self, Engine, EngineChoice, EngineState};
use crate::error::{reply_within, Error, Result};
use crate::memory::MemoryPolicy;
use crate::protocol::*;
use crate::queue::QueueName;
use crate::schedule::{PendingSchedule, Schedule, ScheduleInfo, SetOutcome};

/// A repeated command that fails within this long after the first failure
/// waited for no new connection (the manager's reconnection waits 50 ms
/// before its second try): it ran on the broken one, and is sent once more.
/// A server that is down fails the repeat only after its reconnection
/// attempts, so the call is still repeated once there.
const STALE_REPEAT: Duration = Duration::from_millis(10);

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `valkey://`, `redis://`, `valkeys://`/`rediss://` or `unix://` URL.
    pub url: String,
    pub connect_timeout: Duration,
    /// How long one command may take before it fails (blocking fetches add
    /// their block time to this).
    pub response_timeout: Duration,
    /// Reconnection attempts per failed command, with exponential backoff
    /// (50 ms doubling to 2 s). The first connection is tried once: a
    /// server that is not running, a wrong password or a missing database
    /// fail `connect` at once.
    pub reconnect_retries: usize,
    /// The module, the scripts, or whichever the server supports.
    pub engine: EngineChoice,
    /// Enqueues return only once this many replicas hold them (`WAIT`),
    /// so a failover to a replica cannot lose an acknowledged enqueue.
    pub wait_replicas: Option<WaitReplicas>,
    /// Valkey Cluster: the URL names one or more of its nodes
    /// (`valkey://host1:6379,host2:6379`), from which the client learns
    /// the others. Commands go to the node serving their queue's slot;
    /// MOVED, ASK, TRYAGAIN and CLUSTERDOWN are followed or retried, and
    /// the slot map is refreshed after a failover or a reshard.
    pub cluster: bool,
    /// Queues spread over several partitions, each a queue of its own in
    /// its own slot (`partitions` module): enqueues go to the partition
    /// the task's id picks, workers fetch from every partition, and the
    /// queue's results, cancellation, dead letters and counts cover them
    /// all.
    pub partitions: Partitions,
}

/// How many replicas must confirm an enqueue, and how long to wait for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            reconnect_retries: 6,
            engine: EngineChoice::Auto,
            wait_replicas: None,
            cluster: false,
            partitions: Partitions::default(),
        }
    }
}

/// `WAIT <replicas> <timeout-ms>`: sent right behind a write on the
/// connection that made it, it returns once that many replicas hold
/// everything the connection wrote, or at the timeout with how many do.
fn wait_cmd(wait: WaitReplicas) -> redis::Cmd {
    let timeout_ms = u64::try_from(wait.timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(wait.replicas).arg(timeout_ms);
    cmd
}

/// `NotReplicated` unless `WAIT` counted enough replicas.
fn replicated(wait: WaitReplicas, reply: Value) -> Result<()> {
    let acked = match reply {
        Value::Int(n) => u64::try_from(n).unwrap_or(0),
        other => return Err(Error::protocol(format!("WAIT replied {other:?}"))),
    };
    if acked < u64::from(wait.replicas) {
        return Err(Error::NotReplicated {
            acked,
            wanted: u64::from(wait.replicas),
        });
    }
    Ok(())
}

/// Whether a lease operation found no such task.
fn no_task(settled: &Settled) -> bool {
    *settled == Settled::NoTask
}

/// TLS (`rediss://`, `valkeys://`) uses rustls with the ring provider;
/// rustls needs it chosen once per process.
fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another library of the process may have installed one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The client's first connection: one attempt, its failure explained.
async fn first_connection(
    redis: &redis::Client,
    options: &ClientOptions,
) -> Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout));
    redis
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|err| first_connection_error(redis.get_connection_info(), options, err))
}

fn first_connection_error(
    info: &redis::ConnectionInfo,
    options: &ClientOptions,
    err: redis::RedisError,
) -> Error {
    let addr = info.addr();
    let detail = if err.kind() == redis::ErrorKind::AuthenticationFailed {
        format!("{addr} refused the user name or password of the URL ({err})")
    } else if err.to_string().contains("switch database") {
        let db = info.redis_settings().db();
        format!("{addr} has no database {db} (the number after the URL's host): {err}")
    } else if err.is_connection_refusal() {
        format!("nothing accepts connections at {addr}, is the server running? ({err})")
    } else if err.is_timeout() {
        let timeout = options.connect_timeout;
        format!("{addr} did not answer within the connect timeout ({timeout:?}): {err}")
    } else {
        format!("{addr}: {err}")
    };
    Error::Connection(detail)
}

/// The connection a client sends its commands on.
#[derive(Clone)]
enum Conn {
    /// One server: one multiplexed connection that reconnects by itself.
    Single(ConnectionManager),
    /// Valkey Cluster: one multiplexed connection per node, routed by slot.
    Cluster(ClusterConnection),
    /// The primary the sentinels name, asked again after a loss.
    Sentinel(SentinelConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => match cluster::route_of(cmd) {
                Some(route) => Box::pin(conn.route_command(cmd.clone(), route)),
                None => conn.req_packed_command(cmd),
            },
            Conn::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
            Conn::Sentinel(conn) => conn.get_db(),
        }
    }
}

/// Where more connections go: the blocking fetcher's own.
#[derive(Clone)]
pub(crate) enum Target {
    Single(Box<redis::Client>),
    Cluster(Arc<ClusterTarget>),
    Sentinel(Arc<SentinelTarget>),
}

/// What a cluster client knows beyond its connection: the settings of
/// its first node (credentials, TLS), for connections to the others, the
/// slot map the blocking fetches go by, and the wake-ups the nodes push.
pub(crate) struct ClusterTarget {
    template: redis::ConnectionInfo,
    slots: std::sync::Mutex<SlotMap>,
    /// Names of the shard channels the connection subscribed to.
    subscribed: tokio::sync::Mutex<HashSet<Vec<u8>>>,
    /// A message on a subscribed shard channel: its channel's name.
    rung: broadcast::Sender<Vec<u8>>,
}

impl ClusterTarget {
    /// A client for one node, with the first node's settings.
    pub(crate) fn node(&self, node: &NodeAddr) -> Result<redis::Client> {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: node.host.clone(),
                port: node.port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(node.host.clone(), node.port),
        };
        redis::Client::open(self.template.clone().set_addr(addr)).map_err(Error::from)
    }

    pub(crate) fn slots(&self) -> SlotMap {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wake-ups from now on: the names of the shard channels rung.
    pub(crate) fn rings(&self) -> broadcast::Receiver<Vec<u8>> {
        self.rung.subscribe()
    }
}

/// Forwards the messages the cluster nodes push on subscribed shard
/// channels (`SMESSAGE <channel> <message>`) to the fetchers waiting for
/// them.
async fn forward_rings(
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
    rung: broadcast::Sender<Vec<u8>>,
) {
    while let Some(push) = pushes.recv().await {
        if push.kind != PushKind::SMessage {
            continue;
        }
        if let Some(Value::BulkString(channel)) = push.data.into_iter().next() {
            let _ = rung.send(channel);
        }
    }
}

#[derive(Clone)]
pub struct Client {
    conn: Conn,
    target: Target,
    options: ClientOptions,
    engine: EngineState,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &cluster::redact(&self.options.url))
            .field("engine", &self.engine.get())
            .finish()
    }
}

impl Client {
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_with(ClientOptions::new(url)).await
    }

    pub async fn connect_with(options: ClientOptions) -> Result<Client> {
        install_tls_provider();
        if sentinel::is_sentinel_url(&options.url) {
            return Client::connect_sentinel(options).await;
        }
        if options.cluster {
            return Client::connect_cluster(options).await;
        }
        let redis = redis::Client::open(options.url.as_str())
            .map_err(|e| Error::InvalidInput(format!("URL {:?}: {e}", options.url)))?;
        // One attempt first, without the manager's reconnection backoff: a
        // server that is not running, a wrong password or a database the
        // server does not have are not fixed by retrying for seconds.
        let mut first = first_connection(&redis, &options).await?;
        let module_loaded = match options.engine {
            EngineChoice::Scripts => false,
            _ => engine::has_module(&mut first).await?,
        };
        let engine = engine::resolve(options.engine, module_loaded, &options.url)?;
        drop(first);
        // Later connection losses are retried with backoff (a restart or a
        // failover is expected to come back).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(options.reconnect_retries)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let conn = redis
            .get_connection_manager_with_config(config)
            .await
            .map_err(Error::from)?;
        Ok(Client {
            conn: Conn::Single(conn),
            target: Target::Single(Box::new(redis)),
            engine: EngineState::new(engine, options.engine),
            options,
        })
    }

    /// A client of the primary the sentinels of the URL name (`sentinel`):
    /// asked once now, so that sentinels that do not answer, or name no
    /// primary, fail `connect` at once.
    async fn connect_sentinel(options: ClientOptions) -> Result<Client> {
        if options.cluster {
            return Err(Error::InvalidInput(
                "a sentinel URL names the sentinels of one primary, not a cluster's nodes".into(),
            ));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        let target = Arc::new(SentinelTarget::new(&options.url, config)?);
        let primary = target.primary().await?;
        let mut first = first_connection(&primary, &options).await?;
        let module_loaded = match options.engine {
            EngineChoice::Scripts => false,
            _ => engine::has_module(&mut first).await?,
        };
        let engine = engine::resolve(options.engine, module_loaded, &options.url)?;
        drop(first);
        Ok(Client {
            conn: Conn::Sentinel(SentinelConn(target.clone())),
            target: Target::Sentinel(target),
            engine: EngineState::new(engine, options.engine),
            options,
        })
    }

    /// A Valkey Cluster client: the crate's cluster connection (one
    /// multiplexed connection per node, following redirections and
    /// refreshing its slot map by itself), speaking RESP3 so that the
    /// scripts engine's sleepers can be woken on shard channels through
    /// it (see `cluster_fetch`).
    async fn connect_cluster(options: ClientOptions) -> Result<Client> {
        let seeds = cluster::seed_urls(&options.url)?;
        let infos = seeds
            .iter()
            .map(|url| url.as_str().into_connection_info())
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| {
                Error::InvalidInput(format!("URL {:?}: {e}", cluster::redact(&options.url)))
            })?;
        let template = infos[0].clone();
        let (push_tx, push_rx) = tokio::sync::mpsc::unbounded_channel();
        let retries = u32::try_from(options.reconnect_retries).unwrap_or(u32::MAX);
        let client = ClusterClientBuilder::new(infos)
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.response_timeout)
            // Waits of 50 ms doubling up to 2 s, as a single server's.
            .retries(retries)
            .retry_wait_formula(25, 2)
            .min_retry_wait(10)
            .max_retry_wait(2000)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .build()
            .map_err(|e| {
                Error::InvalidInput(format!("URL {:?}: {e}", cluster::redact(&options.url)))
            })?;
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(|err| first_connection_error(&template, &options, err))?;
        let module_loaded = match options.engine {
            EngineChoice::Scripts => false,
            _ => {
                let mut info = redis::cmd("COMMAND");
                info.arg("INFO").arg("VTASKS.FETCHN");
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                let reply = conn.route_command(info, routing).await?;
                matches!(reply, Value::Array(items) if matches!(items.first(), Some(v) if *v != Value::Nil))
            }
        };
        let engine = engine::resolve(options.engine, module_loaded, &options.url)?;
        let (rung, _) = broadcast::channel(1024);
        tokio::spawn(forward_rings(push_rx, rung.clone()));
        let target = Arc::new(ClusterTarget {
            template,
            slots: std::sync::Mutex::new(SlotMap::default()),
            subscribed: tokio::sync::Mutex::new(HashSet::new()),
            rung,
        });
        let client = Client {
            conn: Conn::Cluster(conn),
            target: Target::Cluster(target),
            engine: EngineState::new(engine, options.engine),
            options,
        };
        client.refresh_slots().await?;
        Ok(client)
    }

    /// Whether this client talks to a Valkey Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Whether the client finds its server through sentinels.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.conn, Conn::Sentinel(_))
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Reads the cluster's slot map again (`CLUSTER SLOTS`), from the
    /// first node that answers; the blocking fetches go by it.
    pub(crate) async fn refresh_slots(&self) -> Result<SlotMap> {
        let (Conn::Cluster(conn), Target::Cluster(target)) = (&self.conn, &self.target) else {
            return Err(Error::InvalidInput("not a cluster client".into()));
        };
        let mut nodes = target.slots().primaries();
        let seed = match target.template.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                NodeAddr {
                    host: host.clone(),
                    port: *port,
                }
            }
            _ => {
                return Err(Error::InvalidInput(
                    "a cluster is reached over TCP, not a unix socket".into(),
                ))
            }
        };
        let mut routes: Vec<(NodeAddr, RoutingInfo)> =
            nodes.drain(..).map(|n| (n.clone(), n.routing())).collect();
        // Any node the connection knows, when the known primaries fail
        // (a failover replaced them).
        routes.push((
            seed.clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        ));
        let mut last = Error::Connection("no node answered CLUSTER SLOTS".into());
        for (node, routing) in routes {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            let outcome = conn.clone().route_command(cmd, routing).await;
            match outcome {
                Ok(reply) => {
                    let map = SlotMap::from_reply(reply, &node)?;
                    if map.is_empty() {
                        last = Error::Server {
                            code: "CLUSTERDOWN".into(),
                            message: format!("{node} serves no slot yet"),
                        };
                        continue;
                    }
                    *target.slots.lock().unwrap_or_else(|p| p.into_inner()) = map.clone();
                    return Ok(map);
                }
                Err(err) => last = Error::from(err),
            }
        }
        Err(last)
    }

    /// Subscribes the cluster connection to these shard channels (once
    /// each): their messages arrive through `ClusterTarget::rings`.
    pub(crate) async fn ssubscribe(&self, channels: &[Vec<u8>]) -> Result<()> {
        let (Conn::Cluster(conn), Target::Cluster(target)) = (&self.conn, &self.target) else {
            return Ok(());
        };
        let mut subscribed = target.subscribed.lock().await;
        for channel in channels {
            if subscribed.contains(channel) {
                continue;
            }
            conn.clone()
                .ssubscribe(channel)
                .await
                .map_err(Error::from)?;
            subscribed.insert(channel.clone());
        }
        Ok(())
    }

    /// Sends a plain command to one node of the cluster.
    pub(crate) async fn send_to_node(&self, node: &NodeAddr, cmd: Cmd) -> Result<Value> {
        match &self.conn {
            Conn::Cluster(conn) => conn
                .clone()
                .route_command(cmd, node.routing())
                .await
                .map_err(Error::from),
            Conn::Single(_) | Conn::Sentinel(_) => self.send_plain(&cmd).await,
        }
    }

    /// The engine this client runs its commands with.
    pub fn engine(&self) -> Engine {
        self.engine.get()
    }

    /// How this client connects.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Where the URL points (a cluster's first node), and how to log in
    /// there.
    pub fn connection_info(&self) -> &redis::ConnectionInfo {
        match &self.target {
            Target::Single(redis) => redis.get_connection_info(),
            Target::Cluster(target) => &target.template,
            Target::Sentinel(target) => &target.template,
        }
    }

    /// Sends a command, once more if the connection broke (twice more if
    /// that repeat failed at once: see `STALE_REPEAT`): a connection
    /// that died while idle fails the first command sent on it, and the
    /// manager reconnects behind it. Every command sent this way is safe to
    /// repeat: ENQUEUE is idempotent by id, settlements are fenced by their
    /// token (a repeat is STALE), the rest read or set state.
    async fn send(&self, cmd: &redis::Cmd) -> Result<Value> {
        Ok(self.send_then(cmd, None).await?.0)
    }

    /// As `send`, with `then` (if given) pipelined right behind the command
    /// on the same connection; both replies.
    async fn send_then(
        &self,
        cmd: &redis::Cmd,
        then: Option<&redis::Cmd>,
    ) -> Result<(Value, Option<Value>)> {
        match self.send_once_then(cmd, then).await {
            Err(err) if err.is_connection() => {
                let repeated = Instant::now();
                match self.send_once_then(cmd, then).await {
                    // Failed at once, without waiting for a connection: the
                    // repeat ran on the connection whose failure it repeats
                    // (seen once in CI after `CLIENT KILL`: "broken pipe",
                    // the error of a connection whose reader has ended,
                    // when the first failure had not made the manager
                    // replace it). Its own failure does; once more.
                    Err(err) if err.is_connection() && repeated.elapsed() < STALE_REPEAT => {
                        self.send_once_then(cmd, then).await
                    }
                    outcome => outcome,
                }
            }
            Err(err) if then.is_some() && self.is_cluster() && cluster::is_redirect(&err) => {
                // The cluster connection follows a lone command's redirection
                // (and reads the new slot map), not one inside a pipeline:
                // the command goes alone, then `then` to the node now serving
                // its queue, on the connection that carried it.
                let reply = match self.send_once_then(cmd, None).await {
                    Err(err) if err.is_connection() => self.send_once_then(cmd, None).await,
                    outcome => outcome,
                }?
                .0;
                let queue = cmd
                    .args_iter()
                    .nth(1)
                    .and_then(|arg| match arg {
                        redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let Conn::Cluster(conn) = &self.conn else {
                    unreachable!("a cluster client")
                };
                let then_reply = conn
                    .clone()
                    .route_command(
                        then.expect("checked").clone(),
                        cluster::slot_route(cluster::key_slot(&queue)),
                    )
                    .await
                    .map_err(Error::from)?;
                Ok((reply, Some(then_reply)))
            }
            outcome => outcome,
        }
    }

    async fn send_once(&self, cmd: &redis::Cmd) -> Result<Value> {
        Ok(self.send_once_then(cmd, None).await?.0)
    }

    async fn send_once_then(
        &self,
        cmd: &redis::Cmd,
        then: Option<&redis::Cmd>,
    ) -> Result<(Value, Option<Value>)> {
        let mut conn = self.conn.clone();
        self.engine.query_then(&mut conn, cmd, then).await
    }

    /// Sends a plain Valkey command (not a `VTASKS.*` one). In a
    /// cluster, a command without keys goes to any primary.
    async fn send_plain(&self, cmd: &redis::Cmd) -> Result<Value> {
        match &self.conn {
            Conn::Cluster(conn) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                conn.clone()
                    .route_command(cmd.clone(), routing)
                    .await
                    .map_err(Error::from)
            }
            Conn::Single(_) | Conn::Sentinel(_) => {
                let mut conn = self.conn.clone();
                cmd.query_async(&mut conn).await.map_err(Error::from)
            }
        }
    }

    /// Whether the server has the vtasks module loaded (in a cluster: a
    /// primary has).
    pub async fn has_module(&self) -> Result<bool> {
        let reply = self
            .send_plain(redis::cmd("COMMAND").arg("INFO").arg("VTASKS.FETCHN"))
            .await?;
        Ok(
            matches!(reply, Value::Array(items) if matches!(items.first(), Some(v) if *v != Value::Nil)),
        )
    }

    /// The server's `maxmemory` and `maxmemory-policy` (`INFO memory`,
    /// which managed services answer too); None if INFO does not say.
    /// `MemoryPolicy::eviction_warning` tells whether the policy can lose
    /// task data.
    pub async fn memory_policy(&self) -> Result<Option<MemoryPolicy>> {
        let info = self.send_plain(redis::cmd("INFO").arg("memory")).await?;
        let text = match info {
            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Value::VerbatimString { text, .. } => text,
            Value::SimpleString(text) => text,
            other => return Err(Error::protocol(format!("INFO replied {other:?}"))),
        };
        Ok(MemoryPolicy::from_info(&text))
    }

    /// The partitions of the queues that have several (`ClientOptions`).
    pub fn partitions(&self) -> &Partitions {
        &self.options.partitions
    }

    /// Adds one task; false if a task with its id already exists. In a
    /// partitioned queue, the task goes to the partition its id picks.
    pub async fn enqueue(&self, queue: &QueueName, task: NewTask) -> Result<bool> {
        let tasks = [task];
        Ok(self.enqueue_many(queue, &tasks, None).await?[0])
    }

    /// Adds tasks atomically in one command; per task, whether it was
    /// added. In a partitioned queue each partition's tasks go in one
    /// command (atomic per partition), and `maxlen` caps each partition.
    pub async fn enqueue_many(
        &self,
        queue: &QueueName,
        tasks: &[NewTask],
        maxlen: Option<u64>,
    ) -> Result<Vec<bool>> {
        if !self.partitions().is_partitioned(queue) {
            return self.enqueue_one(queue, tasks, maxlen).await;
        }
        let groups = self.by_partition(queue, tasks.iter().map(|t| t.id.as_str()));
        let replies = join_all(groups.iter().map(|(part, at)| {
            let tasks: Vec<NewTask> = at.iter().map(|&i| tasks[i].clone()).collect();
            async move { self.enqueue_one(part, &tasks, maxlen).await }
        }))
        .await;
        let mut added = vec![false; tasks.len()];
        for ((_, at), reply) in groups.iter().zip(replies) {
            for (&i, ok) in at.iter().zip(reply?) {
                added[i] = ok;
            }
        }
        Ok(added)
    }

    async fn enqueue_one(
        &self,
        queue: &QueueName,
        tasks: &[NewTask],
        maxlen: Option<u64>,
    ) -> Result<Vec<bool>> {
        let command = Enqueue {
            queue,
            tasks,
            maxlen,
        };
        let cmd = command.to_cmd()?;
        let Some(wait) = self.options.wait_replicas else {
            return command.from_reply(self.send(&cmd).await?);
        };
        let (reply, wait_reply) = self.send_then(&cmd, Some(&wait_cmd(wait))).await?;
        let added = command.from_reply(reply)?;
        let wait_reply =
            wait_reply.ok_or_else(|| Error::protocol("no reply to the pipelined WAIT"))?;
        replicated(wait, wait_reply)?;
        Ok(added)
    }

    /// The partitions of `queue` the ids pick, each with the positions of
    /// its ids (in order).
    fn by_partition<'a>(
        &self,
        queue: &QueueName,
        ids: impl Iterator<Item = &'a str>,
    ) -> Vec<(QueueName, Vec<usize>)> {
        let mut groups: Vec<(QueueName, Vec<usize>)> = Vec::new();
        for (i, id) in ids.enumerate() {
            let part = self.partitions().of_task(queue, id);
            match groups.iter_mut().find(|(p, _)| *p == part) {
                Some((_, at)) => at.push(i),
                None => groups.push((part, vec![i])),
            }
        }
        groups
    }

    /// A FETCHN that does not block (blocking fetches hold a connection:
    /// use a `BlockingFetcher`). A partitioned queue stands for all its
    /// partitions; settlements go to the partition of their task.
    pub async fn fetch(&self, fetch: &Fetch) -> Result<Fetched> {
        if fetch.block.is_some() {
            return Err(Error::InvalidInput(
                "a blocking fetch needs its own connection: use Client::blocking_fetcher".into(),
            ));
        }
        let fetch = self.physical_fetch(fetch);
        // Not repeated: a lost reply's tasks stay leased until they expire.
        fetch.from_reply(self.send_once(&fetch.to_cmd()?).await?)
    }

    /// The fetch with partitioned queues replaced by their partitions, in
    /// order, and settlements addressed to their tasks' partitions.
    pub(crate) fn physical_fetch(&self, fetch: &Fetch) -> Fetch {
        let partitions = self.partitions();
        if partitions.is_empty() {
            return fetch.clone();
        }
        let mut physical = fetch.clone();
        physical.queues = fetch
            .queues
            .iter()
            .flat_map(|q| partitions.all(q))
            .collect();
        for ack in &mut physical.acks {
            ack.queue = partitions.of_task(&ack.queue, &ack.id);
        }
        for nack in &mut physical.nacks {
            nack.queue = partitions.of_task(&nack.queue, &nack.id);
        }
        physical
    }

    /// Runs `one` on each partition of `queue` that `ids` pick, and puts
    /// the per-item replies back in the items' order. Items `missing` in
    /// their partition are looked for in partition 0, the queue itself,
    /// where tasks enqueued before the queue was partitioned stay.
    async fn per_partition<T, R, F, Fut>(
        &self,
        queue: &QueueName,
        items: &[T],
        id_of: impl Fn(&T) -> &str,
        missing: impl Fn(&R) -> bool,
        one: F,
    ) -> Result<Vec<R>>
    where
        T: Clone,
        R: Clone,
        F: Fn(QueueName, Vec<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<R>>>,
    {
        let groups = self.by_partition(queue, items.iter().map(&id_of));
        let replies =
            join_all(groups.iter().map(|(part, at)| {
                one(part.clone(), at.iter().map(|&i| items[i].clone()).collect())
            }))
            .await;
        let mut out: Vec<Option<R>> = vec![None; items.len()];
        let mut elsewhere = Vec::new();
        for ((part, at), reply) in groups.iter().zip(replies) {
            let reply = reply?;
            if reply.len() != at.len() {
                return Err(Error::protocol("a reply for another number of items"));
            }
            for (&i, r) in at.iter().zip(reply) {
                if part != queue && missing(&r) {
                    elsewhere.push(i);
                }
                out[i] = Some(r);
            }
        }
        if !elsewhere.is_empty() {
            let again = one(
                queue.clone(),
                elsewhere.iter().map(|&i| items[i].clone()).collect(),
            )
            .await?;
            for (&i, r) in elsewhere.iter().zip(again) {
                if !missing(&r) {
                    out[i] = Some(r);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every item answered"))
            .collect())
    }

    pub async fn ack(
        &self,
        queue: &QueueName,
        items: &[(String, i64, Option<Vec<u8>>)],
        keep: Option<Duration>,
    ) -> Result<Vec<Settled>> {
        self.per_partition(
            queue,
            items,
            |i| &i.0,
            no_task,
            |queue, items| async move {
                let cmd = AckCmd {
                    queue: &queue,
                    items: &items,
                    keep,
                }
                .to_cmd();
                settled_list(self.send(&cmd).await?)
            },
        )
        .await
    }

    pub async fn nack(
        &self,
        queue: &QueueName,
        items: &[(String, i64, Retry, String)],
    ) -> Result<Vec<NackOutcome>> {
        self.per_partition(
            queue,
            items,
            |i| &i.0,
            |r: &NackOutcome| *r == NackOutcome::Refused(Settled::NoTask),
            |queue, items| async move {
                let cmd = NackCmd {
                    queue: &queue,
                    items: &items,
                }
                .to_cmd();
                nack_list(self.send(&cmd).await?)
            },
        )
        .await
    }

    /// Renews leases: each deadline becomes now + `lease`.
    pub async fn extend(
        &self,
        queue: &QueueName,
        items: &[(String, i64)],
        lease: Duration,
    ) -> Result<Vec<Settled>> {
        self.per_partition(
            queue,
            items,
            |i| &i.0,
            no_task,
            |queue, items| async move {
                let cmd = LeaseCmd {
                    queue: &queue,
                    items: &items,
                    extend_by: Some(lease),
                }
                .to_cmd();
                settled_list(self.send(&cmd).await?)
            },
        )
        .await
    }

    /// Gives back leased tasks that were never started.
    pub async fn release(
        &self,
        queue: &QueueName,
        items: &[(String, i64)],
    ) -> Result<Vec<Settled>> {
        self.per_partition(
            queue,
            items,
            |i| &i.0,
            no_task,
            |queue, items| async move {
                let cmd = LeaseCmd {
                    queue: &queue,
                    items: &items,
                    extend_by: None,
                }
                .to_cmd();
                settled_list(self.send(&cmd).await?)
            },
        )
        .await
    }

    /// A task's state (in a partitioned queue, from the partition its id
    /// picks); None if there is no such task.
    pub async fn get(&self, queue: &QueueName, id: &str) -> Result<Option<TaskInfo>> {
        let part = self.partitions().of_task(queue, id);
        let info = self.get_one(&part, id).await?;
        if info.is_none() && part != *queue {
            // Enqueued before the queue was partitioned.
            return self.get_one(queue, id).await;
        }
        Ok(info)
    }

    async fn get_one(&self, queue: &QueueName, id: &str) -> Result<Option<TaskInfo>> {
        TaskInfo::from_reply(
            self.send(redis::cmd("VTASKS.GET").arg(queue.wire()).arg(id))
                .await?,
        )
    }

    /// A queue's counts. For a partitioned queue, the sums over its
    /// partitions, except `paused` (1 if any partition is paused) and
    /// `oldest_ready_age_ms` (the oldest of them); `NOQUEUE` only if no
    /// partition was ever used.
    pub async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let parts = self.partitions().all(queue);
        if parts.len() == 1 {
            return self.stats_one(queue).await;
        }
        let replies = join_all(parts.iter().map(|p| self.stats_one(p))).await;
        let mut total: Option<QueueStats> = None;
        let mut missing = None;
        for reply in replies {
            let stats = match reply {
                Ok(stats) => stats,
                Err(err @ Error::Server { .. }) if err.code() == Some("NOQUEUE") => {
                    missing.get_or_insert(err);
                    continue;
                }
                Err(err) => return Err(err),
            };
            match &mut total {
                None => total = Some(stats),
                Some(total) => {
                    for (name, value) in stats.values {
                        match total.values.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, sum)) => {
                                *sum = match name.as_str() {
                                    "paused" | "oldest_ready_age_ms" => (*sum).max(value),
                                    _ => *sum + value,
                                }
                            }
                            None => total.values.push((name, value)),
                        }
                    }
                }
            }
        }
        match (total, missing) {
            (Some(total), _) => Ok(total),
            (None, Some(err)) => Err(err),
            (None, None) => Err(Error::protocol("no partition answered STATS")),
        }
    }

    async fn stats_one(&self, queue: &QueueName) -> Result<QueueStats> {
        QueueStats::from_reply(
            self.send(redis::cmd("VTASKS.STATS").arg(queue.wire()))
                .await?,
        )
    }

    /// Dead-lettered tasks, oldest first. For a partitioned queue, those of
    /// every partition merged by the time they died.
    pub async fn dead_letters(
        &self,
        queue: &QueueName,
        offset: u64,
        count: u64,
    ) -> Result<Vec<DeadTask>> {
        let parts = self.partitions().all(queue);
        if parts.len() == 1 {
            return self.dead_letters_one(queue, offset, count).await;
        }
        // The first offset + count of each partition hold the page.
        let wanted = offset.saturating_add(count);
        let lists = join_all(parts.iter().map(|p| self.dead_letters_upto(p, wanted))).await;
        let mut all = Vec::new();
        for list in lists {
            match list {
                Ok(list) => all.extend(list),
                Err(err) if err.code() == Some("NOQUEUE") => {}
                Err(err) => return Err(err),
            }
        }
        all.sort_by(|a, b| a.dead_at.cmp(&b.dead_at).then_with(|| a.id.cmp(&b.id)));
        Ok(all
            .into_iter()
            .skip(offset as usize)
            .take(count as usize)
            .collect())
    }

    /// The first `wanted` dead letters of one queue, page by page.
    async fn dead_letters_upto(&self, queue: &QueueName, wanted: u64) -> Result<Vec<DeadTask>> {
        let page = vtasks_protocol::MAX_ENQUEUE_BATCH as u64;
        let mut all = Vec::new();
        while (all.len() as u64) < wanted {
            let count = (wanted - all.len() as u64).min(page);
            let list = self
                .dead_letters_one(queue, all.len() as u64, count)
                .await?;
            let done = (list.len() as u64) < count;
            all.extend(list);
            if done {
                break;
            }
        }
        Ok(all)
    }

    async fn dead_letters_one(
        &self,
        queue: &QueueName,
        offset: u64,
        count: u64,
    ) -> Result<Vec<DeadTask>> {
        let mut cmd = redis::cmd("VTASKS.DEADLIST");
        cmd.arg(queue.wire())
            .arg("OFFSET")
            .arg(offset)
            .arg("COUNT")
            .arg(count);
        dead_list(self.send(&cmd).await?)
    }

    /// Puts dead tasks back (all of them when `ids` is None, in batches).
    pub async fn requeue_dead(&self, queue: &QueueName, ids: Option<&[String]>) -> Result<u64> {
        self.dead_bulk("VTASKS.REQUEUE", queue, ids).await
    }

    /// Deletes dead tasks (all of them when `ids` is None, in batches).
    pub async fn purge_dead(&self, queue: &QueueName, ids: Option<&[String]>) -> Result<u64> {
        self.dead_bulk("VTASKS.PURGE", queue, ids).await
    }

    async fn dead_bulk(
        &self,
        name: &str,
        queue: &QueueName,
        ids: Option<&[String]>,
    ) -> Result<u64> {
        let targets: Vec<(QueueName, Option<Vec<String>>)> = match ids {
            None => self
                .partitions()
                .all(queue)
                .into_iter()
                .map(|p| (p, None))
                .collect(),
            Some(ids) => self
                .by_partition(queue, ids.iter().map(String::as_str))
                .into_iter()
                .map(|(p, at)| (p, Some(at.iter().map(|&i| ids[i].clone()).collect())))
                .collect(),
        };
        let mut total = 0;
        for (part, ids) in targets {
            match self.dead_bulk_one(name, &part, ids.as_deref()).await {
                Ok(moved) => total += moved,
                Err(err) if err.code() == Some("NOQUEUE") && ids.is_none() && part != *queue => {}
                Err(err) => return Err(err),
            }
        }
        Ok(total)
    }

    async fn dead_bulk_one(
        &self,
        name: &str,
        queue: &QueueName,
        ids: Option<&[String]>,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let mut cmd = redis::cmd(name);
            cmd.arg(queue.wire());
            match ids {
                None => cmd.arg("ALL"),
                Some([]) => return Ok(0),
                Some(ids) => cmd.arg("IDS").arg(ids),
            };
            let moved = int(self.send(&cmd).await?)? as u64;
            total += moved;
            if ids.is_some() || moved == 0 {
                return Ok(total);
            }
        }
    }

    /// Adds or changes a periodic schedule (`VTASKS.SCHEDULE`); its next
    /// occurrence is computed from this machine's clock. Refused before
    /// sending if invalid (`Schedule::validate`).
    pub async fn set_schedule(&self, queue: &QueueName, schedule: &Schedule) -> Result<SetOutcome> {
        let cmd = schedule.to_cmd(queue, crate::schedule::now_ms())?;
        Schedule::outcome(self.send(&cmd).await?)
    }

    /// Removes schedules by name; how many there were.
    pub async fn unschedule(&self, queue: &QueueName, names: &[String]) -> Result<u64> {
        if names.is_empty() {
            return Ok(0);
        }
        let reply = self
            .send(redis::cmd("VTASKS.UNSCHEDULE").arg(queue.wire()).arg(names))
            .await?;
        Ok(int(reply)? as u64)
    }

    /// A queue's schedules, by name, with their next and last runs.
    pub async fn schedules(&self, queue: &QueueName) -> Result<Vec<ScheduleInfo>> {
        ScheduleInfo::list_from_reply(
            self.send(redis::cmd("VTASKS.SCHEDULES").arg(queue.wire()))
                .await?,
        )
    }

    /// Pauses the queue (every partition of a partitioned one).
    pub async fn pause(&self, queue: &QueueName) -> Result<()> {
        for part in self.partitions().all(queue) {
            self.send(redis::cmd("VTASKS.PAUSE").arg(part.wire()))
                .await?;
        }
        Ok(())
    }

    pub async fn resume(&self, queue: &QueueName) -> Result<()> {
        for part in self.partitions().all(queue) {
            self.send(redis::cmd("VTASKS.RESUME").arg(part.wire()))
                .await?;
        }
        Ok(())
    }

    /// Cancels waiting tasks; per id, whether it was cancelled.
    pub async fn cancel(&self, queue: &QueueName, ids: &[String]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let not_waiting = |cancelled: &bool| !cancelled;
        self.per_partition(
            queue,
            ids,
            String::as_str,
            not_waiting,
            |queue, ids| async move {
                let reply = self
                    .send(redis::cmd("VTASKS.CANCEL").arg(queue.wire()).arg(&ids))
                    .await?;
                array(reply)?
                    .into_iter()
                    .map(|v| int(v).map(|n| n == 1))
                    .collect()
            },
        )
        .await
    }

    /// Deletes up to 10,000 (`BULK_BATCH`) of a queue's waiting tasks,
    /// ready then delayed (`VTASKS.CLEAR`); leased, done and dead tasks
    /// stay. Returns how many; call again until it returns 0. Each deleted
    /// task is as if cancelled (`cancel`): its id is free again and the
    /// server counts it in `cancelled`. A `NOQUEUE` server error if the
    /// queue was never used. A partitioned queue: up to that many from
    /// each partition.
    pub async fn clear(&self, queue: &QueueName) -> Result<u64> {
        let mut total = 0;
        let partitioned = self.partitions().count(queue) > 1;
        for part in self.partitions().all(queue) {
            let outcome = self
                .send(redis::cmd("VTASKS.CLEAR").arg(part.wire()))
                .await
                .and_then(int);
            match outcome {
                Ok(n) => total += n as u64,
                // A partition no task went to yet (the first one, named
                // as the queue, included).
                Err(err) if err.code() == Some("NOQUEUE") && partitioned => {}
                Err(err) => return Err(err),
            }
        }
        Ok(total)
    }

    /// A second connection for fetches that block server-side (in a
    /// cluster, one per node whose queues it waits on).
    pub fn blocking_fetcher(&self) -> BlockingFetcher {
        BlockingFetcher {
            client: self.clone(),
            options: self.options.clone(),
            engine: self.engine.clone(),
            conn: None,
            id: None,
            cluster: None,
            unblock_refused: false,
        }
    }

    /// Ends the server-side wait of the connection with this `CLIENT ID`
    /// (its FETCHN returns as if its block timed out).
    pub async fn unblock(&self, connection_id: i64) -> Result<bool> {
        let reply = self
            .send_plain(redis::cmd("CLIENT").arg("UNBLOCK").arg(connection_id))
            .await?;
        Ok(int(reply)? == 1)
    }
}

/// A connection of its own for `FETCHN ... BLOCK`, which holds the
/// connection while it waits. Reconnects on the next call after a failure.
pub struct BlockingFetcher {
    client: Client,
    options: ClientOptions,
    engine: EngineState,
    conn: Option<MultiplexedConnection>,
    id: Option<i64>,
    /// In a cluster: the connections and state of the per-node waits.
    cluster: Option<ClusterFetcher>,
    /// The server refused `CLIENT UNBLOCK` (an ACL without it): a scripts
    /// sleep then ends on the server's own timeout.
    unblock_refused: bool,
}

/// Ends a worker's fetch early (see `WorkerCore`): `CLIENT UNBLOCK` of
/// the fetch connection, or in a cluster of every node connection waiting.
#[derive(Clone)]
pub(crate) enum Interrupter {
    Single(Client, i64),
    Cluster(Client, Arc<Interrupt>),
}

impl Interrupter {
    pub(crate) async fn interrupt(&self) {
        match self {
            Interrupter::Single(client, id) => {
                let _ = client.unblock(*id).await;
            }
            Interrupter::Cluster(client, interrupt) => interrupt.interrupt(client).await,
        }
    }
}

impl BlockingFetcher {
    /// Connects if needed; returns the connection's `CLIENT ID`, with which
    /// `Client::unblock` can end a wait early. A cluster client's fetcher
    /// connects to each node when it first fetches from its queues, and
    /// returns a number that changes when one of them had to reconnect.
    pub async fn connect(&mut self) -> Result<i64> {
        if let Some(cluster) = &self.cluster {
            return Ok(cluster.generation());
        }
        if let (Some(_), Some(id)) = (&self.conn, self.id) {
            return Ok(id);
        }
        // The block time bounds the wait; `fetch` adds its own timeout for
        // a server that stopped answering.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(None);
        let redis = match &self.client.target {
            Target::Single(redis) => redis.as_ref().clone(),
            // Asked each time: a fetch connection is opened again after it
            // failed, perhaps because the primary failed over.
            Target::Sentinel(target) => target.primary().await?,
            Target::Cluster(_) => {
                return Err(Error::InvalidInput(
                    "a cluster client's fetcher connects to each node it waits on".into(),
                ))
            }
        };
        let mut conn = redis
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(Error::from)?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .map_err(Error::from)?;
        self.conn = Some(conn);
        self.id = Some(id);
        Ok(id)
    }

    /// Connects to what fetching from `queues` needs (`connect`).
    pub(crate) async fn connect_for(&mut self, queues: &[QueueName]) -> Result<i64> {
        if self.client.is_cluster() {
            let client = self.client.clone();
            return self
                .cluster
                .get_or_insert_with(ClusterFetcher::default)
                .connect_for(&client, queues)
                .await;
        }
        self.connect().await
    }

    /// What ends the next fetch early (`connect_for` first).
    pub(crate) fn interrupter(&self) -> Interrupter {
        match &self.cluster {
            Some(cluster) => {
                cluster.interrupt.reset();
                Interrupter::Cluster(self.client.clone(), cluster.interrupt.clone())
            }
            None => Interrupter::Single(self.client.clone(), self.id.unwrap_or_default()),
        }
    }

    /// A worker's fetch: as `fetch`, and, in a cluster (where the queues
    /// are fetched group by group), the settlements it could not deliver.
    pub(crate) async fn fetch_for_worker(&mut self, fetch: &Fetch) -> FetchOutcome {
        if self.client.is_cluster() {
            let client = self.client.clone();
            let engine = self.engine.clone();
            return self
                .cluster
                .get_or_insert_with(ClusterFetcher::default)
                .fetch(&client, &engine, fetch)
                .await;
        }
        let result = self.fetch_single(fetch).await;
        let (unsent_acks, unsent_nacks) = match &result {
            Ok(_) => (Vec::new(), Vec::new()),
            Err(_) => (fetch.acks.clone(), fetch.nacks.clone()),
        };
        FetchOutcome {
            result,
            unsent_acks,
            unsent_nacks,
        }
    }

    /// A FETCHN, blocking for up to `fetch.block` when nothing is ready.
    /// In a cluster the queues may live in several slots: they are fetched
    /// slot by slot (see `cluster_fetch`); settlements that could not be
    /// delivered then fail the call.
    pub async fn fetch(&mut self, fetch: &Fetch) -> Result<Fetched> {
        if self.client.is_cluster() {
            let outcome = self.fetch_for_worker(fetch).await;
            if outcome.result.is_ok()
                && !(outcome.unsent_acks.is_empty() && outcome.unsent_nacks.is_empty())
            {
                return Err(Error::Connection(
                    "some settlements of the fetch could not be delivered".into(),
                ));
            }
            return outcome.result;
        }
        self.fetch_single(fetch).await
    }

    async fn fetch_single(&mut self, fetch: &Fetch) -> Result<Fetched> {
        self.connect().await?;
        let outcome = match (self.engine.get(), fetch.block) {
            (Engine::Scripts, Some(block)) => self.fetch_sleeping(fetch, block).await,
            _ => self
                .fetch_once(fetch, None)
                .await
                .map(|(fetched, _)| fetched),
        };
        // A server that answers READONLY is a replica now (a failover
        // through sentinels): the next fetch asks them where the primary is.
        let demoted = self.client.is_sentinel()
            && matches!(&outcome, Err(err) if err.code() == Some("READONLY"));
        if outcome.as_ref().is_err_and(Error::is_connection) || demoted {
            self.conn = None;
            self.id = None;
        }
        outcome
    }

    /// One FETCHN (blocking server-side with the module); with the scripts,
    /// also the sleep the script asks for when nothing was ready. `slept`
    /// is the ticket of the sleep this fetch ends.
    async fn fetch_once(
        &mut self,
        fetch: &Fetch,
        slept: Option<&[u8]>,
    ) -> Result<(Fetched, Option<Sleep>)> {
        let mut cmd = fetch.to_cmd()?;
        if let Some(ticket) = slept {
            cmd.arg("SLEPT").arg(ticket);
        }
        let limit = match self.engine.get() {
            Engine::Module => fetch.block.unwrap_or_default(),
            Engine::Scripts => Duration::ZERO,
        } + self.options.response_timeout;
        let conn = self.conn.as_mut().ok_or_else(not_connected)?;
        let reply = reply_within(limit, self.engine.query(conn, &cmd)).await?;
        let (reply, pending) = crate::schedule::split_pending(reply);
        if !pending.is_empty() {
            self.advance_schedules(&pending).await?;
        }
        let (reply, sleep) = split_sleep(reply);
        Ok((fetch.from_reply(reply)?, sleep))
    }

    /// A blocking fetch with the scripts engine, which cannot block inside
    /// the server: fetch; if nothing was ready, sleep in `BLPOP` on the
    /// queues' wake lists (an enqueue pushes a token) for as long as the
    /// script says (until the block ends or the queues' next delayed task
    /// or lease deadline), then fetch again. The settlements go with the
    /// first fetch only.
    async fn fetch_sleeping(&mut self, fetch: &Fetch, block: Duration) -> Result<Fetched> {
        let started = Instant::now();
        let (mut fetched, mut sleep) = self.fetch_once(fetch, None).await?;
        let mut again = fetch.clone();
        again.acks.clear();
        again.nacks.clear();
        let wake_keys: Vec<String> = fetch
            .queues
            .iter()
            .map(|q| format!("{}:wake", q.wire()))
            .collect();
        while let Some(Sleep { ms, ticket }) = sleep.take() {
            if !fetched.tasks.is_empty() {
                break;
            }
            let remaining = if block.is_zero() {
                Duration::MAX // BLOCK 0 waits until there is work
            } else {
                block.saturating_sub(started.elapsed())
            };
            let wait = Duration::from_millis(ms).min(remaining);
            if wait.is_zero() {
                break;
            }
            // The script asked to wake before the block ends: a delayed
            // task's time, or a lease's deadline.
            let at_deadline = wait < remaining;
            let slept_from = Instant::now();
            let conn = self.conn.as_mut().ok_or_else(not_connected)?;
            let mut blpop = redis::cmd("BLPOP");
            blpop
                .arg(&wake_keys)
                .arg(crate::scripts::blpop_timeout(wait));
            let limit = wait + self.options.response_timeout;
            let sleeping = reply_within(limit, async {
                blpop.query_async::<Value>(conn).await.map_err(Error::from)
            });
            let waker = match (at_deadline, self.id) {
                (true, Some(id)) if !self.unblock_refused => Some((&self.client, id)),
                _ => None,
            };
            let (popped, refused) = sleep_until_deadline(sleeping, wait, waker).await;
            self.unblock_refused |= refused;
            let popped = popped?;
            // Nothing popped well before the wait was over: CLIENT UNBLOCK
            // ended it (a worker stopping), which ends the fetch as well.
            let unblocked =
                popped == Value::Nil && slept_from.elapsed() + Duration::from_millis(50) < wait;
            again.block = Some(if block.is_zero() {
                Duration::ZERO
            } else {
                block
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1))
            });
            if unblocked {
                again.block = None; // one last look, which also ends the sleep
            }
            let (next, next_sleep) = self.fetch_once(&again, Some(&ticket)).await?;
            fetched.tasks = next.tasks;
            sleep = next_sleep;
            if unblocked {
                break;
            }
        }
        Ok(fetched)
    }
}

/// A scripts sleep (`BLPOP`) that must end at a task's deadline. The server
/// times out a blocked command only on its clock tick, ten times a second
/// at the default `hz 10`: a delayed task promoted when BLPOP's own timeout
/// fired ran up to 100 ms late, where the module's timer is on time. So when
/// `wait` is over on this side, `waker` (the command connection and the
/// sleeping connection's id) ends the sleep with `CLIENT UNBLOCK`, as if it
/// had timed out. The unblock's reply is awaited before the sleep's, so it
/// cannot reach a later sleep of the same connection. Returns the sleep's
/// reply, and whether the server refused the unblock (not tried again).
async fn sleep_until_deadline(
    sleeping: impl std::future::Future<Output = Result<Value>>,
    wait: Duration,
    waker: Option<(&Client, i64)>,
) -> (Result<Value>, bool) {
    tokio::pin!(sleeping);
    let Some((client, id)) = waker else {
        return (sleeping.await, false);
    };
    tokio::select! {
        popped = &mut sleeping => return (popped, false),
        _ = tokio::time::sleep(wait) => {}
    }
    // The server may have timed it out or woken it meanwhile: then the
    // unblock finds nothing to end.
    let (unblocked, popped) = tokio::join!(client.unblock(id), &mut sleeping);
    let refused = matches!(unblocked, Err(Error::Server { .. }));
    (popped, refused)
}

impl BlockingFetcher {
    /// Sets the next occurrence of schedules the scripts engine ran
    /// (`VTASKS.SCHEDULENEXT`, a compare-and-set: another worker may have
    /// done it first). A timing this client cannot read stays pending.
    async fn advance_schedules(&mut self, pending: &[PendingSchedule]) -> Result<()> {
        for schedule in pending {
            let cmd = match schedule.next_cmd() {
                Ok(cmd) => cmd,
                Err(err) => {
                    log_unreadable(schedule, &err);
                    continue;
                }
            };
            let conn = self.conn.as_mut().ok_or_else(not_connected)?;
            self.engine.query(conn, &cmd).await?;
        }
        Ok(())
    }
}

/// A schedule whose timing this client cannot read (another client wrote
/// it): said once a minute at most, on standard error.
fn log_unreadable(schedule: &PendingSchedule, err: &crate::schedule::SpecError) {
    use std::sync::Mutex;
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
        return;
    }
    *last = Some(Instant::now());
    eprintln!(
        "vtasks: schedule {} of queue {} cannot be computed: {err}",
        String::from_utf8_lossy(&schedule.name),
        String::from_utf8_lossy(&schedule.queue)
    );
}

/// What the scripts engine's FETCHN asks for when nothing was ready.
pub(crate) struct Sleep {
    pub(crate) ms: u64,
    /// Hands back with `SLEPT` to end the sleep.
    pub(crate) ticket: Vec<u8>,
}

fn not_connected() -> Error {
    Error::Connection("the blocking connection is not open".into())
}

/// The scripts engine's FETCHN reply carries two more elements when BLOCK
/// was given and nothing was ready: the ms to sleep and the sleeper's
/// ticket. The module's reply has three.
pub(crate) fn split_sleep(reply: Value) -> (Value, Option<Sleep>) {
    match reply {
        Value::Array(mut items) if items.len() == 5 => {
            let ticket = items.pop();
            let ms = items.pop();
            let sleep = match (ms, ticket) {
                (Some(Value::Int(ms)), Some(Value::BulkString(ticket))) => Some(Sleep {
                    ms: ms.max(1) as u64,
                    ticket,
                }),
                _ => None,
            };
            (Value::Array(items), sleep)
        }
        other => (other, None),
    }
}
