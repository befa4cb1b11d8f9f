//! Temporary credentials of the CVM instance role, fetched as the Tencent SDKs' `CvmRoleProvider`
//! fetches them, and kept fresh.
//!
//! The instance metadata service names the role bound to this machine
//! (`/latest/meta-data/cam/security-credentials/`) and hands out its `TmpSecretId`,
//! `TmpSecretKey`, `Token` and `ExpiredTime` (`…/security-credentials/<role>`). No long-term key
//! is stored anywhere. taskgate fetches them at start (failing the start if it cannot) and again
//! ahead of their expiry, swapping id, key and token in whole. A failed refresh keeps what is in
//! force, is logged and counted (`taskgate_file_reloads_total{file="cvm_role",result="error"}`),
//! and is retried with back-off; readiness turns 503 only once the credentials in force expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::secrets::{CredentialStore, Credentials};
use crate::support::reload::ReloadCounters;

/// Where CVM instances reach their metadata service.
pub(crate) const DEFAULT_METADATA_ENDPOINT: &str = "http://metadata.tencentyun.com";
/// The metadata path that lists the bound role and, below it, serves the role's credentials.
const ROLE_PATH: &str = "/latest/meta-data/cam/security-credentials/";
/// Renew when this much lifetime is left (or half the lifetime, when that is shorter): early
/// enough that the "expiring within the hour" alert stays quiet for credentials issued for more
/// than two hours, and a failing metadata service is noticed long before anything breaks.
const RENEW_AHEAD: Duration = Duration::from_secs(65 * 60);
/// Never ask the metadata service more often than this while it works (it may hand out the same
/// credentials until shortly before they expire).
const MIN_RENEW_GAP: Duration = Duration::from_secs(5);
/// Retry delays after a failed refresh: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(30);
/// One metadata request, connect to last byte; the service is on the instance's own network.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Answers are a few hundred bytes; anything far larger is not the metadata service.
const BODY_LIMIT: usize = 16 * 1024;

/// Which role to take credentials from, and where to ask.
#[derive(Debug, Clone)]
pub struct CvmRole {
    endpoint: String,
    /// None: ask the metadata service which role is bound (the SDKs' default).
    role: Option<String>,
}

/// The metadata service's answer for one role (fields as Tencent names them).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    tmp_secret_id: String,
    tmp_secret_key: String,
    token: String,
    expired_time: i64,
    code: String,
}

impl CvmRole {
    /// `role` is a role name, or `auto` for the role bound to this instance.
    pub fn new(endpoint: &str, role: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            role: (!role.eq_ignore_ascii_case("auto")).then(|| role.to_string()),
        }
    }

    /// One client for every metadata request: no redirects, a short timeout.
    pub fn client() -> awc::Client {
        awc::Client::builder()
            .disable_redirects()
            .timeout(REQUEST_TIMEOUT)
            .finish()
    }

    /// Fetches the role's current credentials. Errors say what failed, never a credential.
    pub async fn fetch(&self, client: &awc::Client) -> Result<Credentials, String> {
        let role = match &self.role {
            Some(role) => role.clone(),
            None => {
                let listing = self.get(client, ROLE_PATH).await?;
                let listing = String::from_utf8_lossy(&listing);
                let role = listing.lines().next().unwrap_or_default().trim();
                if role.is_empty() {
                    return Err("the metadata service names no role for this instance".into());
                }
                role.to_string()
            }
        };
        let body = self.get(client, &format!("{ROLE_PATH}{role}")).await?;
        // serde's messages can quote the offending value, which may be a secret: say only where.
        let answer: RoleCredentials = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "the credentials of role {role} are not the expected JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if answer.code != "Success" {
            return Err(format!(
                "the metadata service refused the credentials of role {role}: Code {:?}",
                answer.code
            ));
        }
        let expires_at = u64::try_from(answer.expired_time)
            .ok()
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
            .ok_or_else(|| format!("the credentials of role {role} carry no valid ExpiredTime"))?;
        let mut credentials = Credentials::from_parts(
            Some(&answer.tmp_secret_id),
            Some(&answer.tmp_secret_key),
            Some(&answer.token),
        )
        .map_err(|e| format!("the credentials of role {role} are unusable: {e}"))?;
        credentials.expires_at = Some(expires_at);
        Ok(credentials)
    }

    async fn get(&self, client: &awc::Client, path: &str) -> Result<Vec<u8>, String> {
        let url = format!("{}{path}", self.endpoint);
        let mut response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        match response.status().as_u16() {
            200 => {}
            404 => {
                return Err(format!(
                    "GET {url}: 404, no such role bound to this instance"
                ))
            }
            status => return Err(format!("GET {url}: HTTP {status}")),
        }
        let body = response
            .body()
            .limit(BODY_LIMIT)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok(body.to_vec())
    }

    /// Keeps `store` fresh for the life of the process (on the current actix arbiter: awc is not
    /// `Send`).
    /// Each renewal bumps `counters`: ok, or error (what is in force stays in force).
    pub fn keep_fresh(self, store: Arc<CredentialStore>, counters: ReloadCounters) {
        actix_rt::spawn(async move {
            let client = Self::client();
            loop {
                let next = renew_in(&store.load_full(), SystemTime::now());
                tokio::time::sleep(next).await;
                let mut retry = RETRY_FIRST;
                loop {
                    match self.fetch(&client).await {
                        Ok(fresh) => {
                            log::info!(
                                "credentials: renewed from the CVM role, now signing with secret id {}",
                                fresh.secret_id
                            );
                            store.store(Arc::new(fresh));
                            counters.ok.inc();
                            break;
                        }
                        Err(error) => {
                            log::error!(
                                "credentials: renewing from the CVM role failed ({error}); keeping \
                                 the current ones, retrying in {retry:?}"
                            );
                            counters.error.inc();
                            tokio::time::sleep(retry).await;
                            retry = (retry * 2).min(RETRY_LAST);
                        }
                    }
                }
            }
        });
    }
}

/// How long until `credentials` should be renewed: when `RENEW_AHEAD` or half their remaining
/// lifetime is left, whichever is shorter, and never sooner than `MIN_RENEW_GAP`.
fn renew_in(credentials: &Credentials, now: SystemTime) -> Duration {
    let left = credentials
        .expires_at
        .and_then(|at| at.duration_since(now).ok())
        .unwrap_or_default();
    let ahead = RENEW_AHEAD.min(left / 2);
    left.saturating_sub(ahead).max(MIN_RENEW_GAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiring_in(secs: u64, now: SystemTime) -> Credentials {
        let mut credentials = Credentials::from_parts(Some("AKIDx"), Some("k"), Some("t")).unwrap();
        credentials.expires_at = Some(now + Duration::from_secs(secs));
        credentials
    }

    #[test]
    fn renews_an_hour_ahead_or_at_half_life() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // Issued for 12 hours: renewed 65 minutes before expiry.
        assert_eq!(
            renew_in(&expiring_in(12 * 3600, now), now),
            Duration::from_secs(12 * 3600 - 65 * 60)
        );
        // 40 minutes left: renewed after 20.
        assert_eq!(
            renew_in(&expiring_in(2400, now), now),
            Duration::from_secs(1200)
        );
        // Expired, or about to: asked again soon, not in a loop.
        assert_eq!(renew_in(&expiring_in(0, now), now), MIN_RENEW_GAP);
        let mut expired = expiring_in(0, now);
        expired.expires_at = Some(now - Duration::from_secs(60));
        assert_eq!(renew_in(&expired, now), MIN_RENEW_GAP);
    }

    #[test]
    fn auto_asks_for_the_bound_role() {
        assert!(CvmRole::new("http://m/", "auto").role.is_none());
        assert!(CvmRole::new("http://m", "AUTO").role.is_none());
        let named = CvmRole::new("http://m/", "taskgate-role");
        assert_eq!(named.role.as_deref(), Some("taskgate-role"));
        assert_eq!(named.endpoint, "http://m");
    }
}
