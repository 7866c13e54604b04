//! The `dr-syncer` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = dr_syncer::cli::Cli::parse();
    dr_syncer::cli::run(cli).await
}
