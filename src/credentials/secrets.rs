//! The gateway's Tencent Cloud credentials: redacting newtypes and a store that swaps them whole.
//!
//! Secrets never reach a log, a metric, an error body or a panic message: the newtypes below print
//! `[redacted]`, and the only way to the raw value is `expose()`, called by the signer alone.
//! The store (`ArcSwap`) hands out `Arc<Credentials>`, so id, key and token of one request always come
//! from the same generation even while a rotation swaps in the next.

use std::fmt;
use std::time::SystemTime;

/// The public half of an API key (`AKID…`). Not a secret as such, but printed only as a prefix, so
/// logs can tell keys apart without reproducing them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretId(String);

/// The private half of an API key: signs requests. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

/// The session token of temporary credentials (`X-TC-Token`). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecurityToken(String);

impl SecretId {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl SecretKey {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl SecurityToken {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(6).collect();
        write!(f, "{prefix}***")
    }
}

macro_rules! redacted {
    ($($ty:ty),*) => {$(
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    )*};
}
redacted!(SecretKey, SecurityToken);

/// One generation of credentials. Long-term keys have no token; temporary ones carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub secret_id: SecretId,
    pub secret_key: SecretKey,
    pub token: Option<SecurityToken>,
    /// When temporary credentials stop working; none for long-term keys.
    pub expires_at: Option<SystemTime>,
}

/// Why a set of credentials cannot be used, in words that name the setting but not the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsError {
    Missing(&'static str),
    Malformed(&'static str, &'static str),
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(name) => write!(f, "{name} is not set"),
            Self::Malformed(name, why) => write!(f, "{name} {why}"),
        }
    }
}

impl std::error::Error for CredentialsError {}

impl Credentials {
    /// Builds credentials from the values the Tencent tools read
    /// (`TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY`, `TENCENTCLOUD_SECURITY_TOKEN`).
    pub fn from_parts(
        secret_id: Option<&str>,
        secret_key: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self, CredentialsError> {
        let secret_id = secret_id
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(CredentialsError::Missing("TENCENTCLOUD_SECRET_ID"))?;
        let secret_key = secret_key
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(CredentialsError::Missing("TENCENTCLOUD_SECRET_KEY"))?;
        // Header values must be visible ASCII; anything else could not be sent, or could smuggle a
        // header line, so refuse it at start rather than on the first request.
        for (name, value) in [
            ("TENCENTCLOUD_SECRET_ID", secret_id),
            ("TENCENTCLOUD_SECRET_KEY", secret_key),
        ] {
            if !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CredentialsError::Malformed(
                    name,
                    "must be printable ASCII without spaces",
                ));
            }
        }
        let token = token.map(str::trim).filter(|v| !v.is_empty());
        if let Some(token) = token {
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CredentialsError::Malformed(
                    "TENCENTCLOUD_SECURITY_TOKEN",
                    "must be printable ASCII without spaces",
                ));
            }
        }
        Ok(Self {
            secret_id: SecretId::new(secret_id),
            secret_key: SecretKey::new(secret_key),
            token: token.map(SecurityToken::new),
            expires_at: None,
        })
    }

    /// Throwaway credentials for the embedded demo upstream: random, never valid at Tencent.
    pub fn generate_demo() -> Self {
        let mut rng = fastrand::Rng::new();
        let alnum = |rng: &mut fastrand::Rng, n: usize| -> String {
            (0..n).map(|_| rng.alphanumeric()).collect::<String>()
        };
        Self {
            secret_id: SecretId::new(format!("AKIDDEMO{}", alnum(&mut rng, 28))),
            secret_key: SecretKey::new(format!("DEMO{}", alnum(&mut rng, 28))),
            token: None,
            expires_at: None,
        }
    }
}

/// Shared, swappable credentials: every request signs with one whole generation (`load_full`),
/// and a rotation swaps in the next in one step (`store`).
pub(crate) type CredentialStore = arc_swap::ArcSwap<Credentials>;

impl Credentials {
    /// Seconds until these credentials expire (negative once expired); None for long-term keys.
    pub fn seconds_to_expiry(&self, now: SystemTime) -> Option<f64> {
        self.expires_at.map(|at| match at.duration_since(now) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_key_or_token() {
        let creds = Credentials::from_parts(
            Some("AKIDfakeidfakeid"),
            Some("fakeSECRETkeyVALUE"),
            Some("fakeTOKENvalue"),
        )
        .unwrap();
        let printed = format!("{creds:?} {} {}", creds.secret_key, creds.secret_id);
        assert!(!printed.contains("fakeSECRETkeyVALUE"), "{printed}");
        assert!(!printed.contains("fakeTOKENvalue"), "{printed}");
        assert!(!printed.contains("AKIDfakeidfakeid"), "{printed}");
        assert!(printed.contains("AKIDfa***"), "{printed}");
    }

    #[test]
    fn missing_or_blank_values_name_the_variable() {
        let err = Credentials::from_parts(None, Some("k"), None).unwrap_err();
        assert_eq!(err.to_string(), "TENCENTCLOUD_SECRET_ID is not set");
        let err = Credentials::from_parts(Some("id"), Some("  "), None).unwrap_err();
        assert_eq!(err.to_string(), "TENCENTCLOUD_SECRET_KEY is not set");
        let err = Credentials::from_parts(Some("id"), Some("a b"), None).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("TENCENTCLOUD_SECRET_KEY must be"));
    }

    #[test]
    fn store_swaps_whole_generations() {
        let store = CredentialStore::from_pointee(
            Credentials::from_parts(Some("a"), Some("b"), None).unwrap(),
        );
        let before = store.load_full();
        store.store(std::sync::Arc::new(
            Credentials::from_parts(Some("c"), Some("d"), Some("t")).unwrap(),
        ));
        assert_eq!(before.secret_id.expose(), "a");
        let after = store.load_full();
        assert_eq!(
            (after.secret_id.expose(), after.secret_key.expose()),
            ("c", "d")
        );
        assert_eq!(after.token.as_ref().map(|t| t.expose()), Some("t"));
    }
}
