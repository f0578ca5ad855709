//! Valkey (or Redis) Sentinel: a URL names the sentinels and the service,
//! `valkey+sentinel://[user:password@]host1:26379,host2:26379/mymaster[/db]`
//! (also `redis+sentinel://`); the client asks the sentinels where the
//! service's primary is, connects there, and asks again whenever that
//! connection breaks or the server answers READONLY (it became a replica):
//! after a failover the next command reaches the new primary.
//!
//! The user name and password are the data nodes' (the sentinels are asked
//! without one). TLS to a sentinel-managed primary is not supported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, RedisFuture, Value};

use crate::cluster::redact;
use crate::error::{Error, Result};

/// Whether `url` is a sentinel URL.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("valkey+sentinel://") || url.starts_with("redis+sentinel://")
}

/// A sentinel URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `redis://host:port` of each sentinel.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub service: String,
    /// The data nodes' URL settings (user, password, database), on the
    /// first sentinel's address: `redis://[user:password@]host:port/db`.
    pub node_template: String,
}

impl SentinelUrl {
    pub fn parse(url: &str) -> Result<SentinelUrl> {
        let invalid = |why: &str| Error::InvalidInput(format!("URL {:?}: {why}", redact(url)));
        let rest = url
            .strip_prefix("valkey+sentinel://")
            .or_else(|| url.strip_prefix("redis+sentinel://"))
            .ok_or_else(|| invalid("expected valkey+sentinel:// or redis+sentinel://"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
            return Err(invalid("expected sentinels as host:port,host:port"));
        }
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(|host| {
                if host.contains(':') {
                    format!("redis://{host}")
                } else {
                    format!("redis://{host}:26379")
                }
            })
            .collect();
        if tail.contains(['?', '#']) {
            return Err(invalid("query parameters are not supported with sentinels"));
        }
        let mut parts = tail.trim_start_matches('/').split('/');
        let service = parts.next().unwrap_or_default().to_string();
        if service.is_empty() {
            return Err(invalid(
                "expected the service name after the sentinels (…/mymaster)",
            ));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse::<i64>()
                .map_err(|_| invalid("the database after the service name must be a number"))?,
        };
        if parts.next().is_some_and(|p| !p.is_empty()) {
            return Err(invalid("expected …/service or …/service/db"));
        }
        let first = sentinels[0].trim_start_matches("redis://");
        Ok(SentinelUrl {
            node_template: format!("redis://{userinfo}{first}/{db}"),
            sentinels,
            service,
        })
    }
}

/// What a sentinel client knows: how to ask the sentinels, and the
/// connection to the primary they named last.
pub(crate) struct SentinelTarget {
    pub(crate) service: String,
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The data nodes' settings (user, password, database), on the first
    /// sentinel's address.
    pub(crate) template: redis::ConnectionInfo,
    config: AsyncConnectionConfig,
    /// The client's connection to the primary, and its generation (a
    /// failed command forgets only the connection it failed on).
    conn: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
}

impl SentinelTarget {
    pub(crate) fn new(url: &str, config: AsyncConnectionConfig) -> Result<SentinelTarget> {
        let parsed = SentinelUrl::parse(url)?;
        let template = parsed
            .node_template
            .as_str()
            .into_connection_info()
            .map_err(|e| Error::InvalidInput(format!("URL {:?}: {e}", redact(url))))?;
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(template.redis_settings().clone());
        let sentinel = SentinelClient::build(
            parsed.sentinels.clone(),
            parsed.service.clone(),
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(|e| Error::InvalidInput(format!("URL {:?}: {e}", redact(url))))?;
        Ok(SentinelTarget {
            service: parsed.service,
            sentinel: tokio::sync::Mutex::new(sentinel),
            template,
            config,
            conn: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        })
    }

    /// Asks the sentinels for the service's primary (they check that it
    /// says it is one): a client for it.
    pub(crate) async fn primary(&self) -> Result<redis::Client> {
        self.sentinel
            .lock()
            .await
            .async_get_client()
            .await
            .map_err(|err| {
                Error::Connection(format!(
                    "the sentinels named no reachable primary for {:?}: {err}",
                    self.service
                ))
            })
    }

    /// The client's connection to the primary, opened (after asking the
    /// sentinels) when there is none.
    async fn connection(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let primary = self.primary().await.map_err(to_redis_error)?;
        let conn = primary
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *slot = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Forgets the connection of this generation: the next command asks
    /// the sentinels again.
    async fn forget(&self, generation: u64) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }
}

fn to_redis_error(err: Error) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        err.to_string(),
    ))
}

/// Whether a failed command means the connection no longer reaches the
/// primary: broken, timed out, or the server is a replica now.
fn lost(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        || err.code() == Some("READONLY")
}

/// The client's connection through the sentinels (see the module's doc).
#[derive(Clone)]
pub(crate) struct SentinelConn(pub(crate) Arc<SentinelTarget>);

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let target = self.0.clone();
        Box::pin(async move {
            let (generation, mut conn) = target.connection().await?;
            let outcome = conn.req_packed_command(cmd).await;
            if outcome.as_ref().is_err_and(lost) {
                target.forget(generation).await;
            }
            outcome
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let target = self.0.clone();
        Box::pin(async move {
            let (generation, mut conn) = target.connection().await?;
            let outcome = conn.req_packed_commands(pipeline, offset, count).await;
            if outcome.as_ref().is_err_and(lost) {
                target.forget(generation).await;
            }
            outcome
        })
    }

    fn get_db(&self) -> i64 {
        self.0.template.redis_settings().db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_sentinels_the_service_and_the_database() {
        let url = SentinelUrl::parse("valkey+sentinel://h1:26379,h2:26380/mymaster/2").unwrap();
        assert_eq!(url.sentinels, ["redis://h1:26379", "redis://h2:26380"]);
        assert_eq!(url.service, "mymaster");
        assert_eq!(url.node_template, "redis://h1:26379/2");
        let url = SentinelUrl::parse("redis+sentinel://u:p@h1/svc").unwrap();
        assert_eq!(url.sentinels, ["redis://h1:26379"]);
        assert_eq!(url.node_template, "redis://u:p@h1:26379/0");
        for bad in [
            "valkey+sentinel://h1:26379",
            "valkey+sentinel://h1:26379/",
            "valkey+sentinel://,h2/svc",
            "valkey+sentinel://h1/svc/x",
            "valkey+sentinel://h1/svc/1/2",
            "valkey://h1/svc",
        ] {
            let err = SentinelUrl::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err}");
        }
    }
}
