//! TC3-HMAC-SHA256, the signature of Tencent Cloud API 3.0, as pure functions.
//!
//! Each step is a function named after the step in Tencent's "Signature v3" document, so that every
//! intermediate value can be checked against the known-answer vectors made by the official SDK
//! (`tests/data/tc3_vectors.json`). Nothing here reads a clock or does I/O: the timestamp is passed
//! in, which is what makes the vectors reproducible and lets every retry be signed afresh.
//!
//! Only `content-type` and `host` are signed (as the SDKs do). Region, language, token and trace id
//! travel as unsigned headers; the client adds them.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::credentials::Credentials;

/// The algorithm name that opens the string to sign and the Authorization header.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The headers we sign, in canonical (sorted, lowercase) order.
pub const SIGNED_HEADERS: &str = "content-type;host";

/// Everything one signature depends on. Borrowed, so signing a request allocates only its output.
#[derive(Debug, Clone, Copy)]
pub struct SigningInput<'a> {
    /// Service name as in the credential scope (`ssm`).
    pub service: &'a str,
    /// Exact `Host` header value, port included when it is not the scheme's default.
    pub host: &'a str,
    /// Exact `Content-Type` header value (`application/json` for taskgate).
    pub content_type: &'a str,
    /// Unix seconds; the same value goes into `X-TC-Timestamp`.
    pub timestamp: i64,
    /// The exact bytes of the request body that will be sent.
    pub body: &'a [u8],
}

/// The result of signing: the Authorization header and the values it was derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub authorization: String,
    pub signature: String,
    pub date: String,
}

/// Lowercase hex, the encoding every TC3 intermediate uses.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0x0f) as usize] as char);
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex_encode(&Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Step 1a: `HashedRequestPayload = Lowercase(HexEncode(Hash.SHA256(RequestPayload)))`.
pub fn hashed_request_payload(body: &[u8]) -> String {
    sha256_hex(body)
}

/// Step 1: the canonical request for a `POST /` with no query string. Values go in as given, as
/// the SDKs do; configuration lowercases the host once, so the Host sent is the host signed.
pub fn canonical_request(content_type: &str, host: &str, hashed_payload: &str) -> String {
    format!(
        "POST\n/\n\ncontent-type:{}\nhost:{}\n\n{}\n{}",
        content_type, host, SIGNED_HEADERS, hashed_payload
    )
}

/// The UTC calendar date (`YYYY-MM-DD`) of a Unix timestamp. UTC, not Beijing time: the server
/// derives the date the same way, and the two differ before 08:00 in Beijing.
/// Timestamps beyond the calendar `time` knows (years -9999 to 9999) are clamped to its ends: no
/// clock reads them, and a pure function must not panic.
pub fn utc_date(timestamp: i64) -> String {
    let first = time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
    let last = time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp();
    let date = time::OffsetDateTime::from_unix_timestamp(timestamp.clamp(first, last))
        .expect("clamped into the supported range")
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// `CredentialScope = Date/service/tc3_request`.
pub fn credential_scope(date: &str, service: &str) -> String {
    format!("{date}/{service}/tc3_request")
}

/// Step 2: the string to sign.
pub fn string_to_sign(timestamp: i64, credential_scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{timestamp}\n{credential_scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The three derived keys of step 3, kept apart so each can be checked against the vectors.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedKeys {
    pub k_date: [u8; 32],
    pub k_service: [u8; 32],
    pub k_signing: [u8; 32],
}

impl std::fmt::Debug for DerivedKeys {
    // Derived keys sign requests for a whole day: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKeys([redacted])")
    }
}

/// Step 3a: `SecretDate = HMAC("TC3" + SecretKey, Date)`, then service, then `tc3_request`.
pub fn derive_signing_key(secret_key: &str, date: &str, service: &str) -> DerivedKeys {
    let mut seed = Vec::with_capacity(3 + secret_key.len());
    seed.extend_from_slice(b"TC3");
    seed.extend_from_slice(secret_key.as_bytes());
    let k_date = hmac_sha256(&seed, date.as_bytes());
    let k_service = hmac_sha256(&k_date, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    DerivedKeys {
        k_date,
        k_service,
        k_signing,
    }
}

/// Step 3b: `Signature = HexEncode(HMAC(SecretSigning, StringToSign))`.
pub fn calculate_signature(k_signing: &[u8; 32], string_to_sign: &str) -> String {
    hex_encode(&hmac_sha256(k_signing, string_to_sign.as_bytes()))
}

/// Step 4: the Authorization header value.
pub fn authorization_header(secret_id: &str, credential_scope: &str, signature: &str) -> String {
    format!(
        "{ALGORITHM} Credential={secret_id}/{credential_scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
    )
}

/// All four steps: what a request needs to carry to be accepted.
pub fn sign(credentials: &Credentials, input: &SigningInput<'_>) -> Signature {
    let canonical = canonical_request(
        input.content_type,
        input.host,
        &hashed_request_payload(input.body),
    );
    let date = utc_date(input.timestamp);
    let scope = credential_scope(&date, input.service);
    let to_sign = string_to_sign(input.timestamp, &scope, &canonical);
    let keys = derive_signing_key(credentials.secret_key.expose(), &date, input.service);
    let signature = calculate_signature(&keys.k_signing, &to_sign);
    let authorization = authorization_header(credentials.secret_id.expose(), &scope, &signature);
    Signature {
        authorization,
        signature,
        date,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_encode_is_lowercase_and_padded() {
        assert_eq!(hex_encode(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn derived_keys_never_print() {
        let keys = derive_signing_key("EXAMPLEKEY", "2023-11-14", "ssm");
        assert_eq!(format!("{keys:?}"), "DerivedKeys([redacted])");
    }

    #[test]
    fn dates_across_epochs_leap_days_and_centuries() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(4_107_542_400), "2100-03-01");
        // 23:59:59 UTC is still the same day; Beijing's 08:00 is not a day boundary.
        assert_eq!(utc_date(1_700_006_399), "2023-11-14");
        assert_eq!(utc_date(1_700_006_400), "2023-11-15");
        assert_eq!(utc_date(i64::MAX), "9999-12-31");
        assert_eq!(utc_date(i64::MIN), "-9999-01-01");
    }
}
