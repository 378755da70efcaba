//! Jobs in the Redis every replica shares (`HNC_REDIS_URL`), so any replica can take any job and
//! finish it. A job's titles are cut into chunks of one round each; a replica claims a chunk
//! for a lease it renews while it works (`heartbeat`), and a chunk whose lease lapses (the
//! replica died) goes back to the pending ones, for any replica to take within seconds. Results
//! are written with `HSETNX` keyed by title index, in the same script as the counts: a title
//! never gets two results, and a replica that lost its lease and finishes anyway only pays for
//! calls whose answers are dropped. Leases use Redis's clock, so replicas need no synchronised
//! clocks.
//!
//! Every step is one Lua script (atomic); the scripts name some keys from the prefix and the job
//! id rather than taking them all as `KEYS`, so this store wants one Redis, not a cluster.
//! Durability is Redis's: with `appendonly yes` (and `appendfsync everysec`, its default) a
//! crash of Redis itself loses at most a second of results, which are then classified again.
//!
//! Keys, under the prefix: `jobs:open` (zset of open jobs by creation), `jobs:ended` (set of
//! ended jobs whose webhook is not queued yet), `jobs:by_status` (hash), `job:{id}` (hash),
//! `job:{id}:titles` (list), `:results` and `:attempts` (hashes by index), `:pending` and
//! `:claimed` (zsets of chunks), `:claims` (hash chunk -> token), `owner:{owner}:jobs` (zset),
//! `owner:{owner}:open` (set), `owner:{owner}:key:{hash}` (idempotency), `deliveries:due` (zset)
//! and `delivery:{id}` (hash).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};

use super::clock::{now_ms, rfc3339};
use super::job::{
    BatchState, BatchWork, Claim, Created, Delivered, Delivery, Gauges, ItemOutcome, Job,
    JobCounts, JobStatus, JobUsage, JobView, LaneUsage, NewJob, StoreError, Work, Written,
};
use super::plan::Lane;
use crate::coord::RedisSettings;

/// How long a claim on a chunk lasts without a heartbeat: how soon another replica takes over
/// the chunks of one that died.
pub const LEASE: Duration = Duration::from_secs(6);
/// A job command may move a large job's titles: it gets longer than a budget lease does.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Titles are pushed in pieces of this many, so no one command is huge.
const PUSH_PIECE: usize = 1_000;
/// A titles list not yet attached to a job (the replica died between the push and the
/// creation) is dropped after this.
const ORPHAN_TTL_MS: u64 = 3_600_000;
/// A webhook being sent by one replica is not due for the others for this long.
const DELIVERY_HOLD_MS: u64 = 60_000;
/// Open jobs scanned for a pending chunk per claim, oldest first (those on the Batch API lane
/// are passed over, so many of them must not hide newer jobs).
const CLAIM_SCAN: u32 = 1_024;

/// KEYS: job, titles, pending, open, owner jobs, owner open, idempotency key, by_status.
/// ARGV: id, owner, taxonomy, metadata, callback url ('' none), total, chunks, idempotency key
/// ('' none), deadline ms ('' none), plan (JSON), chunk size, lane. KEYS[9]: the jobs on the
/// Batch API lane. Returns {1, id} made, or {0, id} of the job the key already made.
const CREATE: &str = r"
if ARGV[8] ~= '' then
  local existing = redis.call('GET', KEYS[7])
  if existing then return {0, existing} end
end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[6]) then
  return redis.error_reply('the job titles were not all stored')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PERSIST', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'status', 'queued', 'created_at_ms', now,
  'taxonomy', ARGV[3], 'metadata', ARGV[4], 'total', ARGV[6], 'done', 0, 'errors', 0,
  'input_tokens', 0, 'cached_input_tokens', 0, 'output_tokens', 0, 'reasoning_tokens', 0,
  'upstream_requests', 0, 'cost_usd', 0, 'cost_unknown', 0)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'callback_url', ARGV[5]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'deadline_ms', ARGV[9]) end
redis.call('HSET', KEYS[1], 'plan', ARGV[10], 'chunk', ARGV[11], 'lane', ARGV[12])
if ARGV[12] == 'batch' then redis.call('SADD', KEYS[9], ARGV[1]) end
if ARGV[8] ~= '' then redis.call('SET', KEYS[7], ARGV[1]) end
for c = 0, tonumber(ARGV[7]) - 1 do redis.call('ZADD', KEYS[3], c, c) end
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('HINCRBY', KEYS[8], 'queued', 1)
return {1, ARGV[1]}
";

/// KEYS: open, by_status. ARGV: prefix, token, lease ms, chunk size, jobs to scan.
/// Lapsed claims of each job scanned go back to its pending chunks first. Returns {} or
/// {id, taxonomy, chunk, deadline ms or '', plan or '', titles pending, index, title, attempts,
/// index, title, attempts, ...} with the chunk's
/// titles not done yet (none: the chunk was done when its claimant died; recording the empty
/// round releases it).
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)) do
  local job = ARGV[1] .. ':job:' .. id
  -- The job's own chunk size (a replica of another version may use another).
  local size = tonumber(redis.call('HGET', job, 'chunk')) or tonumber(ARGV[4])
  local lapsed = redis.call('ZRANGEBYSCORE', job .. ':claimed', '-inf', now)
  for _, c in ipairs(lapsed) do
    redis.call('ZREM', job .. ':claimed', c)
    redis.call('HDEL', job .. ':claims', c)
    redis.call('ZADD', job .. ':pending', c, c)
  end
  -- A job on the Batch API lane has no live rounds until it leaves it.
  local popped = {}
  if redis.call('HGET', job, 'lane') ~= 'batch' then
    popped = redis.call('ZPOPMIN', job .. ':pending')
  end
  if popped[1] then
    local chunk = tonumber(popped[1])
    redis.call('ZADD', job .. ':claimed', now + tonumber(ARGV[3]), chunk)
    redis.call('HSET', job .. ':claims', chunk, ARGV[2])
    local s = redis.call('HMGET', job, 'status', 'taxonomy', 'total', 'deadline_ms', 'plan', 'done')
    if s[1] == 'queued' then
      redis.call('HSET', job, 'status', 'running')
      redis.call('HINCRBY', KEYS[2], 'queued', -1)
      redis.call('HINCRBY', KEYS[2], 'running', 1)
    end
    local first = chunk * size
    local last = math.min(tonumber(s[3]), first + size) - 1
    local titles = redis.call('LRANGE', job .. ':titles', first, last)
    local out = {id, s[2], chunk, s[4] or '', s[5] or '', tonumber(s[3]) - tonumber(s[6])}
    for i = first, last do
      if redis.call('HEXISTS', job .. ':results', i) == 0 then
        table.insert(out, i)
        table.insert(out, titles[i - first + 1])
        table.insert(out, tonumber(redis.call('HGET', job .. ':attempts', i)) or 0)
      end
    end
    return out
  end
end
return {}
";

/// KEYS: claimed, claims, job. ARGV: chunk, token, lease ms. 1: renewed; 0: the claim is
/// gone (lapsed, another replica may hold it); 2: the job ended (cancelled).
const HEARTBEAT: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  local status = redis.call('HGET', KEYS[3], 'status')
  if status ~= 'queued' and status ~= 'running' then return 2 end
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), ARGV[1])
return 1
";

/// Ends `job` (KEYS[1]) when every title has a result and it is still open: `failed` when not
/// one got a topic, `completed` otherwise; its webhook goes in `jobs:ended`. Shared by RECORD.
const FINISH: &str = r"
local function finish(prefix, id, job, now)
  local s = redis.call('HMGET', job, 'status', 'done', 'total', 'errors', 'owner', 'callback_url')
  if (s[1] ~= 'queued' and s[1] ~= 'running') or tonumber(s[2]) < tonumber(s[3]) then
    return
  end
  local status = 'completed'
  if tonumber(s[4]) >= tonumber(s[3]) then status = 'failed' end
  redis.call('HSET', job, 'status', status, 'finished_at_ms', now)
  redis.call('ZREM', prefix .. ':jobs:open', id)
  redis.call('SREM', prefix .. ':owner:' .. s[5] .. ':open', id)
  redis.call('HINCRBY', prefix .. ':jobs:by_status', s[1], -1)
  redis.call('HINCRBY', prefix .. ':jobs:by_status', status, 1)
  redis.call('DEL', job .. ':pending', job .. ':claimed', job .. ':claims')
  if s[6] then redis.call('SADD', prefix .. ':jobs:ended', id) end
end
";

/// KEYS: job. ARGV: prefix, id, chunk ('' none), token, chunk size, input, cached, output,
/// reasoning, requests, cost, cost unknown (0/1), lane, live cost ('' unknown), the round's
/// id, whether the job leaves the Batch API lane (1/0), then (index, kind, line) triples: kind `t` a topic, `e` an error, `a` again (an attempt counted).
/// Returns {done, errors} newly written.
const RECORD: &str = r"
local job = KEYS[1]
-- A round is written once: a retry after a lost reply adds nothing twice.
if not redis.call('SET', job .. ':round:' .. ARGV[15], 1, 'NX', 'PX', 3600000) then
  return {0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local size = tonumber(redis.call('HGET', job, 'chunk')) or tonumber(ARGV[5])
local done, errors = 0, 0
for i = 17, #ARGV, 3 do
  local index, kind = ARGV[i], ARGV[i + 1]
  if kind == 'a' then
    redis.call('HINCRBY', job .. ':attempts', index, 1)
  elseif redis.call('HSETNX', job .. ':results', index, ARGV[i + 2]) == 1 then
    done = done + 1
    if kind == 'e' then errors = errors + 1 end
  end
end
redis.call('HINCRBY', job, 'done', done)
redis.call('HINCRBY', job, 'errors', errors)
redis.call('HINCRBY', job, 'input_tokens', ARGV[6])
redis.call('HINCRBY', job, 'cached_input_tokens', ARGV[7])
redis.call('HINCRBY', job, 'output_tokens', ARGV[8])
redis.call('HINCRBY', job, 'reasoning_tokens', ARGV[9])
redis.call('HINCRBY', job, 'upstream_requests', ARGV[10])
redis.call('HINCRBYFLOAT', job, 'cost_usd', ARGV[11])
if ARGV[12] == '1' then redis.call('HSET', job, 'cost_unknown', 1) end
local lane = 'lane:' .. ARGV[13] .. ':'
redis.call('HINCRBY', job, lane .. 'titles', done)
redis.call('HINCRBY', job, lane .. 'input_tokens', ARGV[6])
redis.call('HINCRBY', job, lane .. 'cached_input_tokens', ARGV[7])
redis.call('HINCRBY', job, lane .. 'output_tokens', ARGV[8])
redis.call('HINCRBY', job, lane .. 'reasoning_tokens', ARGV[9])
redis.call('HINCRBY', job, lane .. 'upstream_requests', ARGV[10])
redis.call('HINCRBYFLOAT', job, lane .. 'cost_usd', ARGV[11])
if ARGV[12] == '1' then redis.call('HSET', job, lane .. 'cost_unknown', 1) end
if ARGV[14] == '' then
  redis.call('HSET', job, lane .. 'live_cost_unknown', 1)
else
  redis.call('HINCRBYFLOAT', job, lane .. 'live_cost_usd', ARGV[14])
end
local chunk = ARGV[3]
if chunk ~= '' and redis.call('HGET', job .. ':claims', chunk) == ARGV[4] then
  redis.call('ZREM', job .. ':claimed', chunk)
  redis.call('HDEL', job .. ':claims', chunk)
  local s = redis.call('HMGET', job, 'status', 'total')
  if s[1] == 'queued' or s[1] == 'running' then
    local first = tonumber(chunk) * size
    local last = math.min(tonumber(s[2]), first + size) - 1
    for i = first, last do
      if redis.call('HEXISTS', job .. ':results', i) == 0 then
        redis.call('ZADD', job .. ':pending', chunk, chunk)
        break
      end
    end
  end
end
if ARGV[16] == '1' then
  redis.call('HSET', job, 'lane', 'live')
  redis.call('SREM', ARGV[1] .. ':jobs:batch', ARGV[2])
end
finish(ARGV[1], ARGV[2], job, now)
return {done, errors}
";

/// KEYS: job, by_status. ARGV: where the batch is (JSON). Keeps it; a queued job is running
/// from then on.
const SET_BATCH: &str = r"
redis.call('HSET', KEYS[1], 'batch', ARGV[1])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
  redis.call('HINCRBY', KEYS[2], 'queued', -1)
  redis.call('HINCRBY', KEYS[2], 'running', 1)
end
return 1
";

/// KEYS: the job's batch lock. ARGV: token, ms. 1: this replica looks at the job's batch now
/// (taken, or renewed); 0: another does.
const BATCH_LOCK: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// KEYS: job. ARGV: prefix, id, owner. 1: cancelled now; 0: not open (or not the owner's).
const CANCEL: &str = r"
local s = redis.call('HMGET', KEYS[1], 'owner', 'status', 'callback_url')
if s[1] ~= ARGV[3] or (s[2] ~= 'queued' and s[2] ~= 'running') then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at_ms', now)
redis.call('ZREM', ARGV[1] .. ':jobs:open', ARGV[2])
redis.call('SREM', ARGV[1] .. ':owner:' .. ARGV[3] .. ':open', ARGV[2])
redis.call('HINCRBY', ARGV[1] .. ':jobs:by_status', s[2], -1)
redis.call('HINCRBY', ARGV[1] .. ':jobs:by_status', 'cancelled', 1)
redis.call('DEL', KEYS[1] .. ':pending', KEYS[1] .. ':claimed', KEYS[1] .. ':claims')
if s[3] then redis.call('SADD', ARGV[1] .. ':jobs:ended', ARGV[2]) end
return 1
";

/// KEYS: delivery, due, ended. ARGV: delivery id, job id, url, body. Queues a job's webhook
/// once (its id is the job's), and takes the job off `jobs:ended`.
const ENQUEUE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'job_id', ARGV[2], 'url', ARGV[3], 'body', ARGV[4],
    'attempts', 0, 'state', 'pending')
  redis.call('ZADD', KEYS[2], now, ARGV[1])
end
redis.call('SREM', KEYS[3], ARGV[2])
return 1
";

/// KEYS: due. ARGV: prefix, max, hold ms. The deliveries due now, each held from the other
/// replicas while this one sends it: {id, url, body, attempts, ...}.
const DUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), id)
  local d = redis.call('HMGET', ARGV[1] .. ':delivery:' .. id, 'url', 'body', 'attempts')
  table.insert(out, id)
  table.insert(out, d[1] or '')
  table.insert(out, d[2] or '')
  table.insert(out, d[3] or '0')
end
return out
";

/// KEYS: delivery, due. ARGV: id, outcome (`yes`, `retry`, `failed`), retry in ms, error.
const DELIVERED: &str = r"
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if ARGV[2] == 'retry' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[1], 'last_error', ARGV[4])
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == 'yes' then
  redis.call('HSET', KEYS[1], 'state', 'delivered')
else
  redis.call('HSET', KEYS[1], 'state', 'failed', 'last_error', ARGV[4])
end
return 1
";

macro_rules! script {
    ($source:expr) => {{
        static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new($source));
        &*SCRIPT
    }};
}

/// Whether a replica still holds its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Yes,
    /// The claim lapsed: another replica may hold the chunk now.
    Lapsed,
    /// The job ended (cancelled) while the chunk was being classified.
    Ended,
}

/// The jobs of every replica, in Redis.
pub struct SharedStore {
    connection: ConnectionManager,
    prefix: String,
    /// Titles a chunk holds: one round's.
    chunk: u32,
    /// This replica's claims are made with this token.
    token: String,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection holds the URL, and the URL may hold a password.
        f.debug_struct("SharedStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// A store that connects on first use (a replica starts with Redis down, and its job calls
    /// answer 503 until Redis is back).
    pub fn new(settings: &RedisSettings, chunk: u32) -> Result<Self, StoreError> {
        let client = redis::Client::open(settings.url.expose())?;
        let timeout = COMMAND_TIMEOUT.max(settings.timeout);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_secs(1))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            prefix: settings.prefix.clone(),
            chunk,
            token: format!("{:016x}", rand::random::<u64>()),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    fn job_key(&self, id: &str) -> String {
        self.key(&["job", id])
    }

    /// The idempotency key's Redis key: hashed, so a caller's text never makes a key name.
    fn idempotency_key(&self, owner: &str, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.key(&["owner", owner, "key", &hex])
    }

    fn conn(&self) -> ConnectionManager {
        self.connection.clone()
    }

    pub async fn create(&self, job: NewJob) -> Result<Created, StoreError> {
        let id = format!("job_{:016x}", rand::random::<u64>());
        let titles_key = format!("{}:titles", self.job_key(&id));
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        for piece in job.titles.chunks(PUSH_PIECE) {
            pipe.rpush(&titles_key, piece).ignore();
        }
        pipe.pexpire(&titles_key, ORPHAN_TTL_MS as i64).ignore();
        pipe.query_async::<()>(&mut conn).await?;
        let total = job.titles.len() as u64;
        let chunks = total.div_ceil(u64::from(self.chunk));
        let idem = job.idempotency_key.as_deref().unwrap_or("");
        let idem_key = self.idempotency_key(&job.owner, idem);
        let (made, id): (u8, String) = script!(CREATE)
            .key(self.job_key(&id))
            .key(&titles_key)
            .key(format!("{}:pending", self.job_key(&id)))
            .key(self.key(&["jobs", "open"]))
            .key(self.key(&["owner", &job.owner, "jobs"]))
            .key(self.key(&["owner", &job.owner, "open"]))
            .key(idem_key)
            .key(self.key(&["jobs", "by_status"]))
            .key(self.key(&["jobs", "batch"]))
            .arg(&id)
            .arg(&job.owner)
            .arg(&job.taxonomy)
            .arg(serde_json::to_string(&job.metadata).expect("a string map serialises"))
            .arg(job.callback_url.as_deref().unwrap_or(""))
            .arg(total)
            .arg(chunks)
            .arg(idem)
            .arg(job.deadline_ms.map_or(String::new(), |d| d.to_string()))
            .arg(serde_json::to_string(&job.plan).expect("a plan serialises"))
            .arg(self.chunk)
            .arg(job.plan.lane.name())
            .invoke_async(&mut conn)
            .await?;
        let found = self.get(&job.owner, &id).await?;
        let found = found.ok_or_else(|| StoreError::Corrupt(format!("job {id} vanished")))?;
        if made == 1 {
            Ok(Created::New(found))
        } else {
            conn.del::<_, ()>(&titles_key).await?;
            Ok(Created::Existing(found))
        }
    }

    pub async fn get(&self, owner: &str, id: &str) -> Result<Option<Job>, StoreError> {
        let fields: BTreeMap<String, String> = self.conn().hgetall(self.job_key(id)).await?;
        if fields.get("owner").map(String::as_str) != Some(owner) {
            return Ok(None);
        }
        job_of(id, &fields).map(Some)
    }

    /// `owner`'s jobs, newest first, at most `limit`, older than the job `before` when given.
    pub async fn list(
        &self,
        owner: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Job>, StoreError> {
        let index = self.key(&["owner", owner, "jobs"]);
        let mut conn = self.conn();
        let start = match before {
            None => 0,
            Some(before) => match conn.zrevrank::<_, _, Option<isize>>(&index, before).await? {
                Some(rank) => rank + 1,
                None => return Ok(Vec::new()),
            },
        };
        let ids: Vec<String> = conn
            .zrevrange(&index, start, start + limit as isize - 1)
            .await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(job) = self.get(owner, &id).await? {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    pub async fn by_key(&self, owner: &str, key: &str) -> Result<Option<Job>, StoreError> {
        let id: Option<String> = self.conn().get(self.idempotency_key(owner, key)).await?;
        match id {
            Some(id) => self.get(owner, &id).await,
            None => Ok(None),
        }
    }

    pub async fn open_jobs(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(self
            .conn()
            .scard(self.key(&["owner", owner, "open"]))
            .await?)
    }

    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        let mut conn = self.conn();
        let counts: BTreeMap<String, i64> = conn.hgetall(self.key(&["jobs", "by_status"])).await?;
        let by_status = JobStatus::ALL
            .into_iter()
            .map(|s| (s, counts.get(s.name()).copied().unwrap_or(0).max(0) as u64))
            .collect();
        let open: Vec<(String, f64)> = conn
            .zrange_withscores(self.key(&["jobs", "open"]), 0, -1)
            .await?;
        let mut pipe = redis::pipe();
        for (id, _) in &open {
            pipe.hmget(self.job_key(id), &["total", "done"]);
        }
        let sizes: Vec<(Option<u64>, Option<u64>)> = if open.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let titles_pending = sizes
            .iter()
            .map(|(total, done)| total.unwrap_or(0).saturating_sub(done.unwrap_or(0)))
            .sum();
        Ok(Gauges {
            by_status,
            titles_pending,
            oldest_open_at_ms: open.first().map(|(_, at)| *at as i64),
        })
    }

    pub async fn cancel(&self, owner: &str, id: &str) -> Result<Option<Job>, StoreError> {
        script!(CANCEL)
            .key(self.job_key(id))
            .arg(&self.prefix)
            .arg(id)
            .arg(owner)
            .invoke_async::<u8>(&mut self.conn())
            .await?;
        self.get(owner, id).await
    }

    /// The titles not done of a chunk of the oldest open job that has one pending, claimed for
    /// this replica.
    pub async fn next_work(&self) -> Result<Option<Work>, StoreError> {
        let reply: Vec<redis::Value> = script!(CLAIM)
            .key(self.key(&["jobs", "open"]))
            .key(self.key(&["jobs", "by_status"]))
            .arg(&self.prefix)
            .arg(&self.token)
            .arg(LEASE.as_millis() as u64)
            .arg(self.chunk)
            .arg(CLAIM_SCAN)
            .invoke_async(&mut self.conn())
            .await?;
        if reply.is_empty() {
            return Ok(None);
        }
        let text = |v: &redis::Value| -> Result<String, StoreError> {
            Ok(redis::from_redis_value_ref::<String>(v).map_err(redis::RedisError::from)?)
        };
        let number = |v: &redis::Value| -> Result<u64, StoreError> {
            Ok(redis::from_redis_value_ref::<u64>(v).map_err(redis::RedisError::from)?)
        };
        let mut items = Vec::new();
        for item in reply[6..].chunks_exact(3) {
            items.push((number(&item[0])?, text(&item[1])?, number(&item[2])? as u32));
        }
        let deadline = text(&reply[3])?;
        let plan = text(&reply[4])?;
        Ok(Some(Work {
            job_id: text(&reply[0])?,
            taxonomy: text(&reply[1])?,
            items,
            deadline_ms: deadline.parse().ok(),
            plan: serde_json::from_str(&plan).ok(),
            pending: number(&reply[5])?,
            claim: Some(Claim {
                chunk: number(&reply[2])?,
                token: self.token.clone(),
            }),
        }))
    }

    /// Renews the claim of `work`; `false` when it lapsed and another replica may hold the
    /// chunk now (its results still count once: they are keyed by index).
    pub async fn heartbeat(&self, job_id: &str, claim: &Claim) -> Result<Held, StoreError> {
        let job = self.job_key(job_id);
        let held: u8 = script!(HEARTBEAT)
            .key(format!("{job}:claimed"))
            .key(format!("{job}:claims"))
            .key(&job)
            .arg(claim.chunk)
            .arg(&claim.token)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match held {
            1 => Held::Yes,
            2 => Held::Ended,
            _ => Held::Lapsed,
        })
    }

    /// Writes a round's outcomes and usage, releases the chunk (back to pending when titles of
    /// it are left), and ends the job when every title has a result.
    pub async fn record(
        &self,
        job_id: &str,
        claim: Option<&Claim>,
        outcomes: &[(u64, ItemOutcome)],
        usage: &JobUsage,
        written: Written,
    ) -> Result<(), StoreError> {
        static RECORD_WITH_FINISH: LazyLock<Script> =
            LazyLock::new(|| Script::new(&format!("{FINISH}\n{RECORD}")));
        let mut invocation = RECORD_WITH_FINISH.key(self.job_key(job_id));
        invocation
            .arg(&self.prefix)
            .arg(job_id)
            .arg(claim.map_or(String::new(), |c| c.chunk.to_string()))
            .arg(claim.map_or("", |c| c.token.as_str()))
            .arg(self.chunk)
            .arg(usage.input_tokens)
            .arg(usage.cached_input_tokens)
            .arg(usage.output_tokens)
            .arg(usage.reasoning_tokens)
            .arg(usage.upstream_requests)
            .arg(usage.cost_usd.unwrap_or(0.0))
            .arg(u8::from(usage.cost_usd.is_none()))
            .arg(written.lane.name())
            .arg(written.live_cost.map_or(String::new(), |c| c.to_string()))
            .arg(written.round)
            .arg(u8::from(written.leaves_batch));
        for (index, outcome) in outcomes {
            match outcome {
                ItemOutcome::Done(line) => {
                    let kind = if line.error.is_some() { "e" } else { "t" };
                    let text = serde_json::to_string(line).expect("a result line serialises");
                    invocation.arg(index).arg(kind).arg(text);
                }
                ItemOutcome::Again { counted: true } => {
                    invocation.arg(index).arg("a").arg("");
                }
                ItemOutcome::Again { counted: false } => {}
            }
        }
        invocation
            .invoke_async::<(u64, u64)>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Result lines of `owner`'s job `id` from `from`, up to the first title not done (all of
    /// them for an ended job), at most `max`.
    pub async fn results(
        &self,
        owner: &str,
        id: &str,
        from: u64,
        max: u32,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let Some(job) = self.get(owner, id).await? else {
            return Ok(None);
        };
        let ended = !matches!(job.status, JobStatus::Queued | JobStatus::Running);
        let end = job.counts.total.min(from.saturating_add(u64::from(max)));
        if from >= end {
            return Ok(Some(Vec::new()));
        }
        let indices: Vec<u64> = (from..end).collect();
        let lines: Vec<Option<String>> = self
            .conn()
            .hmget(format!("{}:results", self.job_key(id)), indices)
            .await?;
        let mut out = Vec::with_capacity(lines.len());
        for line in lines {
            match line {
                Some(line) => out.push(line),
                None if ended => {}
                None => break,
            }
        }
        Ok(Some(out))
    }

    /// The open jobs on the Batch API lane (those that left it or ended are dropped from the
    /// set on the way).
    pub async fn batch_jobs(&self) -> Result<Vec<BatchWork>, StoreError> {
        let set = self.key(&["jobs", "batch"]);
        let mut conn = self.conn();
        let ids: Vec<String> = conn.smembers(&set).await?;
        let mut jobs = Vec::new();
        for id in ids {
            let fields: BTreeMap<String, String> = conn.hgetall(self.job_key(&id)).await?;
            // A cancelled job stays until its batch is cancelled at the provider and read.
            let status = fields.get("status").map(String::as_str);
            let open = matches!(status, Some("queued" | "running" | "cancelled"));
            if !open || fields.get("lane").map(String::as_str) != Some("batch") {
                conn.srem::<_, _, ()>(&set, &id).await?;
                continue;
            }
            let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
            jobs.push(BatchWork {
                plan: fields
                    .get("plan")
                    .and_then(|p| serde_json::from_str(p).ok()),
                cancelled: status == Some("cancelled"),
                taxonomy: fields.get("taxonomy").cloned().unwrap_or_default(),
                deadline_ms: fields.get("deadline_ms").and_then(|v| v.parse().ok()),
                pending: number("total")
                    .unwrap_or(0)
                    .saturating_sub(number("done").unwrap_or(0)),
                state: fields
                    .get("batch")
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_default(),
                job_id: id,
            });
        }
        Ok(jobs)
    }

    /// Takes (or renews) the right to look at `job_id`'s batch for `hold`, so two replicas
    /// never create two batches for one job.
    pub async fn lock_batch(&self, job_id: &str, hold: Duration) -> Result<bool, StoreError> {
        let locked: u8 = script!(BATCH_LOCK)
            .key(format!("{}:batchlock", self.job_key(job_id)))
            .arg(&self.token)
            .arg(hold.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(locked == 1)
    }

    /// Notes how long a batch of `model` took to complete, for every replica's planner.
    pub async fn note_turnaround(&self, model: &str, took: Duration) -> Result<(), StoreError> {
        let key = self.key(&["batch_turnaround", model]);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(&key, took.as_secs_f64())
            .ignore()
            .ltrim(&key, 0, super::job::TURNAROUNDS as isize - 1)
            .ignore();
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// The longest of the last few batches of `model` to complete, on any replica.
    pub async fn turnaround(&self, model: &str) -> Result<Option<Duration>, StoreError> {
        let seen: Vec<f64> = self
            .conn()
            .lrange(self.key(&["batch_turnaround", model]), 0, -1)
            .await?;
        Ok(seen
            .into_iter()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .reduce(f64::max)
            .map(Duration::from_secs_f64))
    }

    /// The titles of `job_id` without a result yet, in input order.
    pub async fn pending_titles(&self, job_id: &str) -> Result<Vec<(u64, String)>, StoreError> {
        let job = self.job_key(job_id);
        let mut conn = self.conn();
        let titles: Vec<String> = conn.lrange(format!("{job}:titles"), 0, -1).await?;
        let done: Vec<u64> = conn.hkeys(format!("{job}:results")).await?;
        let done: std::collections::HashSet<u64> = done.into_iter().collect();
        Ok((0u64..)
            .zip(titles)
            .filter(|(i, _)| !done.contains(i))
            .collect())
    }

    pub async fn set_batch(&self, job_id: &str, state: &BatchState) -> Result<(), StoreError> {
        script!(SET_BATCH)
            .key(self.job_key(job_id))
            .key(self.key(&["jobs", "by_status"]))
            .arg(serde_json::to_string(state).expect("a batch state serialises"))
            .invoke_async::<u8>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Moves `job_id` off the Batch API lane: its chunks with titles not done go to live
    /// rounds, on any replica.
    pub async fn leave_batch(&self, job_id: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.job_key(job_id), "lane", "live")
            .ignore()
            .srem(self.key(&["jobs", "batch"]), job_id)
            .ignore();
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// Queues the webhooks of jobs that ended since the last call (at most `max` of them).
    async fn enqueue_ended(&self, max: usize) -> Result<(), StoreError> {
        let ended_key = self.key(&["jobs", "ended"]);
        let mut conn = self.conn();
        let ids: Vec<String> = conn.srandmember_multiple(&ended_key, max as isize).await?;
        for id in ids {
            let fields: BTreeMap<String, String> = conn.hgetall(self.job_key(&id)).await?;
            let (Some(url), Ok(job)) = (fields.get("callback_url"), job_of(&id, &fields)) else {
                conn.srem::<_, _, ()>(&ended_key, &id).await?;
                continue;
            };
            let event = serde_json::json!({
                "type": format!("job.{}", job.status.name()),
                "timestamp": rfc3339(now_ms()),
                "data": JobView::from(job),
            });
            let delivery_id = format!("msg_{id}");
            script!(ENQUEUE)
                .key(self.key(&["delivery", &delivery_id]))
                .key(self.key(&["deliveries", "due"]))
                .key(&ended_key)
                .arg(&delivery_id)
                .arg(&id)
                .arg(url)
                .arg(event.to_string())
                .invoke_async::<u8>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Webhooks due now, held from the other replicas while this one sends them.
    pub async fn due_deliveries(&self, max: u32) -> Result<Vec<Delivery>, StoreError> {
        self.enqueue_ended(max as usize).await?;
        let reply: Vec<String> = script!(DUE)
            .key(self.key(&["deliveries", "due"]))
            .arg(&self.prefix)
            .arg(max)
            .arg(DELIVERY_HOLD_MS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(reply
            .chunks_exact(4)
            .map(|d| Delivery {
                id: d[0].clone(),
                url: d[1].clone(),
                body: d[2].clone(),
                attempts: d[3].parse().unwrap_or(0),
            })
            .collect())
    }

    pub async fn record_delivery(&self, id: &str, outcome: &Delivered) -> Result<(), StoreError> {
        let (state, retry_ms, error) = match outcome {
            Delivered::Yes => ("yes", 0, ""),
            Delivered::No {
                error,
                retry_in: Some(wait),
            } => ("retry", wait.as_millis() as u64, error.as_str()),
            Delivered::No {
                error,
                retry_in: None,
            } => ("failed", 0, error.as_str()),
        };
        script!(DELIVERED)
            .key(self.key(&["delivery", id]))
            .key(self.key(&["deliveries", "due"]))
            .arg(id)
            .arg(state)
            .arg(retry_ms)
            .arg(error)
            .invoke_async::<u8>(&mut self.conn())
            .await?;
        Ok(())
    }
}

/// A job from its hash.
fn job_of(id: &str, fields: &BTreeMap<String, String>) -> Result<Job, StoreError> {
    let number = |name: &str| -> u64 {
        fields
            .get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            .max(0) as u64
    };
    let status = fields
        .get("status")
        .and_then(|s| JobStatus::parse(s))
        .ok_or_else(|| StoreError::Corrupt(format!("job {id} has no status")))?;
    let (total, done) = (number("total"), number("done"));
    let cost: f64 = fields
        .get("cost_usd")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(Job {
        id: id.to_owned(),
        status,
        created_at_ms: number("created_at_ms") as i64,
        finished_at_ms: fields.get("finished_at_ms").and_then(|v| v.parse().ok()),
        taxonomy: fields.get("taxonomy").cloned().unwrap_or_default(),
        metadata: fields
            .get("metadata")
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default(),
        callback_url: fields.get("callback_url").cloned(),
        deadline_ms: fields.get("deadline_ms").and_then(|v| v.parse().ok()),
        plan: fields
            .get("plan")
            .and_then(|p| serde_json::from_str(p).ok()),
        lanes: lanes_of(fields),
        counts: JobCounts {
            total,
            done,
            errors: number("errors"),
            pending: total.saturating_sub(done),
        },
        usage: JobUsage {
            input_tokens: number("input_tokens"),
            cached_input_tokens: number("cached_input_tokens"),
            output_tokens: number("output_tokens"),
            reasoning_tokens: number("reasoning_tokens"),
            upstream_requests: number("upstream_requests"),
            cost_usd: (number("cost_unknown") == 0).then_some(cost),
        },
    })
}

/// Each lane's usage from its `lane:{name}:{field}` fields.
fn lanes_of(fields: &BTreeMap<String, String>) -> BTreeMap<Lane, LaneUsage> {
    let mut lanes = BTreeMap::new();
    for lane in [Lane::Live, Lane::Flex, Lane::Batch] {
        let field = |name: &str| fields.get(&format!("lane:{}:{name}", lane.name()));
        let Some(titles) = field("titles") else {
            continue;
        };
        let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let money = |name: &str, unknown: &str| {
            field(unknown).is_none().then(|| {
                field(name)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
        };
        lanes.insert(
            lane,
            LaneUsage {
                titles: titles.parse().unwrap_or(0),
                input_tokens: number("input_tokens"),
                cached_input_tokens: number("cached_input_tokens"),
                output_tokens: number("output_tokens"),
                reasoning_tokens: number("reasoning_tokens"),
                upstream_requests: number("upstream_requests"),
                cost_usd: money("cost_usd", "cost_unknown"),
                live_cost_usd: money("live_cost_usd", "live_cost_unknown"),
            },
        );
    }
    lanes
}
