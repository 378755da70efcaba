//! Start-up in two steps: `build` binds the socket and wires the state (port 0 in tests, then
//! read `local_addr`), `run` serves until the shutdown future resolves, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState, ClientKeys, JobLimits, Quotas};
use crate::jobs::Jobs;
use crate::jobs::webhooks::Webhooks;

use crate::classify::Classifier;
use crate::config::{ConfigError, ServeConfig};
use crate::coord::{CoordError, Coordinator, RedisOp, SharedCache, SharedQuota};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::sim::{SimConfigError, SimServer};

use crate::upstream::{self, UpstreamClient};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid simulator setting")]
    Sim(#[from] SimConfigError),
    #[error("could not listen on {addr} (choose another with {setting})")]
    Bind {
        addr: SocketAddr,
        /// Where the address came from, so the message says what to change.
        setting: &'static str,
        source: std::io::Error,
    },
    #[error("could not build the upstream client")]
    Upstream(#[from] upstream::BuildError),
    #[error(transparent)]
    Redis(#[from] CoordError),
    #[error("could not open the job store")]
    Jobs(#[from] crate::jobs::StoreError),
    #[error(transparent)]
    WebhookSecret(#[from] crate::jobs::webhooks::WebhookSecretError),
}

/// A bound, wired service that has not started serving yet.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on its own port, when `HNC_METRICS_LISTEN` is set.
    metrics_listener: Option<TcpListener>,
    state: Arc<AppState>,
    config: ServeConfig,
    /// The in-process simulator under `--simulate`; it stops when the application is dropped.
    sim: Option<SimServer>,
}

impl Application {
    /// The service as `serve` runs it: every setting from `config`.
    pub async fn build(config: ServeConfig) -> Result<Self, StartupError> {
        // Without --simulate the upstream settings come first, so a missing key is the first
        // thing refused.
        let sim = if config.simulate {
            Some(spawn_simulator(&config).await?)
        } else {
            None
        };
        let settings = config.upstream_settings(sim.as_ref().map(SimServer::base_url))?;
        config.check_tier(&settings.endpoints, sim.is_some())?;
        let client_keys = ClientKeys::new(config.client_keys()?);
        if client_keys.is_open() && sim.is_some() {
            tracing::info!(
                "HNC_API_KEYS is empty: open to anyone who can reach this port (harmless on the \
                 simulator; set keys before pointing it at a provider)"
            );
        } else if client_keys.is_open() {
            tracing::warn!(
                "HNC_API_KEYS is empty: anyone who can reach this port can spend the provider's credits"
            );
        } else {
            tracing::info!(keys = client_keys.len(), "bearer authentication on");
        }
        let taxonomies = config.taxonomies()?;
        let metrics = Arc::new(Metrics::new());
        metrics.start_at_zero(
            &upstream::RETRY_REASONS,
            &RedisOp::ALL.map(RedisOp::as_str),
            &crate::jobs::JobStatus::ALL.map(crate::jobs::JobStatus::name),
        );
        let mut upstream = UpstreamClient::new(settings, &taxonomies, metrics.clone())?;
        let classifier = |upstream| {
            Classifier::new(
                Arc::new(upstream),
                taxonomies,
                config.batch_limits(),
                config.cache(),
                metrics.clone(),
            )
        };
        let mut quotas = Quotas::new(config.quota_items_per_min);
        let classifier = match config.redis() {
            None => classifier(upstream),
            Some(redis) => {
                let coordinator = Arc::new(Coordinator::new(&redis, metrics.clone())?);
                tracing::info!(prefix = %redis.prefix, "budget, quotas and cache shared through redis");
                upstream = upstream.share_budgets(&coordinator);
                quotas = quotas.shared(SharedQuota::new(coordinator.clone()));
                classifier(upstream).share_cache(SharedCache::new(coordinator, config.cache_ttl))
            }
        };
        let jobs = match (config.redis(), &config.data_dir) {
            (Some(redis), dir) => {
                if dir.is_some() {
                    tracing::info!("HNC_DATA_DIR is not used for jobs: they are kept in redis");
                }
                tracing::info!(prefix = %redis.prefix, "jobs kept in redis, shared by the replicas");
                Some(Arc::new(Jobs::shared(&redis, config.lanes())?))
            }
            (None, Some(dir)) => {
                tracing::info!(dir = %dir.display(), "jobs kept on disk");
                Some(Arc::new(Jobs::on_disk(dir, config.lanes())?))
            }
            (None, None) => None,
        };
        let webhooks = match &config.webhook_secret {
            Some(secret) => Some(Webhooks::new(secret, config.webhook_allow_private)?),
            None => None,
        };
        let state = Arc::new(AppState {
            webhooks,
            classifier: Arc::new(classifier),
            jobs,
            job_limits: JobLimits {
                max_titles: config.max_job_titles as usize,
                max_open: u64::from(config.max_open_jobs),
            },
            lifecycle: Lifecycle::default(),
            max_body_bytes: config.max_body_bytes as usize,
            request_timeout: config.request_timeout,

            metrics,
            metrics_on_main_port: config.metrics_listen.is_none(),
            client_keys,
            quotas,
        });
        let addr = config.listen_addr();
        let listener = bind(addr, "--listen, HNC_LISTEN or PORT").await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr, "--metrics-listen or HNC_METRICS_LISTEN").await?),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
            config,
            sim,
        })
    }

    /// The pipeline for a client in this process (`classify --direct`): `config`'s upstream,
    /// packing, cache and limits, on an ephemeral loopback port, open to nobody else (no client
    /// keys, no separate metrics port).
    pub async fn build_in_process(
        config: ServeConfig,
        simulate: bool,
    ) -> Result<Self, StartupError> {
        Self::build(ServeConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            api_keys: None,
            api_keys_file: None,
            metrics_listen: None,
            simulate: config.simulate || simulate,
            ..config
        })
        .await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The metrics port's address, when `/metrics` has its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The in-process simulator, when running with `--simulate`.
    pub fn simulator(&self) -> Option<&SimServer> {
        self.sim.as_ref()
    }

    /// Serves until `shutdown` resolves, then drains: readiness 503 at once, normal service for
    /// the drain delay, then new batches refused while running ones finish, for at most the
    /// shutdown timeout; batches still running then are cut (their undone items answer
    /// `shutting_down`). Returns when the last batch has answered, or `CUT_GRACE` after the cut
    /// for answers nobody reads.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            metrics_listener,
            state,
            config,
            sim,
        } = self;
        // The metrics port runs the same accept loop, and stops after the main one has drained.
        let metrics_stop = tokio_util::sync::CancellationToken::new();
        let metrics_server = metrics_listener.map(|l| {
            let serve = crate::server::serve(
                l,
                api::metrics_router(state.clone()),
                config.header_read_timeout,
                metrics_stop.clone().cancelled_owned(),
            );
            crate::tasks::spawn(serve)
        });
        tracing::info!(
            addr = %listener.local_addr()?,
            upstream = if sim.is_some() { "simulator" } else { config.openai_base_url.as_str() },
            model = %config.openai_model,
            request_concurrency = config.request_concurrency,
            max_in_flight = config.max_in_flight,
            "serving"
        );
        let mut job_tasks = Vec::new();
        if let Some(jobs) = state.jobs.clone() {
            job_tasks.push(crate::tasks::spawn(
                jobs.clone()
                    .run(state.classifier.clone(), state.lifecycle.clone()),
            ));
            job_tasks.push(crate::tasks::spawn(
                jobs.clone()
                    .run_batches(state.classifier.clone(), state.lifecycle.clone()),
            ));
            if let Some(webhooks) = state.webhooks.clone() {
                let (lifecycle, metrics) = (state.lifecycle.clone(), state.metrics.clone());
                job_tasks.push(crate::tasks::spawn(
                    jobs.deliver_webhooks(webhooks, lifecycle, metrics),
                ));
            }
        }
        let lifecycle_state = state.clone();
        let drain_delay = config.drain_delay;
        let shutdown_timeout = config.shutdown_timeout;
        let drained = async move {
            shutdown.await;
            let lifecycle = &lifecycle_state.lifecycle;
            lifecycle.begin_drain();
            tracing::info!(
                batches_in_flight = lifecycle.batches_in_flight(),
                "draining"
            );
            tokio::time::sleep(drain_delay).await;
            lifecycle.refuse_new_batches();
            if tokio::time::timeout(shutdown_timeout, lifecycle.wait_idle())
                .await
                .is_err()
            {
                tracing::warn!(
                    batches_in_flight = lifecycle.batches_in_flight(),
                    shutdown_timeout_s = shutdown_timeout.as_secs_f64(),
                    "shutdown deadline: running batches answer what they have"
                );
                lifecycle.cut_batches();
                let _ = tokio::time::timeout(crate::server::CUT_GRACE, lifecycle.wait_idle()).await;
            }
            tracing::info!("drained; stopping");
        };
        crate::server::serve(
            listener,
            api::router(state),
            config.header_read_timeout,
            drained,
        )
        .await;

        metrics_stop.cancel();
        if let Some(server) = metrics_server {
            let _ = server.await;
        }
        // The job runner and the webhooks stop at their next turn once draining (a second at
        // most): waited for, so the job store is let go of when `run` returns.
        let stopped = futures::future::join_all(job_tasks);
        let _ = tokio::time::timeout(crate::server::CUT_GRACE, stopped).await;
        drop(sim);
        Ok(())
    }
}

async fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr,
            setting,
            source,
        })
}

async fn spawn_simulator(config: &ServeConfig) -> Result<SimServer, StartupError> {
    // An ephemeral loopback port, so the real HTTP client path runs end to end.
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "another free port").await?;
    let sim = SimServer::spawn(&config.sim, listener)?;
    tracing::warn!(
        base_url = %sim.base_url(),
        "running on the built-in simulator: labels come from a keyword classifier, not a model"
    );
    Ok(sim)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}
