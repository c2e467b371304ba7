//! `herald-gateway` binary: parse the configuration and run the application.

use clap::Parser;
use herald_gateway::{Application, Cli, Config};

/// mimalloc instead of glibc's allocator: a gateway allocates and frees a
/// few small buffers per frame on every worker thread, and glibc's malloc
/// took a fifth of its CPU under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    herald_server::init_tracing();
    let config = Config::try_from(Cli::parse())?;
    // Built here rather than by `#[tokio::main]`: its thread count is
    // configured (`HERALD_WORKER_THREADS`), next to the delivery runtime's.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()?
        .block_on(herald_server::run_main(Application::build(config)))
}
