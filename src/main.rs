//! The binary: parse the command line and run the chosen subcommand. A failure is returned as
//! it is: its `Debug` prints the error with every cause under it, once.

use std::process::ExitCode;

use clap::Parser;
use hn_classifier::cli::{self, Cli, RunError};

#[tokio::main]
async fn main() -> Result<ExitCode, Box<RunError>> {
    Box::pin(cli::run(Cli::parse())).await.map_err(Box::new)
}
