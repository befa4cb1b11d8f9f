//! Upstream faults: retries of transient failures, the retry budget, the circuit breaker and
//! stale-if-error.

use std::time::Duration;

use futures_util::future::join_all;

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::spawn_app_with;

#[actix_rt::test]
async fn a_transient_failure_is_retried_and_the_caller_never_sees_it() {
    let fake = FakeUpstream::start();
    for (id, failure) in [
        (1, Reply::Raw(503, "busy")),
        (2, Reply::Close),
        (3, Reply::Error("InternalError")),
        (4, Reply::Error("ServiceUnavailable")),
        (
            5,
            Reply::Delay(Duration::from_secs(3), Box::new(Reply::Task(1))),
        ),
    ] {
        fake.script(id, Reply::Sequence(vec![failure, Reply::Task(1)]));
    }
    let app = spawn_app_with(fake, &["--upstream-timeout", "500ms"]).await;

    for id in 1..=5 {
        let answer = app.task(id).await;
        assert_eq!(
            answer.status,
            200,
            "flow {id}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(app.fake.calls_for(id), 2, "flow {id}: one retry");
    }
    let calls = app.fake.calls();
    assert!(
        calls.iter().all(|c| c.signature_error.is_none()),
        "retries are signed afresh"
    );
}

#[actix_rt::test]
async fn non_transient_errors_are_not_retried() {
    let app = spawn_app_with(FakeUpstream::start(), &[]).await;
    app.fake.script(10, Reply::Error("FailedOperation"));
    app.fake.script(11, Reply::Raw(200, "not json"));
    app.fake
        .script(12, Reply::Error("AuthFailure.SignatureFailure"));
    for id in 10..=12 {
        assert_eq!(app.task(id).await.status, 502);
        assert_eq!(app.fake.calls_for(id), 1, "flow {id}");
    }
}

#[actix_rt::test]
async fn an_outage_never_multiplies_upstream_traffic() {
    // A dead upstream; the breaker is set out of reach so only the retry budget limits retries.
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--breaker-failures", "10000", "--max-queue-wait", "10s"],
    )
    .await;
    app.fake.default_reply(Reply::Raw(500, "down"));

    let answers = join_all((100..160).map(|id| app.task(id))).await;

    assert!(answers.iter().all(|a| a.status == 502));
    let calls = app.fake.call_count();
    // 60 first attempts, and retries of at most 10% of calls or the 1/s floor over 10 s.
    assert!(calls <= 60 + 10, "{calls} calls for 60 lookups");
    let metrics = app.metrics().await;
    assert!(
        !metrics.contains("taskgate_upstream_retries_denied_total 0\n"),
        "denials counted"
    );
}

#[actix_rt::test]
async fn the_circuit_opens_answers_at_once_then_probes_and_closes() {
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--breaker-failures", "3", "--breaker-open", "1s"],
    )
    .await;
    app.fake.default_reply(Reply::Close);

    // One lookup makes three failing attempts: the circuit opens.
    assert_eq!(app.task(200).await.status, 502);
    let failed_calls = app.fake.call_count();
    assert_eq!(failed_calls, 3);

    let started = tokio::time::Instant::now();
    let open = app.task(201).await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "answered at once"
    );
    assert_eq!(open.status, 503);
    assert_eq!(
        open.json()["type"],
        "urn:taskgate:problem:upstream-circuit-open"
    );
    let retry_after: u64 = open.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after));
    assert_eq!(app.fake.call_count(), failed_calls, "no call while open");
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"taskgate_circuit_breaker_state{state="open"} 1"#));

    // The upstream recovers; after the open period one probe goes through and closes it.
    app.fake.default_reply(Reply::Task(1));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(app.task(202).await.status, 200);
    assert_eq!(app.task(203).await.status, 200);
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"taskgate_circuit_breaker_state{state="closed"} 1"#));
}

#[actix_rt::test]
async fn a_processing_task_is_served_stale_when_its_refresh_fails() {
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--processing-ttl", "200ms", "--stale-if-error", "5s"],
    )
    .await;
    app.fake.script(
        300,
        Reply::Sequence(vec![Reply::Task(0), Reply::Raw(500, "down")]),
    );

    let fresh = app.task(300).await;
    assert_eq!(fresh.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stale = app.task(300).await;
    assert_eq!(
        stale.status,
        200,
        "{}",
        String::from_utf8_lossy(&stale.body)
    );
    assert_eq!(stale.header("x-cache"), Some("stale"));
    assert_eq!(
        stale.header("warning"),
        Some("111 - \"Revalidation Failed\"")
    );
    assert!(stale.header("age").is_some());
    assert_eq!(stale.body, fresh.body, "the last known status");

    // Final answers need no fallback: they are served from the cache through any outage.
    app.fake.script(301, Reply::Task(1));
    assert_eq!(app.task(301).await.status, 200);
    app.fake.script(301, Reply::Raw(500, "down"));
    assert_eq!(app.task(301).await.header("x-cache"), Some("hit"));
}

#[actix_rt::test]
async fn stale_if_error_is_bounded() {
    let app = spawn_app_with(
        FakeUpstream::start(),
        &[
            "--processing-ttl",
            "100ms",
            "--stale-if-error",
            "200ms",
            "--breaker-failures",
            "1000",
        ],
    )
    .await;
    app.fake.script(
        310,
        Reply::Sequence(vec![Reply::Task(0), Reply::Raw(500, "down")]),
    );
    assert_eq!(app.task(310).await.status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        app.task(310).await.status,
        502,
        "past the stale bound: the error"
    );
}
