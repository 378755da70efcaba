//! The connection to Redis and the rule for when to use it: a short timeout on every command,
//! and after a failure a second of deciding alone before Redis is tried again.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::Metrics;

/// How long a replica decides alone after Redis failed, before it tries Redis again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The settings of the shared store.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://`, possibly with a user and password: never logged.
    pub url: crate::secret::Secret,
    /// The longest a command may take before the replica decides alone.
    pub timeout: Duration,
    /// Prepended to every key, so several deployments can share one Redis.
    pub prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("HNC_REDIS_URL is not a valid redis:// or rediss:// URL")]
    InvalidUrl(#[source] redis::RedisError),
}

/// The replica's handle on the shared store.
pub struct Coordinator {
    connection: ConnectionManager,
    timeout: Duration,
    prefix: String,
    /// Whether the last command succeeded: what the `redis_coordinated` gauge shows.
    coordinated: AtomicBool,
    /// While set and in the future, commands are not sent: the replica decides alone.
    local_until: Mutex<Option<Instant>>,
    metrics: std::sync::Arc<Metrics>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection holds the URL, and the URL may hold a password.
        f.debug_struct("Coordinator")
            .field("prefix", &self.prefix)
            .field("coordinated", &self.coordinated)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A handle that connects on first use, so a replica starts (and is ready) with Redis down.
    pub fn new(
        settings: &RedisSettings,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<Self, CoordError> {
        let client = redis::Client::open(settings.url.expose()).map_err(CoordError::InvalidUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            // Our own back-off (`RETRY_AFTER_FAILURE`) paces reconnection; the manager's inner
            // retries would only hold a caller past its timeout.
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(CoordError::InvalidUrl)?;
        metrics.redis_coordinated.set(1);
        Ok(Self {
            connection,
            timeout: settings.timeout,
            prefix: settings.prefix.clone(),
            coordinated: AtomicBool::new(true),
            local_until: Mutex::new(None),
            metrics,
        })
    }

    /// A key under this deployment's prefix.
    pub(super) fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Whether commands are being sent now (the last one succeeded, or the pause is over).
    pub fn is_coordinated(&self) -> bool {
        self.coordinated.load(Ordering::Relaxed)
    }

    /// Whether a command would be sent now: Redis answered last time, or a retry is due.
    pub fn may_send(&self) -> bool {
        self.is_coordinated()
            || self
                .local_until
                .lock()
                .expect("coordinator lock poisoned")
                .is_none_or(|at| Instant::now() >= at)
    }

    /// Runs `command` (labelled `op` in the metrics) within the timeout, or returns `None` at
    /// once while the replica is deciding alone. `None` means "decide locally".
    pub(super) async fn run<T, F, Fut>(&self, op: RedisOp, command: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.paused() {
            return None;
        }
        self.metrics
            .redis_commands
            .with_label_values(&[op.as_str()])
            .inc();
        let outcome = tokio::time::timeout(self.timeout, command(self.connection.clone())).await;
        match outcome {
            Ok(Ok(value)) => {
                self.on_success();
                Some(value)
            }
            Ok(Err(error)) => {
                self.on_failure(op, &error.to_string());
                None
            }
            Err(_) => {
                self.on_failure(op, "timed out");
                None
            }
        }
    }

    fn paused(&self) -> bool {
        let mut until = self.local_until.lock().expect("coordinator lock poisoned");
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                // One command goes through to find out; the rest keep deciding locally until it
                // answers.
                *until = Some(Instant::now() + RETRY_AFTER_FAILURE);
                false
            }
            None => false,
        }
    }

    fn on_success(&self) {
        *self.local_until.lock().expect("coordinator lock poisoned") = None;
        if !self.coordinated.swap(true, Ordering::Relaxed) {
            self.metrics.redis_coordinated.set(1);
            tracing::info!("redis reachable again: budget, quotas and cache are shared");
        }
    }

    fn on_failure(&self, op: RedisOp, why: &str) {
        self.metrics
            .redis_errors
            .with_label_values(&[op.as_str()])
            .inc();
        *self.local_until.lock().expect("coordinator lock poisoned") =
            Some(Instant::now() + RETRY_AFTER_FAILURE);
        if self.coordinated.swap(false, Ordering::Relaxed) {
            self.metrics.redis_coordinated.set(0);
            // The error text of redis-rs names the address at most, never the password.
            tracing::warn!(
                op = op.as_str(),
                error = why,
                "redis unavailable: pacing, quotas and cache are per replica until it is back"
            );
        }
    }
}

/// What a Redis command is for: the `op` label of `redis_commands_total` and `redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOp {
    BudgetLease,
    BudgetPause,
    CacheGet,
    CachePut,
    QuotaTake,
}

impl RedisOp {
    /// Every op, so each series exists (at 0) from start-up.
    pub const ALL: [Self; 5] = [
        Self::BudgetLease,
        Self::BudgetPause,
        Self::CacheGet,
        Self::CachePut,
        Self::QuotaTake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BudgetLease => "budget_lease",
            Self::BudgetPause => "budget_pause",
            Self::CacheGet => "cache_get",
            Self::CachePut => "cache_put",
            Self::QuotaTake => "quota_take",
        }
    }
}
