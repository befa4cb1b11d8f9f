//! The status-aware cache and coalescing: how many upstream calls callers cost.

use std::time::Duration;

use futures_util::future::join_all;

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::{spawn_app, spawn_app_with};

#[actix_rt::test]
async fn a_herd_on_one_slow_task_costs_one_call_then_none() {
    let app = spawn_app().await;
    app.fake.script(
        1_000,
        Reply::Delay(Duration::from_millis(1_500), Box::new(Reply::Task(1))),
    );

    let answers = join_all((0..500).map(|_| app.task(1_000))).await;

    assert_eq!(
        app.fake.calls_for(1_000),
        1,
        "one upstream call for 500 callers"
    );
    let first = &answers[0].body;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body, first, "every caller gets the same answer");
    }
    let misses = answers
        .iter()
        .filter(|a| a.header("x-cache") == Some("miss"))
        .count();
    let shared = answers
        .iter()
        .filter(|a| a.header("x-cache") == Some("shared"))
        .count();
    assert_eq!((misses, shared), (1, 499));

    // The task is final: from now on it costs nothing.
    for _ in 0..20 {
        let again = app.task(1_000).await;
        assert_eq!(again.header("x-cache"), Some("hit"));
        assert_eq!(&again.body, first);
    }
    assert_eq!(app.fake.calls_for(1_000), 1);
}

#[actix_rt::test]
async fn a_caller_polling_at_the_processing_interval_gets_a_fresh_status_at_every_poll() {
    let app = spawn_app().await;
    // A task that stays processing, from an upstream that takes 200 ms to answer.
    app.fake.script(
        3,
        Reply::Delay(Duration::from_millis(200), Box::new(Reply::Task(0))),
    );

    // Polling by a timer at the processing interval (1 s), as a client's ticker does.
    let start = tokio::time::Instant::now();
    let mut served = Vec::new();
    for poll in 0..4u32 {
        tokio::time::sleep_until(start + Duration::from_secs(1) * poll).await;
        let answer = app.task(3).await;
        assert_eq!(answer.status, 200);
        served.push(answer.header("x-cache").unwrap_or_default().to_owned());
    }
    // Between polls the answer is reused.
    let between = app.task(3).await;
    assert_eq!(between.header("x-cache"), Some("hit"));

    // Each poll comes an interval after the previous one was sent upstream: the status is due
    // again, whatever the upstream's answer time took off the interval. Counted from the answer,
    // it was 0.8 s old at the next poll and refreshed only every other poll.
    assert_eq!(served, ["miss"; 4], "served at each poll");
    assert_eq!(app.fake.calls_for(3), 4);
}

#[actix_rt::test]
async fn final_answers_are_immutable_and_processing_ones_short_lived() {
    let app = spawn_app().await;
    app.fake.script(1, Reply::Task(2));
    app.fake.script(2, Reply::Task(0));

    let miss = app.task(1).await;
    assert_eq!(miss.header("x-cache"), Some("miss"));
    assert_eq!(
        miss.header("cache-control"),
        Some("public, max-age=86400, immutable")
    );
    assert_eq!(miss.header("age"), Some("0"));
    let hit = app.task(1).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(
        hit.header("cache-control"),
        Some("public, max-age=86400, immutable")
    );

    let processing = app.task(2).await;
    let max_age: u64 = processing
        .header("cache-control")
        .unwrap()
        .strip_prefix("max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_age <= 1, "at most the processing interval");
    assert_eq!(app.task(2).await.header("x-cache"), Some("hit"));
    assert_eq!(app.fake.call_count(), 2);
}

#[actix_rt::test]
async fn not_found_is_remembered_briefly_and_errors_never() {
    let app = spawn_app().await;
    app.fake.script(3, Reply::Error("ResourceNotFound"));
    app.fake.script(4, Reply::Error("FailedOperation"));

    let first = app.task(3).await;
    let second = app.task(3).await;
    assert_eq!((first.status, second.status), (404, 404));
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(
        second.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(app.fake.calls_for(3), 1);

    assert_eq!(app.task(4).await.status, 502);
    assert_eq!(app.task(4).await.status, 502);
    assert_eq!(app.fake.calls_for(4), 2, "errors are not cached");
}

#[actix_rt::test]
async fn not_found_caching_can_be_disabled() {
    let app = spawn_app_with(FakeUpstream::start(), &["--not-found-ttl", "0s"]).await;
    app.fake.script(5, Reply::Error("ResourceNotFound"));
    app.task(5).await;
    app.task(5).await;
    assert_eq!(app.fake.calls_for(5), 2);
}

#[actix_rt::test]
async fn pollers_of_a_processing_task_cost_one_call_per_interval() {
    let app = spawn_app().await;
    app.fake.script(6, Reply::Task(0));
    let started = tokio::time::Instant::now();
    let until = started + Duration::from_secs(5);

    let pollers = (0..50).map(|_| async {
        let mut polls = 0;
        while tokio::time::Instant::now() < until {
            assert_eq!(app.task(6).await.status, 200);
            polls += 1;
        }
        polls
    });
    let polls: usize = join_all(pollers).await.into_iter().sum();

    let calls = app.fake.calls_for(6);
    let elapsed = started.elapsed().as_secs_f64();
    assert!(polls > 500, "the pollers really polled ({polls})");
    assert!(
        calls as f64 <= elapsed.ceil() + 1.0,
        "{calls} upstream calls for {polls} polls in {elapsed:.1}s"
    );
    assert!(
        calls >= 4,
        "the processing answer is refreshed every interval ({calls})"
    );
}

#[actix_rt::test]
async fn a_caller_that_gives_up_does_not_cancel_the_shared_fetch() {
    let app = spawn_app().await;
    app.fake.script(
        7,
        Reply::Delay(Duration::from_millis(800), Box::new(Reply::Task(1))),
    );
    let impatient = app
        .client
        .get(format!("{}/tasks/7", app.base))
        .insert_header(("X-Request-Timeout", "100ms"));
    let gave_up = app.request(impatient).await;
    assert_eq!(gave_up.status, 504);
    assert_eq!(
        gave_up.json()["type"],
        "urn:taskgate:problem:deadline-exceeded"
    );

    // The fetch carried on: this caller joins it (or finds its result) without a second call.
    let patient = app.task(7).await;
    assert_eq!(patient.status, 200);
    assert_ne!(patient.header("x-cache"), Some("miss"));
    assert_eq!(app.fake.calls_for(7), 1);
}
