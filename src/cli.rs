//! The command line: one subcommand per job, each with its own typed settings, and the one
//! error type a run ends with. `main.rs` parses, calls `run`, and prints the error's chain.

use std::error::Error;
use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::bench::{BenchConfig, BenchError};
use crate::client::{ClassifyFileConfig, ClientError};
use crate::config::{ServeConfig, SimServeConfig};
use crate::eval::{EvalConfig, EvalError};
use crate::sim::{SimConfigError, SimServer};
use crate::startup::{Application, StartupError, shutdown_signal};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "hn-classifier",
    args_override_self = true,
    version,
    about = "Classify short texts with an LLM at the provider's full throughput"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// One value, parsed once at start-up: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (`POST /classify-batch`).
    Serve(ServeConfig),
    /// Run the simulated OpenAI API on its own.
    Sim(SimServeConfig),
    /// Classify a file of titles (through a running service, --direct to the provider,
    /// --simulate, or --batch-api); write JSONL or CSV in input order.
    Classify(ClassifyFileConfig),
    /// Load the provider or the service and record throughput, latency, errors and cost.
    Bench(BenchConfig),
    /// Measure label quality against hand labels, per pack size: accuracy, F1, calibration.
    Eval(EvalConfig),
}

/// Why a run stopped. Its `Debug` is the whole chain, so `main` can return it as it is.
#[derive(thiserror::Error)]
pub enum RunError {
    #[error("could not start the service")]
    Start(#[from] StartupError),
    #[error("the service stopped with an error")]
    Serve(#[source] std::io::Error),
    #[error("could not listen on {addr}")]
    SimBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid simulator setting")]
    Sim(#[from] SimConfigError),
    #[error("could not set up logs and traces")]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error("classify failed")]
    Classify(#[from] ClientError),
    #[error("classify --batch-api failed")]
    BatchApi(#[from] crate::batch_api::BatchLaneError),
    #[error("bench failed")]
    Bench(#[from] BenchError),
    #[error("eval failed")]
    Eval(#[from] EvalError),
}

impl fmt::Debug for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&report(self))
    }
}

/// An error and every cause under it, one per line: what a person reads when a command fails.
pub fn report(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str("\n  caused by: ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// `classify`'s exit status when its output holds rows whose error a run again may fix.
pub const TRANSIENT_ERRORS_REMAIN: u8 = 2;
/// `classify`'s exit status when the only rows with errors left are final ones (an empty title,
/// a refusal): running again would change nothing.
pub const FINAL_ERRORS_REMAIN: u8 = 3;

/// Runs the chosen subcommand to its end; its exit status.
pub async fn run(cli: Cli) -> Result<ExitCode, RunError> {
    match cli.command {
        Command::Serve(config) => Box::pin(serve(config)).await.map(|()| ExitCode::SUCCESS),
        Command::Sim(config) => sim(config).await.map(|()| ExitCode::SUCCESS),
        Command::Classify(config) => {
            let summary = if config.batch_api {
                Box::pin(crate::batch_api::classify_file(&config, true)).await?
            } else if config.job {
                Box::pin(crate::client::classify_file_as_job(&config, true)).await?
            } else {
                Box::pin(crate::client::classify_file(&config, true)).await?
            };
            eprintln!("{}", summary.report());
            if let Some(output) = summary.output.as_ref().filter(|_| summary.items > 0) {
                eprintln!("rows written to {}", output.display());
            }
            // Not 1: the run worked, but rows with errors remain (the report says which).
            let transient = summary
                .remaining_errors
                .keys()
                .any(|code| crate::classify::is_transient(code));
            Ok(if transient {
                ExitCode::from(TRANSIENT_ERRORS_REMAIN)
            } else if summary.remaining_errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(FINAL_ERRORS_REMAIN)
            })
        }
        Command::Bench(config) => {
            let results = crate::bench::run(&config).await?;
            println!("{}", crate::bench::report(&results));
            eprintln!(
                "CSV files and charts written to {}/",
                config.results_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval(config) => {
            let reports = Box::pin(crate::eval::run(&config, true)).await?;
            println!("{}", crate::eval::table(&reports, &config.output));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config: ServeConfig) -> Result<(), RunError> {
    // Held to the end: dropping it flushes the spans not yet exported.
    let _telemetry = telemetry::init(config.log.log_format)?;
    let app = Application::build(config).await?;
    app.run(shutdown_signal()).await.map_err(RunError::Serve)
}

async fn sim(config: SimServeConfig) -> Result<(), RunError> {
    let _telemetry = telemetry::init(config.log.log_format)?;
    let addr = config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::SimBind { addr, source })?;
    let server = SimServer::spawn(&config.sim, listener)?;
    tracing::info!(base_url = %server.base_url(), "simulated OpenAI API serving");
    shutdown_signal().await;
    Ok(())
}
