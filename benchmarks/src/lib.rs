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
