//! Shared mode with real processes: three taskgate replicas, one fake upstream, one redis-server.

use std::time::Duration;

use futures_util::future::join_all;

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::{client, metric_value, spawn_replica, until_metric, Process};
use crate::redis_server::RedisServer;

fn replicas(fake: &FakeUpstream, redis: &RedisServer, extra: &[&str]) -> Vec<Process> {
    let url = redis.url();
    let prefix = format!("test{}:", fastrand::u32(..));
    let mut args = vec!["--access-log", "false"];
    args.extend_from_slice(extra);
    (0..3)
        .map(|_| spawn_replica(fake, &url, &prefix, &args))
        .collect()
}

async fn get(client: &awc::Client, url: String) -> (u16, Option<String>, Vec<u8>) {
    let mut response = client.get(url).send().await.expect("taskgate answers");
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.body().limit(1 << 20).await.unwrap().to_vec();
    (response.status().as_u16(), cache, body)
}

#[actix_rt::test]
async fn three_replicas_share_one_budget_and_one_cache() {
    let Some(redis) = RedisServer::start_or_skip("three_replicas_share_one_budget_and_one_cache")
    else {
        return;
    };
    let fake = FakeUpstream::start();
    let replicas = replicas(&fake, &redis, &["--max-queue-wait", "15s"]);
    let client = client();

    // 150 distinct tasks, round-robin through the three replicas, all at once.
    let first = join_all((0..150).map(|i| {
        let base = replicas[i % 3].base();
        get(&client, format!("{base}/tasks/{}", 50_000 + i))
    }))
    .await;

    assert!(
        first.iter().all(|(status, _, _)| *status == 200),
        "all answered"
    );
    assert_eq!(fake.call_count(), 150);
    let busiest = fake.max_calls_in_any_second();
    assert!(
        busiest <= 20,
        "{busiest} upstream calls in one second across 3 replicas"
    );

    // The same tasks through other replicas: served from the shared cache.
    let again = join_all((0..150).map(|i| {
        let base = replicas[(i + 1) % 3].base();
        get(&client, format!("{base}/tasks/{}", 50_000 + i))
    }))
    .await;
    assert!(again
        .iter()
        .all(|(status, cache, _)| *status == 200 && cache.as_deref() == Some("hit")));
    assert_eq!(
        fake.call_count(),
        150,
        "zero upstream calls the second time"
    );
}

#[actix_rt::test]
async fn a_herd_spread_over_three_replicas_costs_one_call() {
    let Some(redis) =
        RedisServer::start_or_skip("a_herd_spread_over_three_replicas_costs_one_call")
    else {
        return;
    };
    let fake = FakeUpstream::start();
    fake.script(
        7,
        Reply::Delay(Duration::from_millis(1_500), Box::new(Reply::Task(1))),
    );
    let replicas = replicas(&fake, &redis, &[]);
    let client = client();

    let answers = join_all((0..300).map(|i| {
        let base = replicas[i % 3].base();
        get(&client, format!("{base}/tasks/7"))
    }))
    .await;

    assert_eq!(
        fake.calls_for(7),
        1,
        "one upstream call for 300 callers on 3 replicas"
    );
    let body = &answers[0].2;
    assert!(answers
        .iter()
        .all(|(status, _, b)| *status == 200 && b == body));
}

#[actix_rt::test]
async fn redis_killed_and_restarted_under_load_keeps_the_budget_and_shared_mode_returns() {
    let Some(mut redis) = RedisServer::start_or_skip(
        "redis_killed_and_restarted_under_load_keeps_the_budget_and_shared_mode_returns",
    ) else {
        return;
    };
    let fake = FakeUpstream::start();
    let replicas = replicas(&fake, &redis, &["--max-queue-wait", "20s"]);
    let client = client();

    // Steady demand above the budget: 30 new tasks a second for 6 seconds, round-robin.
    let load = async {
        let mut requests = Vec::new();
        for i in 0..180usize {
            let base = replicas[i % 3].base();
            let client = client.clone();
            requests.push(actix_rt::spawn(async move {
                get(&client, format!("{base}/tasks/{}", 60_000 + i)).await.0
            }));
            actix_rt::time::sleep(Duration::from_millis(33)).await;
        }
        join_all(requests).await
    };
    let outage = async {
        actix_rt::time::sleep(Duration::from_secs(2)).await;
        redis.kill();
        actix_rt::time::sleep(Duration::from_secs(2)).await;
        redis.restart();
    };
    let (statuses, ()) = futures_util::join!(load, outage);

    let statuses: Vec<u16> = statuses.into_iter().map(|s| s.unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request succeeded: {statuses:?}"
    );
    let busiest = fake.max_calls_in_any_second();
    assert!(
        busiest <= 20,
        "{busiest} upstream calls in one second through the outage"
    );

    // Every replica returns to shared mode by itself.
    for replica in &replicas {
        let metrics = until_metric(
            &client,
            &replica.base(),
            r#"taskgate_shared_mode{mode="shared"}"#,
            1.0,
        )
        .await;
        let errors = metric_value(&metrics, "taskgate_redis_errors_total");
        assert!(
            errors.is_some_and(|n| n > 0.0),
            "the outage was noticed: {errors:?}"
        );
        let ready = get(&client, format!("{}/readyz", replica.base())).await.0;
        assert_eq!(ready, 200, "degraded is not down");
    }
    // Redis came back without its data: the replicas saw a new lease table (and held what they
    // had until the others had reported) rather than a fresh budget to spend twice.
    assert!(
        replicas
            .iter()
            .any(|r| r.log_text().contains("lease table was lost")),
        "the restart was noticed as a lost lease table"
    );
}

#[actix_rt::test]
async fn across_replicas_a_new_task_goes_before_another_replicas_refreshes() {
    let Some(redis) = RedisServer::start_or_skip(
        "across_replicas_a_new_task_goes_before_another_replicas_refreshes",
    ) else {
        return;
    };
    let fake = FakeUpstream::start();
    let replicas = replicas(
        &fake,
        &redis,
        &[
            "--rate-limit",
            "5",
            "--max-queue-wait",
            "10s",
            "--processing-ttl",
            "200ms",
        ],
    );
    let client = client();
    let (busy, other) = (replicas[0].base(), replicas[1].base());
    for id in 71_000..71_020 {
        fake.script(id, Reply::Task(0));
    }
    let first =
        join_all((71_000..71_020).map(|id| get(&client, format!("{busy}/tasks/{id}")))).await;
    assert!(first.iter().all(|(status, _, _)| *status == 200));

    // The busy replica's 20 processing tasks are asked again and again: refreshes queue there.
    let _pollers: Vec<_> = (71_000..71_020)
        .map(|id| {
            let (client, busy) = (client.clone(), busy.clone());
            actix_rt::spawn(async move {
                for _ in 0..40 {
                    let _ = client.get(format!("{busy}/tasks/{id}")).send().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    until_metric(&client, &busy, "taskgate_budget_queue_depth", 10.0).await;

    // Ten tasks nothing is known about, asked on another replica: once they wait there, they
    // take the next shared slots, ahead of the busy replica's queued refreshes.
    let new = 71_990..72_000;
    let asked: Vec<_> = new
        .clone()
        .map(|id| {
            let (client, url) = (client.clone(), format!("{other}/tasks/{id}"));
            actix_rt::spawn(async move { get(&client, url).await })
        })
        .collect();
    until_metric(&client, &other, "taskgate_budget_queue_depth", 8.0).await;
    let calls_before = fake.call_count();
    let answers = join_all(asked).await;

    assert!(answers.into_iter().all(|answer| {
        let (status, cache, _) = answer.expect("the lookup ran");
        status == 200 && cache.as_deref() == Some("miss")
    }));
    let calls = fake.calls();
    let last_new = calls
        .iter()
        .rposition(|c| c.flow_id.is_some_and(|id| new.contains(&id)))
        .expect("the new tasks were fetched");
    let refreshes_between = calls[calls_before..last_new]
        .iter()
        .filter(|c| !c.flow_id.is_some_and(|id| new.contains(&id)))
        .count();
    assert!(
        refreshes_between <= 3,
        "only refreshes already granted came first, not the busy replica's queue \
         ({refreshes_between} of {} calls)",
        last_new - calls_before + 1
    );
    fake.assert_at_most_in_any_second(5);
}

#[actix_rt::test]
async fn a_fetch_cut_off_at_its_deadline_lets_go_of_its_task_across_replicas() {
    let Some(redis) = RedisServer::start_or_skip(
        "a_fetch_cut_off_at_its_deadline_lets_go_of_its_task_across_replicas",
    ) else {
        return;
    };
    let fake = FakeUpstream::start();
    // The first attempt is throttled after 300 ms; the retry hangs, and its 2 s attempt timeout
    // would end after the fetch's 2 s deadline: the fetch is cut off mid-attempt, while it
    // holds the task. That hold lasts 4 s (queue wait 1 s + upstream timeout 2 s + a window)
    // unless its holder renews it.
    fake.script(
        73_000,
        Reply::Sequence(vec![
            Reply::Delay(
                Duration::from_millis(300),
                Box::new(Reply::Error("RequestLimitExceeded")),
            ),
            Reply::Delay(Duration::from_secs(20), Box::new(Reply::Task(1))),
        ]),
    );
    let replicas = replicas(
        &fake,
        &redis,
        &[
            "--request-timeout",
            "2s",
            "--upstream-timeout",
            "2s",
            "--max-queue-wait",
            "1s",
        ],
    );
    let client = client();
    let (first, other) = (replicas[0].base(), replicas[1].base());
    let (status, _, _) = get(&client, format!("{first}/tasks/73000")).await;
    assert_ne!(status, 200, "the first replica's fetch was cut off");
    assert_eq!(fake.calls_for(73_000), 2, "cut off in its second attempt");
    fake.rescript(73_000, Reply::Task(1));

    // The fetch cut off gave its hold back (it neither keeps renewing it nor leaves it to run
    // out): another replica fetches at once.
    let started = std::time::Instant::now();
    let answered = loop {
        let (status, _, _) = get(&client, format!("{other}/tasks/73000")).await;
        if status == 200 || started.elapsed() > Duration::from_secs(15) {
            break status == 200;
        }
    };
    assert!(
        answered,
        "another replica still waits on the cut-off fetch after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "before the hold's 4 s ran out: {:?}",
        started.elapsed()
    );
    assert_eq!(fake.calls_for(73_000), 3);
}
