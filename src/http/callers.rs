//! Caller authentication: `TASKGATE_CALLER_TOKENS_FILE` names the services allowed to look up
//! tasks, one `<caller-name> <token>` per line (`#` starts a comment).
//!
//! Tokens are kept as SHA-256 digests and compared in constant time against every entry, so
//! neither timing nor a memory dump reveals them. The caller's name (never the token) labels
//! metrics, appears in access logs and picks the caller's queue for its fair share of the budget.
//! The file is re-read when it changes; a broken new file keeps the old tokens and counts an error.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::task::CallerName;

#[derive(Debug, Clone, Default)]
pub struct CallerTokens {
    entries: Vec<(CallerName, [u8; 32])>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl CallerTokens {
    /// Parses the file; errors name the line, never the token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<(CallerName, [u8; 32])> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("line {number}: expected `<caller-name> <token>`"));
            };
            let name_ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                return Err(format!(
                    "line {number}: a caller name is 1-64 letters, digits, '-', '_' or '.'"
                ));
            }
            if token.len() < 16 {
                return Err(format!(
                    "line {number}: tokens must be at least 16 characters"
                ));
            }
            let token = digest(token);
            if entries.iter().any(|(n, _)| &**n == name) {
                return Err(format!("line {number}: caller {name} appears twice"));
            }
            if entries.iter().any(|(_, t)| bool::from(t.ct_eq(&token))) {
                return Err(format!(
                    "line {number}: this token is already given to another caller"
                ));
            }
            entries.push((Arc::from(name), token));
        }
        if entries.is_empty() {
            return Err("no caller is listed".into());
        }
        Ok(Self { entries })
    }

    /// The caller a bearer token belongs to. Looks at every entry whatever matches.
    pub fn identify(&self, presented: &str) -> Option<CallerName> {
        let presented = digest(presented);
        let mut found = None;
        for (name, token) in &self.entries {
            if bool::from(token.ct_eq(&presented)) {
                found = Some(Arc::clone(name));
            }
        }
        found
    }

    pub fn names(&self) -> impl Iterator<Item = &CallerName> {
        self.entries.iter().map(|(name, _)| name)
    }
}

/// The tokens in force, swapped whole on reload.
pub(crate) type CallerRegistry = arc_swap::ArcSwap<CallerTokens>;

/// The token of an `Authorization: Bearer <token>` header value.
pub(crate) fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# callers\nbilling  billing-token-0123456789\n\norders orders-token-0123456789 # the orders service\n";

    #[test]
    fn parses_names_and_identifies_tokens() {
        let tokens = CallerTokens::parse(FILE).unwrap();
        assert_eq!(
            tokens.identify("billing-token-0123456789").as_deref(),
            Some("billing")
        );
        assert_eq!(
            tokens.identify("orders-token-0123456789").as_deref(),
            Some("orders")
        );
        assert_eq!(tokens.identify("orders-token-012345678"), None);
        assert_eq!(tokens.identify(""), None);
    }

    #[test]
    fn refuses_broken_files_without_echoing_tokens() {
        for (text, why) in [
            ("billing", "expected"),
            ("bil ling token-0123456789abcdef", "expected"),
            ("bad/name token-0123456789abcdef", "caller name"),
            ("a short", "at least 16"),
            (
                "a token-0123456789abcdef\na token-abcdef0123456789",
                "twice",
            ),
            (
                "a token-0123456789abcdef\nb token-0123456789abcdef",
                "already given",
            ),
            ("# nothing\n", "no caller"),
        ] {
            let error = CallerTokens::parse(text).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
            assert!(!error.contains("token-0123456789abcdef"), "{error}");
        }
    }

    #[test]
    fn reads_bearer_headers() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
