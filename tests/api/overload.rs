//! Under overload the budget is spent by task: more tasks are processing than the budget can
//! refresh every interval (25 tasks at 5 calls/s). Known tasks are answered at once from what is
//! known; tasks nothing is known about go first; long polls wait for budget as long as their wait.
//! Judged at the fake upstream (arrival order and counts) and in what callers receive.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::{metric_value, spawn_app_with, TestApp};

const RATE: &str = "5";
const TASKS: std::ops::Range<i64> = 70_000..70_025;

/// 25 processing tasks behind a budget of 5 calls/s, each answered once already.
async fn overloaded(extra: &[&str]) -> TestApp {
    let mut args = vec![
        "--rate-limit",
        RATE,
        "--max-queue-wait",
        "10s",
        "--processing-ttl",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let app = spawn_app_with(FakeUpstream::start(), &args).await;
    for id in TASKS {
        app.fake.script(id, Reply::Task(0));
    }
    let first = join_all(TASKS.map(|id| app.task(id))).await;
    assert!(first.iter().all(|a| a.status == 200), "all first answered");
    app
}

/// A caller that does as it is told until its task's first answer: after each 503 it waits the
/// `Retry-After` and asks again. Returns how many times it was refused; any other status fails.
async fn refusals_until_answered(app: &TestApp, id: i64) -> usize {
    let mut refused = 0;
    loop {
        let answer = app.task(id).await;
        match answer.status {
            200 => return refused,
            503 => {
                refused += 1;
                let secs: u64 = answer.header("retry-after").unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            other => panic!(
                "task {id} answered {other} after {refused} refusals: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
}

/// A gateway at 5 calls/s whose callers wait for budget 1 s at most, then are sent away.
async fn callers_who_give_up_after_a_second() -> TestApp {
    spawn_app_with(
        FakeUpstream::start(),
        &["--rate-limit", RATE, "--max-queue-wait", "1s"],
    )
    .await
}

/// One call a second, each counted `margin` beyond its window (a wide margin places the next slot
/// precisely), and a processing interval of 2 s (due again at 1.9 s; a tenth is 200 ms): task
/// `id` is answered `processing` once, and completes upstream right after. Returns the gateway
/// and when that first call reached the fake.
async fn known_task_completing_behind_one_call_a_second(
    id: i64,
    margin: &str,
) -> (TestApp, Instant) {
    let app = spawn_app_with(
        FakeUpstream::start(),
        &[
            "--rate-limit",
            "1",
            "--processing-ttl",
            "2s",
            "--rate-window-margin",
            margin,
        ],
    )
    .await;
    app.fake.script(id, Reply::Task(0));
    assert_eq!(app.task(id).await.json()["status"], "processing");
    let first_sent = app.fake.calls()[0].at;
    app.fake.rescript(id, Reply::Task(1));
    (app, first_sent)
}

#[actix_rt::test]
async fn a_known_task_is_answered_at_once_with_its_true_age_never_refused() {
    let app = overloaded(&[]).await;

    let mut stale = 0;
    for _ in 0..4 {
        // Each round wants 25 refreshes; the budget allows about one per task every 5 s.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answers = join_all(TASKS.map(|id| app.task(id))).await;
        for answer in &answers {
            assert_eq!(
                answer.status,
                200,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            assert_eq!(answer.json()["status"], "processing");
            if answer.header("x-cache") == Some("stale") {
                stale += 1;
                assert_eq!(answer.header("cache-control"), Some("max-age=0"));
                assert!(answer.header("warning").is_none(), "not a failure");
                let age: u64 = answer.header("age").unwrap().parse().unwrap();
                assert!(age <= 10, "the true age, {age} s");
            }
        }
    }
    assert!(
        stale >= 50,
        "most answers came from what was known ({stale})"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"taskgate_budget_rejections_total{reason="wait_timeout"}"#
        ),
        Some(0.0)
    );
    assert!(
        metric_value(
            &metrics,
            r#"taskgate_cache_lookups_total{result="revalidating"}"#
        )
        .unwrap()
            >= 50.0
    );
    app.fake.assert_at_most_in_any_second(5);
}

#[actix_rt::test]
async fn a_new_task_goes_before_every_refresh() {
    let app = overloaded(&[]).await;
    let first_calls = app.fake.call_count();
    // Refreshes take 3 s to answer, so once a window's worth is under way no slot frees for
    // 3 s plus the window: the new task is surely queued behind (or before) the rest by then.
    for id in TASKS {
        app.fake.rescript(
            id,
            Reply::Delay(Duration::from_secs(3), Box::new(Reply::Task(0))),
        );
    }
    // Keep refreshes queued: every task is asked again and again, far beyond the budget.
    let pollers = TASKS.map(|id| {
        let (client, base) = (app.client.clone(), app.base.clone());
        actix_rt::spawn(async move {
            for _ in 0..30 {
                let _ = client.get(format!("{base}/tasks/{id}")).send().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let _pollers: Vec<_> = pollers.collect();
    app.until_metric("taskgate_budget_queue_depth", 10.0).await;
    let rate: usize = RATE.parse().unwrap();
    app.fake
        .until_calls("a window's worth of refreshes", |calls| {
            calls.len() >= first_calls + rate
        })
        .await;
    let calls_before = app.fake.call_count();
    assert_eq!(calls_before, first_calls + rate, "the window holds no more");

    let answer = app.task(79_999).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-cache"), Some("miss"));
    let calls = app.fake.calls();
    let own = calls
        .iter()
        .position(|c| c.flow_id == Some(79_999))
        .expect("the new task was fetched");
    // The window's slots free together (their answers came together), so the new task goes out
    // in that first burst; which call of a burst reaches the fake first is up to the connections
    // (a pooled one beats a new one by a fraction of a millisecond). Queued behind the refreshes
    // (ten or more), it would come after all of them.
    let ahead: Vec<Option<i64>> = calls[calls_before..own].iter().map(|c| c.flow_id).collect();
    assert!(
        ahead.len() < rate,
        "the new task went out with the first slots to free, not after the queued refreshes: \
         {ahead:?} came first"
    );
    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            r#"taskgate_scheduled_calls_total{class="refresh"}"#
        )
        .unwrap()
            >= 1.0
    );
}

#[actix_rt::test]
async fn a_long_poll_waits_for_budget_as_long_as_its_wait() {
    // A short queue wait: a plain lookup of the 25th new task would be refused with 503.
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--rate-limit", RATE, "--max-queue-wait", "500ms"],
    )
    .await;
    for id in TASKS {
        app.fake
            .script(id, Reply::Sequence(vec![Reply::Task(0), Reply::Task(1)]));
    }

    let paths: Vec<String> = TASKS.map(|id| format!("/tasks/{id}?wait=20s")).collect();
    let answers = join_all(paths.iter().map(|path| app.get(path))).await;

    for answer in &answers {
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.json()["status"], "succeeded");
    }
    app.fake.assert_at_most_in_any_second(5);
}

#[actix_rt::test]
async fn a_plain_lookup_of_a_new_task_goes_before_a_wave_of_long_polls() {
    // 25 long polls of new tasks queue for a budget of 5 calls/s (5 s of work); a plain lookup
    // gives up after 2 s, so it must not wait behind them.
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--rate-limit", RATE, "--max-queue-wait", "2s"],
    )
    .await;
    for id in TASKS {
        app.fake.script(id, Reply::Task(1));
    }
    let polls: Vec<_> = TASKS
        .map(|id| {
            let (client, base) = (app.client.clone(), app.base.clone());
            actix_rt::spawn(async move {
                let response = client
                    .get(format!("{base}/tasks/{id}?wait=20s"))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("answered");
                response.status().as_u16()
            })
        })
        .collect();
    app.until_metric("taskgate_budget_queue_depth", 15.0).await;

    let calls_before = app.fake.call_count();
    let asked = Instant::now();
    let answer = app.task(79_998).await;

    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let calls = app.fake.calls();
    let own = calls
        .iter()
        .position(|c| c.flow_id == Some(79_998))
        .expect("the new task was fetched");
    // Slots free in bursts (a window after the answers of a burst): at most one burst of
    // already granted calls may arrive first, never the 15 or more long polls queued.
    assert!(
        own - calls_before <= 5,
        "at most the calls already granted went first, not the queued long polls ({} did)",
        own - calls_before
    );
    // And every long poll still got its answer within its wait.
    for poll in polls {
        assert_eq!(poll.await.unwrap(), 200);
    }
    app.fake.assert_at_most_in_any_second(5);
}

#[actix_rt::test]
async fn a_completion_is_seen_within_n_over_r_plus_two_seconds() {
    let app = overloaded(&[]).await;
    let finished_at = Instant::now();
    for id in TASKS {
        app.fake.script(id, Reply::Task(1));
    }

    // Every caller polls its task every 250 ms until it sees the end.
    let app = &app;
    let watchers = TASKS.map(|id| async move {
        loop {
            let answer = app.task(id).await;
            assert_eq!(answer.status, 200);
            if answer.json()["status"] == "succeeded" {
                return finished_at.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let seen = join_all(watchers).await;

    // N/R = 25 / 5 = 5 s: the stalest refresh first, so no task waits much longer than a round.
    let slowest = seen.iter().max().unwrap();
    assert!(
        *slowest <= Duration::from_secs(7),
        "last completion seen after {slowest:?}"
    );
    app.fake.assert_at_most_in_any_second(5);
}

#[actix_rt::test]
async fn a_task_whose_caller_was_sent_away_is_fetched_while_it_waits_out_retry_after() {
    // 20 new tasks at once behind 5 calls/s, callers who give up after 1 s: most are sent away
    // with a Retry-After. Their calls keep their places, so when each comes back as told its
    // answer is there (or its call is being made), and no task costs a second call.
    let app = callers_who_give_up_after_a_second().await;
    let tasks = 71_000..71_020;
    let first = join_all(tasks.clone().map(|id| app.task(id))).await;
    let sent_away: Vec<(i64, u64)> = tasks
        .clone()
        .zip(&first)
        .filter(|(_, answer)| answer.status == 503)
        .map(|(id, answer)| (id, answer.header("retry-after").unwrap().parse().unwrap()))
        .collect();
    assert!(
        sent_away.len() >= 10,
        "most were sent away: {}",
        sent_away.len()
    );

    let started = Instant::now();
    let back = join_all(sent_away.iter().map(|&(id, retry_after)| {
        let app = &app;
        async move {
            // The caller does as it was told.
            tokio::time::sleep_until(started + Duration::from_secs(retry_after)).await;
            app.task(id).await
        }
    }))
    .await;
    // Fetched while its caller was away (hit), or about to be (joined the kept call: shared);
    // never queued again from scratch (that would be a miss). On a loaded machine a call may
    // come after its caller is back and has waited its queue wait: it is then refused once more.
    let mut answered = 0;
    for answer in &back {
        match answer.status {
            200 => {
                answered += 1;
                let cache = answer.header("x-cache");
                assert!(
                    matches!(cache, Some("hit" | "shared")),
                    "not queued again at the back: {cache:?}"
                );
            }
            503 => {}
            other => panic!("answered {other}"),
        }
    }
    assert!(
        answered * 2 >= back.len(),
        "{answered} of {} answered when back",
        back.len()
    );
    assert_eq!(app.fake.call_count(), tasks.count(), "one call per task");
}

#[actix_rt::test]
async fn callers_sent_away_are_told_to_come_back_in_the_order_their_calls_are_made() {
    // 40 new tasks at once behind 5 calls/s, callers who give up after 1 s: each sent away is
    // told when its call's place comes. The calls keep the places their arrival gave them (not
    // the order in which the callers' waits happened to end), so the later a task is called
    // the later its caller was asked back.
    let app = callers_who_give_up_after_a_second().await;
    let tasks = 72_000..72_040;
    let started = Instant::now();
    let first = join_all(tasks.clone().map(|id| {
        let app = &app;
        async move { (app.task(id).await, started.elapsed()) }
    }))
    .await;
    // When each caller sent away was asked back, in milliseconds from the start.
    let due_back: std::collections::HashMap<i64, u128> = tasks
        .clone()
        .zip(&first)
        .filter(|(_, (answer, _))| answer.status == 503)
        .map(|(id, (answer, at))| {
            let secs: u64 = answer.header("retry-after").unwrap().parse().unwrap();
            (id, (*at + Duration::from_secs(secs)).as_millis())
        })
        .collect();
    assert!(
        due_back.len() >= 30,
        "most were sent away: {}",
        due_back.len()
    );
    app.fake
        .until_calls("every task called once", |calls| {
            calls.len() >= tasks.clone().count()
        })
        .await;
    let due_in_call_order: Vec<u128> = app
        .fake
        .calls()
        .iter()
        .filter_map(|call| due_back.get(&call.flow_id?).copied())
        .collect();
    // Calls of one round may reach the fake in any order, and whole seconds round each
    // caller's place: a step back of a second is in order. On a loaded machine a caller may
    // read its answer late (and so be asked back later than its place): allow two such.
    let out_of_order = due_in_call_order
        .windows(2)
        .filter(|pair| pair[0] > pair[1] + 1_500)
        .count();
    assert!(
        out_of_order <= 2,
        "asked back in the order the calls were made (ms): {due_in_call_order:?}"
    );
    assert_eq!(app.fake.call_count(), tasks.count(), "one call per task");
}

#[actix_rt::test]
async fn a_caller_told_too_early_is_told_again_from_where_its_call_stands() {
    // 40 new tasks at once behind 5 calls/s, callers who give up after 1 s, an upstream that
    // takes 900 ms to answer: the first rounds of 5 slots come 1.9 s apart (calls that open
    // their connections, and the first on open ones, hold their whole answer time), not the 1 s
    // the first estimate (made before any answer) counts on, so the first Retry-After told is
    // early. When a caller comes back too early and is sent away again, it is told from where
    // its call stands then, not "1 s" again and again until its turn comes.
    let app = callers_who_give_up_after_a_second().await;
    app.fake.default_reply(Reply::Delay(
        Duration::from_millis(900),
        Box::new(Reply::Task(0)),
    ));
    let tasks = 73_000..73_040;
    let refusals = join_all(tasks.clone().map(|id| refusals_until_answered(&app, id))).await;
    // The last calls come 8 rounds after the first, the first rounds 1.9 s apart: told "1 s"
    // each time, their callers would be refused several times over.
    let most = refusals.iter().max().copied().unwrap_or(0);
    assert!(most <= 3, "refused at most 3 times each: {refusals:?}");
    let total: usize = refusals.iter().sum();
    assert!(
        total < 2 * refusals.len(),
        "fewer than 2 refusals a caller on average: {refusals:?}"
    );
    assert_eq!(app.fake.call_count(), tasks.count(), "one call per task");
}

#[actix_rt::test]
async fn a_call_kept_for_callers_sent_away_lasts_as_long_as_its_queue_however_far_off_the_first_estimate(
) {
    // 30 new tasks at once behind 10 calls/s, callers who give up after 1 s, an upstream that
    // takes 6 s to answer and closes every connection after its answer: every call opens a
    // connection, so every slot is held for its whole answer time, and rounds of 10 calls come
    // 7 s apart where the first estimate (made before any answer) counts on 1 s. The last calls
    // are made some 14 s after the first, answered 20 s after. The calls keep their places for
    // their callers however long that takes: each caller, back as told, finds its answer or its
    // call still queued (503 again, told from where it stands), never a 504 because the fetch
    // gave up before its slot came; and each task is called once.
    let app = spawn_app_with(
        FakeUpstream::start(),
        &[
            "--rate-limit",
            "10",
            "--max-queue-wait",
            "1s",
            "--request-timeout",
            "8s",
            "--upstream-timeout",
            "7s",
        ],
    )
    .await;
    app.fake.close_after_each_answer();
    app.fake.default_reply(Reply::Delay(
        Duration::from_secs(6),
        Box::new(Reply::Task(0)),
    ));
    let tasks = 74_000..74_030;
    let refusals = join_all(tasks.clone().map(|id| refusals_until_answered(&app, id))).await;
    assert!(
        refusals.iter().filter(|&&r| r > 0).count() >= 20,
        "most callers were sent away: {refusals:?}"
    );
    assert_eq!(app.fake.call_count(), tasks.count(), "one call per task");
    app.fake.assert_at_most_in_any_second(10);
}

#[actix_rt::test]
async fn a_refresh_that_waited_for_its_slot_is_due_again_an_interval_after_it_was_asked() {
    // One call a second. A known processing task is polled as it goes stale, just as a new task
    // asks for the next slot: the new task goes first, so the refresh is made a second after it
    // was asked (its caller is answered at once from what is known). A poller comes back an
    // interval after it asked, which is less than an interval after that late send: the status
    // is due again then, not reused for a whole interval from the send. (Reused so, a poll was a
    // hit and the next refresh asked only at the poll after: under exact saturation tasks were
    // refreshed at every other poll and completions seen up to two seconds late.)
    let app = spawn_app_with(
        FakeUpstream::start(),
        &[
            "--rate-limit",
            "1",
            "--processing-ttl",
            "1s",
            "--max-queue-wait",
            "3s",
        ],
    )
    .await;
    let (known, new) = (75_000, 75_001);
    app.fake.default_reply(Reply::Task(0));
    assert_eq!(app.task(known).await.header("x-cache"), Some("miss"));
    let first_sent = app.fake.calls()[0].at;

    // Stale from 0.95 s on; the next slot comes a window after the first call.
    tokio::time::sleep_until(first_sent + Duration::from_millis(960)).await;
    let (new_answer, stale) = futures_util::join!(app.task(new), app.task(known));
    assert_eq!(new_answer.status, 200);
    assert_eq!(stale.header("x-cache"), Some("stale"), "answered at once");
    app.fake
        .until_calls("the refresh, a slot after the new task", |calls| {
            calls.iter().filter(|c| c.flow_id == Some(known)).count() == 2
        })
        .await;
    let calls = app.fake.calls();
    let order: Vec<_> = calls.iter().filter_map(|c| c.flow_id).collect();
    assert_eq!(order, [known, new, known], "the new task went first");
    let refresh_sent = calls[2].at;
    assert!(
        refresh_sent >= first_sent + Duration::from_millis(1_900),
        "the refresh waited a slot: sent {:?} after the first call",
        refresh_sent - first_sent
    );

    // Less than an interval after the refresh was sent, more than one after it was asked.
    tokio::time::sleep_until(refresh_sent + Duration::from_millis(300)).await;
    let again = app.task(known).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.header("x-cache"),
        Some("stale"),
        "due again an interval after it was asked"
    );
    assert_eq!(
        again.header("age"),
        Some("0"),
        "its age counts from the send"
    );
    app.fake
        .until_calls("the next refresh", |calls| {
            calls.iter().filter(|c| c.flow_id == Some(known)).count() == 3
        })
        .await;
    app.fake.assert_at_most_in_any_second(1);
}

#[actix_rt::test]
async fn a_poll_whose_refresh_has_its_slot_a_moment_later_waits_for_the_fresh_answer() {
    // One call a second, each counted 1.1 s beyond its window (a wide margin places the slot
    // precisely); the processing interval 2 s, so a status is due again at 1.9 s and its
    // callers wait for a refresh whose slot comes within a tenth of that (200 ms). Polled at
    // 2 s, the slot is 100 ms away: the caller is answered what the refresh learns (here, the
    // completion), not a status two seconds old with the completion left for its next poll.
    let id = 76_000;
    let (app, first_sent) = known_task_completing_behind_one_call_a_second(id, "1100ms").await;

    tokio::time::sleep_until(first_sent + Duration::from_secs(2)).await;
    let polled = Instant::now();
    let answer = app.task(id).await;

    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json()["status"],
        "succeeded",
        "the caller waited for the refresh (x-cache {:?})",
        answer.header("x-cache")
    );
    assert_eq!(answer.header("x-cache"), Some("miss"));
    let calls = app.fake.calls();
    assert_eq!(calls.len(), 2, "one refresh");
    assert!(calls[1].at >= polled, "made for this poll");
    app.fake.assert_at_most_in_any_second(1);
}

#[actix_rt::test]
async fn a_caller_waits_for_a_queued_refresh_only_once_its_slot_is_a_moment_away() {
    // One call a second, each counted 3 s beyond its window, so the slot after the first call
    // comes 4 s after it; the processing interval 2 s (due again at 1.9 s; a tenth is 200 ms).
    // Polled at 2 s, the refresh's slot is 2 s away: the last known status at once. Polled
    // again at 3.9 s, the same queued refresh is 100 ms from its slot: the caller waits for it.
    let id = 76_001;
    let (app, first_sent) = known_task_completing_behind_one_call_a_second(id, "3s").await;

    tokio::time::sleep_until(first_sent + Duration::from_secs(2)).await;
    let far = app.task(id).await;
    assert_eq!(far.json()["status"], "processing");
    assert_eq!(far.header("x-cache"), Some("stale"), "answered at once");
    assert_eq!(app.fake.call_count(), 1, "the refresh waits for its slot");

    tokio::time::sleep_until(first_sent + Duration::from_millis(3_900)).await;
    let polled = Instant::now();
    let near = app.task(id).await;
    assert_eq!(
        near.json()["status"],
        "succeeded",
        "the caller waited for the queued refresh (x-cache {:?})",
        near.header("x-cache")
    );
    assert_eq!(
        near.header("x-cache"),
        Some("shared"),
        "the refresh queued before"
    );
    let calls = app.fake.calls();
    assert_eq!(calls.len(), 2, "one refresh");
    assert!(calls[1].at >= polled, "made while the second poll waited");
    app.fake.assert_at_most_in_any_second(1);
}
