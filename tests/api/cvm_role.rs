//! Credentials of the CVM instance role: fetched from a fake metadata service at start, renewed
//! before they expire, and a start that cannot get them fails naming the setting.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpResponse, HttpServer};

use crate::fake_upstream::FakeUpstream;
use crate::helpers::{client, metric_value, spawn_process, until_metric};

const ROLE: &str = "taskgate-role";
const FIRST_ID: &str = "AKIDfakeCVMROLEfirst000000000000000";
const FIRST_KEY: &str = "fakeCVMROLEfirstKEYdoNOTuse000000";
const FIRST_TOKEN: &str = "fakeCVMROLEfirstTOKEN";
const NEXT_ID: &str = "AKIDfakeCVMROLEnext0000000000000000";
const NEXT_KEY: &str = "fakeCVMROLEnextKEYdoNOTuse0000000";
const NEXT_TOKEN: &str = "fakeCVMROLEnextTOKEN";

/// A metadata service as CVM instances see it, serving whatever `answer` holds for `ROLE`.
struct FakeMetadata {
    url: String,
    answer: Arc<Mutex<String>>,
}

impl FakeMetadata {
    fn start() -> Self {
        let answer = Arc::new(Mutex::new(String::new()));
        let shared = Arc::clone(&answer);
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // On a thread and an actix system of its own: a test blocks its thread while a process
        // starts, and the process asks this service before it is up.
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let answer = Arc::clone(&shared);
                    App::new()
                        .route(
                            "/latest/meta-data/cam/security-credentials/",
                            web::get().to(|| async { HttpResponse::Ok().body(ROLE) }),
                        )
                        .route(
                            &format!("/latest/meta-data/cam/security-credentials/{ROLE}"),
                            web::get().to(move || {
                                let body = answer.lock().unwrap().clone();
                                async move { HttpResponse::Ok().body(body) }
                            }),
                        )
                })
                .workers(1)
                .bind("127.0.0.1:0")
                .unwrap();
                port_tx.send(server.addrs()[0].port()).unwrap();
                server.run().await
            })
        });
        let port = port_rx.recv().unwrap();
        Self {
            url: format!("http://127.0.0.1:{port}"),
            answer,
        }
    }

    fn hand_out(&self, id: &str, key: &str, token: &str, lifetime: Duration) {
        let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + lifetime;
        *self.answer.lock().unwrap() = serde_json::json!({
            "TmpSecretId": id,
            "TmpSecretKey": key,
            "Token": token,
            "ExpiredTime": expires.as_secs(),
            "Expiration": "ignored",
            "Code": "Success",
        })
        .to_string();
    }
}

/// The secret id and token of the newest call the fake upstream verified.
fn last_signer(fake: &FakeUpstream) -> (String, String) {
    let call = fake.calls().pop().expect("a call");
    assert_eq!(call.signature_error, None);
    (
        call.secret_id().unwrap().to_string(),
        call.header("x-tc-token").unwrap_or_default().to_string(),
    )
}

#[actix_rt::test]
async fn the_role_credentials_sign_and_are_renewed_before_they_expire() {
    let metadata = FakeMetadata::start();
    // Issued for 10 s: renewed at half-life, about 5 s after start.
    metadata.hand_out(FIRST_ID, FIRST_KEY, FIRST_TOKEN, Duration::from_secs(10));
    let fake = FakeUpstream::start();
    fake.accept_key(FIRST_ID, FIRST_KEY);
    fake.require_token(FIRST_TOKEN);
    fake.accept_key(NEXT_ID, NEXT_KEY);
    fake.require_token(NEXT_TOKEN);
    let process = spawn_process(
        &[
            "--upstream-endpoint",
            &fake.url,
            "--cvm-role",
            "auto",
            "--metadata-endpoint",
            &metadata.url,
        ],
        &[],
    );
    let client = client();
    let base = process.base();
    let get = |path: &str| client.get(format!("{base}{path}")).send();

    assert_eq!(get("/tasks/1").await.unwrap().status().as_u16(), 200);
    assert_eq!(
        last_signer(&fake),
        (FIRST_ID.to_string(), FIRST_TOKEN.to_string())
    );
    assert_eq!(get("/readyz").await.unwrap().status().as_u16(), 200);

    metadata.hand_out(
        NEXT_ID,
        NEXT_KEY,
        NEXT_TOKEN,
        Duration::from_secs(12 * 3600),
    );
    // Awaited by what it changes: a renewal due before the new ones were handed out (on a slow
    // machine) fetches the first ones again, and the next renewal follows within seconds.
    let metrics = until_metric(
        &client,
        &base,
        "taskgate_credentials_expiry_seconds",
        11.0 * 3600.0,
    )
    .await;
    let renewals = metric_value(
        &metrics,
        r#"taskgate_file_reloads_total{file="cvm_role",result="ok"}"#,
    );
    assert!(renewals.is_some_and(|n| n >= 1.0), "{renewals:?}");

    assert_eq!(get("/tasks/2").await.unwrap().status().as_u16(), 200);
    assert_eq!(
        last_signer(&fake),
        (NEXT_ID.to_string(), NEXT_TOKEN.to_string())
    );
    let log = process.log_text();
    for secret in [FIRST_KEY, FIRST_TOKEN, NEXT_KEY, NEXT_TOKEN] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[actix_rt::test]
async fn a_failed_renewal_keeps_the_credentials_in_force_and_is_counted() {
    let metadata = FakeMetadata::start();
    metadata.hand_out(FIRST_ID, FIRST_KEY, FIRST_TOKEN, Duration::from_secs(10));
    let fake = FakeUpstream::start();
    fake.accept_key(FIRST_ID, FIRST_KEY);
    fake.require_token(FIRST_TOKEN);
    let process = spawn_process(
        &[
            "--upstream-endpoint",
            &fake.url,
            "--cvm-role",
            ROLE,
            "--metadata-endpoint",
            &metadata.url,
        ],
        &[],
    );
    // The metadata service starts answering nonsense: renewals fail, the first credentials stay.
    *metadata.answer.lock().unwrap() = r#"{"Code":"Failure"}"#.to_string();
    let client = client();
    until_metric(
        &client,
        &process.base(),
        r#"taskgate_file_reloads_total{file="cvm_role",result="error"}"#,
        1.0,
    )
    .await;
    let mut answer = client
        .get(format!("{}/tasks/3", process.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.body().await);
    assert_eq!(last_signer(&fake).0, FIRST_ID);
}

#[actix_rt::test]
async fn no_role_bound_stops_the_start_naming_the_setting() {
    let metadata = FakeMetadata::start();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_taskgate"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cvm-role",
            "not-bound-here",
            "--metadata-endpoint",
            &metadata.url,
        ])
        .env_remove("TENCENTCLOUD_SECRET_ID")
        .env_remove("TENCENTCLOUD_SECRET_KEY");
    // Off this thread: the fake metadata service answers from this test's runtime.
    let output = actix_rt::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TASKGATE_CVM_ROLE") && stderr.contains("404"),
        "{stderr}"
    );
}
