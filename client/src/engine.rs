//! Which engine runs the queue: the module's native commands, or the same
//! commands as a Lua script on servers that cannot load modules (managed
//! Valkey/Redis). Both work on the same keys with the same semantics, so a
//! deployment can switch between them without draining its queues.

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{Cmd, Value};

use crate::error::{Error, Result};
use crate::scripts;

/// The engine a client runs its commands with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `VTASKS.*` commands of the module loaded into the server.
    Module,
    /// The same commands as a Lua function library (`FCALL`).
    Scripts,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Module => "module",
            Engine::Scripts => "scripts",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The module when the server has it, else the scripts.
    #[default]
    Auto,
    /// The module, or an error at connect time.
    Module,
    /// The scripts, even where the module is loaded.
    Scripts,
}

impl FromStr for EngineChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(EngineChoice::Auto),
            "module" => Ok(EngineChoice::Module),
            "scripts" => Ok(EngineChoice::Scripts),
            _ => Err(Error::InvalidInput(format!(
                "engine {s:?}: expected \"auto\", \"module\" or \"scripts\""
            ))),
        }
    }
}

/// Whether the server answering on `conn` has the module loaded.
pub async fn has_module(conn: &mut impl ConnectionLike) -> Result<bool> {
    let reply: Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("VTASKS.FETCHN")
        .query_async(conn)
        .await
        .map_err(Error::from)?;
    Ok(match reply {
        Value::Array(items) => matches!(items.first(), Some(v) if *v != Value::Nil),
        _ => false,
    })
}

/// The engine to run on a server, given what was asked and whether the
/// server has the module.
pub fn resolve(choice: EngineChoice, module_loaded: bool, url: &str) -> Result<Engine> {
    match (choice, module_loaded) {
        (EngineChoice::Scripts, _) | (EngineChoice::Auto, false) => Ok(Engine::Scripts),
        (EngineChoice::Module, true) | (EngineChoice::Auto, true) => Ok(Engine::Module),
        (EngineChoice::Module, false) => Err(Error::ModuleMissing(format!(
            "the server at {url} has no vtasks module (VTASKS.FETCHN is unknown). \
             Load it with `loadmodule /path/to/libvtasks.so` in valkey.conf, or use \
             engine \"auto\" or \"scripts\" on servers that cannot load modules \
             (managed Valkey/Redis)"
        ))),
    }
}

/// The engine in use, shared by a client's clones; `auto` clients move to
/// the scripts if the server turns out not to have the module (a failover
/// to a server without it).
#[derive(Debug, Clone)]
pub struct EngineState {
    current: Arc<AtomicU8>,
    choice: EngineChoice,
}

impl EngineState {
    pub fn new(engine: Engine, choice: EngineChoice) -> Self {
        EngineState {
            current: Arc::new(AtomicU8::new(engine as u8)),
            choice,
        }
    }

    pub fn get(&self) -> Engine {
        match self.current.load(Ordering::Relaxed) {
            x if x == Engine::Module as u8 => Engine::Module,
            _ => Engine::Scripts,
        }
    }

    pub fn choice(&self) -> EngineChoice {
        self.choice
    }

    /// Runs a `VTASKS.*` command with the current engine.
    pub async fn query(&self, conn: &mut impl ConnectionLike, cmd: &Cmd) -> Result<Value> {
        Ok(self.query_then(conn, cmd, None).await?.0)
    }

    /// As `query`; with `then`, that plain command is sent right behind the
    /// `VTASKS.*` one in one pipeline, on the same connection (as `WAIT`
    /// must be), and its reply returned too.
    pub async fn query_then(
        &self,
        conn: &mut impl ConnectionLike,
        cmd: &Cmd,
        then: Option<&Cmd>,
    ) -> Result<(Value, Option<Value>)> {
        match self.get() {
            Engine::Scripts => scripts::query_then(conn, cmd, then).await,
            Engine::Module => {
                let outcome = scripts::send_pipelined(conn, cmd, then)
                    .await
                    .map_err(Error::from);
                match outcome {
                    // An unknown command ran nothing, so the scripts may run it.
                    Err(err) if self.choice == EngineChoice::Auto && is_unknown_command(&err) => {
                        self.current.store(Engine::Scripts as u8, Ordering::Relaxed);
                        scripts::query_then(conn, cmd, then).await
                    }
                    outcome => outcome,
                }
            }
        }
    }
}

fn is_unknown_command(err: &Error) -> bool {
    matches!(err, Error::Server { code, message }
        if code == "ERR" && message.starts_with("unknown command"))
}
