//! The rate limiter, judged where Tencent judges it: arrival times at the fake upstream.

use std::time::Duration;

use futures_util::future::join_all;

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::{spawn_app_with, TestApp};

#[actix_rt::test]
async fn a_hundred_new_tasks_use_the_budget_fully_and_never_exceed_it() {
    let app = spawn_app_with(FakeUpstream::start(), &["--max-queue-wait", "10s"]).await;

    let answers = join_all((10_000..10_100).map(|id| app.task(id))).await;

    assert!(answers.iter().all(|a| a.status == 200), "all 100 answered");
    assert_eq!(app.fake.call_count(), 100);
    app.fake.assert_at_most_in_any_second(20);
    // Five rounds of 20, one window (plus margin and answer time) apart: about 4.3 s between the
    // first call and the last at the upstream. Far more would mean wasted budget.
    let calls = app.fake.calls();
    let span = calls.last().unwrap().at.duration_since(calls[0].at);
    assert!(span < Duration::from_millis(5_500), "took {span:?}");
}

#[actix_rt::test]
async fn the_excess_gets_503_with_a_retry_after_from_the_queue() {
    let app = spawn_app_with(FakeUpstream::start(), &["--max-queue-wait", "1s"]).await;

    let answers = join_all((20_000..20_100).map(|id| app.task(id))).await;

    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(ok + refused.len(), 100);
    // One window's worth fits in a 1 s wait; a request that arrived late (a loaded machine sends
    // 100 slowly) may still catch a slot of the next window before its wait ends.
    assert!((20..=40).contains(&ok), "{ok} answered");
    // A refused lookup's call keeps its place while its caller waits out the Retry-After, so
    // the answer is there when it comes back: every task is called once, within the budget.
    app.fake
        .until_calls("every task's kept call", |calls| calls.len() >= 100)
        .await;
    assert!((20_000..20_100).all(|id| app.fake.calls_for(id) == 1));
    app.fake.assert_at_most_in_any_second(20);
    let retry_after: Vec<u64> = refused
        .iter()
        .map(|a| {
            assert_eq!(a.json()["type"], "urn:taskgate:problem:budget-exhausted");
            a.header("retry-after").unwrap().parse().unwrap()
        })
        .collect();
    let (min, max) = (
        *retry_after.iter().min().unwrap(),
        *retry_after.iter().max().unwrap(),
    );
    // 80 refused while 4 windows' worth of work was queued: the advice spreads over ~1-5 s.
    assert!(min >= 1 && max <= 6, "retry-after from {min} to {max}");
    assert!(max >= min + 2, "computed from the queue, not a constant");
}

/// Five calls a second, callers who wait up to 10 s, and one worker: one pool of connections,
/// so a round of calls reuses the previous round's.
async fn five_calls_a_second_on_one_pool() -> TestApp {
    spawn_app_with(
        FakeUpstream::start(),
        &[
            "--rate-limit",
            "5",
            "--max-queue-wait",
            "10s",
            "--workers",
            "1",
        ],
    )
    .await
}

#[actix_rt::test]
async fn the_latency_every_call_pays_costs_no_budget() {
    // Every answer takes 300 ms: holding each slot until a window after its answer would use
    // it once every 1.3 s. Counted from the send plus what the call took beyond the fastest
    // call, it comes round every 1.005 s, and arrivals stay a window apart.
    let app = five_calls_a_second_on_one_pool().await;
    app.fake.default_reply(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::Task(1)),
    ));

    let answers = join_all((30_000..30_015).map(|id| app.task(id))).await;

    assert!(answers.iter().all(|a| a.status == 200), "all 15 answered");
    let mut arrivals: Vec<_> = app.fake.calls().iter().map(|c| c.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 15);
    app.fake.assert_at_most_in_any_second(5);
    // The first round opens its connections and the second has nothing to compare with yet:
    // both hold their whole answer time. From the second round on, the 300 ms are not held.
    let (second, third) = (arrivals[5], arrivals[10]);
    let round = third.duration_since(second);
    assert!(
        round < Duration::from_millis(1_150),
        "the third round {round:?} after the second, not 1.3 s"
    );
}

#[actix_rt::test]
async fn a_call_on_a_new_connection_holds_its_slot_until_its_answer() {
    // Each new connection's first request reaches the upstream 300 ms after its send. At start
    // every call opens one; were the first answer taken as the latency every call pays, the
    // others would hold their slots only 5 ms past a window, and the next round, on the open
    // connections, would arrive within a second of the first.
    let app = five_calls_a_second_on_one_pool().await;
    app.fake.delay_new_connections(Duration::from_millis(300));

    let answers = join_all((31_000..31_010).map(|id| app.task(id))).await;

    assert!(answers.iter().all(|a| a.status == 200), "all 10 answered");
    assert_eq!(app.fake.call_count(), 10);
    app.fake.assert_at_most_in_any_second(5);
}

#[actix_rt::test]
async fn a_full_queue_refuses_at_once() {
    let app = spawn_app_with(
        FakeUpstream::start(),
        &[
            "--rate-limit",
            "1",
            "--max-queue",
            "2",
            "--max-queue-wait",
            "5s",
        ],
    )
    .await;
    app.fake.default_reply(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::Task(1)),
    ));
    let started = tokio::time::Instant::now();
    let answers = join_all((30_000..30_010).map(|id| app.task(id))).await;
    let refused = answers.iter().filter(|a| a.status == 503).count();
    assert!(
        refused >= 7,
        "1 in flight + 2 queued; the rest refused ({refused})"
    );
    assert!(answers
        .iter()
        .filter(|a| a.status == 503)
        .all(|a| a.header("retry-after").is_some()));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[actix_rt::test]
async fn throttling_by_tencent_is_retried_within_the_deadline_without_a_storm() {
    // Every first attempt is throttled, whatever our rate: the budget halves down to its floor
    // (a quarter of the limit) and the retries still fit inside the callers' deadline.
    let app = spawn_app_with(FakeUpstream::start(), &["--max-queue-wait", "20s"]).await;
    for id in 40_000..40_030 {
        app.fake.script(
            id,
            Reply::Sequence(vec![Reply::Error("RequestLimitExceeded"), Reply::Task(1)]),
        );
    }
    let requests = (40_000..40_030).map(|id| {
        let request = app
            .client
            .get(format!("{}/tasks/{id}", app.base))
            .insert_header(("X-Request-Timeout", "25s"));
        app.request(request)
    });

    let answers = join_all(requests).await;

    let statuses: Vec<_> = answers
        .iter()
        .filter(|a| a.status != 200)
        .map(|a| String::from_utf8_lossy(&a.body).to_string())
        .collect();
    assert!(statuses.is_empty(), "every caller answered: {statuses:?}");
    let calls = app.fake.calls();
    assert_eq!(calls.len(), 60, "exactly one retry per throttled call");
    assert!(
        calls.iter().all(|c| c.signature_error.is_none()),
        "retries signed afresh"
    );
    app.fake.assert_at_most_in_any_second(20);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("taskgate_upstream_retries_total 30"),
        "{metrics}"
    );
}

#[actix_rt::test]
async fn persistent_throttling_is_retried_a_few_times_then_answered_with_the_back_off() {
    let app = spawn_app_with(FakeUpstream::start(), &[]).await;
    app.fake
        .script(41_000, Reply::Error("RequestLimitExceeded"));

    let answer = app.task(41_000).await;

    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.json()["type"],
        "urn:taskgate:problem:upstream-throttled"
    );
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let calls = app.fake.calls_for(41_000);
    assert!(
        (2..=4).contains(&calls),
        "a few retries, not one per back-off until the deadline ({calls} calls)"
    );
    let all = app.fake.calls();
    let span = all.last().unwrap().at.duration_since(all[0].at);
    assert!(
        span <= Duration::from_secs(6),
        "within a few seconds: {span:?}"
    );
}

#[actix_rt::test]
async fn a_caller_whose_slot_would_come_too_late_for_its_deadline_is_told_when_to_come_back() {
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--rate-limit", "1", "--max-queue-wait", "5s"],
    )
    .await;
    let slow = || Reply::Delay(Duration::from_secs(1), Box::new(Reply::Task(0)));
    app.fake.script(50_001, slow());
    app.fake.script(50_002, slow());
    // The one slot is held until a window after this answer (about 2 s from now), and the gateway
    // has learnt that answers take about a second.
    assert_eq!(app.task(50_001).await.status, 200);

    // This caller's deadline comes just after the slot frees: a call made then would be answered
    // a second too late. Its wait for budget ends in time to tell it when to come back (503),
    // where it used to be granted the slot at the last moment and time out (504) while its call
    // was in flight.
    let request = app
        .client
        .get(format!("{}/tasks/50002", app.base))
        .insert_header(("X-Request-Timeout", "1050ms"));
    let answer = app.request(request).await;
    assert_eq!(
        answer.status,
        503,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.json()["type"],
        "urn:taskgate:problem:budget-exhausted"
    );
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry_after), "retry-after {retry_after}");
    // Its call keeps its place and is made when the slot frees.
    app.fake
        .until_calls("the kept call", |calls| calls.len() >= 2)
        .await;
    assert_eq!(app.fake.calls_for(50_002), 1);
}
