//! Lifecycle and observability as an operator sees them, on the real binary: graceful shutdown,
//! request ids end to end, JSON log lines.

use std::time::Duration;

use crate::fake_upstream::{FakeUpstream, Reply, FAKE_SECRET_ID, FAKE_SECRET_KEY};
use crate::helpers::{client, exit_code, sigterm, spawn_app, spawn_process};

fn credentials() -> [(&'static str, &'static str); 2] {
    [
        ("TENCENTCLOUD_SECRET_ID", FAKE_SECRET_ID),
        ("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY),
    ]
}

#[actix_rt::test]
async fn sigterm_flips_readiness_drains_finishes_in_flight_work_and_exits_0() {
    let fake = FakeUpstream::start();
    fake.script(
        1,
        Reply::Delay(Duration::from_millis(1_500), Box::new(Reply::Task(1))),
    );
    let process = spawn_process(
        &[
            "--upstream-endpoint",
            &fake.url,
            "--drain-delay",
            "1s",
            "--shutdown-timeout",
            "10s",
        ],
        &credentials(),
    );
    let base = process.base();
    let client = client();
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // A slow lookup is in flight when the signal arrives.
    let in_flight = actix_rt::spawn({
        let client = client.clone();
        let base = base.clone();
        async move {
            let mut response = client.get(format!("{base}/tasks/1")).send().await.unwrap();
            (response.status().as_u16(), response.body().await.unwrap())
        }
    });
    fake.until_calls("the lookup's upstream call", |calls| {
        calls.iter().any(|c| c.flow_id == Some(1))
    })
    .await;
    sigterm(&process);

    // Readiness turns 503 at once; the listener still serves during the drain delay.
    let mut readiness = 200;
    for _ in 0..100 {
        readiness = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if readiness == 503 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(readiness, 503);
    let during_drain = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(during_drain.status().as_u16(), 200);

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight completed");
    assert!(String::from_utf8_lossy(&body).contains("succeeded"));

    assert_eq!(exit_code(process).await, Some(0));
}

#[actix_rt::test]
async fn a_request_id_travels_from_caller_to_upstream_and_back() {
    let app = spawn_app().await;
    let request = app
        .client
        .get(format!("{}/tasks/5", app.base))
        .insert_header(("X-Request-Id", "checkout-7f3a:retry.1"));
    let answer = app.request(request).await;
    assert_eq!(answer.header("x-request-id"), Some("checkout-7f3a:retry.1"));
    assert_eq!(
        app.fake.calls()[0].header("X-TC-TraceId"),
        Some("checkout-7f3a:retry.1")
    );

    // An id that is not sane is replaced, never echoed.
    let request = app
        .client
        .get(format!("{}/tasks/6", app.base))
        .insert_header(("X-Request-Id", "<script>alert(1)</script>"));
    let answer = app.request(request).await;
    let generated = answer.header("x-request-id").unwrap();
    assert_eq!(generated.len(), 32);
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(app.fake.calls()[1].header("X-TC-TraceId"), Some(generated));

    // Errors carry one too.
    let answer = app.get("/tasks/not-a-number").await;
    assert!(answer.header("x-request-id").is_some());
}

#[actix_rt::test]
async fn json_log_lines_parse_and_the_access_log_says_what_happened() {
    let fake = FakeUpstream::start();
    fake.script(8, Reply::Task(1));
    let process = spawn_process(
        &["--upstream-endpoint", &fake.url, "--log-format", "json"],
        &credentials(),
    );
    let client = client();
    let mut response = client
        .get(format!("{}/tasks/8", process.base()))
        .insert_header(("X-Request-Id", "json-log-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let _ = response.body().await;
    let _ = client
        .get(format!("{}/tasks/x", process.base()))
        .send()
        .await
        .unwrap();

    // The access line is written off the request path; wait for it to appear.
    let mut access = None;
    for _ in 0..200 {
        access = process
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|line| line.contains("json-log-test"))
            .cloned();
        if access.is_some() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let access: serde_json::Value = serde_json::from_str(&access.expect("an access line")).unwrap();
    assert_eq!(access["target"], "taskgate::access");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["route"], "/tasks/{flow_id}");
    assert_eq!(access["status"], 200);
    assert_eq!(access["served"], "miss");
    assert!(access["upstream_request_id"]
        .as_str()
        .unwrap()
        .starts_with("fake-"));
    assert!(access["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(access["ts"].is_string() && access["level"] == "INFO");

    for line in process.log.lock().unwrap().iter() {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(parsed["msg"].is_string(), "{line}");
        assert!(
            !line.contains("/tasks/8") && !line.contains("\"flow_id\""),
            "no flow id in logs: {line}"
        );
    }
}
