//! What to do after a failed CloudWatch Logs call, decided from the `SdkError` alone (tested on
//! synthetic errors), and the backoff between attempts.
//!
//! | outcome | errors | what the service does |
//! | --- | --- | --- |
//! | [`Action::Retry`] | ThrottlingException, ServiceUnavailable, any 5xx or 429, timeouts, connection and I/O errors, unparseable responses | capped exponential backoff with full jitter, for as long as it takes; the batch stays in memory and the spool |
//! | [`Action::CreateDestination`] | ResourceNotFoundException | CreateLogStream (and CreateLogGroup when the group is missing), then send again |
//! | [`Action::Accepted`] | DataAlreadyAcceptedException | CloudWatch already has the batch: treated as success |
//! | [`Action::Wait`] | credentials, permissions, KMS, bad region or endpoint | the operator must act: logged once per distinct cause, counted, retried at the backoff cap; nothing is acknowledged, so nothing is lost |
//! | [`Action::Reject`] | InvalidParameterException, any other 4xx | the batch itself is unacceptable and retrying cannot help: the service writes it whole to the local dead-letter file, records an event, counts it as rejected and moves on |

use std::error::Error as StdError;
use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// The decision for one failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    CreateDestination,
    Accepted,
    Wait,
    Reject,
}

/// A classified error: the decision plus what to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub action: Action,
    /// The AWS error code or a short kind (`timeout`, `dispatch`, `http_503`).
    pub code: String,
    /// One line for the operator, with what to do where that is known.
    pub message: String,
}

/// Error codes that need the operator (credentials, permissions, KMS) rather than a retry soon.
const OPERATOR_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "AccessDeniedException",
    "AccessDenied",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredTokenException",
    "ExpiredToken",
    "KMSInvalidStateException",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSNotFoundException",
    "KMSInvalidKeyUsageException",
    "UnauthorizedOperation",
];

const RETRY_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "LimitExceededException",
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
    "OperationAbortedException",
    // Never returned any more (no sequence tokens are sent), harmless to retry.
    "InvalidSequenceTokenException",
];

/// Classifies a failed call of any CloudWatch Logs operation.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err {
        SdkError::TimeoutError(_) => Classified {
            action: Action::Retry,
            code: "timeout".into(),
            message: "CloudWatch Logs did not answer in time".into(),
        },
        SdkError::DispatchFailure(d) => {
            let detail = chain(err);
            if d.is_io() || d.is_timeout() {
                Classified {
                    action: Action::Retry,
                    code: if d.is_timeout() { "timeout" } else { "connection" }.into(),
                    message: format!(
                        "cannot reach CloudWatch Logs (check the endpoint, proxy and network): {detail}"
                    ),
                }
            } else if detail.contains("credentials") || detail.contains("identity") {
                Classified {
                    action: Action::Wait,
                    code: "credentials".into(),
                    message: format!(
                        "no AWS credentials (the notebook's execution role via IMDS, or AWS_* variables): {detail}"
                    ),
                }
            } else if d.is_user() {
                Classified {
                    action: Action::Wait,
                    code: "dispatch".into(),
                    message: format!("request could not be sent: {detail}"),
                }
            } else {
                Classified {
                    action: Action::Retry,
                    code: "dispatch".into(),
                    message: format!("request failed in transit: {detail}"),
                }
            }
        }
        SdkError::ConstructionFailure(_) => Classified {
            action: Action::Wait,
            code: "construction".into(),
            message: format!(
                "request could not be built (check audit.region and audit.endpoint_url): {}",
                chain(err)
            ),
        },
        SdkError::ResponseError(_) => {
            // An answer that is not CloudWatch's (a proxy's error page, a cut-off body).
            let code = status.map_or_else(|| "response".to_string(), |s| format!("http_{s}"));
            Classified {
                action: Action::Retry,
                code,
                message: format!("unreadable response: {}", chain(err)),
            }
        }
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().unwrap_or("").to_string();
            let msg = e.message().unwrap_or("").to_string();
            let status = status.unwrap_or(0);
            let action = if code == "ResourceNotFoundException" {
                Action::CreateDestination
            } else if code == "DataAlreadyAcceptedException" {
                Action::Accepted
            } else if RETRY_CODES.contains(&code.as_str()) || status >= 500 || status == 429 {
                Action::Retry
            } else if OPERATOR_CODES.contains(&code.as_str())
                || code.starts_with("KMS")
                || status == 401
                || status == 403
            {
                Action::Wait
            } else if (400..500).contains(&status) || !code.is_empty() {
                Action::Reject
            } else {
                Action::Retry
            };
            let code = if code.is_empty() {
                format!("http_{status}")
            } else {
                code
            };
            let hint = match action {
                Action::Wait if code.starts_with("KMS") => {
                    " (the log group's KMS key: its key policy must allow logs.<region>.amazonaws.com)"
                }
                Action::Wait => " (the notebook's execution role needs logs:CreateLogGroup, logs:CreateLogStream and logs:PutLogEvents on the audit group)",
                _ => "",
            };
            Classified {
                action,
                message: format!("{code}: {msg}{hint}"),
                code,
            }
        }
        _ => Classified {
            action: Action::Retry,
            code: "unknown".into(),
            message: chain(err),
        },
    }
}

/// An error and its sources on one line.
fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Capped exponential backoff with full jitter: attempt n waits a uniform random time in
/// `[0, min(cap, base * 2^n)]`. The random source is a xorshift seeded from the clock and the
/// process id: no dependency, and two agents restarted together do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    state: u64,
}

/// First step of the backoff.
pub const BASE: Duration = Duration::from_millis(200);
/// Longest wait between attempts.
pub const CAP: Duration = Duration::from_secs(30);

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, CAP)
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Self::with_seed(base, cap, seed)
    }

    pub fn with_seed(base: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            state: seed | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// The ceiling of the current attempt's window.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u64.checked_shl(self.attempt.min(32)).unwrap_or(u64::MAX);
        let ms = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.cap)
    }

    /// The wait before the next attempt; grows the window.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling().as_millis() as u64;
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(self.next_random() % (ceiling + 1))
    }

    /// A wait drawn from the full window: for errors the operator has to fix.
    pub fn at_cap(&mut self) -> Duration {
        let cap = self.cap.as_millis() as u64;
        let half = cap / 2;
        Duration::from_millis(half + self.next_random() % (cap - half + 1))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudwatchlogs::operation::put_log_events::PutLogEventsError;
    use aws_sdk_cloudwatchlogs::types::error::{
        InvalidParameterException, ResourceNotFoundException, ServiceUnavailableException,
    };
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    type E = SdkError<PutLogEventsError, HttpResponse>;

    fn raw(status: u16) -> HttpResponse {
        HttpResponse::new(
            StatusCode::try_from(status).expect("status"),
            SdkBody::empty(),
        )
    }

    fn generic(code: &str, status: u16) -> E {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("synthetic")
            .build();
        SdkError::service_error(PutLogEventsError::generic(meta), raw(status))
    }

    #[test]
    fn throttling_and_5xx_retry() {
        assert_eq!(
            classify(&generic("ThrottlingException", 400)).action,
            Action::Retry
        );
        assert_eq!(
            classify(&generic("InternalFailure", 500)).action,
            Action::Retry
        );
        assert_eq!(classify(&generic("", 502)).action, Action::Retry);
        assert_eq!(
            classify(&generic("SomethingNew", 503)).action,
            Action::Retry
        );
        assert_eq!(classify(&generic("", 429)).action, Action::Retry);
        let modeled: E = SdkError::service_error(
            PutLogEventsError::ServiceUnavailableException(
                ServiceUnavailableException::builder()
                    .message("busy")
                    .meta(
                        ErrorMetadata::builder()
                            .code("ServiceUnavailableException")
                            .build(),
                    )
                    .build(),
            ),
            raw(503),
        );
        let c = classify(&modeled);
        assert_eq!(c.action, Action::Retry);
        assert_eq!(c.code, "ServiceUnavailableException");
    }

    #[test]
    fn timeouts_and_connection_errors_retry() {
        let t: E = SdkError::timeout_error("operation timed out");
        assert_eq!(classify(&t).action, Action::Retry);
        let io: E = SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let c = classify(&io);
        assert_eq!(c.action, Action::Retry);
        assert_eq!(c.code, "connection");
        let to: E = SdkError::dispatch_failure(ConnectorError::timeout("connect timeout".into()));
        assert_eq!(classify(&to).code, "timeout");
        let resp: E = SdkError::response_error("bad body", raw(502));
        assert_eq!(classify(&resp).action, Action::Retry);
    }

    #[test]
    fn missing_group_or_stream_creates_it() {
        let modeled: E = SdkError::service_error(
            PutLogEventsError::ResourceNotFoundException(
                ResourceNotFoundException::builder()
                    .message("The specified log group does not exist.")
                    .meta(
                        ErrorMetadata::builder()
                            .code("ResourceNotFoundException")
                            .build(),
                    )
                    .build(),
            ),
            raw(400),
        );
        assert_eq!(classify(&modeled).action, Action::CreateDestination);
    }

    #[test]
    fn already_accepted_is_success() {
        assert_eq!(
            classify(&generic("DataAlreadyAcceptedException", 400)).action,
            Action::Accepted
        );
    }

    #[test]
    fn credentials_permissions_kms_wait_for_the_operator() {
        for code in [
            "UnrecognizedClientException",
            "AccessDeniedException",
            "ExpiredTokenException",
            "KMSInvalidStateException",
        ] {
            let c = classify(&generic(code, 400));
            assert_eq!(c.action, Action::Wait, "{code}");
            assert!(c.message.contains(code));
        }
        assert_eq!(classify(&generic("", 403)).action, Action::Wait);
        let creds: E = SdkError::dispatch_failure(ConnectorError::other(
            "failed to load credentials: no providers in chain provided credentials".into(),
            None,
        ));
        let c = classify(&creds);
        assert_eq!(c.action, Action::Wait);
        assert!(c.message.contains("execution role"));
        let built: E = SdkError::construction_failure("no region");
        assert_eq!(classify(&built).action, Action::Wait);
    }

    #[test]
    fn invalid_parameter_and_other_4xx_reject() {
        let modeled: E = SdkError::service_error(
            PutLogEventsError::InvalidParameterException(
                InvalidParameterException::builder()
                    .message("bad")
                    .meta(
                        ErrorMetadata::builder()
                            .code("InvalidParameterException")
                            .build(),
                    )
                    .build(),
            ),
            raw(400),
        );
        assert_eq!(classify(&modeled).action, Action::Reject);
        assert_eq!(
            classify(&generic("SerializationException", 400)).action,
            Action::Reject
        );
        assert_eq!(classify(&generic("", 413)).action, Action::Reject);
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let mut b = Backoff::with_seed(BASE, CAP, 42);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let ceiling = b.ceiling();
            ceilings.push(ceiling.as_millis());
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
        }
        assert_eq!(
            &ceilings[..9],
            &[200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000]
        );
        assert_eq!(ceilings[11], 30000);
        // Jitter: the draws are not all equal and not all at the ceiling.
        let mut b = Backoff::with_seed(BASE, CAP, 7);
        for _ in 0..8 {
            b.next_delay();
        }
        let draws: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(15)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
        b.reset();
        assert_eq!(b.ceiling(), BASE);
        let w = b.at_cap();
        assert!(w >= CAP / 2 && w <= CAP);
        // A huge attempt count does not overflow.
        let mut b = Backoff::with_seed(BASE, CAP, 1);
        for _ in 0..200 {
            assert!(b.next_delay() <= CAP);
        }
    }
}
