//! Per-task throughput of the module's commands against the plain-command
//! pattern today's Python queues use, and against the same commands run by
//! the scripts engine (Lua, for servers without the module), on one server
//! in one run, driven by the same pipelined client (one multiplexed
//! connection, many concurrent callers).
//!
//!   enqueue:    LPUSH per task          vs  VTASKS.ENQUEUE with 1 or 100 tasks
//!   fetch+ack:  BLMOVE then LREM        vs  VTASKS.FETCHN COUNT 1 or 100, each
//!               per task                    call acknowledging the previous batch
//!
//! Each VTASKS scenario runs with the module and with the scripts (the same
//! arguments through FCALL), on the same server.
//!
//! Usage: module_bench [--tasks N] [--runs R] [--concurrency C] [--markdown FILE]
//!                     [--results RESULTS.md] [--url redis://...] [--only SCENARIO-SUBSTRING]
//!
//! `--results` writes the table, headed by the date, the command, the
//! versions, the machine and the load, between the `module:begin` and
//! `module:end` markers of the given file. The fetches acknowledge with
//! `KEEP 0` (no result kept, as the plain pattern keeps nothing), where
//! workers keep results for a day by default.
//!        module_bench --goals RESULTS.md [--tasks N] [--runs R] [--big N]
//!
//! `--goals` measures the module's data type against the plain list pattern
//! side by side on one server (memory per queued task, server CPU per task
//! for enqueue + fetch + ack in batches of 100 and of 1, and a queue of
//! `--big` tasks: RDB save and load, memory, `MEMORY USAGE`, `UNLINK`) and
//! writes the tables between the `native:begin`/`native:end` markers of the
//! given file.

use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::Value;
use vtasks_benchmarks::{header, server_cpu_seconds, thousands, wait_idle, write_section, Server};
use vtasks_client::{scripts, Engine};

const PAYLOAD: &str = r#"{"task":"app.tasks.noop","args":[12345],"kwargs":{}}"#;
const QUEUE: &str = "{bench}";

struct Options {
    /// Write the data type's goal measurements into this file.
    goals: Option<String>,
    /// Tasks in the large queue of `--goals`.
    big: usize,
    tasks: usize,
    runs: usize,
    concurrency: usize,
    markdown: Option<String>,
    /// Write the table between the `module` markers of this file.
    results: Option<String>,
    /// A running server to use instead of starting one.
    url: Option<String>,
    /// Run only scenarios whose name contains this.
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        goals: None,
        big: 10_000_000,
        tasks: 100_000,
        runs: 3,
        concurrency: 32,
        markdown: None,
        results: None,
        url: None,
        only: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--tasks" => o.tasks = value.parse().expect("--tasks N"),
            "--runs" => o.runs = value.parse().expect("--runs R"),
            "--concurrency" => o.concurrency = value.parse().expect("--concurrency C"),
            "--markdown" => o.markdown = Some(value),
            "--results" => o.results = Some(value),
            "--url" => o.url = Some(value),
            "--only" => o.only = Some(value),
            "--goals" => o.goals = Some(value),
            "--big" => o.big = value.parse().expect("--big N"),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

#[derive(Clone, Copy)]
enum Scenario {
    PlainEnqueue,
    Enqueue(usize, Engine),
    PlainFetchAck,
    FetchAck(usize, Engine),
}

impl Scenario {
    fn name(self) -> String {
        match self {
            Scenario::PlainEnqueue => "enqueue: LPUSH per task".into(),
            Scenario::Enqueue(b, e) => format!("enqueue: VTASKS.ENQUEUE, {b} per command ({e})"),
            Scenario::PlainFetchAck => "fetch+ack: BLMOVE + LREM per task".into(),
            Scenario::FetchAck(b, e) => {
                format!("fetch+ack: VTASKS.FETCHN COUNT {b} + ACK ({e})")
            }
        }
    }
}

/// A `VTASKS.*` command as the engine sends it.
fn with_engine(cmd: redis::Cmd, engine: Engine) -> redis::Cmd {
    match engine {
        Engine::Module => cmd,
        Engine::Scripts => scripts::fcall(&cmd),
    }
}

struct Measured {
    tasks_per_s: f64,
    server_us_per_task: f64,
}

async fn prepare(con: &mut MultiplexedConnection, scenario: Scenario, tasks: usize) {
    let _: () = redis::cmd("FLUSHALL").query_async(con).await.unwrap();
    let _: redis::RedisResult<Value> = scripts::load_cmd().query_async(con).await;
    match scenario {
        Scenario::PlainFetchAck => {
            for chunk in (0..tasks).collect::<Vec<_>>().chunks(1000) {
                let mut c = redis::cmd("LPUSH");
                c.arg("plain:queue");
                for i in chunk {
                    c.arg(format!("{i}:{PAYLOAD}"));
                }
                let _: i64 = c.query_async(con).await.unwrap();
            }
        }
        Scenario::FetchAck(_, engine) => {
            // Filled by the engine that fetches: the module keeps a queue
            // as a value of its own type, which the scripts cannot read.
            for chunk in (0..tasks).collect::<Vec<_>>().chunks(1000) {
                let _: Vec<i64> = with_engine(enqueue_cmd(chunk), engine)
                    .query_async(con)
                    .await
                    .unwrap();
            }
        }
        _ => {}
    }
}

fn enqueue_cmd(ids: &[usize]) -> redis::Cmd {
    let mut c = redis::cmd("VTASKS.ENQUEUE");
    c.arg(QUEUE);
    for i in ids {
        c.arg("TASK").arg(format!("t{i}")).arg(PAYLOAD);
    }
    c
}

/// Runs one scenario with `concurrency` callers sharing one connection.
async fn drive(
    con: &MultiplexedConnection,
    scenario: Scenario,
    tasks: usize,
    concurrency: usize,
) -> usize {
    // Plain workers claim a task before BLMOVE, so BLMOVE never blocks the
    // shared connection at the end of the run.
    let unclaimed = std::sync::Arc::new(std::sync::atomic::AtomicIsize::new(tasks as isize));
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let mut con = con.clone();
        let unclaimed = unclaimed.clone();
        let mine: Vec<usize> = (w..tasks).step_by(concurrency).collect();
        handles.push(tokio::spawn(async move {
            match scenario {
                Scenario::PlainEnqueue => {
                    for i in &mine {
                        let _: i64 = redis::cmd("LPUSH")
                            .arg("plain:queue")
                            .arg(format!("{i}:{PAYLOAD}"))
                            .query_async(&mut con)
                            .await
                            .unwrap();
                    }
                    mine.len()
                }
                Scenario::Enqueue(batch, engine) => {
                    for chunk in mine.chunks(batch) {
                        let _: Vec<i64> = with_engine(enqueue_cmd(chunk), engine)
                            .query_async(&mut con)
                            .await
                            .unwrap();
                    }
                    mine.len()
                }
                Scenario::PlainFetchAck => {
                    let mut done = 0;
                    while unclaimed.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                        let task: Option<String> = redis::cmd("BLMOVE")
                            .arg("plain:queue")
                            .arg("plain:processing")
                            .arg("RIGHT")
                            .arg("LEFT")
                            .arg(0.05)
                            .query_async(&mut con)
                            .await
                            .unwrap();
                        let Some(task) = task else { return done };
                        let _: i64 = redis::cmd("LREM")
                            .arg("plain:processing")
                            .arg(1)
                            .arg(&task)
                            .query_async(&mut con)
                            .await
                            .unwrap();
                        done += 1;
                    }
                    done
                }
                Scenario::FetchAck(batch, engine) => {
                    fetch_ack_loop(&mut con, w, batch, engine).await
                }
            }
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    total
}

async fn fetch_ack_loop(
    con: &mut MultiplexedConnection,
    worker: usize,
    batch: usize,
    engine: Engine,
) -> usize {
    let consumer = format!("bench-{worker}");
    let mut held: Vec<(Vec<u8>, i64)> = Vec::new();
    let mut done = 0;
    loop {
        let mut c = redis::cmd("VTASKS.FETCHN");
        c.arg(1)
            .arg(QUEUE)
            .arg("CONSUMER")
            .arg(&consumer)
            .arg("COUNT")
            .arg(batch)
            .arg("KEEP")
            .arg(0);
        if !held.is_empty() {
            c.arg("ACK").arg(held.len());
            for (id, token) in &held {
                c.arg(QUEUE).arg(id.as_slice()).arg(*token).arg("");
            }
        }
        let reply: Vec<Value> = with_engine(c, engine).query_async(con).await.unwrap();
        done += held.len();
        held.clear();
        let Value::Array(tasks) = &reply[0] else {
            panic!("bad reply {reply:?}")
        };
        if tasks.is_empty() {
            return done;
        }
        for t in tasks {
            let Value::Array(f) = t else { panic!() };
            let (Value::BulkString(id), Value::Int(token)) = (&f[1], &f[2]) else {
                panic!()
            };
            held.push((id.clone(), *token));
        }
    }
}

async fn measure(url: &str, scenario: Scenario, o: &Options) -> Measured {
    let client = redis::Client::open(url).unwrap();
    // No response timeout: a profiled server answers slowly, and a lost
    // reply would show up as a task count mismatch anyway.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let mut sync_con = client.get_connection().unwrap();
    prepare(&mut con, scenario, o.tasks).await;
    let cpu_before = server_cpu_seconds(&mut sync_con);
    let started = Instant::now();
    let done = drive(&con, scenario, o.tasks, o.concurrency).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server_cpu_seconds(&mut sync_con) - cpu_before;
    assert_eq!(
        done,
        o.tasks,
        "{}: every task handled once",
        scenario.name()
    );
    Measured {
        tasks_per_s: done as f64 / elapsed,
        server_us_per_task: cpu * 1e6 / done as f64,
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let o = options();
    if let Some(path) = &o.goals {
        goals::run(
            path,
            o.tasks,
            o.runs,
            o.big,
            o.url.as_deref(),
            o.only.as_deref(),
        );
        return;
    }
    let server = match &o.url {
        Some(_) => None,
        None => Some(Server::start()),
    };
    let url = o
        .url
        .clone()
        .unwrap_or_else(|| server.as_ref().unwrap().url());
    use Engine::{Module, Scripts};
    let groups = [
        vec![
            Scenario::PlainEnqueue,
            Scenario::Enqueue(1, Module),
            Scenario::Enqueue(1, Scripts),
            Scenario::Enqueue(100, Module),
            Scenario::Enqueue(100, Scripts),
        ],
        vec![
            Scenario::PlainFetchAck,
            Scenario::FetchAck(1, Module),
            Scenario::FetchAck(1, Scripts),
            Scenario::FetchAck(100, Module),
            Scenario::FetchAck(100, Scripts),
        ],
    ];
    let mut loads = Vec::new();
    let mut table = String::new();
    table.push_str(
        "| Scenario | Tasks/s (median, min–max) | vs plain | Server CPU µs/task | scripts CPU / module CPU |\n\
         |---|---|---|---|---|\n",
    );
    for group in groups {
        let mut plain_rate = 0.0;
        let mut module_cpu = 0.0;
        for scenario in group {
            if o.only
                .as_ref()
                .is_some_and(|only| !scenario.name().contains(only.as_str()))
            {
                continue;
            }
            let mut rates = Vec::new();
            let mut cpus = Vec::new();
            for run in 0..o.runs {
                loads.push(wait_idle());
                let m = measure(&url, scenario, &o).await;
                eprintln!(
                    "  {} run {}: {:.0} tasks/s, {:.2} µs server CPU/task",
                    scenario.name(),
                    run + 1,
                    m.tasks_per_s,
                    m.server_us_per_task
                );
                rates.push(m.tasks_per_s);
                cpus.push(m.server_us_per_task);
            }
            let (rate, lo, hi) = median(rates);
            let (cpu, _, _) = median(cpus);
            let vs_module = match scenario {
                Scenario::PlainEnqueue | Scenario::PlainFetchAck => {
                    plain_rate = rate;
                    String::new()
                }
                Scenario::Enqueue(_, Module) | Scenario::FetchAck(_, Module) => {
                    module_cpu = cpu;
                    String::new()
                }
                _ => format!("{:.2}×", cpu / module_cpu),
            };
            let line = format!(
                "| {} | {} ({}–{}) | {:.2}× | {:.2} | {} |\n",
                scenario.name(),
                thousands(rate),
                thousands(lo),
                thousands(hi),
                rate / plain_rate,
                cpu,
                vs_module
            );
            print!("{line}");
            table.push_str(&line);
        }
    }
    if let Some(path) = &o.markdown {
        std::fs::write(path, &table).expect("write markdown table");
    }
    if let Some(path) = &o.results {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let command = format!(
            "cargo run --release -p vtasks-benchmarks --bin module_bench -- {}",
            args.join(" ")
        );
        let body = format!(
            "{}\n{} tasks per run, {} runs per scenario, medians with min–max; {} concurrent callers on one \
             multiplexed connection; fetches acknowledge with `KEEP 0`. Server CPU is the `INFO cpu` delta per \
             task.\n\n{table}",
            header(&command, &loads),
            o.tasks,
            o.runs,
            o.concurrency
        );
        write_section(path, "module", &body);
    }
}

/// The module's data type against the plain list pattern, measured side by
/// side on one server: what the data type was built to reach.
mod goals {
    use std::time::{Duration, Instant};

    use redis::{Connection, Value};
    use vtasks_benchmarks::{server_cpu_seconds, Server};

    const QUEUE: &str = "{goals}";
    const BEGIN: &str = "<!-- native:begin -->";
    const END: &str = "<!-- native:end -->";

    /// A JSON payload of about 100 bytes, as a Python task's call.
    fn payload(i: usize) -> String {
        format!(
            r#"{{"task":"shop.tasks.send_receipt","args":[{i}],"kwargs":{{"to":"ada@example.com","lang":"en"}}}}"#
        )
    }

    /// A uuid-shaped id, unique per `i`.
    fn uuid(i: usize) -> String {
        let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            x >> 32,
            (x >> 16) & 0xffff,
            x & 0xfff,
            (x >> 20) & 0xfff,
            (i as u64) & 0xffff_ffff_ffff
        )
    }

    /// The plain pattern's list entry: the same id and payload in one JSON.
    fn plain_entry(i: usize) -> String {
        format!(r#"{{"id":"{}","call":{}}}"#, uuid(i), payload(i))
    }

    fn used_memory(con: &mut Connection) -> i64 {
        let info: String = redis::cmd("INFO").arg("memory").query(con).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    }

    fn flush(con: &mut Connection) {
        let _: () = redis::cmd("FLUSHALL").arg("SYNC").query(con).unwrap();
    }

    fn enqueue_module(con: &mut Connection, range: std::ops::Range<usize>, batch: usize) {
        let ids: Vec<usize> = range.collect();
        let mut pipe = redis::pipe();
        let mut queued = 0;
        for chunk in ids.chunks(batch) {
            let mut c = redis::cmd("VTASKS.ENQUEUE");
            c.arg(QUEUE);
            for i in chunk {
                c.arg("TASK").arg(uuid(*i)).arg(payload(*i));
            }
            pipe.add_command(c).ignore();
            queued += 1;
            if queued == 100 || chunk.len() * queued >= 1000 {
                let _: () = pipe.query(con).unwrap();
                pipe = redis::pipe();
                queued = 0;
            }
        }
        if queued > 0 {
            let _: () = pipe.query(con).unwrap();
        }
    }

    fn enqueue_plain(con: &mut Connection, range: std::ops::Range<usize>) {
        let ids: Vec<usize> = range.collect();
        for chunk in ids.chunks(100) {
            let mut pipe = redis::pipe();
            for i in chunk {
                pipe.cmd("LPUSH")
                    .arg("plain:queue")
                    .arg(plain_entry(*i))
                    .ignore();
            }
            let _: () = pipe.query(con).unwrap();
        }
    }

    /// Bytes per queued task: `used_memory` before and after.
    fn memory_per_task(con: &mut Connection, tasks: usize, module: bool) -> f64 {
        flush(con);
        let before = used_memory(con);
        if module {
            enqueue_module(con, 0..tasks, 100);
        } else {
            enqueue_plain(con, 0..tasks);
        }
        let after = used_memory(con);
        flush(con);
        (after - before) as f64 / tasks as f64
    }

    /// Plain: LPUSH, then LMOVE to a processing list and LREM, each
    /// pipelined 100 deep. Returns server CPU µs per task.
    fn cpu_plain(con: &mut Connection, tasks: usize) -> f64 {
        flush(con);
        let before = server_cpu_seconds(con);
        enqueue_plain(con, 0..tasks);
        let mut left = tasks;
        while left > 0 {
            let n = left.min(100);
            let mut pipe = redis::pipe();
            for _ in 0..n {
                pipe.cmd("LMOVE")
                    .arg("plain:queue")
                    .arg("plain:processing")
                    .arg("RIGHT")
                    .arg("LEFT");
            }
            let moved: Vec<String> = pipe.query(con).unwrap();
            let mut pipe = redis::pipe();
            for entry in &moved {
                pipe.cmd("LREM")
                    .arg("plain:processing")
                    .arg(1)
                    .arg(entry)
                    .ignore();
            }
            let _: () = pipe.query(con).unwrap();
            left -= n;
        }
        let cpu = server_cpu_seconds(con) - before;
        cpu * 1e6 / tasks as f64
    }

    fn leased(reply: &Value) -> Vec<(Vec<u8>, i64)> {
        let Value::Array(parts) = reply else {
            panic!("bad reply {reply:?}")
        };
        let Value::Array(tasks) = &parts[0] else {
            panic!("bad reply {reply:?}")
        };
        tasks
            .iter()
            .map(|t| match t {
                Value::Array(f) => match (&f[1], &f[2]) {
                    (Value::BulkString(id), Value::Int(token)) => (id.clone(), *token),
                    other => panic!("bad task {other:?}"),
                },
                other => panic!("bad task {other:?}"),
            })
            .collect()
    }

    fn fetchn(consumer: &str, count: usize, acks: &[(Vec<u8>, i64)]) -> redis::Cmd {
        let mut c = redis::cmd("VTASKS.FETCHN");
        c.arg(1)
            .arg(QUEUE)
            .arg("CONSUMER")
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("KEEP")
            .arg(0);
        if !acks.is_empty() {
            c.arg("ACK").arg(acks.len());
            for (id, token) in acks {
                c.arg(QUEUE).arg(id.as_slice()).arg(*token).arg("");
            }
        }
        c
    }

    /// The module: ENQUEUE and FETCHN ... ACK with `batch` tasks per command
    /// (KEEP 0, as the plain pattern keeps nothing); with batches of 1, 100
    /// commands are pipelined per round trip, as the plain pattern's are.
    fn cpu_module(con: &mut Connection, tasks: usize, batch: usize) -> f64 {
        flush(con);
        let before = server_cpu_seconds(con);
        enqueue_module(con, 0..tasks, batch);
        let mut done = 0;
        if batch > 1 {
            let mut held = Vec::new();
            loop {
                let reply: Value = fetchn("w", batch, &held).query(con).unwrap();
                done += held.len();
                held = leased(&reply);
                if held.is_empty() {
                    break;
                }
            }
        } else {
            // 100 consumers, each fetching one task and acknowledging the
            // one it fetched before, in one pipeline per round.
            let mut held: Vec<Vec<(Vec<u8>, i64)>> = vec![Vec::new(); 100];
            loop {
                let mut pipe = redis::pipe();
                for (w, acks) in held.iter().enumerate() {
                    pipe.add_command(fetchn(&format!("w{w}"), 1, acks));
                }
                let replies: Vec<Value> = pipe.query(con).unwrap();
                done += held.iter().map(Vec::len).sum::<usize>();
                held = replies.iter().map(leased).collect();
                if held.iter().all(Vec::is_empty) {
                    break;
                }
            }
        }
        assert_eq!(done, tasks, "every task fetched and acknowledged once");
        let cpu = server_cpu_seconds(con) - before;
        cpu * 1e6 / tasks as f64
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }

    fn secs(d: Duration) -> String {
        format!("{:.2} s", d.as_secs_f64())
    }

    fn mib(bytes: f64) -> String {
        format!("{:.0} MiB", bytes / (1024.0 * 1024.0))
    }

    /// Longest PING round trip while `busy` runs on another connection.
    fn worst_ping_during(server: &Server, busy: impl FnOnce()) -> Duration {
        let url = server.url();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let pinger = std::thread::spawn(move || {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            let mut worst = Duration::ZERO;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let _: String = redis::cmd("PING").query(&mut con).unwrap();
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            worst
        });
        std::thread::sleep(Duration::from_millis(50));
        busy();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pinger.join().unwrap()
    }

    fn big_queue(server: &Server, con: &mut Connection, big: usize) -> String {
        flush(con);
        let before = used_memory(con);
        let started = Instant::now();
        enqueue_module(con, 0..big, 1000);
        let filled = started.elapsed();
        let memory = (used_memory(con) - before) as f64;
        let usage: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(QUEUE)
            .query(con)
            .unwrap();
        let t = Instant::now();
        let _: () = redis::cmd("SAVE").query(con).unwrap();
        let save = t.elapsed();
        let rdb = std::fs::metadata(server.dir.join("dump.rdb"))
            .map(|m| m.len())
            .unwrap_or(0);
        let t = Instant::now();
        let _: () = redis::cmd("DEBUG")
            .arg("RELOAD")
            .arg("NOSAVE")
            .query(con)
            .unwrap();
        let load = t.elapsed();
        let stats: Value = redis::cmd("VTASKS.STATS").arg(QUEUE).query(con).unwrap();
        let ready = match &stats {
            Value::Array(items) => match &items[1] {
                Value::Int(n) => *n as usize,
                _ => 0,
            },
            _ => 0,
        };
        assert_eq!(ready, big, "the reloaded queue holds every task");
        let mut unlink_reply = Duration::ZERO;
        let worst_ping = worst_ping_during(server, || {
            let t = Instant::now();
            let _: i64 = redis::cmd("UNLINK").arg(QUEUE).query(con).unwrap();
            unlink_reply = t.elapsed();
        });
        format!(
            "| tasks | enqueue (1,000 per command) | memory (`used_memory`) | per task | `MEMORY USAGE` | RDB file | `SAVE` | load (`DEBUG RELOAD NOSAVE`) | `UNLINK` reply | longest `PING` during `UNLINK` |\n\
             |---|---|---|---|---|---|---|---|---|---|\n\
             | {big} | {} | {} | {:.0} B | {} | {} | {} | {} | {:.1} ms | {:.1} ms |\n",
            secs(filled),
            mib(memory),
            memory / big as f64,
            mib(usage as f64),
            mib(rdb as f64),
            secs(save),
            secs(load),
            unlink_reply.as_secs_f64() * 1e3,
            worst_ping.as_secs_f64() * 1e3,
        )
    }

    /// With `url`, measures CPU on that server only (to profile it); with
    /// `only`, only the scenarios whose name contains it.
    pub fn run(
        path: &str,
        tasks: usize,
        runs: usize,
        big: usize,
        url: Option<&str>,
        only: Option<&str>,
    ) {
        if let Some(url) = url {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            for _ in 0..runs {
                let us = match only.unwrap_or("") {
                    "plain" => cpu_plain(&mut con, tasks),
                    "1" => cpu_module(&mut con, tasks, 1),
                    "fill" => {
                        let t = Instant::now();
                        enqueue_module(&mut con, 0..tasks, 1000);
                        println!("filled {tasks} in {:?}", t.elapsed());
                        0.0
                    }
                    _ => cpu_module(&mut con, tasks, 100),
                };
                println!("{us:.2} µs server CPU per task");
            }
            return;
        }
        let server = Server::start_with_module(&["--enable-debug-command", "local"]);
        let mut con = server.connect();
        let mut out = String::new();
        out.push_str(&format!(
            "Measured by `cargo run --release -p vtasks-benchmarks --bin module_bench -- --goals \
             benchmarks/RESULTS.md --tasks {tasks} --runs {runs} --big {big}` (medians of {runs} runs; \
             {tasks} tasks per run; uuid ids, a {}-byte JSON payload).\n\n",
            payload(0).len()
        ));
        let plain_mem = median(
            (0..runs)
                .map(|_| memory_per_task(&mut con, tasks, false))
                .collect(),
        );
        let module_mem = median(
            (0..runs)
                .map(|_| memory_per_task(&mut con, tasks, true))
                .collect(),
        );
        eprintln!("memory: plain {plain_mem:.0} B, module {module_mem:.0} B");
        out.push_str(&format!(
            "| per queued task | plain list (`LPUSH` of one JSON entry, {} bytes) | module | module / plain | goal |\n\
             |---|---|---|---|---|\n\
             | memory (`used_memory` delta) | {plain_mem:.0} B | {module_mem:.0} B | {:.2}× | ≤ 1.25× |\n\n",
            plain_entry(0).len(),
            module_mem / plain_mem
        ));
        let plain_cpu = median((0..runs).map(|_| cpu_plain(&mut con, tasks)).collect());
        let batch100 = median(
            (0..runs)
                .map(|_| cpu_module(&mut con, tasks, 100))
                .collect(),
        );
        let batch1 = median((0..runs).map(|_| cpu_module(&mut con, tasks, 1)).collect());
        eprintln!("cpu: plain {plain_cpu:.2} µs, module b100 {batch100:.2} µs, b1 {batch1:.2} µs");
        out.push_str(&format!(
            "| server CPU per task, enqueue + fetch + ack | µs | / plain | goal |\n\
             |---|---|---|---|\n\
             | plain: `LPUSH`, `LMOVE` + `LREM`, pipelined 100 deep | {plain_cpu:.2} | 1.00× | |\n\
             | module: `VTASKS.ENQUEUE` 100 tasks, `FETCHN COUNT 100 ... ACK` (`KEEP 0`) | {batch100:.2} | {:.2}× | ≤ 0.2× |\n\
             | module: one task per command, pipelined 100 deep | {batch1:.2} | {:.2}× | ≤ 0.5× |\n\n",
            batch100 / plain_cpu,
            batch1 / plain_cpu
        ));
        if big > 0 {
            out.push_str(&big_queue(&server, &mut con, big));
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let section = format!("{BEGIN}\n{out}{END}");
        let updated = match (text.find(BEGIN), text.find(END)) {
            (Some(b), Some(e)) if b < e => {
                format!("{}{}{}", &text[..b], section, &text[e + END.len()..])
            }
            _ => format!("{text}\n{section}\n"),
        };
        std::fs::write(path, updated).expect("write the results");
        println!("{out}");
    }
}
