//! `herald-gateway` binary: parse the configuration and run the application.

use clap::Parser;
use herald_gateway::{Application, Cli, Config};

/// mimalloc instead of glibc's allocator: a gateway allocates and frees a
/// few small buffers per frame on every worker thread, and glibc's malloc
/// took a fifth of its CPU under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_server::init_tracing();
    let config = Config::try_from(Cli::parse())?;
    herald_server::run_main(Application::build(config)).await
}
