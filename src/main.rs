//! The `taskgate` binary: parse configuration, start logging, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use taskgate::{logging, Application, Config, StartupError};

/// mimalloc rather than glibc's malloc: it keeps small long-lived allocations (the cache's
/// blocks) apart from request buffers, so RSS follows the cache's byte bound (BENCHMARKS.md:
/// with glibc, a slowly filled cache cost up to twice its weight in RSS).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    logging::init(config.server.log_format);

    let result = actix_rt::System::new().block_on(async move {
        let app = Application::build(config).await?;
        app.run_until_stopped(shutdown_signal())
            .await
            .map_err(|e| StartupError::Io("serving", e))
    });
    logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskgate: {e}");
            ExitCode::from(2)
        }
    }
}

/// Resolves on the first SIGTERM (what Kubernetes and systemd send) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    log::info!("{name} received");
}
