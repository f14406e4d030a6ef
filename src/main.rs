//! The `conversa` binary: parse the configuration, run the service (or a subcommand:
//! `setup kommo`, `check`, `dead-letters`).

use clap::Parser;

/// glibc's allocator was the top of the profile under webhook load (≈25% of samples in
/// malloc/free across threads); mimalloc handles that churn far better.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use conversa::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // An optional `.env` in the working directory; real environment variables win.
    let dotenv = dotenvy::dotenv();
    let mut config = Config::parse();
    if let Some(command) = config.command.take() {
        // A subcommand prints for a person; only warnings are logged (to stderr).
        conversa::server::init_cli_logging();
        return conversa::cli::run(command, config).await;
    }
    conversa::server::init_logging(config.log_format);
    if let Ok(path) = dotenv {
        tracing::info!(path = %path.display(), "read settings from .env");
    }
    match conversa::server::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "conversa stopped");
            eprintln!("conversa: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
