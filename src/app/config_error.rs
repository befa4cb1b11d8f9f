//! `ConfigError`: a start-up failure that names the setting at fault, so an operator knows which
//! variable to fix without reading code.

use crate::credentials::CredentialsError;

/// A start-up failure that names the setting at fault.
#[derive(Debug)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<CredentialsError> for ConfigError {
    fn from(e: CredentialsError) -> Self {
        let setting = match &e {
            CredentialsError::Missing(name) | CredentialsError::Malformed(name, _) => *name,
        };
        Self::new(
            setting,
            format!("{e} (set it, use TASKGATE_CREDENTIALS_FILE or ~/.tencentcloud/credentials, or run with --demo)"),
        )
    }
}
