//! The gateway's Tencent Cloud credentials: where they come from and how they stay current.
//!
//! - `secrets`: redacting newtypes, one generation of `Credentials`, the swappable store
//! - `profile`: the Tencent profile file (`TASKGATE_CREDENTIALS_FILE`, `~/.tencentcloud/credentials`)
//! - `cvm_role`: temporary credentials of the CVM instance role, renewed before they expire
//!
//! Which source is used is settled once at start, by the credential settings (`app`); files are
//! re-read on change by `support::reload`.

pub(crate) mod cvm_role;
pub(crate) mod profile;
mod secrets;

pub(crate) use cvm_role::CvmRole;
pub use secrets::Credentials;
pub(crate) use secrets::{CredentialStore, CredentialsError};
pub(crate) use secrets::{SecretId, SecretKey, SecurityToken};
