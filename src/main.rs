//! The `taskgate` binary: parse configuration, start logging, run the application.

use std::process::ExitCode;

use taskgate::config::Config;
use taskgate::startup::Application;

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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let result = actix_rt::System::new().block_on(async move {
        let app = Application::build(config).await?;
        app.run_until_stopped()
            .await
            .map_err(|e| taskgate::startup::StartupError::Io("serving", e))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskgate: {e}");
            ExitCode::from(2)
        }
    }
}
