//! The API's one error shape, `{"error": {"code", "message"}}`, and how every failure becomes
//! it: bad input (malformed JSON, wrong types, unknown fields, an oversize body, a bad path)
//! is a 4xx with a code, never a 500; a backend that is down is a 503 with `Retry-After`.
//! Messages name the field and the reason, never a URL, a secret or an internal path: for a
//! 5xx the message is a fixed sentence and the detail goes to the log only.

use std::fmt;
use std::time::Duration;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use lucid_actors::CallError;
use lucid_actors::backup::BackupError;
use lucid_actors::mongo::MongoError;
use lucid_actors::redis::RedisError;
use lucid_actors::search::SearchError;
use lucid_actors::volume::VolumeError;
use serde::Serialize;

/// An answer that is not a success.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Low-cardinality, stable: what a client branches on.
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1).
    pub retry_after: Option<Duration>,
}

/// The one error shape, `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and low-cardinality: what a client branches on (docs/http.md lists them).
    pub code: String,
    /// For people: the field and the reason.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// A backend (or actor) that does not run here or is down: 503, try again in a second.
    pub fn unavailable(what: &str, code: &'static str) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            format!("{what} is unavailable; try again later"),
        )
        .retry_after(Duration::from_secs(1))
    }

    /// A failure that is not the caller's: the detail is logged, the caller gets the code.
    fn internal(what: &str, code: &'static str, detail: &dyn fmt::Display) -> Self {
        tracing::warn!(code, error = %detail, "{what} failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code,
            format!("{what} failed ({code})"),
        )
    }

    /// A restore writes into the store's live data: its own writes wait (409, retry later).
    fn restoring(e: &dyn fmt::Display) -> Self {
        ApiError::new(StatusCode::CONFLICT, "busy", e.to_string())
            .retry_after(Duration::from_secs(5))
    }

    fn call(what: &str, e: &CallError) -> Self {
        match e {
            CallError::DeadlineExceeded { .. } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                format!("{what} did not answer in time"),
            ),
            _ => ApiError::unavailable(what, e.code()),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                res.insert_header((header::RETRY_AFTER, v));
            }
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input caught by actix-web's extractors

/// The JSON body extractor's failures: 413 for an oversize body, 415 without a JSON content
/// type, 400 otherwise — `invalid_json` for text that is not JSON, `invalid_body` for JSON of
/// the wrong shape (a wrong type, an unknown or missing field), with serde's message, which
/// names the field and never holds anything but the input.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes (http.body_limit)"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        ),
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            ApiError::bad_request("invalid_body", e.to_string())
        }
        JsonPayloadError::Deserialize(e) => {
            ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}"))
        }
        _ => ApiError::bad_request("invalid_body", "the body could not be read"),
    };
    api.into()
}

pub fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_path", err.to_string()).into()
}

pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_query", err.to_string()).into()
}

// ---------------------------------------------------------------------------------------------
// The actors' errors

impl From<MongoError> for ApiError {
    fn from(e: MongoError) -> Self {
        match &e {
            MongoError::Call(c) => ApiError::call("mongodb", c),
            MongoError::Connection { code, .. } => ApiError::unavailable("mongodb", code),
            MongoError::StreamIdle { .. } => ApiError::unavailable("mongodb", "stream_idle"),
            MongoError::Invalid { .. } => ApiError::bad_request("invalid", e.to_string()),
            MongoError::Conflict { index, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("a document with this key exists (index {index})"),
            ),
            // The server refused the operation itself (a bad regex, a type it cannot compare):
            // the caller's input, so a 4xx; its message says what, and holds no address.
            MongoError::Server { code, message } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                format!(
                    "mongodb refused the operation{}: {message}",
                    code.map(|c| format!(" (code {c})")).unwrap_or_default()
                ),
            ),
            MongoError::Restoring(r) => ApiError::restoring(r),
            _ => ApiError::internal("the mongodb call", e.code(), &e),
        }
    }
}

impl From<RedisError> for ApiError {
    fn from(e: RedisError) -> Self {
        match &e {
            RedisError::Call(c) => ApiError::call("redis", c),
            RedisError::Connection { code, .. } => ApiError::unavailable("redis", code),
            RedisError::Invalid { .. } => ApiError::bad_request("invalid", e.to_string()),
            RedisError::NotFound { .. } => ApiError::not_found(e.to_string()),
            RedisError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RedisError::NotHeld { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_held", e.to_string())
            }
            RedisError::LockBusy { .. } => {
                ApiError::new(StatusCode::CONFLICT, "lock_busy", e.to_string())
            }
            RedisError::Restoring(r) => ApiError::restoring(r),
            _ => ApiError::internal("the redis call", e.code(), &e),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match &e {
            SearchError::Call(c) => ApiError::call("elasticsearch", c),
            SearchError::Connection { code, .. } => ApiError::unavailable("elasticsearch", code),
            SearchError::Invalid { .. } => ApiError::bad_request("invalid", e.to_string()),
            SearchError::NotFound { .. } => ApiError::not_found(e.to_string()),
            SearchError::Ambiguous { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            SearchError::Restoring(r) => ApiError::restoring(r),
            SearchError::Busy { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the bulk indexer is full; try again later",
            )
            .retry_after(Duration::from_secs(1)),
            SearchError::Server {
                status,
                kind,
                reason,
            } if (400..500).contains(status) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                format!("elasticsearch refused the request ({kind}): {reason}"),
            ),
            _ => ApiError::internal("the elasticsearch call", e.code(), &e),
        }
    }
}

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> Self {
        match &e {
            VolumeError::InvalidName { .. }
            | VolumeError::Invalid { .. }
            | VolumeError::PathEscape { .. } => ApiError::bad_request(e.code(), e.to_string()),
            VolumeError::NotFound { .. } | VolumeError::NoSnapshot { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, e.code(), e.to_string())
            }
            // Well formed, but the volume as it is now does not allow it (`force`, a lower
            // quota, another name): the caller's to decide, with the actor's own code.
            VolumeError::Busy { .. }
            | VolumeError::Exists { .. }
            | VolumeError::NotEmpty { .. }
            | VolumeError::SnapshotExists { .. }
            | VolumeError::QuotaBelowUsage { .. }
            | VolumeError::Live { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.code(), e.to_string())
            }
            VolumeError::OverQuota { .. } | VolumeError::NoSpace { .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.code(), e.to_string())
            }
            VolumeError::DeadlineExceeded { .. } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                "the volume actor did not answer in time",
            ),
            VolumeError::NotDelivered { .. } | VolumeError::Root { .. } => {
                ApiError::unavailable("the volumes", e.code())
            }
            _ => ApiError::internal("the volume call", e.code(), &e),
        }
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        if e.is_unavailable() {
            return ApiError::unavailable("the backup", e.code());
        }
        match &e {
            BackupError::Busy { .. } => ApiError::new(StatusCode::CONFLICT, "busy", e.to_string()),
            BackupError::NotFound { .. } => ApiError::not_found(e.to_string()),
            BackupError::Selection(_)
            | BackupError::NotSupported { .. }
            | BackupError::IdentityRequired
            | BackupError::BadRequest { .. } => ApiError::bad_request(e.code(), e.to_string()),
            // The request is well formed, but this backup or target does not allow it.
            BackupError::TargetNotEmpty { .. }
            | BackupError::Guarded { .. }
            | BackupError::Retention(_) => {
                ApiError::new(StatusCode::CONFLICT, e.code(), e.to_string())
            }
            BackupError::NotInBackup { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
            }
            BackupError::NoRoom { .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.code(), e.to_string())
            }
            _ => ApiError::internal("the backup call", e.code(), &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use lucid_actors::transfer::Restoring;

    use super::*;

    /// A write refused because a restore writes into the store is the caller's to retry: 409
    /// `busy` with `Retry-After`, never a 500.
    #[test]
    fn a_write_refused_during_a_restore_is_409_busy_in_every_store() {
        for e in [
            ApiError::from(MongoError::Restoring(Restoring)),
            ApiError::from(RedisError::Restoring(Restoring)),
            ApiError::from(SearchError::Restoring(Restoring)),
        ] {
            assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "busy"), "{e:?}");
            let res = e.error_response();
            assert!(res.headers().contains_key("retry-after"));
        }
    }

    /// A volume operation the volume does not allow as it is is the caller's: a 4xx with the
    /// volume actor's own code (the CLI maps it to its exit code), never a 500.
    #[test]
    fn volume_refusals_are_4xx_with_the_actors_code() {
        let v = || "v".to_owned();
        let cases = [
            (VolumeError::NotEmpty { volume: v() }, StatusCode::CONFLICT),
            (VolumeError::Exists { volume: v() }, StatusCode::CONFLICT),
            (
                VolumeError::SnapshotExists {
                    volume: v(),
                    snapshot: "s".into(),
                },
                StatusCode::CONFLICT,
            ),
            (
                VolumeError::QuotaBelowUsage {
                    volume: v(),
                    quota: 1,
                    used: 2,
                },
                StatusCode::CONFLICT,
            ),
            (
                VolumeError::Live {
                    volume: v(),
                    kind: "mongodb".into(),
                    flag: "--allow-live",
                },
                StatusCode::CONFLICT,
            ),
            (
                VolumeError::NoSnapshot {
                    volume: v(),
                    snapshot: "s".into(),
                },
                StatusCode::NOT_FOUND,
            ),
            (
                VolumeError::NoSpace {
                    volume: v(),
                    needed: 2,
                    free: 1,
                },
                StatusCode::INSUFFICIENT_STORAGE,
            ),
            (
                VolumeError::Invalid {
                    field: "to",
                    reason: "must be an absolute path".into(),
                },
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (e, status) in cases {
            let code = e.code();
            let api = ApiError::from(e);
            assert_eq!((api.status, api.code), (status, code));
        }
    }

    /// A restore the target or the backup does not allow is the caller's to fix: a 4xx with
    /// the backup's own code, never a 500.
    #[test]
    fn restore_refusals_are_4xx_with_their_code() {
        let cases = [
            (
                BackupError::TargetNotEmpty {
                    target: "lucid.users".into(),
                    holds: "3 documents".into(),
                },
                StatusCode::CONFLICT,
            ),
            (
                BackupError::NotInBackup {
                    what: "redis".into(),
                    id: "20261130T020000Z-3f9a".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                BackupError::BadRequest {
                    what: "to_redis_db with two databases".into(),
                },
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (e, status) in cases {
            let code = e.code();
            let api = ApiError::from(e);
            assert_eq!((api.status, api.code), (status, code));
        }
    }
}
