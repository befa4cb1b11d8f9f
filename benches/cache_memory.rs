//! The answer cache's memory and speed, measured through its own API (`bench/cache_memory.sh`
//! runs it; see BENCHMARKS.md).
//!
//! One run fills `--count` final answers (four SSM descriptions in turn, a random UUID
//! RequestId each) into a cache bounded at `--capacity` bytes, with flow ids either
//! neighbouring (1, 2, 3, ...) or spread far apart (one per block of 64 ids), and reports as one
//! JSON line: the process's RSS growth (VmRSS from /proc/self/status, allocator as shipped)
//! per answer held, the largest growth seen while filling (sampled every 10 000 answers), fill
//! time, answers held, the weighted size, and then hit throughput for `--hit-secs` on one core:
//! lookups of random held flow ids, and of one hot flow id.
//!
//!   cargo bench --bench cache_memory -- --count 1000000 --ids neighbouring
//!   cargo bench --bench cache_memory -- --count 400000 --ids spread --capacity 8388608
//!   cargo bench --bench cache_memory -- --fake-upstream 0     (prints its port, serves forever)

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use taskgate::{Answer, AnswerCache, CacheLookup, CachePolicy, Clock, FlowId, Task, TaskStatus};
use tokio::time::Instant;

/// The allocator the taskgate binary ships (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_seconds(&self) -> i64 {
        0
    }
}

/// Texts SSM repeats (the real service has a handful).
const DESCRIPTIONS: [&str; 4] = [
    "task succeeded",
    "task failed: the key is disabled",
    "The secret was rotated successfully.",
    "FailedOperation: the task was cancelled",
];

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmRSS in kB")
        * 1024
}

fn uuid(rng: &mut fastrand::Rng) -> String {
    let (a, b) = (rng.u64(..), rng.u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

struct Args {
    count: u64,
    spread: bool,
    capacity: u64,
    hit_secs: f64,
}

fn args() -> Args {
    let mut parsed = Args {
        count: 1_000_000,
        spread: false,
        capacity: 1 << 40,
        hit_secs: 3.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--count" => parsed.count = value().parse().expect("--count N"),
            "--capacity" => parsed.capacity = value().parse().expect("--capacity BYTES"),
            "--hit-secs" => parsed.hit_secs = value().parse().expect("--hit-secs S"),
            "--ids" => {
                parsed.spread = match value().as_str() {
                    "neighbouring" => false,
                    "spread" => true,
                    other => panic!("--ids neighbouring|spread, not {other}"),
                }
            }
            // What `cargo bench` adds.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    parsed
}

fn flow_id(i: u64, spread: bool) -> FlowId {
    // Spread: one answer per block of 64 ids, blocks far apart.
    let id = if spread { i * 64 * 1_009 + 17 } else { i + 1 };
    FlowId::new(id as i64).expect("in range")
}

/// Lookups per second for `secs`, of the ids `pick` chooses; panics on a miss.
async fn hits(cache: &AnswerCache, secs: f64, mut pick: impl FnMut() -> FlowId) -> f64 {
    let started = StdInstant::now();
    let mut done = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        for _ in 0..1000 {
            let flow_id = pick();
            match cache.lookup(flow_id, Instant::now()).await {
                CacheLookup::Fresh(answer) => {
                    std::hint::black_box(&answer.body);
                }
                _ => panic!("{flow_id} should be a hit"),
            }
        }
        done += 1000;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

async fn run(args: Args) {
    let policy = CachePolicy {
        final_ttl: Duration::from_secs(86_400),
        processing_ttl: Duration::from_secs(1),
        not_found_ttl: Duration::from_secs(2),
        stale_if_error: Duration::from_secs(300),
    };
    let mut rng = fastrand::Rng::with_seed(12);
    let cache = AnswerCache::new(args.capacity, policy, Arc::new(RealClock));
    cache.run_pending_tasks().await;
    let before = rss_bytes();
    let mut peak = 0u64;
    let started = StdInstant::now();
    for i in 0..args.count {
        let task = Task {
            flow_id: flow_id(i, args.spread),
            status: if i % 5 == 4 {
                TaskStatus::Failed
            } else {
                TaskStatus::Succeeded
            },
            description: DESCRIPTIONS[(i % 4) as usize].to_string(),
            request_id: uuid(&mut rng),
        };
        let answer = Answer::from_task(&task, Instant::now(), policy.final_ttl, Duration::ZERO);
        cache.insert(task.flow_id, Arc::new(answer)).await;
        if i % 10_000 == 9_999 {
            peak = peak.max(rss_bytes().saturating_sub(before));
        }
    }
    cache.run_pending_tasks().await;
    let fill_secs = started.elapsed().as_secs_f64();
    let grown = rss_bytes().saturating_sub(before);
    let peak = peak.max(grown);
    let held = cache.entry_count();
    // Hits: random held ids (the last ones filled, which a bounded cache still holds), one hot.
    let mut held_ids: Vec<FlowId> = Vec::new();
    for i in args.count.saturating_sub(held)..args.count {
        let id = flow_id(i, args.spread);
        if matches!(
            cache.lookup(id, Instant::now()).await,
            CacheLookup::Fresh(_)
        ) {
            held_ids.push(id);
        }
    }
    let spread_hits = if held_ids.is_empty() {
        0.0
    } else {
        hits(&cache, args.hit_secs, || {
            held_ids[rng.usize(..held_ids.len())]
        })
        .await
    };
    let hot = held_ids.last().copied();
    let hot_hits = match hot {
        Some(hot) => hits(&cache, args.hit_secs, || hot).await,
        None => 0.0,
    };
    println!(
        "{{\"ids\":\"{}\",\"count\":{},\"capacity\":{},\"held\":{},\"hittable\":{},\"moka_entries\":{},\
\"weighted_size\":{},\"rss_before\":{},\"rss_growth\":{},\"rss_growth_peak\":{},\"rss_per_answer\":{:.1},\
\"weight_per_answer\":{:.1},\"fill_secs\":{:.3},\"hits_per_sec_spread\":{:.0},\"hits_per_sec_hot\":{:.0}}}",
        if args.spread { "spread" } else { "neighbouring" },
        args.count,
        args.capacity,
        held,
        held_ids.len(),
        cache.moka_entry_count(),
        cache.weighted_size(),
        before,
        grown,
        peak,
        grown as f64 / held.max(1) as f64,
        cache.weighted_size() as f64 / held.max(1) as f64,
        fill_secs,
        spread_hits,
        hot_hits,
    );
}

/// `--fake-upstream PORT`: a fast loopback stand-in for SSM (any request: a final answer with a
/// random UUID RequestId, keep-alive), so HTTP-driven fills are not held back by the fake.
async fn fake_upstream(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the fake upstream");
    println!("{}", listener.local_addr().expect("an address").port());
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::new();
            let mut buffer = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                // One request: its head, then Content-Length bytes of body.
                let (head_end, length) = loop {
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                };
                while buffer.len() < head_end + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                buffer.drain(..head_end + length);
                let body = format!(
                    r#"{{"Response":{{"TaskStatus":1,"Description":"task succeeded","RequestId":"{}"}}}}"#,
                    uuid(&mut rng)
                );
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn main() {
    let mut raw = std::env::args().skip(1);
    if raw.next().as_deref() == Some("--fake-upstream") {
        let port = raw.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(fake_upstream(port));
    }
    let args = args();
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(run(args));
}
