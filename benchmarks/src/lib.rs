//! Shared by the demo and the benchmarks.

pub use vtasks_testkit::Server;

/// Server CPU seconds (user + system) from `INFO cpu`.
pub fn server_cpu_seconds(con: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query(con).unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            matches!(name, "used_cpu_sys" | "used_cpu_user")
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// How many cores' worth of CPU the machine used over the next second
/// (from `/proc/stat`): between runs, the work of others.
pub fn busy_cores() -> f64 {
    fn sample() -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        (fields.iter().take(8).sum(), idle)
    }
    let (total0, idle0) = sample();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (total1, idle1) = sample();
    if total1 == total0 {
        return 0.0;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (1.0 - (idle1 - idle0) as f64 / (total1 - total0) as f64) * cores
}

/// Waits (up to a minute) until the machine's other work uses less than
/// 0.3 of a core over a second (the 1-minute load average would count the
/// benchmark's own last run); returns the 1-minute load average then.
pub fn wait_idle() -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while busy_cores() >= 0.3 && std::time::Instant::now() < deadline {}
    load_average()
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The lines that head a section of `benchmarks/RESULTS.md`: when, what
/// ran (`command`), on what, at which loads (one per run).
pub fn header(command: &str, loads: &[f64]) -> String {
    let mut sorted = loads.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let (lo, mid, hi) = match sorted.len() {
        0 => (f64::NAN, f64::NAN, f64::NAN),
        n => (sorted[0], sorted[n / 2], sorted[n - 1]),
    };
    // What the benchmarks write themselves does not make the tree dirty:
    // a run of several benchmarks would otherwise call every section after
    // the first one uncommitted.
    let dirty = !command_output(
        "git",
        &[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)benchmarks/RESULTS.md",
            ":(exclude)benchmarks/results",
        ],
    )
    .is_empty();
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let valkey = command_output("valkey-server", &["--version"]);
    let valkey = valkey
        .split_whitespace()
        .nth(2)
        .unwrap_or("unknown")
        .trim_start_matches("v=");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
        / 1024.0;
    format!(
        "Measured {} with `{command}` (commit {commit}{}); 1-minute load average at the start of each run \
         {lo:.2}–{hi:.2} (median {mid:.2}).\n\n\
         Versions: Valkey {valkey}, {}.\n\n\
         Machine: {cores} cores ({cpu}), {mem_gib:.0} GiB, {}.\n",
        command_output("date", &["-I"]),
        if dirty { " with uncommitted changes" } else { "" },
        command_output("rustc", &["--version"]),
        command_output("uname", &["-sr"]),
    )
}

/// Replaces what stands between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
/// in `path`; the markers must be there once each.
pub fn write_section(path: &str, name: &str, body: &str) {
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let text = std::fs::read_to_string(path).expect("read the results file");
    assert!(
        text.matches(&begin).count() == 1 && text.matches(&end).count() == 1,
        "{path}: expected one {begin} and one {end}"
    );
    let (head, rest) = text.split_once(&begin).unwrap();
    let (_, tail) = rest.split_once(&end).unwrap();
    std::fs::write(path, format!("{head}{begin}\n{}\n{end}{tail}", body.trim()))
        .expect("write the results file");
}

/// `value` rounded, with commas between thousands: 1234567.8 -> "1,234,568".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(0.4), "0");
        assert_eq!(super::thousands(999.0), "999");
        assert_eq!(super::thousands(1234567.8), "1,234,568");
        assert_eq!(super::thousands(-12345.0), "-12,345");
    }
}
