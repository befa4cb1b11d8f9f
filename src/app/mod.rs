//! The application: configuration parsed once, everything built once from it, and the server's
//! lifecycle (serve, drain, stop).
//!
//! - `config`: the whole configuration (clap), checked across groups; `config_error`: what a bad
//!   setting reports
//! - `settings`: the settings grouped by part, each building its part's own settings; `parse`:
//!   their value parsers; `trace_settings`: the traces group (OpenTelemetry's `OTEL_*` names)
//! - `startup`: `Application::build` and `run_until_stopped`

mod config;
mod config_error;
mod parse;
mod settings;
mod startup;
mod trace_settings;

pub use config::Config;
pub use config_error::ConfigError;
pub use startup::{Application, StartupError};
