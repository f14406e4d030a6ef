//! The `conversa` binary: parse the configuration, run the service.

use clap::Parser;
use conversa::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    conversa::server::init_logging(config.log_format);
    match conversa::server::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "conversa stopped");
            eprintln!("conversa: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
