//! Shared by the demo and the benchmarks: a Valkey server started from the
//! project's `module/valkey.conf` on a free port, stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `VTASKS_MODULE`, else the release build of the module.
pub fn module_path() -> PathBuf {
    std::env::var("VTASKS_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/release/libvtasks.so"))
}

pub struct Valkey {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Valkey {
    /// Starts `valkey-server` with the project's config; the module is
    /// loaded unless `with_module` is false.
    pub fn start(with_module: bool) -> std::io::Result<Valkey> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("vtasks-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = std::fs::read_to_string(repo_root().join("module/valkey.conf"))?;
        let module = module_path();
        if with_module && !module.exists() {
            return Err(std::io::Error::other(format!(
                "{} not found: build it with `make build`",
                module.display()
            )));
        }
        let conf: String = conf
            .lines()
            .filter_map(|line| match line.trim_start().starts_with("loadmodule ") {
                true if with_module => Some(format!("loadmodule {}\n", module.display())),
                true => None,
                false => Some(format!("{line}\n")),
            })
            .collect();
        std::fs::write(dir.join("valkey.conf"), conf)?;
        let child = Command::new(std::env::var("VTASKS_SERVER").unwrap_or("valkey-server".into()))
            .arg(dir.join("valkey.conf"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = Valkey { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("valkey-server did not start"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
