//! Replicas that act as one: the provider budget, the client quotas and the result cache kept in
//! one Redis (or Valkey) that every replica shares, when `HNC_REDIS_URL` is set.
//!
//! Redis is never a single point of failure. Every command has a short timeout; the first one that
//! fails switches the replica to its own in-process pacer, quotas and cache (logged once, counted
//! in `redis_errors_total`, shown by the `redis_coordinated` gauge), and Redis is tried again a
//! second later, so a restarted Redis is picked up by itself. Callers get `None` for "decide
//! locally" and never an error: no item is lost to Redis.
//!
//! `redis` (redis-rs) with its tokio `ConnectionManager`: the most used client, one multiplexed
//! connection per replica that reconnects by itself, Lua scripts sent by SHA with a fallback to
//! the source, and `rediss://` over rustls (the same TLS stack as the upstream client).

mod budget;
mod cache;
mod quota;
mod store;

pub use budget::{BACKGROUND_HORIZON, Lease, LeaseRequest, SharedBudget};
pub use cache::SharedCache;
pub use quota::SharedQuota;
pub use store::{CoordError, Coordinator, RedisOp, RedisSettings};
