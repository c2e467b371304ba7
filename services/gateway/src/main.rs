//! `herald-gateway` binary: parse the configuration and run the application.

use clap::Parser;
use herald_gateway::{Application, Cli, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_telemetry::init_tracing();
    let config = Config::try_from(Cli::parse())?;
    let app = Application::build(config).await?;
    let signals = herald_telemetry::shutdown_on_signals();
    let token = app.shutdown_token();
    tokio::spawn(async move {
        signals.cancelled().await;
        token.cancel();
    });
    app.run_until_stopped().await
}
