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
//!                     [--url redis://...] [--only SCENARIO-SUBSTRING]

use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::Value;
use vtasks_benchmarks::{server_cpu_seconds, Server};
use vtasks_client::{scripts, Engine};

const PAYLOAD: &str = r#"{"task":"app.tasks.noop","args":[12345],"kwargs":{}}"#;
const QUEUE: &str = "{bench}";

struct Options {
    tasks: usize,
    runs: usize,
    concurrency: usize,
    markdown: Option<String>,
    /// A running server to use instead of starting one.
    url: Option<String>,
    /// Run only scenarios whose name contains this.
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        tasks: 100_000,
        runs: 3,
        concurrency: 32,
        markdown: None,
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
            "--url" => o.url = Some(value),
            "--only" => o.only = Some(value),
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
        Scenario::FetchAck(..) => {
            for chunk in (0..tasks).collect::<Vec<_>>().chunks(1000) {
                let _: Vec<i64> = enqueue_cmd(chunk).query_async(con).await.unwrap();
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
                "| {} | {:.0} ({:.0}–{:.0}) | {:.2}× | {:.2} | {} |\n",
                scenario.name(),
                rate,
                lo,
                hi,
                rate / plain_rate,
                cpu,
                vs_module
            );
            print!("{line}");
            table.push_str(&line);
        }
    }
    if let Some(path) = o.markdown {
        std::fs::write(&path, table).expect("write markdown table");
    }
}
