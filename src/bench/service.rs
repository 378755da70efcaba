//! `serve` started by bench as a child process, so its CPU time and peak memory are its own and
//! not the bench's or the simulator's. Read from `/proc` (Linux), per run.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::error::BenchError;

/// A `serve` process on a loopback port; killed when dropped.
pub struct ServiceProcess {
    child: Child,
    pub url: String,
}

/// What the service process spent during one run.
#[derive(Debug, Clone, Copy)]
pub struct ProcessUsage {
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

/// `/proc/PID/stat` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100 for
/// user space whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

impl ServiceProcess {
    /// Starts `binary serve` against `upstream` and waits until it answers `/healthz`.
    /// Settings not given here come from the environment (`HNC_*`), as for any `serve`.
    pub async fn start(binary: &Path, upstream: &str) -> Result<Self, BenchError> {
        let port = free_port()?;
        let child = Command::new(binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--openai-base-url", upstream, "--openai-api-key", "sim-key"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let service = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        service.wait_healthy().await?;
        Ok(service)
    }

    async fn wait_healthy(&self) -> Result<(), BenchError> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let health = client.get(format!("{}/healthz", self.url)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BenchError::Unhealthy(self.url.clone()))
    }

    /// CPU seconds so far; the start of a run's measurement. Also resets the peak RSS, so the
    /// next `usage_since` reports this run's peak alone.
    pub fn begin(&self) -> f64 {
        // "5" resets the peak RSS (VmHWM) to the current RSS (Linux 4.0+); without it the peak
        // is the process's lifetime peak, which is still an honest upper bound.
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
        self.cpu_seconds().unwrap_or(0.0)
    }

    /// What the process spent since `begin` returned `cpu_at_start`.
    pub fn usage_since(&self, cpu_at_start: f64) -> Option<ProcessUsage> {
        Some(ProcessUsage {
            cpu_s: self.cpu_seconds()? - cpu_at_start,
            peak_rss_mib: self.peak_rss_kib()? as f64 / 1024.0,
        })
    }

    /// User plus system time of every thread, from `/proc/PID/stat` fields 14 and 15.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The command name (field 2) may hold spaces: count fields after its closing ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / USER_HZ)
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(BenchError::Bind)?;
    Ok(listener.local_addr().map_err(BenchError::Bind)?.port())
}
