//! TEST FIXTURE — NOT PRODUCT CODE: a tiny loopback HTTP/1.1 reverse proxy put in front of
//! moto_server (which never throttles) to inject faults on command: ThrottlingException,
//! 5xx, slow answers, reset connections, a whole outage. It also counts requests per CloudWatch
//! operation (`X-Amz-Target`), which is how tests prove there is no DescribeLogStreams.
//!
//! One request per connection (it answers `Connection: close`): simple, and enough for a client
//! that reconnects as hyper does.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One injected fault, consumed by one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 400 `ThrottlingException`.
    Throttle,
    /// HTTP 503 `ServiceUnavailableException`.
    Unavailable,
    /// HTTP 500 with an empty body.
    Internal,
    /// Close the connection without answering.
    Reset,
    /// Wait, then forward.
    Slow(Duration),
    /// Forward, then hold the upstream's answer this long: the request is delivered, the client
    /// does not know yet (a crash now means a re-send). Logged as `held` once the answer is in.
    HoldReply(Duration),
    /// HTTP `status` with CloudWatch's JSON error body, `__type` = `code` (403
    /// `UnrecognizedClientException`, 400 `KMSInvalidStateException`, …).
    Error { status: u16, code: &'static str },
}

#[derive(Debug, Default)]
struct State {
    upstream: u16,
    faults: VecDeque<Fault>,
    /// Every connection is reset while set.
    down: bool,
    /// Answers every request (of one operation, or all when `None`) until cleared.
    sticky: Option<(Option<String>, Fault)>,
    counts: HashMap<String, u64>,
    /// (operation, what happened) in order.
    log: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State {
            upstream,
            ..State::default()
        }));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = handle(sock, st).await;
                });
            }
        });
        Self { port, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn push(&self, fault: Fault, times: usize) {
        let mut g = self.lock();
        for _ in 0..times {
            g.faults.push_back(fault);
        }
    }

    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Answers every request for `op` (every request when `None`) with `fault` until called
    /// again with `fault: None`; queued faults wait meanwhile.
    pub fn set_sticky(&self, op: Option<&str>, fault: Option<Fault>) {
        self.lock().sticky = fault.map(|f| (op.map(str::to_string), f));
    }

    pub fn set_upstream(&self, port: u16) {
        self.lock().upstream = port;
    }

    /// Requests seen for an operation (`PutLogEvents`, `DescribeLogStreams`, …).
    pub fn count(&self, op: &str) -> u64 {
        self.lock().counts.get(op).copied().unwrap_or(0)
    }

    pub fn log(&self) -> Vec<(String, String)> {
        self.lock().log.clone()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn handle(mut client: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    // Read the head and the body (Content-Length; the SDK does not chunk these requests).
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = vec![0u8; 65536];
    let head_end = loop {
        let n = client.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut content_length = 0usize;
    let mut op = String::from("?");
    let mut lines: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-amz-target:") {
            op = line.rsplit('.').next().unwrap_or("?").trim().to_string();
        }
        if lower.starts_with("connection:") || line.is_empty() {
            continue;
        }
        lines.push(line.to_string());
    }
    while buf.len() < head_end + content_length {
        let n = client.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = buf[head_end..head_end + content_length].to_vec();

    let (fault, down, upstream) = {
        let mut g = state.lock().unwrap_or_else(|p| p.into_inner());
        *g.counts.entry(op.clone()).or_default() += 1;
        let down = g.down;
        let sticky = g
            .sticky
            .as_ref()
            .filter(|(o, _)| o.as_deref().is_none_or(|o| o == op))
            .map(|(_, f)| *f);
        let fault = if down {
            None
        } else {
            sticky.or_else(|| g.faults.pop_front())
        };
        let what = match (down, fault) {
            (true, _) => "down".to_string(),
            (_, Some(f)) => format!("{f:?}"),
            _ => "forwarded".to_string(),
        };
        g.log.push((op.clone(), what));
        (fault, down, g.upstream)
    };

    let canned = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if down {
        return Ok(()); // dropped: the client sees the connection close without an answer
    }
    match fault {
        Some(Fault::Reset) => return Ok(()),
        Some(Fault::Throttle) => {
            let r = canned(
                "400 Bad Request",
                r#"{"__type":"ThrottlingException","message":"Rate exceeded (fault layer)"}"#,
            );
            client.write_all(r.as_bytes()).await?;
            return client.shutdown().await;
        }
        Some(Fault::Unavailable) => {
            let r = canned(
                "503 Service Unavailable",
                r#"{"__type":"ServiceUnavailableException","message":"fault layer"}"#,
            );
            client.write_all(r.as_bytes()).await?;
            return client.shutdown().await;
        }
        Some(Fault::Internal) => {
            let r = canned("500 Internal Server Error", "");
            client.write_all(r.as_bytes()).await?;
            return client.shutdown().await;
        }
        Some(Fault::Error { status, code }) => {
            let r = canned(
                &format!("{status} Fault"),
                &format!(r#"{{"__type":"{code}","message":"{code} (fault layer)"}}"#),
            );
            client.write_all(r.as_bytes()).await?;
            return client.shutdown().await;
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::HoldReply(_)) | None => {}
    }

    let mut up = match TcpStream::connect(("127.0.0.1", upstream)).await {
        Ok(s) => s,
        Err(_) => return Ok(()), // upstream down: close, like a dead endpoint
    };
    let mut req = lines.join("\r\n");
    req.push_str("\r\nConnection: close\r\n\r\n");
    up.write_all(req.as_bytes()).await?;
    up.write_all(&body).await?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    // Tell the client this connection is done, so it never reuses a socket we close.
    if let Some(end) = find(&resp, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&resp[..end]).to_string();
        let kept: Vec<&str> = head
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .collect();
        let mut out = kept.join("\r\n").into_bytes();
        out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        out.extend_from_slice(&resp[end + 4..]);
        resp = out;
    }
    if let Some(Fault::HoldReply(d)) = fault {
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .push((op, "held".to_string()));
        tokio::time::sleep(d).await;
    }
    client.write_all(&resp).await?;
    client.shutdown().await
}
