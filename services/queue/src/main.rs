//! `tiketi-queue`: the waiting-room service binary.
#![forbid(unsafe_code)]

use clap::Parser;
use tiketi_queue::cli::{Cli, Command, Tools};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A tool first: it needs none of the serve flags (no Redis URL to generate tokens).
    if let Ok(Tools { command }) = Tools::try_parse() {
        return tool(command).await;
    }
    let cli = Cli::parse();
    match cli.command {
        Some(command) => tool(command).await,
        None => {
            tiketi_queue::cli::refuse_renamed_variables(|v| std::env::var(v).ok())
                .map_err(anyhow::Error::msg)?;
            tiketi_shared::telemetry::init("info,tower_http=warn");
            let listener = tiketi_shared::net::bind(cli.serve.listen).await?;
            tiketi_queue::server::serve(cli.serve, listener, tiketi_queue::server::signal()).await
        }
    }
}

async fn tool(command: Command) -> anyhow::Result<()> {
    match command {
        Command::GenTokens {
            secret,
            count,
            prefix,
            ttl,
        } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            tiketi_queue::bench::tokens(&secret, count, &prefix, ttl, &mut out)
        }
        Command::BenchEmpty { listen } => {
            tiketi_queue::bench::empty(listen, tiketi_queue::server::signal()).await
        }
        Command::BenchStreams {
            addr,
            event,
            tokens,
            count,
            hold,
        } => {
            let text = std::fs::read_to_string(&tokens)?;
            let tokens: Vec<String> = text.lines().map(str::to_owned).collect();
            let started = std::time::Instant::now();
            let (open, failed) = tiketi_queue::bench::streams(addr, &event, &tokens, count).await;
            // Printed before the hold, so the caller can measure while the streams are open.
            println!(
                "{}",
                serde_json::json!({"opened": open.len(), "failed": failed, "seconds": started.elapsed().as_secs_f64()})
            );
            tokio::time::sleep(hold).await;
            drop(open);
            Ok(())
        }
    }
}
