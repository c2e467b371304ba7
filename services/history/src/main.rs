//! `herald-history` binary: parse the configuration, then serve (the
//! default) or rebuild the read model.

use clap::Parser;
use herald_history::{Application, Cli, Command, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_server::init_tracing();
    let cli = Cli::parse();
    let command = cli.command.clone().unwrap_or(Command::Serve);
    let config = Config::try_from(cli)?;
    match command {
        Command::Serve => herald_server::run_main(Application::build(config)).await,
        Command::Rebuild { verify } => {
            let report = herald_history::rebuild_with(&config, verify).await?;
            let rate = report.events as f64 / report.elapsed.as_secs_f64().max(0.001);
            println!(
                "replayed {} events up to seq {} in {:.1} s ({:.0} events/s)",
                report.events,
                report.checkpoint,
                report.elapsed.as_secs_f64(),
                rate
            );
            if verify {
                if report.differing.is_empty() {
                    println!("verify: every table of the rebuilt model equals the live one");
                } else {
                    println!(
                        "verify: these tables differ: {}",
                        report.differing.join(", ")
                    );
                    std::process::exit(1);
                }
            } else if let Some(old) = report.old_schema {
                println!("swapped in; the previous tables are in schema {old} (drop it when done)");
            }
            Ok(())
        }
    }
}
