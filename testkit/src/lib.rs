//! The one Valkey server harness: each user (a test, the demo, a benchmark)
//! starts its own `valkey-server` on a free port, in its own directory, from
//! the project's `module/valkey.conf` with the `loadmodule` line pointed at
//! the module under test (or removed, for a server without the module).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{Connection, Value};

/// `ms` milliseconds times `VTASKS_TEST_TIME_SCALE` (default 1), as text
/// for a command argument. Tests whose leases and sleeps must outlast a
/// step of the server (a restart, a shutdown) use it, so they hold when
/// the server runs many times slower (`make memcheck` sets 20).
pub fn scaled_ms(ms: u64) -> u64 {
    let scale = std::env::var("VTASKS_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    ms * scale
}

/// The module library: `VTASKS_MODULE`, else the one cargo built in the
/// same profile as the running binary (`target/<profile>/libvtasks.so`,
/// found from `target/<profile>/deps/<test>` or `target/<profile>/<bin>`).
pub fn module_path() -> PathBuf {
    if let Ok(path) = std::env::var("VTASKS_MODULE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the running binary");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("libvtasks.so"))
        .find(|lib| lib.exists())
        .unwrap_or_else(|| {
            panic!(
                "libvtasks.so not found near {}: run `make build`",
                exe.display()
            )
        })
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn server_binary() -> String {
    std::env::var("VTASKS_SERVER").unwrap_or_else(|_| "valkey-server".to_string())
}

/// What the conformance suite runs against, from `VTASKS_TARGET`: the same
/// tests prove the same behaviour on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `module` (the default): Valkey with the module, module engine.
    Module,
    /// `scripts-valkey`: Valkey without the module, scripts engine.
    ScriptsValkey,
    /// `scripts-redis`: Redis (`redis-server`), scripts engine.
    ScriptsRedis,
}

impl Target {
    pub fn current() -> Target {
        match std::env::var("VTASKS_TARGET").as_deref() {
            Err(_) | Ok("") | Ok("module") => Target::Module,
            Ok("scripts-valkey") => Target::ScriptsValkey,
            Ok("scripts-redis") => Target::ScriptsRedis,
            Ok(other) => {
                panic!("VTASKS_TARGET={other:?}: expected module, scripts-valkey or scripts-redis")
            }
        }
    }

    /// Whether commands go through the scripts engine.
    pub fn uses_scripts(self) -> bool {
        self != Target::Module
    }

    /// The engine name clients are given (`ClientOptions::engine`).
    pub fn engine(self) -> &'static str {
        match self {
            Target::Module => "module",
            _ => "scripts",
        }
    }

    fn binary(self) -> String {
        match self {
            Target::ScriptsRedis => "redis-server".to_string(),
            _ => server_binary(),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The project's config with its `loadmodule` line pointed at `module`, or
/// dropped when there is none; everything else is used as written.
fn config_text(module: Option<&Path>) -> String {
    let conf = repo_root().join("module/valkey.conf");
    let text = std::fs::read_to_string(&conf).expect("module/valkey.conf");
    text.lines()
        .filter_map(
            |line| match (line.trim_start().starts_with("loadmodule "), module) {
                (true, Some(module)) => Some(format!("loadmodule {}", module.display())),
                (true, None) => None,
                (false, _) => Some(line.to_string()),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    binary: String,
    extra: Vec<String>,
}

impl Server {
    /// The server of the current `Target`: with the module unless the
    /// target is a scripts one.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// The current target's server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        let target = Target::current();
        match target {
            Target::Module => Server::launch_new(Some(&module_path()), extra, server_binary()),
            _ => Server::launch_new(None, extra, target.binary()),
        }
    }

    /// The current target's server as a replica of `primary`, once its
    /// replication link is up.
    pub fn start_replica_of(primary: &Server) -> Server {
        let port = primary.port.to_string();
        let replica = Server::start_with(&["--replicaof", "127.0.0.1", &port]);
        let mut con = replica.connect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut con)
                .unwrap();
            if info.contains("master_link_status:up") {
                return replica;
            }
            assert!(Instant::now() < deadline, "replica never linked");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Valkey with the module, whatever the target.
    pub fn start_with_module(extra: &[&str]) -> Server {
        Server::launch_new(Some(&module_path()), extra, server_binary())
    }

    /// A server from the same config without the module.
    pub fn start_without_module(extra: &[&str]) -> Server {
        Server::launch_new(None, extra, server_binary())
    }

    /// `redis-server` from the same config, without the module.
    pub fn start_redis(extra: &[&str]) -> Server {
        Server::launch_new(None, extra, "redis-server".to_string())
    }

    fn launch_new(module: Option<&Path>, extra: &[&str], binary: String) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "vtasks-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("valkey.conf"), config_text(module)).unwrap();
        let mut server = Server {
            port: free_port(),
            dir,
            child: None,
            binary,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(&self.binary)
            .arg(self.dir.join("valkey.conf"))
            .args(["--port", &self.port.to_string()])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(["--bind", "127.0.0.1"])
            .args(&self.extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} on PATH (run `make setup`): {e}", self.binary));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut con) = self.try_connect() {
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "server did not answer PING:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn try_connect(&self) -> redis::RedisResult<Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    pub fn connect(&self) -> Connection {
        self.try_connect().expect("connect to test server")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server (SHUTDOWN, saving per its config) and starts it
    /// again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Kills the server with SIGKILL (no shutdown: it saves nothing and
    /// flushes nothing it had not written) and starts it again on the same
    /// port and directory, from what it left on disk.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.launch();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(mut con) = self.try_connect() {
                let _: redis::RedisResult<Value> = redis::cmd("SHUTDOWN").query(&mut con);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running (it must survive bad input).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `CONFIG SET name value`.
    pub fn set_config(&self, name: &str, value: &str) {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .exec(&mut self.connect())
            .unwrap();
    }

    /// `CLIENT LIST` of every connection but the one asking, one map of
    /// fields (`id`, `flags`, `cmd`, ...) per connection.
    pub fn clients(&self) -> Vec<std::collections::HashMap<String, String>> {
        let mut con = self.connect();
        let own: i64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
        list.lines()
            .map(|line| {
                line.split(' ')
                    .filter_map(|field| field.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .filter(|fields| fields.get("id") != Some(&own.to_string()))
            .collect()
    }

    /// Waits until the connection with this `CLIENT ID` is blocked in the
    /// server (a FETCHN with the module, a `BLPOP` on the wake lists with
    /// the scripts), so what a test does next finds it waiting.
    pub fn wait_blocked(&self, client_id: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let blocked = self.clients().iter().any(|c| {
                c.get("id") == Some(&client_id.to_string())
                    && c.get("flags").is_some_and(|f| f.contains('b'))
            });
            if blocked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connection {client_id} never blocked: {:?}",
                self.clients()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("server log kept in {}", self.dir.display());
        }
    }
}

/// The node timeout while a cluster's nodes join (see `Cluster::start_with`).
const JOIN_NODE_TIMEOUT_MS: u64 = 15_000;

/// A Valkey Cluster of the current target's servers on free ports: each
/// node started from the project's config with cluster mode on, joined by
/// `valkey-cli --cluster create` (primaries take the slots in equal
/// ranges, each with its replicas), ready once every node sees every
/// slot served and agrees on who serves it.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// `primaries` primaries with `replicas` replicas each.
    pub fn start(primaries: usize, replicas: usize) -> Cluster {
        Cluster::start_with(primaries, replicas, &[])
    }

    /// The same, each node with extra `--option value` arguments.
    pub fn start_with(primaries: usize, replicas: usize, extra: &[&str]) -> Cluster {
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            // A failover within a few seconds of a primary's death.
            "--cluster-node-timeout",
            "1000",
        ];
        args.extend_from_slice(extra);
        let nodes: Vec<Server> = (0..primaries * (1 + replicas))
            .map(|_| {
                // The bus port is the data port + 10000 unless given: a
                // free port of the high range leaves it none.
                let bus = free_port().to_string();
                let mut node_args = args.clone();
                node_args.extend(["--cluster-port", bus.as_str()]);
                Server::start_with(&node_args)
            })
            .collect();
        // A node drops a handshake it has not completed within the node
        // timeout (1 s at least), and Valkey 8.0 never redoes one that only
        // one side dropped (valkey-io/valkey#1251): a node held up for a
        // second while joining (a busy machine) left the cluster split for
        // good and `valkey-cli --cluster create` waiting forever. The nodes
        // join with a long timeout and get the configured one back once the
        // cluster is up.
        let timeouts: Vec<String> = nodes
            .iter()
            .map(|node| {
                let (_, ms): (String, String) = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("cluster-node-timeout")
                    .query(&mut node.connect())
                    .unwrap();
                node.set_config("cluster-node-timeout", &JOIN_NODE_TIMEOUT_MS.to_string());
                ms
            })
            .collect();
        let log = nodes[0].dir.join("cluster-create.log");
        let mut create = Command::new("valkey-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let mut child = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("valkey-cli on PATH (run `make setup`)");
        // It waits without end for nodes that never agree: fail instead.
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let cluster = Cluster { nodes };
        assert!(
            status.is_some_and(|s| s.success()),
            "valkey-cli --cluster create failed or never finished ({status:?}):\n{}\nnodes' views:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            cluster
                .nodes
                .iter()
                .map(|n| redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query::<String>(&mut n.connect())
                    .unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        );
        cluster.wait_ready(primaries);
        for (node, ms) in cluster.nodes.iter().zip(timeouts) {
            node.set_config("cluster-node-timeout", &ms);
        }
        cluster
    }

    /// A URL naming every node, as a client is seeded with.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis://{}", hosts.join(","))
    }

    /// `CLUSTER SLOTS` as (first slot, last slot, primary's port), sorted.
    pub fn slot_owners(&self, node: usize) -> Vec<(i64, i64, i64)> {
        let mut con = self.nodes[node].connect();
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).unwrap();
        let mut owners = Vec::new();
        if let Value::Array(ranges) = reply {
            for range in ranges {
                if let Value::Array(items) = range {
                    if let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(n))) =
                        (items.first(), items.get(1), items.get(2))
                    {
                        if let Some(Value::Int(port)) = n.get(1) {
                            owners.push((*a, *b, *port));
                        }
                    }
                }
            }
        }
        owners.sort();
        owners
    }

    /// The index of the node serving `slot` now, as node `asking` sees it.
    pub fn primary_of(&self, slot: i64, asking: usize) -> usize {
        let port = self
            .slot_owners(asking)
            .into_iter()
            .find(|(a, b, _)| *a <= slot && slot <= *b)
            .map(|(_, _, p)| p)
            .expect("a served slot");
        self.nodes
            .iter()
            .position(|n| i64::from(n.port) == port)
            .expect("a node of this cluster")
    }

    /// Waits until the nodes that are up agree on a full slot map with
    /// `primaries` primaries and each reports `cluster_state:ok`.
    pub fn wait_ready(&self, primaries: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut views = Vec::new();
            let mut ok = true;
            for node in &self.nodes {
                let Ok(mut con) = node.try_connect() else {
                    continue;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut con)
                    .unwrap_or_default();
                ok &= info.contains("cluster_state:ok");
                let reply: redis::RedisResult<Value> =
                    redis::cmd("CLUSTER").arg("SLOTS").query(&mut con);
                views.push(format!("{reply:?}"));
            }
            let agreed = views.windows(2).all(|w| w[0] == w[1]);
            let owners = self
                .nodes
                .iter()
                .position(|n| n.try_connect().is_ok())
                .map(|i| self.slot_owners(i))
                .unwrap_or_default();
            let covered: i64 = owners.iter().map(|(a, b, _)| b - a + 1).sum();
            let mut ports: Vec<i64> = owners.iter().map(|(_, _, p)| *p).collect();
            ports.sort();
            ports.dedup();
            if ok && agreed && covered == 16384 && ports.len() == primaries {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never settled: ok={ok} agreed={agreed} covered={covered} primaries={ports:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills node `i` with SIGKILL (it stays down).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Moves `count` slots from node `from` to node `to` with
    /// `valkey-cli --cluster reshard`, keys and all, while clients run.
    pub fn reshard(&self, from: usize, to: usize, count: usize) {
        let id = |i: usize| -> String {
            let mut con = self.nodes[i].connect();
            redis::cmd("CLUSTER").arg("MYID").query(&mut con).unwrap()
        };
        let output = Command::new("valkey-cli")
            .args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{}", self.nodes[from].port))
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .output()
            .expect("valkey-cli on PATH");
        assert!(
            output.status.success(),
            "valkey-cli --cluster reshard failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
