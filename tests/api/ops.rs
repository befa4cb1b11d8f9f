//! Health, readiness and metrics.

use crate::fake_upstream::Reply;
use crate::helpers::spawn_app;

#[actix_rt::test]
async fn health_and_readiness_answer_without_calling_the_upstream() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    app.state.start_draining();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "not_ready");
    assert_eq!(app.fake.call_count(), 0);
}

#[actix_rt::test]
async fn metrics_count_requests_and_upstream_calls_without_flow_ids() {
    let app = spawn_app().await;
    app.fake.script(987_654_321, Reply::Task(1));
    app.fake
        .script(987_654_322, Reply::Error("ResourceNotFound"));
    assert_eq!(app.task(987_654_321).await.status, 200);
    assert_eq!(app.task(987_654_322).await.status, 404);
    assert_eq!(app.get("/tasks/x").await.status, 400);

    let answer = app.get("/metrics").await;
    assert_eq!(answer.status, 200);
    assert!(answer
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(answer.body).unwrap();
    assert!(
        text.contains(r#"taskgate_http_requests_total{route="/tasks/{flow_id}",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"taskgate_http_requests_total{route="/tasks/{flow_id}",status="404"} 1"#)
    );
    assert!(
        text.contains(r#"taskgate_http_requests_total{route="/tasks/{flow_id}",status="400"} 1"#)
    );
    assert!(text.contains(r#"taskgate_upstream_calls_total{code="none",outcome="success"} 1"#));
    assert!(text.contains(
        r#"taskgate_upstream_calls_total{code="ResourceNotFound",outcome="not_found"} 1"#
    ));
    assert!(text.contains("taskgate_upstream_call_duration_seconds_count 2"));
    assert!(
        !text.contains("987654321") && !text.contains("98765432"),
        "no flow id in labels"
    );
}
