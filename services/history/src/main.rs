//! `herald-history` binary: parse the configuration and run the application.

use clap::Parser;
use herald_history::{Application, Cli, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_server::init_tracing();
    let config = Config::try_from(Cli::parse())?;
    herald_server::run_main(Application::build(config)).await
}
