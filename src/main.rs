//! The binary: parse the command line, set up logging, run the chosen subcommand.

use std::process::ExitCode;

use clap::Parser;
use hn_classifier::config::{Cli, Command, ServeConfig, SimServeConfig};
use hn_classifier::sim::SimServer;
use hn_classifier::startup::{Application, shutdown_signal};
use hn_classifier::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => serve(config).await,
        Command::Sim(config) => sim(config).await,
        Command::Classify(config) => classify(config).await,
        Command::Bench(config) => bench(config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: ServeConfig) -> Result<(), String> {
    telemetry::init(config.log.log_format);
    let app = Application::build(config)
        .await
        .map_err(|e| e.to_string())?;
    app.run(shutdown_signal()).await.map_err(|e| e.to_string())
}

async fn classify(config: hn_classifier::client::ClassifyFileConfig) -> Result<(), String> {
    let summary = hn_classifier::client::classify_file(&config, true)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("{}", summary.report());
    Ok(())
}

async fn bench(config: hn_classifier::bench::BenchConfig) -> Result<(), String> {
    let results = hn_classifier::bench::run(&config)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", hn_classifier::bench::report(&results));
    Ok(())
}

async fn sim(config: SimServeConfig) -> Result<(), String> {
    telemetry::init(config.log.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("could not listen on {}: {e}", config.listen))?;
    let server = SimServer::spawn(&config.sim, listener).map_err(|e| e.to_string())?;
    tracing::info!(base_url = %server.base_url(), "simulated OpenAI API serving");
    shutdown_signal().await;
    Ok(())
}
