//! Jobs on local disk: one SQLite file (`HNC_DATA_DIR/jobs.sqlite3`, WAL), through rusqlite.
//! A job's titles go in with it, in one transaction; each title's result is written when it is
//! done, with the job's counts and usage in the same transaction, so a crash or a restart loses
//! at most the calls in flight and never gives a title two results. Every query takes the
//! owner: another key's job is not found rather than forbidden.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::clock::{now_ms, rfc3339};
use super::job::{
    BatchState, BatchWork, Created, Delivered, Delivery, Gauges, ItemOutcome, Job, JobCounts,
    JobStatus, JobUsage, JobView, LaneUsage, NewJob, StoreError, Work, Written,
};
use super::plan::{Lane, Plan};

/// One process's jobs, in one SQLite file that the process holds locked.
#[derive(Debug)]
pub struct DiskStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    taxonomy TEXT NOT NULL,
    metadata TEXT NOT NULL,
    idempotency_key TEXT,
    total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    upstream_requests INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL,
    cost_unknown INTEGER NOT NULL DEFAULT 0,
    callback_url TEXT,
    deadline_ms INTEGER,
    plan TEXT,
    lanes TEXT NOT NULL DEFAULT '{}',
    lane TEXT,
    batch TEXT,
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at_ms);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_pending ON items (job_id, done, idx);
CREATE TABLE IF NOT EXISTS turnarounds (
    model TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    PRIMARY KEY (job_id, round)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at_s INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at_ms);
";

const JOB_COLUMNS: &str = "id, status, created_at_ms, finished_at_ms, taxonomy, metadata, total, \
    done, errors, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, \
    upstream_requests, cost_usd, cost_unknown, callback_url, deadline_ms, plan, lanes";

/// Columns added after the first release, for a data directory that older versions made.
const ADDED_COLUMNS: [(&str, &str); 5] = [
    ("deadline_ms", "INTEGER"),
    ("plan", "TEXT"),
    ("lanes", "TEXT NOT NULL DEFAULT '{}'"),
    ("lane", "TEXT"),
    ("batch", "TEXT"),
];

fn job_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let status: String = row.get(1)?;
    let metadata: String = row.get(5)?;
    let total: u64 = row.get(6)?;
    let done: u64 = row.get(7)?;
    let cost: Option<f64> = row.get(14)?;
    let cost_unknown: bool = row.get(15)?;
    Ok(Job {
        id: row.get(0)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        created_at_ms: row.get(2)?,
        finished_at_ms: row.get(3)?,
        taxonomy: row.get(4)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        callback_url: row.get(16)?,
        deadline_ms: row.get(17)?,
        plan: row
            .get::<_, Option<String>>(18)?
            .and_then(|p| serde_json::from_str(&p).ok()),
        lanes: serde_json::from_str(&row.get::<_, String>(19)?).unwrap_or_default(),
        counts: JobCounts {
            total,
            done,
            errors: row.get(8)?,
            pending: total.saturating_sub(done),
        },
        usage: JobUsage {
            input_tokens: row.get(9)?,
            cached_input_tokens: row.get(10)?,
            output_tokens: row.get(11)?,
            reasoning_tokens: row.get(12)?,
            upstream_requests: row.get(13)?,
            cost_usd: if cost_unknown {
                None
            } else {
                cost.or(Some(0.0))
            },
        },
    })
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join("jobs.sqlite3"))?;
        match Self::prepare(&conn) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Err(StoreError::Locked {
                    path: dir.display().to_string(),
                })
            }
            Err(e) => Err(e.into()),
            Ok(()) => Ok(Self {
                conn: Mutex::new(conn),
            }),
        }
    }

    /// Takes the file for this process and makes the tables.
    fn prepare(conn: &Connection) -> rusqlite::Result<()> {
        // A process that just stopped may take a moment to let go: up to 5 s.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // A second process on the same directory would run the same jobs and pay for every call
        // twice: the first write below takes a lock this process holds until it exits, and a
        // second one is refused at start-up (SQLite's own file lock).
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // WAL: SQLite's readers do not block its writer. FULL: a committed result survives the
        // machine, not only the process. (One connection behind a mutex here: each operation is
        // short, and results are read at most 10,000 lines at a time.)
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(&format!("BEGIN EXCLUSIVE; {SCHEMA} COMMIT;"))?;
        let mut query = conn.prepare("SELECT name FROM pragma_table_info('jobs')")?;
        let have: Vec<String> = query
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        for (name, kind) in ADDED_COLUMNS {
            if !have.iter().any(|h| h == name) {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {kind}"))?;
            }
        }
        Ok(())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("job store lock poisoned")
    }

    /// Makes a job of `titles` for `owner`, or returns the one `idempotency_key` already made.
    pub fn create(&self, job: &NewJob) -> Result<Created, StoreError> {
        let NewJob {
            owner,
            taxonomy,
            metadata,
            callback_url,
            titles,
            idempotency_key,
            deadline_ms,
            plan,
        } = job;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(key) = idempotency_key.as_deref() {
            let existing = tx
                .query_row(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE owner = ?1 AND idempotency_key = ?2"
                    ),
                    params![owner, key],
                    job_of,
                )
                .optional()?;
            if let Some(job) = existing {
                return Ok(Created::Existing(job));
            }
        }
        let id = format!("job_{:016x}", rand::random::<u64>());
        tx.execute(
            "INSERT INTO jobs (id, owner, status, created_at_ms, taxonomy, metadata, idempotency_key, total, callback_url, deadline_ms, plan, lane)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                id,
                owner,
                now_ms(),
                taxonomy,
                serde_json::to_string(metadata).expect("a string map serialises"),
                idempotency_key,
                titles.len() as u64,
                callback_url,
                deadline_ms,
                serde_json::to_string(plan).expect("a plan serialises"),
                plan.lane.name()
            ],
        )?;
        {
            let mut insert =
                tx.prepare("INSERT INTO items (job_id, idx, title) VALUES (?1, ?2, ?3)")?;
            for (i, title) in titles.iter().enumerate() {
                insert.execute(params![id, i as u64, title])?;
            }
        }
        let job = tx.query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            params![id],
            job_of,
        )?;
        tx.commit()?;
        Ok(Created::New(job))
    }

    pub fn get(&self, owner: &str, id: &str) -> Result<Option<Job>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND owner = ?2"),
                params![id, owner],
                job_of,
            )
            .optional()?)
    }

    /// `owner`'s jobs, newest first, at most `limit`, older than the job `before` when given.
    pub fn list(
        &self,
        owner: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Job>, StoreError> {
        let conn = self.conn();
        let mut query = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE owner = ?1 AND (?2 IS NULL OR
               (created_at_ms, id) < (SELECT created_at_ms, id FROM jobs WHERE id = ?2 AND owner = ?1))
             ORDER BY created_at_ms DESC, id DESC LIMIT ?3"
        ))?;
        let jobs = query
            .query_map(params![owner, before, limit], job_of)?
            .collect::<Result<_, _>>()?;
        Ok(jobs)
    }

    pub fn by_key(&self, owner: &str, key: &str) -> Result<Option<Job>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE owner = ?1 AND idempotency_key = ?2"
                ),
                params![owner, key],
                job_of,
            )
            .optional()?)
    }

    /// How many of `owner`'s jobs are queued or running.
    pub fn open_jobs(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM jobs WHERE owner = ?1 AND status IN ('queued', 'running')",
            params![owner],
            |row| row.get(0),
        )?)
    }

    /// Jobs by status, titles pending in the open ones, and when the oldest open one was
    /// submitted (ms), for the metrics.
    pub fn gauges(&self) -> Result<Gauges, StoreError> {
        let conn = self.conn();
        let mut by_status = Vec::new();
        let mut query = conn.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
        for row in query.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get(1)?)))? {
            let (status, count) = row?;
            if let Some(status) = JobStatus::parse(&status) {
                by_status.push((status, count));
            }
        }
        drop(query);
        let (pending, oldest) = conn.query_row(
            "SELECT COALESCE(SUM(total - done), 0), MIN(created_at_ms) FROM jobs
             WHERE status IN ('queued', 'running')",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(Gauges {
            by_status,
            titles_pending: pending,
            oldest_open_at_ms: oldest,
        })
    }

    /// Stops what is pending of `owner`'s job `id`; what is done stays.
    pub fn cancel(&self, owner: &str, id: &str) -> Result<Option<Job>, StoreError> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let changed = tx.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at_ms = ?3
                 WHERE id = ?1 AND owner = ?2 AND status IN ('queued', 'running')",
                params![id, owner, now_ms()],
            )?;
            if changed > 0 {
                enqueue_delivery(&tx, id)?;
            }
            tx.commit()?;
        }
        self.get(owner, id)
    }

    /// Up to `max` pending titles of the oldest job that has some (marking it running).
    pub fn next_work(&self, max: u32) -> Result<Option<Work>, StoreError> {
        let conn = self.conn();
        type Head = (String, String, Option<i64>, Option<String>, u64);
        let job: Option<Head> = conn
            .query_row(
                "SELECT id, taxonomy, deadline_ms, plan, total - done FROM jobs
                 WHERE status IN ('queued', 'running') AND COALESCE(lane, 'live') != 'batch'
                 ORDER BY created_at_ms, id LIMIT 1",
                [],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((job_id, taxonomy, deadline_ms, plan, pending)) = job else {
            return Ok(None);
        };
        conn.execute(
            "UPDATE jobs SET status = 'running' WHERE id = ?1 AND status = 'queued'",
            params![job_id],
        )?;
        let mut query = conn.prepare(
            "SELECT idx, title, attempts FROM items WHERE job_id = ?1 AND done = 0
             ORDER BY idx LIMIT ?2",
        )?;
        let items: Vec<(u64, String, u32)> = query
            .query_map(params![job_id, max], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        drop(query);
        if items.is_empty() {
            // Nothing pending (every title answered before a crash let the status be written).
            finish_if_done(&conn, &job_id)?;
        }
        Ok(Some(Work {
            job_id,
            taxonomy,
            items,
            deadline_ms,
            plan: plan.and_then(|p| serde_json::from_str::<Plan>(&p).ok()),
            pending,
            claim: None,
        }))
    }

    /// Writes what a round produced, in one transaction: a result for each finished title (a
    /// title left pending goes again in a later round, counted in `attempts`), the usage, and
    /// the job's status when nothing is left. Results of a job cancelled meanwhile are kept
    /// too: they were paid for.
    pub fn record(
        &self,
        job_id: &str,
        outcomes: &[(u64, ItemOutcome)],
        usage: &JobUsage,
        written: Written,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let first = tx.execute(
            "INSERT OR IGNORE INTO rounds (job_id, round) VALUES (?1, ?2)",
            params![job_id, written.round as i64],
        )?;
        if first == 0 {
            return Ok(());
        }
        let (mut done, mut errors) = (0u64, 0u64);
        {
            let mut finish = tx.prepare(
                "UPDATE items SET done = 1, result = ?3 WHERE job_id = ?1 AND idx = ?2 AND done = 0",
            )?;
            let mut again = tx.prepare(
                "UPDATE items SET attempts = attempts + 1 WHERE job_id = ?1 AND idx = ?2",
            )?;
            for (index, outcome) in outcomes {
                match outcome {
                    ItemOutcome::Done(line) => {
                        let text = serde_json::to_string(line).expect("a result line serialises");
                        let changed = finish.execute(params![job_id, index, text])?;
                        done += changed as u64;
                        errors += u64::from(changed > 0 && line.error.is_some());
                    }
                    ItemOutcome::Again { counted: true } => {
                        again.execute(params![job_id, index])?;
                    }
                    ItemOutcome::Again { counted: false } => {}
                }
            }
        }
        tx.execute(
            "UPDATE jobs SET done = done + ?2, errors = errors + ?3,
                input_tokens = input_tokens + ?4, cached_input_tokens = cached_input_tokens + ?5,
                output_tokens = output_tokens + ?6, reasoning_tokens = reasoning_tokens + ?7,
                upstream_requests = upstream_requests + ?8,
                cost_usd = COALESCE(cost_usd, 0) + ?9, cost_unknown = cost_unknown OR ?10
             WHERE id = ?1",
            params![
                job_id,
                done,
                errors,
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens,
                usage.reasoning_tokens,
                usage.upstream_requests,
                usage.cost_usd.unwrap_or(0.0),
                usage.cost_usd.is_none()
            ],
        )?;
        let lanes: String = tx.query_row(
            "SELECT lanes FROM jobs WHERE id = ?1",
            params![job_id],
            |row| row.get(0),
        )?;
        let mut lanes: std::collections::BTreeMap<Lane, LaneUsage> =
            serde_json::from_str(&lanes).unwrap_or_default();
        lanes
            .entry(written.lane)
            .or_default()
            .add(done, usage, written.live_cost);
        tx.execute(
            "UPDATE jobs SET lanes = ?2 WHERE id = ?1",
            params![
                job_id,
                serde_json::to_string(&lanes).expect("lanes serialise")
            ],
        )?;
        if written.leaves_batch {
            tx.execute(
                "UPDATE jobs SET lane = 'live' WHERE id = ?1",
                params![job_id],
            )?;
        }
        finish_if_done(&tx, job_id)?;
        tx.commit()?;
        Ok(())
    }

    /// The results of `owner`'s job `id` from index `from`, in input order, up to the first
    /// title not done yet (so a download resumes where it stopped), at most `max`; `None` for
    /// a job not found.
    pub fn results(
        &self,
        owner: &str,
        id: &str,
        from: u64,
        max: u32,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let Some(job) = self.get(owner, id)? else {
            return Ok(None);
        };
        // An ended job (cancelled) has titles that will never be done: its results skip them
        // rather than stop there.
        let ended = !matches!(job.status, JobStatus::Queued | JobStatus::Running);
        let conn = self.conn();
        let mut query = conn.prepare(
            "SELECT done, result FROM items WHERE job_id = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
        )?;
        let rows = query.query_map(params![id, from, max], |row| {
            Ok((row.get::<_, bool>(0)?, row.get::<_, Option<String>>(1)?))
        })?;
        let mut lines = Vec::new();
        for row in rows {
            match row? {
                (true, Some(line)) => lines.push(line),
                _ if ended => {}
                _ => break,
            }
        }
        Ok(Some(lines))
    }
}

/// Ends `job_id` when none of its titles is pending (a cancelled job stays so): `completed`, or
/// `failed` when not one title got a topic; and queues its webhook.
fn finish_if_done(conn: &Connection, job_id: &str) -> rusqlite::Result<()> {
    let changed = conn.execute(
        "UPDATE jobs SET status = CASE WHEN errors = total THEN 'failed' ELSE 'completed' END,
            finished_at_ms = ?2
         WHERE id = ?1 AND status IN ('queued', 'running')
           AND NOT EXISTS (SELECT 1 FROM items WHERE job_id = ?1 AND done = 0)",
        params![job_id, now_ms()],
    )?;
    if changed > 0 {
        enqueue_delivery(conn, job_id)?;
    }
    Ok(())
}

/// Queues the webhook of a job that just ended, when it has a callback URL: the event is the
/// job as it ended, `{"type": "job.<status>", "timestamp", "data"}`, kept until delivered.
fn enqueue_delivery(conn: &Connection, job_id: &str) -> rusqlite::Result<()> {
    let job = conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        params![job_id],
        job_of,
    )?;
    let Some(url) = job.callback_url.clone() else {
        return Ok(());
    };
    let now = now_ms();
    let event = serde_json::json!({
        "type": format!("job.{}", job.status.name()),
        "timestamp": rfc3339(now),
        "data": JobView::from(job),
    });
    conn.execute(
        "INSERT INTO deliveries (id, job_id, url, body, created_at_s, next_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            format!("msg_{:032x}", rand::random::<u128>()),
            job_id,
            url,
            event.to_string(),
            now / 1000,
            now
        ],
    )?;
    Ok(())
}

impl DiskStore {
    /// The open jobs on the Batch API lane.
    pub fn batch_jobs(&self) -> Result<Vec<BatchWork>, StoreError> {
        let conn = self.conn();
        let mut query = conn.prepare(
            "SELECT id, taxonomy, deadline_ms, total - done, batch, plan, status FROM jobs
             WHERE status IN ('queued', 'running', 'cancelled') AND lane = 'batch'
             ORDER BY created_at_ms",
        )?;
        let jobs = query
            .query_map([], |row| {
                Ok(BatchWork {
                    job_id: row.get(0)?,
                    taxonomy: row.get(1)?,
                    deadline_ms: row.get(2)?,
                    pending: row.get(3)?,
                    plan: row
                        .get::<_, Option<String>>(5)?
                        .and_then(|p| serde_json::from_str(&p).ok()),
                    cancelled: row.get::<_, String>(6)? == "cancelled",
                    state: row
                        .get::<_, Option<String>>(4)?
                        .and_then(|s| serde_json::from_str(&s).ok())
                        .unwrap_or_default(),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(jobs)
    }

    /// Notes how long a batch of `model` took to complete.
    pub fn note_turnaround(
        &self,
        model: &str,
        took: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO turnarounds (model, at_ms, seconds) VALUES (?1, ?2, ?3)",
            params![model, now_ms(), took.as_secs_f64()],
        )?;
        Ok(())
    }

    /// The longest of the last `TURNAROUNDS` batches of `model` to complete.
    pub fn turnaround(&self, model: &str) -> Result<Option<std::time::Duration>, StoreError> {
        let longest: Option<f64> = self.conn().query_row(
            "SELECT MAX(seconds) FROM (SELECT seconds FROM turnarounds WHERE model = ?1
             ORDER BY at_ms DESC LIMIT ?2)",
            params![model, super::job::TURNAROUNDS],
            |row| row.get(0),
        )?;
        Ok(longest.map(std::time::Duration::from_secs_f64))
    }

    /// The titles of `job_id` not done yet, in input order.
    pub fn pending_titles(&self, job_id: &str) -> Result<Vec<(u64, String)>, StoreError> {
        let conn = self.conn();
        let mut query = conn
            .prepare("SELECT idx, title FROM items WHERE job_id = ?1 AND done = 0 ORDER BY idx")?;
        let titles = query
            .query_map(params![job_id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(titles)
    }

    /// Keeps where `job_id`'s batch is (the job is running from then on).
    pub fn set_batch(&self, job_id: &str, state: &BatchState) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET batch = ?2,
                status = CASE WHEN status = 'queued' THEN 'running' ELSE status END
             WHERE id = ?1",
            params![
                job_id,
                serde_json::to_string(state).expect("a batch state serialises")
            ],
        )?;
        Ok(())
    }

    /// Moves `job_id` off the Batch API lane: its titles not done go live.
    pub fn leave_batch(&self, job_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET lane = 'live' WHERE id = ?1",
            params![job_id],
        )?;
        Ok(())
    }

    /// Deliveries due now, oldest first, at most `max`.
    pub fn due_deliveries(&self, max: u32) -> Result<Vec<Delivery>, StoreError> {
        let conn = self.conn();
        let mut query = conn.prepare(
            "SELECT id, url, body, attempts FROM deliveries
             WHERE state = 'pending' AND next_at_ms <= ?1 ORDER BY next_at_ms LIMIT ?2",
        )?;
        let due = query
            .query_map(params![now_ms(), max], |row| {
                Ok(Delivery {
                    id: row.get(0)?,
                    url: row.get(1)?,
                    body: row.get(2)?,
                    attempts: row.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(due)
    }

    pub fn record_delivery(&self, id: &str, outcome: &Delivered) -> Result<(), StoreError> {
        let conn = self.conn();
        match outcome {
            Delivered::Yes => conn.execute(
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1 WHERE id = ?1",
                params![id],
            )?,
            Delivered::No {
                error,
                retry_in: Some(wait),
            } => conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_at_ms = ?2, last_error = ?3
                 WHERE id = ?1",
                params![id, now_ms() + wait.as_millis() as i64, error],
            )?,
            Delivered::No {
                error,
                retry_in: None,
            } => conn.execute(
                "UPDATE deliveries SET state = 'failed', attempts = attempts + 1, last_error = ?2
                 WHERE id = ?1",
                params![id, error],
            )?,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_store_on_the_same_directory_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("hnc-disk-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DiskStore::open(&dir).unwrap();
        let second = DiskStore::open(&dir).unwrap_err();
        assert!(matches!(second, StoreError::Locked { .. }), "{second}");
        assert!(second.to_string().contains("in use by another process"));
        drop(first);
        DiskStore::open(&dir).expect("free again once the first store is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod migration {
    use super::*;

    #[test]
    fn a_data_directory_an_older_version_made_gets_the_new_columns() {
        let dir = std::env::temp_dir().join(format!("hnc-disk-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            // The first release's table, with one job in it.
            let old = SCHEMA
                .replace("    deadline_ms INTEGER,\n    plan TEXT,\n", "")
                .replace("    lanes TEXT NOT NULL DEFAULT '{}',\n", "")
                .replace("    lane TEXT,\n    batch TEXT,\n", "");
            for added in ADDED_COLUMNS {
                assert!(
                    !old.contains(&format!("    {} ", added.0)),
                    "{added:?} left in"
                );
            }
            let conn = Connection::open(dir.join("jobs.sqlite3")).unwrap();
            conn.execute_batch(&old).unwrap();
            conn.execute(
                "INSERT INTO jobs (id, owner, status, created_at_ms, taxonomy, metadata, total)
                 VALUES ('job_old', 'anyone', 'completed', 1, 'hn-topics', '{}', 0)",
                [],
            )
            .unwrap();
        }
        let store = DiskStore::open(&dir).unwrap();
        let job = store.get("anyone", "job_old").unwrap().unwrap();
        assert_eq!(
            (job.plan, job.deadline_ms, job.lanes.len()),
            (None, None, 0)
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
