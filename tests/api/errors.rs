//! One test per row of the error mapping: what the upstream does, what the caller gets.

use std::time::Duration;

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::{Answer, TestApp};

/// The mapping tests send many failing lookups to one app; the circuit breaker (tested on its
/// own) would otherwise open between rows and answer for the upstream.
async fn spawn_app() -> TestApp {
    spawn_app_with(FakeUpstream::start(), &[]).await
}

async fn spawn_app_with(fake: FakeUpstream, extra: &[&str]) -> TestApp {
    let mut args = vec!["--breaker-failures", "1000"];
    args.extend_from_slice(extra);
    crate::helpers::spawn_app_with(fake, &args).await
}

async fn answer_for(app: &TestApp, flow_id: i64, reply: Reply) -> Answer {
    app.fake.script(flow_id, reply);
    app.task(flow_id).await
}

fn assert_problem(answer: &Answer, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(
        answer.status,
        status,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    let body = answer.json();
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], format!("urn:taskgate:problem:{kind}"));
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}

#[actix_rt::test]
async fn resource_not_found_is_404_with_code_and_request_id() {
    let app = spawn_app().await;
    let answer = answer_for(&app, 10, Reply::Error("ResourceNotFound")).await;
    let body = assert_problem(&answer, 404, "task-not-found");
    assert_eq!(body["code"], "ResourceNotFound");
    assert!(body["request_id"].as_str().unwrap().starts_with("fake-"));
}

#[actix_rt::test]
async fn rejected_parameters_are_400() {
    let app = spawn_app().await;
    for (id, code) in [
        (11, "InvalidParameter"),
        (12, "InvalidParameterValue.FlowID"),
        (13, "MissingParameter"),
        (14, "UnknownParameter"),
    ] {
        let answer = answer_for(&app, id, Reply::Error(code)).await;
        let body = assert_problem(&answer, 400, "upstream-rejected-request");
        assert_eq!(body["code"], code);
    }
}

#[actix_rt::test]
async fn throttling_is_503_with_retry_after() {
    let app = spawn_app().await;
    let request = app
        .client
        .get(format!("{}/tasks/20", app.base))
        .insert_header(("X-Request-Timeout", "2s"));
    app.fake
        .script(20, Reply::Error("RequestLimitExceeded.UinLimitExceeded"));
    let answer = app.request(request).await;
    let body = assert_problem(&answer, 503, "upstream-throttled");
    assert_eq!(body["code"], "RequestLimitExceeded.UinLimitExceeded");
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
}

#[actix_rt::test]
async fn credential_and_permission_failures_are_502_not_the_callers_fault() {
    let app = spawn_app().await;
    for (id, code, kind) in [
        (30, "AuthFailure.SecretIdNotFound", "upstream-auth-failure"),
        (31, "AuthFailure.SignatureExpire", "upstream-auth-failure"),
        (32, "UnauthorizedOperation", "upstream-permission-denied"),
        (33, "OperationDenied", "upstream-permission-denied"),
    ] {
        let answer = answer_for(&app, id, Reply::Error(code)).await;
        let body = assert_problem(&answer, 502, kind);
        assert_eq!(body["code"], code);
        assert!(body["detail"]
            .as_str()
            .unwrap()
            .contains("not the caller's fault"));
    }
}

#[actix_rt::test]
async fn a_wrong_key_is_caught_by_the_upstreams_signature_check() {
    let fake = FakeUpstream::start();
    let app = spawn_app_with(fake, &["--secret-key", "fakeWRONGkey"]).await;
    let answer = app.task(40).await;
    let body = assert_problem(&answer, 502, "upstream-auth-failure");
    assert_eq!(body["code"], "AuthFailure.SignatureFailure");
    assert_eq!(
        app.fake.calls()[0].signature_error.as_deref(),
        Some("signature mismatch")
    );
}

#[actix_rt::test]
async fn upstream_trouble_codes_are_502() {
    let app = spawn_app().await;
    for (id, code) in [
        (50, "InternalError"),
        (51, "ServiceUnavailable"),
        (52, "ResourceUnavailable.NotPurchased"),
        (53, "FailedOperation"),
        (54, "SomeCodeNobodyDocumented"),
    ] {
        let answer = answer_for(&app, id, Reply::Error(code)).await;
        let body = assert_problem(&answer, 502, "upstream-error");
        assert_eq!(body["code"], code);
    }
}

#[actix_rt::test]
async fn a_non_200_status_is_502() {
    let app = spawn_app().await;
    let answer = answer_for(&app, 60, Reply::Raw(500, "internal server error")).await;
    assert_problem(&answer, 502, "upstream-bad-status");
}

#[actix_rt::test]
async fn an_error_body_is_read_whatever_the_status_line() {
    let app = spawn_app().await;
    let body =
        r#"{"Response":{"Error":{"Code":"ResourceNotFound","Message":"gone"},"RequestId":"r-9"}}"#;
    let answer = answer_for(&app, 61, Reply::Raw(500, body)).await;
    let problem = assert_problem(&answer, 404, "task-not-found");
    assert_eq!(problem["request_id"], "r-9");
}

#[actix_rt::test]
async fn a_body_that_is_not_json_is_502() {
    let app = spawn_app().await;
    let answer = answer_for(&app, 62, Reply::Raw(200, "<html>maintenance</html>")).await;
    assert_problem(&answer, 502, "upstream-malformed-answer");
}

#[actix_rt::test]
async fn a_missing_or_unknown_task_status_is_502() {
    let app = spawn_app().await;
    let missing = r#"{"Response":{"Description":"?","RequestId":"r"}}"#;
    let unknown = r#"{"Response":{"TaskStatus":7,"Description":"?","RequestId":"r"}}"#;
    assert_problem(
        &answer_for(&app, 63, Reply::Raw(200, missing)).await,
        502,
        "upstream-malformed-answer",
    );
    assert_problem(
        &answer_for(&app, 64, Reply::Raw(200, unknown)).await,
        502,
        "upstream-malformed-answer",
    );
}

#[actix_rt::test]
async fn a_closed_connection_is_502() {
    let app = spawn_app().await;
    let answer = answer_for(&app, 65, Reply::Close).await;
    assert_problem(&answer, 502, "upstream-unreachable");
}

#[actix_rt::test]
async fn a_refused_connection_is_502() {
    // A socket bound but never listening: connecting is refused, and holding it for the whole
    // test keeps the port from being handed to another test's listener (binding ":0" and
    // dropping it did not: the kernel gave the freed port to a parallel test's fake upstream).
    let bound = tokio::net::TcpSocket::new_v4().unwrap();
    bound.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = bound.local_addr().unwrap().port();
    let fake = FakeUpstream::start();
    let refused = format!("http://127.0.0.1:{port}");
    let app = spawn_app_with(fake, &["--upstream-endpoint", &refused]).await;
    assert_problem(&app.task(66).await, 502, "upstream-unreachable");
    drop(bound);
}

#[actix_rt::test]
async fn a_slow_upstream_is_504() {
    let fake = FakeUpstream::start();
    let app = spawn_app_with(fake, &["--upstream-timeout", "300ms"]).await;
    let slow = Reply::Delay(Duration::from_secs(3), Box::new(Reply::Task(1)));
    let answer = answer_for(&app, 67, slow).await;
    assert_problem(&answer, 504, "upstream-timeout");
}

#[actix_rt::test]
async fn a_slowly_dripping_body_is_cut_by_the_attempt_timeout() {
    let fake = FakeUpstream::start();
    let app = spawn_app_with(fake, &["--upstream-timeout", "500ms"]).await;
    let answer = answer_for(&app, 68, Reply::Drip(Duration::from_millis(50))).await;
    assert_problem(&answer, 504, "upstream-timeout");
}

#[actix_rt::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let app = spawn_app().await;
    let answer = app.get("/nothing/here").await;
    assert_problem(&answer, 404, "not-found");

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let request = app.client.request(
            awc::http::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}/tasks/1", app.base),
        );
        let answer = app.request(request).await;
        assert_problem(&answer, 405, "method-not-allowed");
        assert_eq!(answer.header("allow"), Some("GET, HEAD"));
    }
    let answer = app
        .request(app.client.post(format!("{}/healthz", app.base)))
        .await;
    assert_problem(&answer, 405, "method-not-allowed");
    assert_eq!(app.fake.call_count(), 0);
}
