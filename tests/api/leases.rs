//! The shared budget as leases, with real processes: partitions of one replica, scaling, and one
//! busy replica beside idle ones. Each test counts at the fake upstream, where Tencent counts.

use std::ops::Range;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::fake_upstream::FakeUpstream;
use crate::helpers::{client, metric_value, spawn_replica, until_metrics, Process};
use crate::redis_server::RedisServer;
use crate::relay::Relay;

const LIMIT: usize = 20;
/// Flow ids of replica `r` start here, so every call at the fake names the replica that made it.
const IDS_PER_REPLICA: i64 = 1_000_000;

fn ids_of(replica: usize) -> Range<i64> {
    let first = 10_000_000 + replica as i64 * IDS_PER_REPLICA;
    first..first + IDS_PER_REPLICA
}

fn replica(fake: &FakeUpstream, redis_url: &str, prefix: &str) -> Process {
    spawn_replica(
        fake,
        redis_url,
        prefix,
        &["--access-log", "false", "--max-queue-wait", "5s"],
    )
}

/// Keeps `concurrency` lookups of new tasks in flight through `replica` until `until`: more
/// demand than the whole budget, so every slot the replica may use is used.
fn saturate(replica: usize, base: String, concurrency: usize, until: Instant) {
    let next = Arc::new(AtomicI64::new(ids_of(replica).start));
    for _ in 0..concurrency {
        let (next, base) = (Arc::clone(&next), base.clone());
        actix_rt::spawn(async move {
            let client = client();
            while Instant::now() < until {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let request = client
                    .get(format!("{base}/tasks/{id}"))
                    .timeout(Duration::from_secs(10));
                if request.send().await.is_err() {
                    actix_rt::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
}

/// Calls that `replica` made which arrived at the fake in `[from, to)`.
fn calls_of(fake: &FakeUpstream, replica: usize, from: Instant, to: Instant) -> usize {
    let ids = ids_of(replica);
    fake.calls()
        .iter()
        .filter(|c| c.at >= from && c.at < to && c.flow_id.is_some_and(|id| ids.contains(&id)))
        .count()
}

/// The replica's shared mode in a metrics text.
fn mode(text: &str) -> Option<&'static str> {
    ["shared", "degraded", "quiet"].into_iter().find(|mode| {
        metric_value(text, &format!("taskgate_shared_mode{{mode=\"{mode}\"}}")) == Some(1.0)
    })
}

/// Waits (at most 15 s) until the replica's shared mode is one of `modes`.
async fn until_mode(base: &str, modes: &[&str]) {
    let what = format!("shared mode in {modes:?}");
    until_metrics(&client(), base, Duration::from_secs(15), &what, |text| {
        mode(text).is_some_and(|mode| modes.contains(&mode))
    })
    .await;
}

fn prefix() -> String {
    format!("lease{}:", fastrand::u32(..))
}

#[actix_rt::test]
async fn a_replica_cut_off_from_redis_spends_only_what_was_counted_for_it() {
    let Some(redis) = RedisServer::start_or_skip(
        "a_replica_cut_off_from_redis_spends_only_what_was_counted_for_it",
    ) else {
        return;
    };
    let fake = FakeUpstream::start();
    let relay = Relay::start(redis.port).await;
    let prefix = prefix();
    let replicas = [
        replica(&fake, &relay.url(), &prefix),
        replica(&fake, &redis.url(), &prefix),
        replica(&fake, &redis.url(), &prefix),
    ];
    let start = Instant::now();
    let end = start + Duration::from_secs(13);
    for (r, process) in replicas.iter().enumerate() {
        saturate(r, process.base(), 30, end);
    }

    actix_rt::time::sleep(Duration::from_secs(3)).await;
    relay.cut();
    let cut_at = Instant::now();
    until_mode(&replicas[0].base(), &["degraded", "quiet"]).await;
    actix_rt::time::sleep_until(cut_at + Duration::from_secs(6)).await;
    relay.restore();
    let restored_at = Instant::now();
    until_mode(&replicas[0].base(), &["shared"]).await;
    actix_rt::time::sleep_until(end).await;

    let busiest = fake.max_calls_in_any_second();
    assert!(
        busiest <= LIMIT,
        "{busiest} calls in one second at the upstream"
    );
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.signature_error.is_some())
            .count(),
        0
    );
    let cut_off = calls_of(&fake, 0, cut_at, restored_at);
    assert!(cut_off > 0, "the cut-off replica kept serving on its lease");
    let others = calls_of(&fake, 1, cut_at, restored_at) + calls_of(&fake, 2, cut_at, restored_at);
    assert!(
        others >= 6 * 10,
        "the connected replicas kept most of the budget while one was cut off: {others} calls in 6 s"
    );
    let after = calls_of(&fake, 0, restored_at + Duration::from_secs(1), end);
    assert!(after > 0, "the cut-off replica came back by itself");
}

#[actix_rt::test]
async fn scaling_from_three_to_six_replicas_under_load_keeps_the_budget() {
    let Some(redis) = RedisServer::start_or_skip(
        "scaling_from_three_to_six_replicas_under_load_keeps_the_budget",
    ) else {
        return;
    };
    let fake = FakeUpstream::start();
    let prefix = prefix();
    let start = Instant::now();
    let end = start + Duration::from_secs(11);
    let mut replicas: Vec<Process> = (0..3)
        .map(|_| replica(&fake, &redis.url(), &prefix))
        .collect();
    for (r, process) in replicas.iter().enumerate() {
        saturate(r, process.base(), 30, end);
    }
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    for r in 3..6 {
        let process = replica(&fake, &redis.url(), &prefix);
        saturate(r, process.base(), 30, end);
        replicas.push(process);
    }
    let scaled_at = Instant::now();
    actix_rt::time::sleep_until(end).await;

    let busiest = fake.max_calls_in_any_second();
    assert!(
        busiest <= LIMIT,
        "{busiest} calls in one second while scaling"
    );
    let settled = scaled_at + Duration::from_secs(3);
    for r in 3..6 {
        let calls = calls_of(&fake, r, settled, end);
        assert!(calls >= 2, "new replica {r} got its share: {calls} calls");
    }
    let all: usize = (0..6).map(|r| calls_of(&fake, r, settled, end)).sum();
    let seconds = end.duration_since(settled).as_secs_f64();
    assert!(
        all as f64 >= 0.85 * LIMIT as f64 * seconds,
        "the budget stayed in use across six replicas: {all} calls in {seconds:.1} s"
    );
}

async fn a_busy_replica_gets_the_budget(cut_off_the_idle_ones: bool) {
    let Some(redis) = RedisServer::start_or_skip("a_busy_replica_gets_the_budget") else {
        return;
    };
    let fake = FakeUpstream::start();
    let prefix = prefix();
    let relays = futures_util::future::join_all((1..5).map(|_| Relay::start(redis.port))).await;
    let busy = replica(&fake, &redis.url(), &prefix);
    let idle: Vec<Process> = relays
        .iter()
        .map(|relay| replica(&fake, &relay.url(), &prefix))
        .collect();
    for process in &idle {
        until_mode(&process.base(), &["shared"]).await;
    }
    if cut_off_the_idle_ones {
        for relay in &relays {
            relay.cut();
        }
        for process in &idle {
            until_mode(&process.base(), &["degraded", "quiet"]).await;
        }
    }

    let start = Instant::now();
    saturate(0, busy.base(), 60, start + Duration::from_secs(4));
    actix_rt::time::sleep(Duration::from_secs(4)).await;

    fake.assert_at_most_in_any_second(LIMIT);
    let second = calls_of(
        &fake,
        0,
        start + Duration::from_secs(1),
        start + Duration::from_secs(2),
    );
    assert!(
        second * 10 >= LIMIT * 9,
        "the busy replica had at least 90% of the budget within 2 s: {second} calls in its second \
         second"
    );
}

#[actix_rt::test]
async fn a_busy_replica_beside_four_idle_ones_gets_the_budget_within_two_seconds() {
    a_busy_replica_gets_the_budget(false).await;
}

#[actix_rt::test]
async fn a_busy_replica_gets_the_budget_while_the_idle_ones_are_cut_off() {
    a_busy_replica_gets_the_budget(true).await;
}

#[actix_rt::test]
async fn throttling_seen_by_one_replica_lowers_the_shared_limit_for_all() {
    let Some(redis) = RedisServer::start_or_skip(
        "throttling_seen_by_one_replica_lowers_the_shared_limit_for_all",
    ) else {
        return;
    };
    let fake = FakeUpstream::start();
    fake.script(
        77,
        crate::fake_upstream::Reply::Error("RequestLimitExceeded"),
    );
    let prefix = prefix();
    let (throttled, other) = (
        replica(&fake, &redis.url(), &prefix),
        replica(&fake, &redis.url(), &prefix),
    );
    until_mode(&other.base(), &["shared"]).await;
    let rate = |text: &str| metric_value(text, "taskgate_budget_effective_rate");
    let what = "the full limit before any throttling";
    until_metrics(
        &client(),
        &other.base(),
        Duration::from_secs(5),
        what,
        |text| rate(text) == Some(LIMIT as f64),
    )
    .await;

    // Tencent throttles a lookup on one replica; the other, which saw nothing, slows down too.
    let _ = client()
        .get(format!("{}/tasks/77", throttled.base()))
        .send()
        .await;
    let what = "the other replica's limit halved";
    until_metrics(
        &client(),
        &other.base(),
        Duration::from_secs(5),
        what,
        |text| rate(text).is_some_and(|r| r <= (LIMIT / 2) as f64),
    )
    .await;
}

#[actix_rt::test]
async fn a_replica_that_stops_gives_its_lease_back() {
    let Some(redis) = RedisServer::start_or_skip("a_replica_that_stops_gives_its_lease_back")
    else {
        return;
    };
    let fake = FakeUpstream::start();
    let prefix = prefix();
    let args = ["--access-log", "false", "--drain-delay", "0s"];
    let staying = spawn_replica(&fake, &redis.url(), &prefix, &args);
    let leaving = spawn_replica(&fake, &redis.url(), &prefix, &args);
    let end = Instant::now() + Duration::from_secs(12);
    saturate(0, staying.base(), 30, end);
    saturate(1, leaving.base(), 30, end);
    // Both busy: the budget is split between them.
    let granted = |text: &str| metric_value(text, "taskgate_lease_granted");
    let base = staying.base();
    let what = "the budget split";
    until_metrics(&client(), &base, Duration::from_secs(5), what, |text| {
        granted(text).is_some_and(|g| g <= 12.0)
    })
    .await;

    // SIGTERM: the leaving replica drains, then gives its lease back; without that, Redis would
    // count its grant and safe share for half a minute more.
    crate::helpers::sigterm(&leaving);
    assert_eq!(crate::helpers::exit_code(leaving).await, Some(0));
    let what = "the lease given back reaching the other replica";
    until_metrics(&client(), &base, Duration::from_secs(3), what, |text| {
        granted(text).is_some_and(|g| g >= LIMIT as f64)
    })
    .await;
}

#[actix_rt::test]
async fn a_replica_that_turns_busy_beside_idle_ones_grows_its_part_from_an_even_share() {
    let Some(redis) = RedisServer::start_or_skip(
        "a_replica_that_turns_busy_beside_idle_ones_grows_its_part_from_an_even_share",
    ) else {
        return;
    };
    let fake = FakeUpstream::start();
    let prefix = prefix();
    let replicas: Vec<Process> = (0..3)
        .map(|_| replica(&fake, &redis.url(), &prefix))
        .collect();
    for process in &replicas {
        until_mode(&process.base(), &["shared"]).await;
    }

    // Behind a load balancer the others' demand arrives a moment later, after this replica's
    // first renewal: taking the whole limit then would hold it for a window against them.
    let start = Instant::now();
    let end = start + Duration::from_secs(2);
    saturate(0, replicas[0].base(), 30, end);
    actix_rt::time::sleep_until(end).await;

    fake.assert_at_most_in_any_second(LIMIT);
    let first_call = fake
        .calls()
        .iter()
        .filter(|c| c.flow_id.is_some_and(|id| ids_of(0).contains(&id)))
        .map(|c| c.at)
        .min()
        .expect("the busy replica made calls");
    // Its next renewal comes at least 50 ms after the first: what it sends at once is its first
    // part, an even share of the three replicas renewing (7 of 20).
    let at_once = calls_of(&fake, 0, first_call, first_call + Duration::from_millis(20));
    assert!(
        at_once <= LIMIT.div_ceil(3),
        "the first part was an even share: {at_once} calls at once"
    );
    // Alone in wanting, it has the whole limit within its first second.
    let first_second = calls_of(&fake, 0, start, start + Duration::from_secs(1));
    assert!(
        first_second >= LIMIT - 1,
        "the busy replica grew to the whole limit: {first_second} calls in its first second"
    );
}
