//! A fake Tencent Cloud SSM for black-box tests: a raw HTTP/1.1 server on `127.0.0.1:0` that
//! checks every request as Tencent does, with its own implementation of TC3-HMAC-SHA256 (written
//! from the spec, independent of `taskgate::signing`), counts calls with their arrival times, and
//! answers from a per-flow-id script: tasks, error codes, bad statuses, garbage, closed
//! connections, slow and dripping answers, optionally over TLS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

pub const FAKE_SECRET_ID: &str = "AKIDfakeTESTid0000000000000000000000";
pub const FAKE_SECRET_KEY: &str = "fakeTESTsecretKEYdoNOTuse00000000";

/// What the fake answers for a flow id.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `{"Response":{"TaskStatus":..}}`.
    Task(i64),
    /// `{"Response":{"Error":{"Code":..}}}` with HTTP 200, as Tencent does.
    Error(&'static str),
    /// Any status and body.
    Raw(u16, &'static str),
    /// Close the connection without answering.
    Close,
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// Send the headers and the first bytes, then drip the rest slowly.
    Drip(Duration),
    /// Successive calls get successive replies; the last one repeats.
    Sequence(Vec<Reply>),
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub flow_id: Option<i64>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Why the fake rejected the signature, if it did.
    pub signature_error: Option<String>,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The secret id this call was signed with (from `Authorization: … Credential=<id>/…`).
    pub fn secret_id(&self) -> Option<&str> {
        let credential = self.header("authorization")?.split("Credential=").nth(1)?;
        credential.split('/').next()
    }
}

#[derive(Default)]
struct Shared {
    calls: Vec<Call>,
    script: HashMap<i64, Reply>,
    served: HashMap<i64, usize>,
    default: Option<Reply>,
    /// Session tokens of temporary credentials; when any is set, each request must carry one.
    tokens: Vec<String>,
    /// Accepted (SecretId, SecretKey) pairs.
    keys: Vec<(String, String)>,
    /// Seconds the fake's clock is ahead of the real one (negative: behind).
    clock_offset: i64,
    /// TCP connections accepted, TLS handshakes that failed included.
    connections: usize,
    /// How long a new connection's first request takes to arrive (a handshake over a long way).
    handshake: Duration,
    /// Every answer says `Connection: close` and ends its connection (no keep-alive).
    close_after_answer: bool,
    /// Told the number of calls after every call, for `until_calls`.
    arrivals: tokio::sync::watch::Sender<usize>,
}

/// A running fake; dropped with the test.
#[derive(Clone)]
pub struct FakeUpstream {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
}

impl FakeUpstream {
    /// A plain-HTTP fake on its own thread and runtime, independent of the test's.
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    pub fn start_with_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            default: Some(Reply::Task(1)),
            keys: vec![(FAKE_SECRET_ID.to_string(), FAKE_SECRET_KEY.to_string())],
            ..Shared::default()
        }));
        let tls_enabled = tls.is_some();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let handshake = {
                        let mut shared = thread_shared.lock().unwrap();
                        shared.connections += 1;
                        shared.handshake
                    };
                    let shared = Arc::clone(&thread_shared);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(handshake).await;
                        match tls {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    serve(stream, shared).await;
                                }
                            }
                            None => serve(stream, shared).await,
                        }
                    });
                }
            });
        });
        let port = rx.recv().unwrap();
        let scheme = if tls_enabled { "https" } else { "http" };
        Self {
            url: format!("{scheme}://127.0.0.1:{port}"),
            shared,
        }
    }

    /// TCP connections accepted so far (each failed TLS handshake is one).
    pub fn connections(&self) -> usize {
        self.shared.lock().unwrap().connections
    }

    /// Every new connection's first request arrives `delay` after it was sent, as over a long
    /// way where opening a connection takes round trips before the request can go out.
    pub fn delay_new_connections(&self, delay: Duration) {
        self.shared.lock().unwrap().handshake = delay;
    }

    /// Ends every connection after its answer (`Connection: close`), as a server or proxy on the
    /// way without keep-alive does: every call opens a connection of its own.
    pub fn close_after_each_answer(&self) {
        self.shared.lock().unwrap().close_after_answer = true;
    }

    /// Scripts the reply for one flow id.
    pub fn script(&self, flow_id: i64, reply: Reply) {
        let mut shared = self.shared.lock().unwrap();
        shared.script.insert(flow_id, reply);
        shared.served.remove(&flow_id);
    }

    /// Scripts a new reply and returns how many calls for `flow_id` came before it, in one step,
    /// so that no call can fall between the count and the change.
    pub fn rescript(&self, flow_id: i64, reply: Reply) -> usize {
        let mut shared = self.shared.lock().unwrap();
        shared.script.insert(flow_id, reply);
        shared.served.remove(&flow_id);
        shared
            .calls
            .iter()
            .filter(|c| c.flow_id == Some(flow_id))
            .count()
    }

    /// The reply for every flow id without a script (default: succeeded).
    pub fn default_reply(&self, reply: Reply) {
        self.shared.lock().unwrap().default = Some(reply);
    }

    /// Also accepts this key (as Tencent does while both keys of a rotation are enabled).
    pub fn accept_key(&self, secret_id: &str, secret_key: &str) {
        self.shared
            .lock()
            .unwrap()
            .keys
            .push((secret_id.to_string(), secret_key.to_string()));
    }

    /// Runs the fake's clock `seconds` ahead of the real one (its Date header and expiry check).
    pub fn set_clock_offset(&self, seconds: i64) {
        self.shared.lock().unwrap().clock_offset = seconds;
    }

    /// Temporary credentials: requests must carry this `X-TC-Token` (or another one required).
    pub fn require_token(&self, token: &str) {
        self.shared.lock().unwrap().tokens.push(token.to_string());
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().unwrap().calls.clone()
    }

    /// Waits until `reached` holds for the calls so far, woken by each call as it arrives (no
    /// polling). Panics after 30 s, saying what was awaited (`what`).
    pub async fn until_calls(&self, what: &str, reached: impl Fn(&[Call]) -> bool) {
        let mut arrivals = self.shared.lock().unwrap().arrivals.subscribe();
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            if reached(&self.shared.lock().unwrap().calls) {
                return;
            }
            let arrived = tokio::time::timeout_at(give_up, arrivals.changed()).await;
            assert!(matches!(arrived, Ok(Ok(()))), "{what}: not within 30 s");
        }
    }

    pub fn call_count(&self) -> usize {
        self.shared.lock().unwrap().calls.len()
    }

    pub fn calls_for(&self, flow_id: i64) -> usize {
        self.shared
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.flow_id == Some(flow_id))
            .count()
    }

    /// Asserts that no one-second window at the upstream saw more than `limit` calls.
    pub fn assert_at_most_in_any_second(&self, limit: usize) {
        let most = self.max_calls_in_any_second();
        assert!(
            most <= limit,
            "at most {limit} calls in any second at the upstream, saw {most}"
        );
    }

    /// The largest number of calls that arrived within any one-second window.
    pub fn max_calls_in_any_second(&self) -> usize {
        let mut times: Vec<Instant> = self.calls().iter().map(|c| c.at).collect();
        times.sort();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}

struct Request {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let _request_line = lines.next()?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            let body_start = end + 4;
            while buf.len() < body_start + length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[body_start..body_start + length].to_vec();
            buf.drain(..body_start + length);
            return Some(Request { headers, body });
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: Arc<Mutex<Shared>>) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        let at = Instant::now();
        let flow_id = serde_json::from_slice::<serde_json::Value>(&request.body)
            .ok()
            .and_then(|v| v["FlowID"].as_i64());
        let (reply, now, close) = {
            let mut shared = shared.lock().unwrap();
            let now = unix_now() + shared.clock_offset;
            let signature_error = verify(&request, &shared, now).err();
            let reply = match (signature_error.as_deref(), flow_id) {
                (Some("signature expired"), _) => Reply::Error("AuthFailure.SignatureExpire"),
                (Some("unknown secret id"), _) => Reply::Error("AuthFailure.SecretIdNotFound"),
                (Some(_), _) => Reply::Error("AuthFailure.SignatureFailure"),
                (None, None) => Reply::Error("InvalidParameter"),
                (None, Some(id)) => {
                    let served = shared.served.entry(id).or_insert(0);
                    let index = *served;
                    *served += 1;
                    match shared.script.get(&id).or(shared.default.as_ref()) {
                        Some(Reply::Sequence(list)) => list[index.min(list.len() - 1)].clone(),
                        Some(reply) => reply.clone(),
                        None => Reply::Task(1),
                    }
                }
            };
            shared.calls.push(Call {
                at,
                flow_id,
                headers: request.headers.clone(),
                body: request.body.clone(),
                signature_error: signature_error.clone(),
            });
            shared.arrivals.send_replace(shared.calls.len());
            (reply, now, shared.close_after_answer)
        };
        if !answer(&mut stream, reply, now, close).await || close {
            return;
        }
    }
}

fn request_id() -> String {
    format!("fake-{:016x}", fastrand::u64(..))
}

/// Writes one answer (saying `Connection: close` when `close`); false when the connection must
/// end.
async fn answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reply: Reply,
    now: i64,
    close: bool,
) -> bool {
    let date = actix_web::http::header::HttpDate::from(
        std::time::UNIX_EPOCH + Duration::from_secs(now.max(0) as u64),
    );
    let mut reply = reply;
    while let Reply::Delay(delay, next) = reply {
        tokio::time::sleep(delay).await;
        reply = *next;
    }
    let (status, body) = match reply {
        Reply::Task(status) => (
            200,
            format!(
                r#"{{"Response":{{"TaskStatus":{status},"Description":"fake task {status}","RequestId":"{}"}}}}"#,
                request_id()
            ),
        ),
        Reply::Error(code) => (
            200,
            format!(
                r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"fake {code}"}},"RequestId":"{}"}}}}"#,
                request_id()
            ),
        ),
        Reply::Raw(status, body) => (status, body.to_string()),
        Reply::Close => return false,
        Reply::Drip(every) => {
            let body = r#"{"Response":{"TaskStatus":1,"Description":"drip","RequestId":"x"}}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            for byte in body.bytes() {
                tokio::time::sleep(every).await;
                if stream.write_all(&[byte]).await.is_err() {
                    return false;
                }
                let _ = stream.flush().await;
            }
            return true;
        }
        Reply::Delay(..) | Reply::Sequence(_) => unreachable!("resolved above"),
    };
    let connection = if close { "Connection: close\r\n" } else { "" };
    let response = format!(
        "HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\nDate: {date}\r\n{connection}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await.is_ok() && stream.flush().await.is_ok()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Checks a request the way Tencent's API gateway does, at the fake's `now`.
fn verify(request: &Request, shared: &Shared, now: i64) -> Result<(), String> {
    let get = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let need = |name: &str| get(name).ok_or(format!("missing header {name}"));
    if need("X-TC-Action")? != "DescribeAsyncRequestInfo" {
        return Err("wrong action".into());
    }
    if need("X-TC-Version")? != "2019-09-23" {
        return Err("wrong version".into());
    }
    let content_type = need("Content-Type")?;
    if content_type != "application/json" {
        return Err(format!("content type {content_type:?}"));
    }
    let host = need("Host")?;
    let timestamp: i64 = need("X-TC-Timestamp")?
        .parse()
        .map_err(|_| "bad timestamp")?;
    if (now - timestamp).abs() > 300 {
        return Err("signature expired".into());
    }
    let token_ok = match get("X-TC-Token") {
        Some(got) => shared.tokens.iter().any(|want| want == got),
        None => shared.tokens.is_empty(),
    };
    if !token_ok {
        return Err("token mismatch".into());
    }
    let authorization = need("Authorization")?;
    let date = time::OffsetDateTime::from_unix_timestamp(timestamp)
        .map_err(|_| "timestamp out of range")?
        .date();
    let date = format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    );
    let canonical = format!(
        "POST\n/\n\ncontent-type:{content_type}\nhost:{host}\n\ncontent-type;host\n{}",
        hex(&Sha256::digest(&request.body))
    );
    let scope = format!("{date}/ssm/tc3_request");
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let secret_id = authorization
        .strip_prefix("TC3-HMAC-SHA256 Credential=")
        .and_then(|rest| rest.split('/').next())
        .ok_or("malformed authorization")?;
    let Some((_, secret_key)) = shared.keys.iter().find(|(id, _)| id == secret_id) else {
        return Err("unknown secret id".into());
    };
    let k_date = hmac(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac(&k_date, b"ssm");
    let k_signing = hmac(&k_service, b"tc3_request");
    let signature = hex(&hmac(&k_signing, to_sign.as_bytes()));
    let expected = format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders=content-type;host, Signature={signature}"
    );
    if authorization != expected {
        return Err("signature mismatch".into());
    }
    Ok(())
}
