//! `TASKGATE_CREDENTIALS_FILE`: credentials in the Tencent Cloud profile format, re-read when the
//! file changes.
//!
//! ```ini
//! [default]
//! secret_id = AKID...
//! secret_key = ...
//! token = ...                           ; temporary credentials only
//! expires_at = 2026-11-29T12:00:00Z     ; temporary credentials only (RFC 3339 or Unix seconds)
//! ```
//!
//! Id, key, token and expiry always come from one read of the file and are swapped in together.
//! A file that cannot be used keeps the credentials in force; errors name the line, never a value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::secrets::Credentials;

struct Entry {
    section: String,
    key: String,
    value: String,
}

/// Parses the `[default]` profile (or the file's only profile).
pub(crate) fn parse(text: &str) -> Result<Credentials, String> {
    let mut section = String::new();
    let mut sections: Vec<String> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            sections.push(section.clone());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `key = value`", index + 1));
        };
        entries.push(Entry {
            section: section.clone(),
            key: key.trim().to_ascii_lowercase(),
            value: value
                .split([';', '#'])
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        });
    }
    // Which profile: [default], or the only one there is.
    let profile = if sections.iter().any(|s| s == "default") {
        "default".to_string()
    } else if sections.len() <= 1 {
        sections.first().cloned().unwrap_or_default()
    } else {
        return Err("no [default] profile".into());
    };
    let get = |key: &str| -> Option<&str> {
        entries
            .iter()
            .rev()
            .find(|e| e.section == profile && e.key == key)
            .map(|e| e.value.as_str())
    };
    let mut credentials =
        Credentials::from_parts(get("secret_id"), get("secret_key"), get("token")).map_err(
            |e| {
                e.to_string()
                    .replace("TENCENTCLOUD_SECRET_ID", "secret_id")
                    .replace("TENCENTCLOUD_SECRET_KEY", "secret_key")
                    .replace("TENCENTCLOUD_SECURITY_TOKEN", "token")
            },
        )?;
    if let Some(expiry) = get("expires_at").filter(|v| !v.is_empty()) {
        credentials.expires_at = Some(parse_expiry(expiry)?);
    }
    Ok(credentials)
}

fn parse_expiry(text: &str) -> Result<SystemTime, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(seconds));
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            "expires_at must be RFC 3339 (2026-11-29T12:00:00Z) or Unix seconds".to_string()
        })?;
    let seconds = u64::try_from(parsed.unix_timestamp())
        .map_err(|_| "expires_at is before 1970".to_string())?;
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_profile_with_token_and_expiry() {
        let text = "[other]\nsecret_id = AKIDother\nsecret_key = otherKEY\n\n[default]\n\
                    secret_id = AKIDfake\nsecret_key = fakeKEY ; comment\ntoken = fakeTOKEN\n\
                    expires_at = 2026-11-29T12:00:00Z\n";
        let credentials = parse(text).unwrap();
        assert_eq!(credentials.secret_id.expose(), "AKIDfake");
        assert_eq!(credentials.secret_key.expose(), "fakeKEY");
        assert_eq!(credentials.token.as_ref().unwrap().expose(), "fakeTOKEN");
        assert_eq!(
            credentials.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_795_953_600))
        );
    }

    #[test]
    fn a_single_profile_of_any_name_is_enough() {
        let credentials =
            parse("[prod]\nsecret_id=AKIDx\nsecret_key=k\nexpires_at=1800000000").unwrap();
        assert_eq!(credentials.secret_id.expose(), "AKIDx");
        assert!(credentials.expires_at.is_some());
    }

    #[test]
    fn errors_name_the_key_never_the_value() {
        let error = parse("[default]\nsecret_id = AKIDx\n").unwrap_err();
        assert_eq!(error, "secret_key is not set");
        let error =
            parse("[default]\nsecret_id = AKIDx\nsecret_key = s3cretVALUE\nexpires_at = soon")
                .unwrap_err();
        assert!(error.starts_with("expires_at must be"));
        assert!(!error.contains("s3cretVALUE"));
        assert!(parse("[a]\nsecret_id=x\n[b]\nsecret_id=y").is_err());
        assert!(parse("[default]\nnonsense").is_err());
    }
}
