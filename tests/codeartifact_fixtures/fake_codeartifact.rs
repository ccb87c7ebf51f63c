//! TEST FIXTURE — NOT PRODUCT CODE: a fake AWS CodeArtifact API on 127.0.0.1 for the agent's
//! real AWS SDK client (`pip.codeartifact.endpoint_url` points at it). It answers the two calls
//! the agent makes, and serves the repository's PyPI index to check a token the way the real
//! repository does:
//!
//! - `POST /v1/authorization-token?domain=&domain-owner=&duration=` → a fresh token that lives
//!   `min(duration, token_secs)` seconds (`token_secs` is short in tests, as when the role
//!   session ends first: the agent must follow the expiry it is given, not the one it asked for);
//! - `GET /v1/repository/endpoint?domain=&domain-owner=&repository=&format=pypi` →
//!   `<url>/pypi/<repository>/`;
//! - `GET /pypi/<repository>/simple/...` with basic auth `aws:<token>` → 200 while that token
//!   lives, 401 otherwise.
//!
//! Modes: [`Mode::Normal`]; [`Mode::AccessDenied`] (403 `AccessDeniedException`, as for a role
//! without the IAM actions); [`Mode::Unreachable`] (every connection closed unanswered, as with
//! no VPC endpoint). One request per connection (`Connection: close`). Signatures are not checked.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    AccessDenied,
    Unreachable,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    token_secs: u64,
    /// Every token handed out, with its expiry (ms since the epoch).
    issued: Vec<(String, i64)>,
    /// `METHOD path?query` of every request, in order.
    requests: Vec<String>,
}

pub struct FakeCodeArtifact {
    pub url: String,
    state: Arc<Mutex<State>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl FakeCodeArtifact {
    /// Starts the fake on an ephemeral loopback port; tokens live at most `token_secs`.
    pub fn start(token_secs: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Normal,
            token_secs,
            issued: Vec::new(),
            requests: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let base = url.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                let base = base.clone();
                std::thread::spawn(move || serve(stream, &shared, &base));
            }
        });
        Self { url, state }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("lock").mode = mode;
    }

    /// Every token handed out so far, oldest first.
    pub fn tokens(&self) -> Vec<String> {
        let s = self.state.lock().expect("lock");
        s.issued.iter().map(|(t, _)| t.clone()).collect()
    }

    /// Whether `token` was handed out and still lives.
    pub fn valid(&self, token: &str) -> bool {
        let s = self.state.lock().expect("lock");
        s.issued
            .iter()
            .any(|(t, exp)| t == token && *exp > now_ms())
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("lock").requests.clone()
    }
}

fn query<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn serve(stream: TcpStream, state: &Mutex<State>, base: &str) {
    let mode = state.lock().expect("lock").mode;
    if mode == Mode::Unreachable {
        // Closed unanswered: to the client, the endpoint is not there.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut length = 0usize;
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().unwrap_or(0),
            "authorization" => auth = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let (status, error_type, body) = {
        let mut s = state.lock().expect("lock");
        s.requests.push(format!("{method} {target}"));
        let denied = |op: &str| {
            (
                "403 Forbidden",
                Some("AccessDeniedException"),
                format!(
                    r#"{{"message":"User: arn:aws:sts::123456789012:assumed-role/nb-role/SageMaker is not authorized to perform: codeartifact:{op}"}}"#
                ),
            )
        };
        match (method.as_str(), path) {
            ("POST", "/v1/authorization-token") if s.mode == Mode::AccessDenied => {
                denied("GetAuthorizationToken")
            }
            ("POST", "/v1/authorization-token") => {
                let asked: u64 = query(q, "duration")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(43_200);
                let life = asked.min(s.token_secs);
                let expires = now_ms() + (life as i64) * 1000;
                let n = s.issued.len() + 1;
                // Shaped like a real token (long, base64url with dots), unique per call.
                let token = format!(
                    "eyJ2ZXIiOjEsImZha2UiOnRydWV9.fake{n:04}{:x}.x-_{}",
                    now_ms(),
                    uuid_like(n)
                );
                s.issued.push((token.clone(), expires));
                (
                    "200 OK",
                    None,
                    format!(
                        r#"{{"authorizationToken":"{token}","expiration":{:.3}}}"#,
                        expires as f64 / 1000.0
                    ),
                )
            }
            ("GET", "/v1/repository/endpoint") if s.mode == Mode::AccessDenied => {
                denied("GetRepositoryEndpoint")
            }
            ("GET", "/v1/repository/endpoint") => {
                let repo = query(q, "repository").unwrap_or("none");
                (
                    "200 OK",
                    None,
                    format!(r#"{{"repositoryEndpoint":"{base}/pypi/{repo}/"}}"#),
                )
            }
            ("GET", p) if p.starts_with("/pypi/") => {
                let ok = auth.as_deref().is_some_and(|a| {
                    s.issued.iter().any(|(t, exp)| {
                        *exp > now_ms() && a == format!("Basic {}", base64(&format!("aws:{t}")))
                    })
                });
                if ok {
                    ("200 OK", None, "<html><body></body></html>".to_string())
                } else {
                    ("401 Unauthorized", None, String::new())
                }
            }
            _ => (
                "404 Not Found",
                Some("ResourceNotFoundException"),
                r#"{"message":"not found"}"#.to_string(),
            ),
        }
    };
    let mut w = stream;
    let extra = error_type
        .map(|t| format!("x-amzn-ErrorType: {t}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn uuid_like(n: usize) -> String {
    format!("{:016x}", (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Standard base64 with padding (basic auth).
pub fn base64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
