//! The happy path and the flow id contract.

use crate::fake_upstream::{FakeUpstream, Reply, FAKE_SECRET_ID};
use crate::helpers::{spawn_app, spawn_app_with};

#[actix_rt::test]
async fn a_task_is_fetched_with_a_signed_request_and_answered_as_documented() {
    let app = spawn_app().await;
    app.fake.script(123, Reply::Task(0));

    let answer = app.task(123).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["flow_id"], 123);
    assert_eq!(body["status"], "processing");
    assert_eq!(body["task_status"], 0);
    assert_eq!(body["description"], "fake task 0");
    assert!(body["request_id"].as_str().unwrap().starts_with("fake-"));

    let calls = app.fake.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        call.signature_error, None,
        "the fake accepted the signature"
    );
    assert_eq!(call.body, br#"{"FlowID":123}"#);
    assert_eq!(call.header("X-TC-Language"), Some("en-US"));
    assert!(call
        .header("X-TC-RequestClient")
        .unwrap()
        .starts_with("taskgate/"));
    assert_eq!(
        call.header("X-TC-Region"),
        None,
        "no region configured, none sent"
    );
    assert_eq!(call.header("X-TC-Token"), None);
    assert!(call
        .header("Authorization")
        .unwrap()
        .contains(&format!("Credential={FAKE_SECRET_ID}/")));
}

#[actix_rt::test]
async fn each_status_is_named() {
    let app = spawn_app().await;
    for (id, code, name) in [(1, 0, "processing"), (2, 1, "succeeded"), (3, 2, "failed")] {
        app.fake.script(id, Reply::Task(code));
        let body = app.task(id).await.json();
        assert_eq!(
            (body["status"].as_str(), body["task_status"].as_i64()),
            (Some(name), Some(code))
        );
    }
}

#[actix_rt::test]
async fn region_and_token_are_sent_when_configured() {
    let fake = FakeUpstream::start();
    fake.require_token("fakeTOKENvalue");
    let app = spawn_app_with(
        fake,
        &[
            "--region",
            "ap-guangzhou",
            "--security-token",
            "fakeTOKENvalue",
        ],
    )
    .await;

    assert_eq!(app.task(5).await.status, 200);

    let call = &app.fake.calls()[0];
    assert_eq!(call.signature_error, None);
    assert_eq!(call.header("X-TC-Region"), Some("ap-guangzhou"));
    assert_eq!(call.header("X-TC-Token"), Some("fakeTOKENvalue"));
}

#[actix_rt::test]
async fn the_largest_flow_id_is_sent_exactly() {
    let app = spawn_app().await;
    let answer = app.task(i64::MAX).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["flow_id"].as_i64(), Some(i64::MAX));
    assert_eq!(
        app.fake.calls()[0].body,
        br#"{"FlowID":9223372036854775807}"#
    );
}

#[actix_rt::test]
async fn invalid_flow_ids_get_400_and_no_upstream_call() {
    let app = spawn_app().await;
    for path in [
        "/tasks/-1",
        "/tasks/+1",
        "/tasks/%2B1",
        "/tasks/%201",
        "/tasks/1%20",
        "/tasks/1e3",
        "/tasks/0x10",
        "/tasks/1.0",
        "/tasks/abc",
        "/tasks/9223372036854775808",
        "/tasks/99999999999999999999999999",
        "/tasks/1/2",
        "/tasks/",
        "/tasks/%00",
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 400, "{path}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json"),
            "{path}"
        );
        let body = answer.json();
        assert_eq!(body["status"], 400);
        assert_eq!(
            body["type"], "urn:taskgate:problem:invalid-flow-id",
            "{path}"
        );
        assert!(body["detail"].as_str().unwrap().contains("flow_id"));
    }
    assert_eq!(
        app.fake.call_count(),
        0,
        "no upstream call for invalid input"
    );
}
