//! `Client`: every module command over one multiplexed connection that
//! reconnects by itself. Clones share the connection, and concurrent calls
//! are pipelined on it.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};

use crate::engine::{self, Engine, EngineChoice, EngineState};
use crate::error::{Error, Result};
use crate::memory::MemoryPolicy;
use crate::protocol::*;
use crate::queue::QueueName;
use crate::schedule::{PendingSchedule, Schedule, ScheduleInfo, SetOutcome};

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

#[derive(Clone)]
pub struct Client {
    conn: ConnectionManager,
    redis: redis::Client,
    options: ClientOptions,
    engine: EngineState,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.options.url)
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
            conn,
            redis,
            engine: EngineState::new(engine, options.engine),
            options,
        })
    }

    /// The engine this client runs its commands with.
    pub fn engine(&self) -> Engine {
        self.engine.get()
    }

    /// How this client connects.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Where the URL points, and how to log in there.
    pub fn connection_info(&self) -> &redis::ConnectionInfo {
        self.redis.get_connection_info()
    }

    /// Sends a command, once more if the connection broke: a connection
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
            Err(err) if err.is_connection() => self.send_once_then(cmd, then).await,
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

    /// Sends a plain Valkey command (not a `VTASKS.*` one).
    async fn send_plain(&self, cmd: &redis::Cmd) -> Result<Value> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(Error::from)
    }

    /// Whether the server has the vtasks module loaded.
    pub async fn has_module(&self) -> Result<bool> {
        engine::has_module(&mut self.conn.clone()).await
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

    /// Adds one task; false if a task with its id already exists.
    pub async fn enqueue(&self, queue: &QueueName, task: NewTask) -> Result<bool> {
        let tasks = [task];
        Ok(self.enqueue_many(queue, &tasks, None).await?[0])
    }

    /// Adds tasks atomically in one command; per task, whether it was added.
    pub async fn enqueue_many(
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

    /// A FETCHN that does not block (blocking fetches hold a connection:
    /// use a `BlockingFetcher`).
    pub async fn fetch(&self, fetch: &Fetch) -> Result<Fetched> {
        if fetch.block.is_some() {
            return Err(Error::InvalidInput(
                "a blocking fetch needs its own connection: use Client::blocking_fetcher".into(),
            ));
        }
        // Not repeated: a lost reply's tasks stay leased until they expire.
        fetch.from_reply(self.send_once(&fetch.to_cmd()?).await?)
    }

    pub async fn ack(
        &self,
        queue: &QueueName,
        items: &[(String, i64, Option<Vec<u8>>)],
        keep: Option<Duration>,
    ) -> Result<Vec<Settled>> {
        settled_list(self.send(&AckCmd { queue, items, keep }.to_cmd()).await?)
    }

    pub async fn nack(
        &self,
        queue: &QueueName,
        items: &[(String, i64, Retry, String)],
    ) -> Result<Vec<NackOutcome>> {
        nack_list(self.send(&NackCmd { queue, items }.to_cmd()).await?)
    }

    /// Renews leases: each deadline becomes now + `lease`.
    pub async fn extend(
        &self,
        queue: &QueueName,
        items: &[(String, i64)],
        lease: Duration,
    ) -> Result<Vec<Settled>> {
        let cmd = LeaseCmd {
            queue,
            items,
            extend_by: Some(lease),
        };
        settled_list(self.send(&cmd.to_cmd()).await?)
    }

    /// Gives back leased tasks that were never started.
    pub async fn release(
        &self,
        queue: &QueueName,
        items: &[(String, i64)],
    ) -> Result<Vec<Settled>> {
        let cmd = LeaseCmd {
            queue,
            items,
            extend_by: None,
        };
        settled_list(self.send(&cmd.to_cmd()).await?)
    }

    pub async fn get(&self, queue: &QueueName, id: &str) -> Result<Option<TaskInfo>> {
        TaskInfo::from_reply(
            self.send(redis::cmd("VTASKS.GET").arg(queue.wire()).arg(id))
                .await?,
        )
    }

    pub async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        QueueStats::from_reply(
            self.send(redis::cmd("VTASKS.STATS").arg(queue.wire()))
                .await?,
        )
    }

    pub async fn dead_letters(
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

    pub async fn pause(&self, queue: &QueueName) -> Result<()> {
        self.send(redis::cmd("VTASKS.PAUSE").arg(queue.wire()))
            .await
            .map(drop)
    }

    pub async fn resume(&self, queue: &QueueName) -> Result<()> {
        self.send(redis::cmd("VTASKS.RESUME").arg(queue.wire()))
            .await
            .map(drop)
    }

    /// Cancels waiting tasks; per id, whether it was cancelled.
    pub async fn cancel(&self, queue: &QueueName, ids: &[String]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self
            .send(redis::cmd("VTASKS.CANCEL").arg(queue.wire()).arg(ids))
            .await?;
        array(reply)?
            .into_iter()
            .map(|v| int(v).map(|n| n == 1))
            .collect()
    }

    /// Deletes up to 10,000 (`BULK_BATCH`) of a queue's waiting tasks,
    /// ready then delayed (`VTASKS.CLEAR`); leased, done and dead tasks
    /// stay. Returns how many; call again until it returns 0. Each deleted
    /// task is as if cancelled (`cancel`): its id is free again and the
    /// server counts it in `cancelled`. A `NOQUEUE` server error if the
    /// queue was never used.
    pub async fn clear(&self, queue: &QueueName) -> Result<u64> {
        let reply = self
            .send(redis::cmd("VTASKS.CLEAR").arg(queue.wire()))
            .await?;
        Ok(int(reply)? as u64)
    }

    /// A second connection for fetches that block server-side.
    pub fn blocking_fetcher(&self) -> BlockingFetcher {
        BlockingFetcher {
            redis: self.redis.clone(),
            options: self.options.clone(),
            engine: self.engine.clone(),
            conn: None,
            id: None,
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
    redis: redis::Client,
    options: ClientOptions,
    engine: EngineState,
    conn: Option<MultiplexedConnection>,
    id: Option<i64>,
}

impl BlockingFetcher {
    /// Connects if needed; returns the connection's `CLIENT ID`, with which
    /// `Client::unblock` can end a wait early.
    pub async fn connect(&mut self) -> Result<i64> {
        if let (Some(_), Some(id)) = (&self.conn, self.id) {
            return Ok(id);
        }
        // The block time bounds the wait; `fetch` adds its own timeout for
        // a server that stopped answering.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(None);
        let mut conn = self
            .redis
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

    pub async fn fetch(&mut self, fetch: &Fetch) -> Result<Fetched> {
        self.connect().await?;
        let outcome = match (self.engine.get(), fetch.block) {
            (Engine::Scripts, Some(block)) => self.fetch_sleeping(fetch, block).await,
            _ => self
                .fetch_once(fetch, None)
                .await
                .map(|(fetched, _)| fetched),
        };
        if outcome.as_ref().is_err_and(Error::is_connection) {
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
        let reply = match tokio::time::timeout(limit, self.engine.query(conn, &cmd)).await {
            Ok(reply) => reply?,
            Err(_) => return Err(Error::Connection(format!("no reply within {limit:?}"))),
        };
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
            let slept_from = Instant::now();
            let conn = self.conn.as_mut().ok_or_else(not_connected)?;
            let mut blpop = redis::cmd("BLPOP");
            blpop
                .arg(&wake_keys)
                .arg(format!("{:.3}", wait.as_secs_f64()));
            let limit = wait + self.options.response_timeout;
            let popped = match tokio::time::timeout(limit, blpop.query_async::<Value>(conn)).await {
                Ok(reply) => reply.map_err(Error::from)?,
                Err(_) => return Err(Error::Connection(format!("no reply within {limit:?}"))),
            };
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
struct Sleep {
    ms: u64,
    /// Hands back with `SLEPT` to end the sleep.
    ticket: Vec<u8>,
}

fn not_connected() -> Error {
    Error::Connection("the blocking connection is not open".into())
}

/// The scripts engine's FETCHN reply carries two more elements when BLOCK
/// was given and nothing was ready: the ms to sleep and the sleeper's
/// ticket. The module's reply has three.
fn split_sleep(reply: Value) -> (Value, Option<Sleep>) {
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
