//! Rate limits shared by every herald instance, in Redis (`HERALD_REDIS_URL`):
//! the [`SharedLimits`] port of the actors' paces (`actors/src/pace.rs`).
//!
//! Each limit is one Redis key holding a GCRA's theoretical arrival time, in
//! microseconds of Redis's own clock. One Lua script reads the clock
//! (`TIME`), reserves as many of the requested slots as conform soon, moves the
//! arrival time on and sets the key's expiry, atomically: instances never
//! race each other, and their clocks never matter. Why a script and not a
//! Redis module or a client-side lock: `docs/adr/0002-shared-rate-limits.md`.
//!
//! Keys: `herald:rl:<channel>:<class>` and `herald:rl:provider:<channel>`.
//!
//! The connection is one multiplexed connection shared by every pace in the
//! process, opened on first use and opened again after any failure. Every
//! call is bounded by [`TIMEOUT`]: a slow or unreachable Redis is
//! [`LimitsUnavailable`] quickly, and the paces fall back to their local
//! share of each limit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_actors::ports::{Grant, LimitsUnavailable, SharedLimits};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

/// How long one call (connecting included) may take before the limits count
/// as unavailable. Well above a healthy Redis's answer (under a
/// millisecond), well below anything that would stall sending.
pub const TIMEOUT: Duration = Duration::from_millis(250);

/// The GCRA, in Redis's clock. KEYS[1]: the limit. ARGV: emission interval
/// (µs), tolerance (µs), slots wanted, lead (µs). Returns {granted, µs until
/// the first granted slot conforms, µs until another call would be granted
/// one}.
///
/// The `k`-th next slot conforms at `tat + (k-1)*e - tolerance`; the script
/// reserves those that conform by `now + lead`, so
/// `k = floor((now + lead - tat + tolerance) / e) + 1`, capped by what was
/// asked. An idle limit's `tat` is in the past and counts as `now`: idleness
/// never banks a burst beyond the tolerance.
const GCRA: &str = r"
local e = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local lead = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local k = math.floor((now + lead - tat + tolerance) / e) + 1
if k > want then k = want end
if k < 0 then k = 0 end
local first = tat - tolerance - now
if first < 0 then first = 0 end
if k > 0 then
  tat = tat + k * e
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local ask = tat - tolerance - lead - now
if ask < 0 then ask = 0 end
return {k, first, ask}
";

/// The Redis URL could not be used (checked by `check-config` before).
#[derive(Debug, thiserror::Error)]
#[error("redis_url: {0}")]
pub struct LimitsError(String);

/// [`SharedLimits`] over Redis.
#[derive(Clone)]
pub struct RedisLimits {
    inner: Arc<Inner>,
}

struct Inner {
    /// Connection parameters; opening a client does no I/O.
    client: redis::Client,
    /// The open connection, if any. A tokio mutex: it is held while
    /// connecting, so a burst of acquires after an outage opens one
    /// connection, not one each.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// The script, sent by hash (`EVALSHA`) and loaded again when a
    /// restarted Redis no longer knows it.
    gcra: redis::Script,
    /// The password in the URL, so it can be kept out of error messages.
    password: Option<String>,
}

impl RedisLimits {
    /// Parses `url`; connects on first use (so herald starts without Redis).
    pub fn new(url: &str) -> Result<RedisLimits, LimitsError> {
        let client = redis::Client::open(url).map_err(|e| LimitsError(e.to_string()))?;
        let password = url::Url::parse(url)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
            .filter(|p| !p.is_empty());
        Ok(RedisLimits {
            inner: Arc::new(Inner {
                client,
                conn: tokio::sync::Mutex::new(None),
                gcra: redis::Script::new(GCRA),
                password,
            }),
        })
    }

    /// Whether Redis answers now (at start, to know the mode from the outset).
    pub async fn ping(&self) -> Result<(), LimitsUnavailable> {
        let inner = self.inner.clone();
        inner
            .bounded(|mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                Ok(())
            })
            .await
    }
}

impl Inner {
    /// Runs `call` on the connection (opening it if needed) within
    /// [`TIMEOUT`]. On any failure the connection is dropped, so the next
    /// call starts from a fresh one.
    async fn bounded<T, F, Fut>(&self, call: F) -> Result<T, LimitsUnavailable>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self.connection().await?;
            call(conn).await
        };
        let error = match tokio::time::timeout(TIMEOUT, attempt).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => self.scrub(&e.to_string()),
            Err(_) => format!("no answer within {} ms", TIMEOUT.as_millis()),
        };
        self.conn.lock().await.take();
        Err(LimitsUnavailable(error))
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = &*slot {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// An error message without the URL's password, should a driver error
    /// ever quote it.
    fn scrub(&self, message: &str) -> String {
        match &self.password {
            Some(p) => message.replace(p.as_str(), "***"),
            None => message.to_owned(),
        }
    }
}

/// Whole microseconds, rounded: the script's unit.
fn micros(d: Duration) -> u64 {
    u64::try_from((d.as_nanos() + 500) / 1000).unwrap_or(u64::MAX)
}

impl SharedLimits for RedisLimits {
    fn acquire(
        &self,
        key: Arc<str>,
        emission: Duration,
        tolerance: Duration,
        want: u32,
        lead: Duration,
    ) -> BoxFuture<'static, Result<Grant, LimitsUnavailable>> {
        let inner = self.inner.clone();
        // At least 1 µs apart: the script divides by it.
        let emission_us = micros(emission).max(1);
        let tolerance_us = micros(tolerance);
        let lead_us = micros(lead);
        Box::pin(async move {
            let gcra = inner.gcra.clone();
            let (granted, first_us, ask_us): (u32, u64, u64) = inner
                .bounded(|mut conn| async move {
                    gcra.key(&*key)
                        .arg(emission_us)
                        .arg(tolerance_us)
                        .arg(want)
                        .arg(lead_us)
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            Ok(Grant {
                granted,
                starts_in: Duration::from_micros(first_us),
                ask_after: Duration::from_micros(ask_us),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round() {
        assert_eq!(micros(Duration::from_secs(1) / 60), 16_667);
        assert_eq!(micros(Duration::from_nanos(600)), 1);
        assert_eq!(micros(Duration::ZERO), 0);
        assert_eq!(micros(Duration::from_millis(3)), 3000);
    }

    #[test]
    fn urls_parse_without_io_and_passwords_stay_out_of_errors() {
        let limits = RedisLimits::new("redis://:s3cret@127.0.0.1:1/0").unwrap();
        assert_eq!(
            limits.inner.scrub("auth failed for s3cret"),
            "auth failed for ***"
        );
        assert!(RedisLimits::new("http://127.0.0.1").is_err());
        assert!(RedisLimits::new("redis://127.0.0.1/notadb").is_err());
    }
}
