//! Long polls: `?wait=` and `Prefer: wait`, one poller per task, bounded, answered on shutdown.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::fake_upstream::{FakeUpstream, Reply, FAKE_SECRET_ID, FAKE_SECRET_KEY};
use crate::helpers::{
    client, exit_code, metric_value, sigterm, spawn_app_with, spawn_process, spawn_replica,
    until_metric,
};
use crate::redis_server::RedisServer;

#[actix_rt::test]
async fn two_hundred_waiters_share_one_poller_and_hear_the_end_at_once() {
    let app = spawn_app_with(FakeUpstream::start(), &["--processing-ttl", "300ms"]).await;
    app.fake.script(1, Reply::Task(0));

    let waiters = join_all((0..200).map(|_| async {
        let answer = app.get("/tasks/1?wait=30s").await;
        (answer, Instant::now())
    }));
    let the_task_ends = async {
        // Every request held (the gauge says so), however slowly this machine sent them.
        let metrics = app.until_metric("taskgate_waiters", 200.0).await;
        assert_eq!(metric_value(&metrics, "taskgate_pollers"), Some(1.0));
        app.fake.rescript(1, Reply::Task(1))
    };
    let (answers, calls_while_processing) = futures_util::join!(waiters, the_task_ends);

    let calls = app.fake.calls();
    assert_eq!(
        calls.len(),
        calls_while_processing + 1,
        "one call learned the end for 200 waiters"
    );
    let learned_at = calls.last().unwrap().at;
    for (answer, received_at) in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["status"], "succeeded");
        // Woken by the answer, not by their own next poll (300 ms) or their wait's end (30 s).
        let delay = received_at.saturating_duration_since(learned_at);
        assert!(
            delay < Duration::from_millis(300),
            "answered {delay:?} after the upstream said so"
        );
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, r#"taskgate_waits_total{ended="completed"}"#),
        Some(200.0)
    );
    assert_eq!(metric_value(&metrics, "taskgate_waiters"), Some(0.0));
    assert_eq!(metric_value(&metrics, "taskgate_pollers"), Some(0.0));
}

#[actix_rt::test]
async fn a_task_that_never_finishes_answers_processing_when_the_wait_ends() {
    let app = spawn_app_with(FakeUpstream::start(), &["--processing-ttl", "200ms"]).await;
    app.fake.script(2, Reply::Task(0));
    let started = Instant::now();

    let answer = app.get("/tasks/2?wait=1s").await;

    let held = started.elapsed();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["status"], "processing");
    assert!(
        held >= Duration::from_millis(950) && held < Duration::from_secs(3),
        "{held:?}"
    );
    let calls = app.fake.calls_for(2);
    assert!(
        (3..=7).contains(&calls),
        "about one call per 200 ms interval: {calls}"
    );
}

#[actix_rt::test]
async fn prefer_wait_is_applied_and_capped_and_bad_values_are_400() {
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--processing-ttl", "200ms", "--max-wait", "1s"],
    )
    .await;
    app.fake.script(3, Reply::Task(0));
    let started = Instant::now();
    let answer = app
        .request(
            app.client
                .get(format!("{}/tasks/3", app.base))
                .insert_header(("Prefer", "respond-async, wait=30")),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("preference-applied"),
        Some("wait=1"),
        "capped to TASKGATE_MAX_WAIT"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    for path in ["/tasks/3?wait=soon", "/tasks/3?wait=-1", "/tasks/3?wait=1h"] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 400, "{path}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json")
        );
    }
    // RFC 7240: a preference the server cannot understand is ignored.
    let ignored = app
        .request(
            app.client
                .get(format!("{}/tasks/3", app.base))
                .insert_header(("Prefer", "wait=a-while")),
        )
        .await;
    assert_eq!(ignored.status, 200);
    assert_eq!(ignored.header("preference-applied"), None);
}

#[actix_rt::test]
async fn final_tasks_answer_at_once_and_waiters_are_bounded() {
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--processing-ttl", "200ms", "--max-waiters", "2"],
    )
    .await;
    app.fake.script(4, Reply::Task(1));
    let started = Instant::now();
    assert_eq!(
        app.get("/tasks/4?wait=30s").await.json()["status"],
        "succeeded"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a final task does not wait"
    );

    app.fake.script(5, Reply::Task(0));
    let started = Instant::now();
    let answers = join_all((0..3).map(|_| async {
        let answer = app.get("/tasks/5?wait=1s").await;
        (answer.status, started.elapsed())
    }))
    .await;
    assert!(answers.iter().all(|(status, _)| *status == 200));
    let quick = answers
        .iter()
        .filter(|(_, t)| *t < Duration::from_millis(500))
        .count();
    assert_eq!(
        quick, 1,
        "the third waiter is answered at once: {answers:?}"
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"taskgate_waits_total{ended="overflow"} 1"#));
}

#[actix_rt::test]
async fn sigterm_answers_every_waiter_at_once() {
    let fake = FakeUpstream::start();
    fake.script(6, Reply::Task(0));
    let process = spawn_process(
        &[
            "--upstream-endpoint",
            &fake.url,
            "--drain-delay",
            "3s",
            "--processing-ttl",
            "200ms",
        ],
        &[
            ("TENCENTCLOUD_SECRET_ID", FAKE_SECRET_ID),
            ("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY),
        ],
    );
    let client = client();
    let base = process.base();
    let waiters = (0..20).map(|_| {
        let client = client.clone();
        let url = format!("{base}/tasks/6?wait=60s");
        actix_rt::spawn(async move {
            let mut response = client.get(url).send().await.unwrap();
            let body = response.body().await.unwrap();
            (response.status().as_u16(), body, Instant::now())
        })
    });
    let waiters: Vec<_> = waiters.collect();
    // Wait until every request is held (the gauge says so), then signal.
    until_metric(&client, &base, "taskgate_waiters", 20.0).await;
    let signalled = Instant::now();
    sigterm(&process);

    for waiter in join_all(waiters).await {
        let (status, body, at) = waiter.unwrap();
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("processing"));
        let after = at.saturating_duration_since(signalled);
        assert!(
            after < Duration::from_secs(1),
            "answered {after:?} after SIGTERM, not after the drain"
        );
    }
    assert_eq!(exit_code(process).await, Some(0));
}

#[actix_rt::test]
async fn waiters_on_two_replicas_share_one_poller() {
    let Some(redis) = RedisServer::start_or_skip("waiters_on_two_replicas_share_one_poller") else {
        return;
    };
    let fake = FakeUpstream::start();
    fake.script(7, Reply::Task(0));
    let url = redis.url();
    let prefix = format!("waits{}:", fastrand::u32(..));
    let interval = Duration::from_millis(300);
    let replicas: Vec<_> = (0..2)
        .map(|_| spawn_replica(&fake, &url, &prefix, &["--processing-ttl", "300ms"]))
        .collect();
    let client = client();

    let waiters = join_all((0..100).map(|i| {
        let url = format!("{}/tasks/7?wait=30s", replicas[i % 2].base());
        let client = client.clone();
        async move {
            let mut response = client.get(url).send().await.unwrap();
            let body = response.body().await.unwrap();
            (response.status().as_u16(), body)
        }
    }));
    let polls_then_the_end = async {
        for replica in &replicas {
            until_metric(&client, &replica.base(), "taskgate_waiters", 50.0).await;
        }
        // Both replicas hold waiters and run a poller; the lease lets one of them call. Two
        // callers would put two calls in each interval, so six calls would span about three.
        let held = fake.calls_for(7);
        fake.until_calls("six more polls of task 7", |calls| {
            calls.iter().filter(|c| c.flow_id == Some(7)).count() >= held + 6
        })
        .await;
        fake.script(7, Reply::Task(1));
        fake.calls()[held..held + 6]
            .iter()
            .map(|call| call.at)
            .collect::<Vec<_>>()
    };
    let (answers, polls) = futures_util::join!(waiters, polls_then_the_end);

    assert!(answers.iter().all(
        |(status, body)| *status == 200 && String::from_utf8_lossy(body).contains("succeeded")
    ));
    let span = polls[5].duration_since(polls[0]);
    assert!(
        span >= interval * 5 * 9 / 10,
        "6 polls in {span:?}: more than one poller across the replicas"
    );
}
