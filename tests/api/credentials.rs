//! The credentials file: rotation under load, broken files, Kubernetes' symlink swap, expiry.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;

use crate::fake_upstream::{FakeUpstream, FAKE_SECRET_ID, FAKE_SECRET_KEY};
use crate::helpers::{client, metric_value, spawn_app_with, spawn_process, TestApp};

const NEW_ID: &str = "AKIDfakeROTATEDid000000000000000000";
const NEW_KEY: &str = "fakeROTATEDsecretKEYdoNOTuse00000";

fn profile(id: &str, key: &str, extra: &str) -> String {
    format!("[default]\nsecret_id = {id}\nsecret_key = {key}\n{extra}")
}

/// A folder laid out as Kubernetes mounts a Secret: `credentials -> ..data/credentials`,
/// `..data -> ..<timestamp>`; an update swaps `..data` atomically.
struct SecretMount {
    dir: PathBuf,
    generation: u32,
}

impl SecretMount {
    fn new(contents: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "taskgate-secret-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut mount = Self { dir, generation: 0 };
        mount.update(contents);
        std::os::unix::fs::symlink("..data/credentials", mount.file()).unwrap();
        mount
    }

    fn file(&self) -> PathBuf {
        self.dir.join("credentials")
    }

    fn update(&mut self, contents: &str) {
        self.generation += 1;
        let generation = format!("..gen{}", self.generation);
        std::fs::create_dir_all(self.dir.join(&generation)).unwrap();
        std::fs::write(self.dir.join(&generation).join("credentials"), contents).unwrap();
        let staged = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(&generation, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
    }
}

impl Drop for SecretMount {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn spawn_with_file(fake: FakeUpstream, file: &Path) -> TestApp {
    spawn_app_with(fake, &["--credentials-file", file.to_str().unwrap()]).await
}

#[actix_rt::test]
async fn a_rotation_under_load_fails_no_request() {
    let fake = FakeUpstream::start();
    fake.accept_key(NEW_ID, NEW_KEY);
    let mut mount = SecretMount::new(&profile(FAKE_SECRET_ID, FAKE_SECRET_KEY, ""));
    let app = spawn_with_file(fake, &mount.file()).await;

    // Distinct tasks, so every request is signed and sent; the rotation lands in the middle.
    let load = join_all((0..60).map(|i| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_millis(50 * i as u64)).await;
            app.task(70_000 + i).await.status
        }
    }));
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        mount.update(&profile(NEW_ID, NEW_KEY, ""));
    };
    let (statuses, ()) = futures_util::join!(load, rotate);

    assert!(
        statuses.iter().all(|s| *s == 200),
        "no failure during rotation: {statuses:?}"
    );
    let calls = app.fake.calls();
    assert!(calls.iter().all(|c| c.signature_error.is_none()));
    let signed_with = |id: &str| calls.iter().filter(|c| c.secret_id() == Some(id)).count();
    assert!(
        signed_with(FAKE_SECRET_ID) > 0,
        "the old key served before the swap"
    );
    assert!(
        signed_with(NEW_ID) > 0,
        "the new key took over within the reload interval"
    );
    // Id and key always from one read: a mix would have failed the signature check above.
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"taskgate_file_reloads_total{file="credentials",result="ok"}"#
        ),
        Some(1.0)
    );
}

#[actix_rt::test]
async fn a_broken_new_file_keeps_the_old_credentials() {
    let fake = FakeUpstream::start();
    let mut mount = SecretMount::new(&profile(FAKE_SECRET_ID, FAKE_SECRET_KEY, ""));
    let app = spawn_with_file(fake, &mount.file()).await;
    assert_eq!(app.task(1).await.status, 200);

    mount.update("[default]\nsecret_id = AKIDhalfWRITTEN\n");
    app.until_metric(
        r#"taskgate_file_reloads_total{file="credentials",result="error"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        app.task(2).await.status,
        200,
        "still signing with the old credentials"
    );
    assert_eq!(app.get("/readyz").await.status, 200);
}

#[actix_rt::test]
async fn expired_credentials_turn_readiness_off_and_expiry_is_a_metric() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fake = FakeUpstream::start();
    fake.require_token("fakeTOKENtemporary");
    let expires = format!("token = fakeTOKENtemporary\nexpires_at = {}\n", now + 2);
    let mount = SecretMount::new(&profile(FAKE_SECRET_ID, FAKE_SECRET_KEY, &expires));
    let app = spawn_with_file(fake, &mount.file()).await;

    assert_eq!(app.task(1).await.status, 200, "the token is sent");
    assert_eq!(app.get("/readyz").await.status, 200);
    let left = metric_value(&app.metrics().await, "taskgate_credentials_expiry_seconds");
    assert!(
        left.is_some_and(|left| left > 0.0 && left <= 2.0),
        "{left:?}"
    );

    let mut readiness = 200;
    for _ in 0..50 {
        readiness = app.get("/readyz").await.status;
        if readiness == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readiness, 503);
    let body = app.get("/readyz").await.json();
    assert!(body["reason"].as_str().unwrap().contains("expired"));
    let left = metric_value(&app.metrics().await, "taskgate_credentials_expiry_seconds");
    assert!(left.is_some_and(|left| left < 0.0), "{left:?}");
}

const PROFILE_ID: &str = "AKIDfakePROFILEid00000000000000000";
const PROFILE_KEY: &str = "fakePROFILEsecretKEYdoNOTuse00000";
const SDK_FILE_ID: &str = "AKIDfakeSDKFILEid00000000000000000";
const SDK_FILE_KEY: &str = "fakeSDKFILEsecretKEYdoNOTuse00000";

/// Starts the binary with `envs` only (no credentials of its own), asks for one task, and
/// returns the secret id the upstream saw in the signature (which the fake verified).
async fn signed_by(fake: &FakeUpstream, envs: &[(&str, &str)]) -> String {
    let process = spawn_process(&["--upstream-endpoint", &fake.url], envs);
    let before = fake.call_count();
    let mut answer = client()
        .get(format!("{}/tasks/{}", process.base(), 70 + before))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.body().await);
    let call = &fake.calls()[before];
    assert_eq!(call.signature_error, None);
    call.secret_id().unwrap().to_string()
}

#[actix_rt::test]
async fn credentials_are_found_where_the_tencent_sdks_find_them() {
    let fake = FakeUpstream::start();
    fake.accept_key(PROFILE_ID, PROFILE_KEY);
    fake.accept_key(SDK_FILE_ID, SDK_FILE_KEY);
    let home = SecretMount::new("");
    std::fs::create_dir_all(home.dir.join(".tencentcloud")).unwrap();
    std::fs::write(
        home.dir.join(".tencentcloud/credentials"),
        profile(PROFILE_ID, PROFILE_KEY, ""),
    )
    .unwrap();
    let sdk_file = home.dir.join("sdk-credentials");
    std::fs::write(&sdk_file, profile(SDK_FILE_ID, SDK_FILE_KEY, "")).unwrap();
    let home_dir = home.dir.to_str().unwrap();

    // Nothing else set: ~/.tencentcloud/credentials, as the SDKs' profile provider reads it.
    assert_eq!(signed_by(&fake, &[("HOME", home_dir)]).await, PROFILE_ID);
    // TENCENTCLOUD_CREDENTIALS_FILE names another profile file (the Go SDK's variable).
    assert_eq!(
        signed_by(
            &fake,
            &[
                ("HOME", home_dir),
                ("TENCENTCLOUD_CREDENTIALS_FILE", sdk_file.to_str().unwrap())
            ]
        )
        .await,
        SDK_FILE_ID
    );
    // The environment comes first, as in the SDKs' chain.
    assert_eq!(
        signed_by(
            &fake,
            &[
                ("HOME", home_dir),
                ("TENCENTCLOUD_SECRET_ID", FAKE_SECRET_ID),
                ("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY)
            ]
        )
        .await,
        FAKE_SECRET_ID
    );
}
