//! `herald-loadgen`: a load generator that speaks the Pusher Channels
//! protocol (WebSocket protocol 7 and the signed HTTP API), so the same runs
//! can be pointed at Herald or at any other Pusher-compatible server.
//!
//! Scenarios (subcommands): `fanout`, `channels`, `connections`, `durable`,
//! `resume`, `churn`. Every run is bounded in message/connection count and in time
//! (a hard `--deadline`), refuses any target that is not a loopback address,
//! and prints a table followed by one `RESULT {json}` line.
//!
//! Exit status: 0 when the run was clean; 1 when it completed but found
//! something wrong (lost or duplicated messages, failed connections or
//! publishes); 2 for a refused target or bad arguments; 3 when the hard
//! deadline was reached; 4 when the run could not be carried out.

mod publish;
mod report;
mod scenario;
mod stats;
mod target;
mod util;
mod ws;

use clap::{Parser, Subcommand};

/// mimalloc, as the gateway uses: the load generator shares the machine
/// with the server it measures, so every cycle it spends in glibc's
/// allocator (a sixth of its instructions in a `durable` run) is one the
/// server does not get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;
use target::{Target, TargetArgs};

/// Pusher-protocol load generator (loopback targets only).
#[derive(Debug, Parser)]
#[command(name = "herald-loadgen", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    /// Hard deadline for the whole run, in seconds: past it the process exits
    /// with status 3 whatever it is doing.
    #[arg(long, global = true, default_value_t = 300.0)]
    deadline: f64,
    /// Pid of the server under test (e.g. the gateway): its CPU use is
    /// reported, and `connections` reads its VmRSS.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Other server processes (e.g. nats-server) whose CPU use is reported;
    /// repeatable.
    #[arg(long, global = true)]
    extra_pid: Vec<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N subscribers on one channel, one publisher: deliveries/s, end-to-end
    /// latency, loss and duplicates per subscriber.
    Fanout(scenario::pubsub::FanoutArgs),
    /// N clients spread over C channels, publishes round-robin over channels.
    Channels(scenario::pubsub::ChannelsArgs),
    /// N idle connections opened at a ramp: connects/s, failures, server
    /// memory per connection (VmRSS of --server-pid).
    Connections(scenario::connections::ConnectionsArgs),
    /// Durable client publishes (`herald:publish` → `herald:ack`) on private
    /// channels: acked/s and ack latency; any nack fails the run. Reports
    /// "unsupported" (exit 0) on servers without it.
    Durable(scenario::durable::DurableArgs),
    /// Sockets resuming a channel K events back (`resume_from`), one or many
    /// at once: replayed events/s, every event checked once and in order.
    /// Reports "unsupported" (exit 0) on servers without `herald:publish`.
    Resume(scenario::resume::ResumeArgs),
    /// Clients connecting, subscribing and leaving continuously: cycles/s,
    /// failures, connect+subscribe latency.
    Churn(scenario::churn::ChurnArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let target = match Target::from_args(&cli.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("herald-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let nofile = util::raise_nofile_limit();
    eprintln!(
        "herald-loadgen: target {} (app {}), open-files limit {}, deadline {} s",
        target.addr,
        target.app_id,
        nofile.map_or("unchanged".to_string(), |n| n.to_string()),
        cli.deadline
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-loadgen: cannot start the runtime: {e}");
            return ExitCode::from(4);
        }
    };
    let deadline = util::secs(cli.deadline);
    let ctx = scenario::Ctx {
        target,
        server_pid: cli.server_pid,
        extra_pids: cli.extra_pid,
    };
    let outcome = runtime.block_on(async move {
        tokio::select! {
            r = run(cli.scenario, ctx) => Some(r),
            _ = tokio::time::sleep(deadline) => None,
        }
    });
    let code = match outcome {
        Some(Ok(report)) => {
            report.print();
            if report.get("ok") == Some(&serde_json::Value::Bool(true)) {
                0
            } else {
                1
            }
        }
        Some(Err(e)) => {
            eprintln!("herald-loadgen: {e:#}");
            4
        }
        None => {
            eprintln!(
                "herald-loadgen: hard deadline of {} s reached; aborting",
                deadline.as_secs_f64()
            );
            3
        }
    };
    // Do not wait for straggling connection tasks.
    runtime.shutdown_background();
    ExitCode::from(code)
}

async fn run(scenario: Scenario, ctx: scenario::Ctx) -> anyhow::Result<report::Report> {
    match scenario {
        Scenario::Fanout(args) => scenario::pubsub::fanout(ctx, args).await,
        Scenario::Channels(args) => scenario::pubsub::channels(ctx, args).await,
        Scenario::Connections(args) => scenario::connections::run(ctx, args).await,
        Scenario::Durable(args) => scenario::durable::run(ctx, args).await,
        Scenario::Resume(args) => scenario::resume::run(ctx, args).await,
        Scenario::Churn(args) => scenario::churn::run(ctx, args).await,
    }
}
