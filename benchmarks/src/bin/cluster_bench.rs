//! A partitioned queue on a Valkey Cluster of 1 and of 3 primaries: the
//! aggregate throughput of enqueue and of workers draining it, and the
//! server CPU each shard spent per task (`INFO cpu`), with the module.
//!
//! Per run: the queue `bench` over `--partitions` partitions; producers
//! (`--producers` concurrent callers on one cluster client) enqueue
//! `--tasks` tasks, 100 per call (the client splits each call by
//! partition); then two worker cores (`WorkerCore`, burst mode, 256 tasks
//! each at once, a handler that does nothing, results not kept) drain it.
//! The 1-primary cluster is one `--cluster-enabled` server holding every
//! slot; the 3-primary one is made by `valkey-cli --cluster create`.
//!
//! Usage: cluster_bench [--tasks N] [--runs R] [--partitions P] [--producers C]
//!                      [--results RESULTS.md]
//!
//! `--results` writes the table between the `cluster:begin` and
//! `cluster:end` markers of the given file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vtasks_benchmarks::{header, server_cpu_seconds, thousands, wait_idle, write_section, Server};
use vtasks_client::{
    run, Client, ClientOptions, EngineChoice, NewTask, Outcome, Partitions, QueueName, WorkerCore,
    WorkerOptions,
};
use vtasks_testkit::Cluster;

const PAYLOAD: &str = r#"{"task":"app.tasks.noop","args":[12345],"kwargs":{}}"#;

struct Options {
    tasks: usize,
    runs: usize,
    partitions: u16,
    producers: usize,
    results: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        tasks: 100_000,
        runs: 3,
        partitions: 16,
        producers: 16,
        results: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--tasks" => o.tasks = value.parse().expect("--tasks N"),
            "--runs" => o.runs = value.parse().expect("--runs R"),
            "--partitions" => o.partitions = value.parse().expect("--partitions P"),
            "--producers" => o.producers = value.parse().expect("--producers C"),
            "--results" => o.results = Some(value),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// The primaries of a cluster, as servers to read `INFO cpu` from.
enum Nodes {
    One(Server),
    Many(Cluster),
}

impl Nodes {
    fn start(primaries: usize) -> Nodes {
        if primaries > 1 {
            return Nodes::Many(Cluster::start(primaries, 0));
        }
        // `valkey-cli --cluster create` wants three primaries: one node
        // takes every slot itself.
        let bus = free_port().to_string();
        let server = Server::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            bus.as_str(),
        ]);
        let mut con = server.connect();
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query(&mut con)
            .expect("CLUSTER ADDSLOTSRANGE");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the one-node cluster never came up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nodes::One(server)
    }

    fn url(&self) -> String {
        match self {
            Nodes::One(server) => server.url(),
            Nodes::Many(cluster) => cluster.url(),
        }
    }

    fn servers(&self) -> Vec<&Server> {
        match self {
            Nodes::One(server) => vec![server],
            Nodes::Many(cluster) => cluster.nodes.iter().collect(),
        }
    }

    /// Each primary's CPU seconds so far.
    fn cpu(&self) -> Vec<f64> {
        self.servers()
            .iter()
            .map(|s| server_cpu_seconds(&mut s.connect()))
            .collect()
    }

    fn flush(&self) {
        for server in self.servers() {
            let _: () = redis::cmd("FLUSHALL")
                .query(&mut server.connect())
                .expect("FLUSHALL");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Phase {
    rate: f64,
    /// Server CPU µs per task, summed over the primaries.
    cpu_per_task: f64,
    /// Each primary's CPU over the phase's wall time (cores busy).
    busy: Vec<f64>,
}

fn phase(nodes: &Nodes, tasks: usize, start: Instant, before: &[f64]) -> Phase {
    let wall = start.elapsed().as_secs_f64();
    let after = nodes.cpu();
    let used: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    Phase {
        rate: tasks as f64 / wall,
        cpu_per_task: used.iter().sum::<f64>() * 1e6 / tasks as f64,
        busy: used.iter().map(|u| u / wall).collect(),
    }
}

async fn connect(url: &str, partitions: u16) -> Client {
    let mut options = ClientOptions::new(url);
    options.cluster = true;
    options.engine = EngineChoice::Module;
    options.partitions = Partitions::new([("bench", partitions)]).unwrap();
    Client::connect_with(options).await.expect("connect")
}

async fn one_run(nodes: &Nodes, o: &Options, run_no: usize) -> (Phase, Phase) {
    nodes.flush();
    let client = connect(&nodes.url(), o.partitions).await;
    let queue = QueueName::new("bench").unwrap();
    // Enqueue: `producers` concurrent callers, 100 tasks a call.
    let per = o.tasks / o.producers;
    let before = nodes.cpu();
    let start = Instant::now();
    let mut producers = Vec::new();
    for p in 0..o.producers {
        let client = client.clone();
        let queue = queue.clone();
        producers.push(tokio::spawn(async move {
            for chunk in (0..per).collect::<Vec<_>>().chunks(100) {
                let tasks: Vec<NewTask> = chunk
                    .iter()
                    .map(|i| {
                        NewTask::new(format!("r{run_no}-p{p}-{i}"), PAYLOAD.as_bytes().to_vec())
                    })
                    .collect();
                client
                    .enqueue_many(&queue, &tasks, None)
                    .await
                    .expect("enqueue");
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let total = per * o.producers;
    let enqueue = phase(nodes, total, start, &before);
    // Drain: two worker cores in burst mode; the phase ends when the last
    // task completes (not when the burst workers notice the queue is empty).
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let before = nodes.cpu();
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..2 {
        // The worker core expands the queue into its partitions.
        let mut options = WorkerOptions::new(vec![queue.clone()], format!("bench-{w}"));
        options.concurrency = 256;
        options.burst = true;
        options.block = Duration::from_millis(200);
        options.keep_results = Some(Duration::ZERO);
        let core = WorkerCore::new(connect(&nodes.url(), o.partitions).await, options).unwrap();
        let (done, all_done) = (done.clone(), all_done.clone());
        workers.push(tokio::spawn(run(
            core,
            move |_| {
                let (done, all_done) = (done.clone(), all_done.clone());
                async move {
                    if done.fetch_add(1, Ordering::SeqCst) + 1 == total {
                        all_done.notify_one();
                    }
                    Outcome::Success(None)
                }
            },
            std::future::pending(),
            Duration::from_secs(5),
        )));
    }
    all_done.notified().await;
    let drain = phase(nodes, total, start, &before);
    let mut succeeded = 0;
    for w in workers {
        succeeded += w.await.unwrap().expect("worker").succeeded;
    }
    assert_eq!(succeeded as usize, total, "every task ran once");
    (enqueue, drain)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn row(primaries: usize, what: &str, phases: &[Phase]) -> String {
    let (rate, lo, hi) = median(phases.iter().map(|p| p.rate).collect());
    let (cpu, _, _) = median(phases.iter().map(|p| p.cpu_per_task).collect());
    let shards = phases[0].busy.len();
    let busy: Vec<String> = (0..shards)
        .map(|i| {
            format!(
                "{:.2}",
                median(phases.iter().map(|p| p.busy[i]).collect()).0
            )
        })
        .collect();
    format!(
        "| {primaries} | {what} | {} ({}–{}) | {cpu:.2} | {} |\n",
        thousands(rate),
        thousands(lo),
        thousands(hi),
        busy.join(" / ")
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = options();
    let mut loads = Vec::new();
    let mut table = String::from(
        "| primaries | phase | tasks/s, median (min–max) | server CPU µs/task (all shards) | cores busy per shard |\n|---|---|---|---|---|\n",
    );
    let mut per_shard_cpu = Vec::new();
    for primaries in [1usize, 3] {
        let nodes = Nodes::start(primaries);
        let mut enqueues = Vec::new();
        let mut drains = Vec::new();
        for r in 0..o.runs {
            loads.push(wait_idle());
            let (e, d) = one_run(&nodes, &o, r).await;
            eprintln!(
                "{primaries} primaries, run {r}: enqueue {:.0}/s ({:.2} µs), drain {:.0}/s ({:.2} µs)",
                e.rate, e.cpu_per_task, d.rate, d.cpu_per_task
            );
            enqueues.push(e);
            drains.push(d);
        }
        table.push_str(&row(primaries, "enqueue, 100 a call", &enqueues));
        table.push_str(&row(primaries, "workers drain (fetch + ack)", &drains));
        let total: Vec<f64> = enqueues
            .iter()
            .zip(&drains)
            .map(|(e, d)| e.cpu_per_task + d.cpu_per_task)
            .collect();
        per_shard_cpu.push((primaries, median(total).0));
    }
    let (_, one) = per_shard_cpu[0];
    let (_, three) = per_shard_cpu[1];
    let capacity = 1e6 / three;
    let text = format!(
        "{}\n{} tasks per run, {} runs per size, medians with min–max; the queue over {} partitions; \
         {} producers on one cluster client, 100 tasks a call; two worker cores of 256 tasks each, \
         results not kept. Server CPU is the `INFO cpu` delta of every primary over the phase, per task.\n\n\
         {table}\n\
         Enqueue + fetch + ack cost {one:.2} µs of server CPU per task on 1 primary and {three:.2} µs \
         summed over the shards on 3 (the same 16 partitions, so the same commands; what the difference \
         comes from, three servers' own upkeep or their sharing two cores, is not separated here).\n\n\
         **What this machine cannot show.** It has 2 cores, shared by the 3 primaries, the producers, \
         the workers and other work, so the aggregate rate on 3 primaries is bounded by the same 2 cores \
         as on 1 and is no measure of scaling. **Projection (not measured):** each primary is one \
         thread; with each on a core of its own and clients that keep up, a partitioned queue's \
         throughput grows with the primaries, up to about {} no-op tasks/s per primary for enqueue + \
         fetch + ack at the {three:.2} µs per task measured on 3 (1,000,000 µs / CPU per task), so about \
         {} tasks/s on 3 primaries and {} on 10, if the slots spread the partitions evenly, and less \
         what real tasks, the clients and the network between them cost.\n",
        header(
            &format!(
                "cargo run --release -p vtasks-benchmarks --bin cluster_bench -- --tasks {} --runs {} \
                 --partitions {} --producers {}{}",
                o.tasks,
                o.runs,
                o.partitions,
                o.producers,
                o.results
                    .as_ref()
                    .map(|p| format!(" --results {p}"))
                    .unwrap_or_default()
            ),
            &loads
        ),
        o.tasks / o.producers * o.producers,
        o.runs,
        o.partitions,
        o.producers,
        thousands(capacity),
        thousands(capacity * 3.0),
        thousands(capacity * 10.0),
    );
    println!("{text}");
    if let Some(path) = &o.results {
        write_section(path, "cluster", &text);
    }
}
