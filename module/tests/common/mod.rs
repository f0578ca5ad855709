//! The one server harness for the module's integration tests: each test
//! starts its own `valkey-server` on a free port, in its own directory, from
//! the project's `module/valkey.conf` with the module under test loaded.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use redis::{Connection, Value};

/// The module library: `VTASKS_MODULE`, else the one cargo built next to
/// this test binary (`target/<profile>/libvtasks.so`).
pub fn module_path() -> PathBuf {
    if let Ok(path) = std::env::var("VTASKS_MODULE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    profile_dir.join("libvtasks.so")
}

pub fn server_binary() -> String {
    std::env::var("VTASKS_SERVER").unwrap_or_else(|_| "valkey-server".to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The project's config with its `loadmodule` line pointed at the module
/// under test; everything else is used as written.
fn config_text(module: &Path) -> String {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("valkey.conf");
    let text = std::fs::read_to_string(&conf).expect("module/valkey.conf");
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("loadmodule ") {
                format!("loadmodule {}", module.display())
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "vtasks-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("valkey.conf"), config_text(&module_path())).unwrap();
        let mut server = Server {
            port: free_port(),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(server_binary())
            .arg(self.dir.join("valkey.conf"))
            .args(["--port", &self.port.to_string()])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(["--bind", "127.0.0.1"])
            .args(&self.extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("valkey-server on PATH (run `make setup`)");
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

/// Sends a command given as words; every argument is a byte string.
pub fn cmd(words: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(words[0]);
    for w in &words[1..] {
        c.arg(*w);
    }
    c
}

pub fn query(con: &mut Connection, words: &[&str]) -> Value {
    cmd(words)
        .query(con)
        .unwrap_or_else(|e| panic!("{words:?} failed: {e}"))
}

pub fn query_err(con: &mut Connection, words: &[&str]) -> String {
    match cmd(words).query::<Value>(con) {
        Ok(v) => panic!("{words:?} should fail but answered {v:?}"),
        Err(e) => error_text(&e),
    }
}

/// The whole error reply, code first, as the server sent it.
pub fn error_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        Value::Nil => "nil".into(),
        Value::Okay => "OK".into(),
        other => format!("{other:?}"),
    }
}

pub fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => text(other)
            .parse()
            .unwrap_or_else(|_| panic!("not an integer: {other:?}")),
    }
}

pub fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        Value::Nil => Vec::new(),
        other => panic!("not an array: {other:?}"),
    }
}

/// A flat name/value reply (GET, STATS) as pairs.
pub fn pairs(v: &Value) -> Vec<(String, Value)> {
    items(v)
        .chunks(2)
        .map(|c| (text(&c[0]), c[1].clone()))
        .collect()
}

pub fn field(v: &Value, name: &str) -> Option<Value> {
    pairs(v)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

pub fn stat(con: &mut Connection, queue: &str, name: &str) -> i64 {
    let reply = query(con, &["VTASKS.STATS", queue]);
    int(&field(&reply, name).unwrap_or_else(|| panic!("no stat {name}")))
}

/// One leased task from a FETCHN reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub queue: String,
    pub id: String,
    pub token: i64,
    pub attempt: i64,
    pub payload: String,
}

pub struct Fetched {
    pub tasks: Vec<Task>,
    pub acks: Vec<String>,
    pub nacks: Vec<String>,
}

pub fn parse_fetch(v: &Value) -> Fetched {
    let parts = items(v);
    assert_eq!(parts.len(), 3, "FETCHN replies [tasks, acks, nacks]: {v:?}");
    let tasks = items(&parts[0])
        .iter()
        .map(|t| {
            let f = items(t);
            Task {
                queue: text(&f[0]),
                id: text(&f[1]),
                token: int(&f[2]),
                attempt: int(&f[3]),
                payload: text(&f[4]),
            }
        })
        .collect();
    let words = |v: &Value| items(v).iter().map(text).collect();
    Fetched {
        tasks,
        acks: words(&parts[1]),
        nacks: words(&parts[2]),
    }
}

pub fn fetch(con: &mut Connection, words: &[&str]) -> Fetched {
    let mut all = vec!["VTASKS.FETCHN"];
    all.extend_from_slice(words);
    parse_fetch(&query(con, &all))
}

pub fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

/// Every key with its type and content, sorted: two servers hold the same
/// queue state exactly when their snapshots are equal.
pub fn snapshot(con: &mut Connection) -> Vec<(String, String, String)> {
    let mut keys: Vec<String> = cmd(&["KEYS", "*"]).query(con).unwrap();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let kind: String = cmd(&["TYPE", &key]).query(con).unwrap();
            let content = match kind.as_str() {
                "hash" => {
                    let mut fields: Vec<(String, String)> =
                        cmd(&["HGETALL", &key]).query(con).unwrap();
                    fields.sort();
                    format!("{fields:?}")
                }
                "zset" => {
                    let members: Vec<(String, i64)> =
                        cmd(&["ZRANGE", &key, "0", "-1", "WITHSCORES"])
                            .query(con)
                            .unwrap();
                    format!("{members:?}")
                }
                other => format!("unexpected type {other}"),
            };
            let ttl: i64 = cmd(&["PTTL", &key]).query(con).unwrap();
            (key, kind, format!("{content} ttl={}", ttl > 0))
        })
        .collect()
}

/// Puts a queue through every state: ready, delayed, leased, done with a
/// result, retrying, dead. Returns the leases still held.
pub fn mixed_workload(con: &mut Connection, queue: &str) -> Vec<Task> {
    let mut enqueue = vec!["VTASKS.ENQUEUE", queue];
    let ids: Vec<String> = (0..30).map(|i| format!("t{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        enqueue.extend_from_slice(&["TASK", id, "{\"args\":[1,2]}", "ATTEMPTS", "2"]);
        if i % 10 == 9 {
            enqueue.extend_from_slice(&["DELAY", "600000"]);
        }
        if i % 7 == 0 {
            enqueue.extend_from_slice(&["PRIORITY", "10"]);
        }
    }
    query(con, &enqueue);
    let got = fetch(
        con,
        &[
            "1", queue, "CONSUMER", "w1", "COUNT", "12", "LEASE", "600000",
        ],
    );
    let (done, rest) = got.tasks.split_at(4);
    let (failed, held) = rest.split_at(4);
    for t in done {
        query(
            con,
            &[
                "VTASKS.ACK",
                queue,
                "1",
                &t.id,
                &t.token.to_string(),
                "\"result\"",
            ],
        );
    }
    for (i, t) in failed.iter().enumerate() {
        let retry = if i % 2 == 0 { "DEAD" } else { "600000" };
        query(
            con,
            &[
                "VTASKS.NACK",
                queue,
                "1",
                &t.id,
                &t.token.to_string(),
                retry,
                "boom",
            ],
        );
    }
    held.to_vec()
}
