//! The one error type of the gateway, with stable codes (README "Use it") and HTTP statuses.
//!
//! Codes are part of the API contract: never renamed, never reused. `code()` and
//! `status()` are exhaustive matches so a new variant cannot ship without both.

use serde::{Deserialize, Serialize};

/// A stable error code, as sent to clients and stored on failed jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A ComfyUI backend refused or dropped the connection.
    ComfyuiUnreachable,
    /// ComfyUI ran out of (GPU or CPU) memory.
    ComfyuiOom,
    /// Execution took longer than `COMFYUI_TIMEOUT_MS`.
    ComfyuiTimeout,
    /// ComfyUI rejected the prompt or a node failed while running.
    ComfyuiNodeError,
    /// The request or its inputs are invalid.
    ValidationError,
    /// No workflow with that id.
    WorkflowNotFound,
    /// No job with that id (or not visible to the caller).
    JobNotFound,
    /// Too many requests.
    RateLimited,
    /// Missing or bad credentials.
    AuthFailed,
    /// Credentials are fine but the action is not allowed.
    Forbidden,
    /// The request body is too large.
    PayloadTooLarge,
    /// An idempotency key was reused with a different body.
    IdempotencyConflict,
    /// A plugin failed.
    PluginFailed,
    /// A plugin exceeded one of its limits.
    PluginLimitExceeded,
    /// The request conflicts with the resource's current state (e.g. cancel a finished job).
    Conflict,
    /// No route for that path.
    NotFound,
    /// The route exists but not for that method.
    MethodNotAllowed,
    /// A `Range` outside the resource.
    RangeNotSatisfiable,
    /// Something went wrong inside the gateway; details are only in the log.
    Internal,
    /// A `callbackUrl` points where webhooks may not go (`WEBHOOK_ALLOWED_DOMAINS`, or a
    /// loopback/private/metadata address). Codes are stored by position: new ones go last.
    CallbackNotAllowed,
    /// No configured backend with that id (`/backends/{id}`).
    BackendNotFound,
    /// The blob storage (the S3-compatible bucket) did not answer or failed; nothing
    /// was changed, try again. Declared last: codes are stored by position.
    StorageUnavailable,
    /// The database's file system is below `DISK_FREE_MIN_BYTES`: new jobs are refused
    /// until retention frees space (507 with `Retry-After`).
    StorageFull,
    /// The owner keeps `STORAGE_QUOTA_BYTES_PER_OWNER` bytes of inputs and outputs or more:
    /// its new jobs are refused until some of its jobs are pruned (507 with `Retry-After`).
    QuotaExceeded,
    /// A state-changing request with a body in a media type the route does not take
    /// (only `application/json`, and `multipart/form-data` for `POST /jobs`).
    UnsupportedMediaType,
    /// A request whose `Host` is not the gateway's (bound address, loopback name or
    /// `ALLOWED_HOSTS`): DNS rebinding.
    HostNotAllowed,
    /// A state-changing request from another browser origin (`Origin` not the gateway's
    /// and not in `CORS_ORIGINS`, or `Sec-Fetch-Site: cross-site`).
    CrossOriginRefused,
    /// The request body did not arrive within `BODY_READ_TIMEOUT_MS`, or slower than
    /// `BODY_MIN_BYTES_PER_S`; the connection is closed. Codes are stored by position.
    RequestTimeout,
    /// Every call slot of the workflow's plugin (`PLUGIN_CONCURRENCY_PER_PLUGIN`) or of the
    /// plugin host (`PLUGIN_CONCURRENCY`) stayed taken for `PLUGIN_QUEUE_WAIT_MS`: the plugin
    /// is saturated, not the caller; nothing was stored, try again (`Retry-After`).
    PluginBusy,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::ComfyuiUnreachable,
        ErrorCode::ComfyuiOom,
        ErrorCode::ComfyuiTimeout,
        ErrorCode::ComfyuiNodeError,
        ErrorCode::ValidationError,
        ErrorCode::WorkflowNotFound,
        ErrorCode::JobNotFound,
        ErrorCode::RateLimited,
        ErrorCode::AuthFailed,
        ErrorCode::Forbidden,
        ErrorCode::PayloadTooLarge,
        ErrorCode::IdempotencyConflict,
        ErrorCode::PluginFailed,
        ErrorCode::PluginLimitExceeded,
        ErrorCode::Conflict,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::Internal,
        ErrorCode::CallbackNotAllowed,
        ErrorCode::BackendNotFound,
        ErrorCode::StorageUnavailable,
        ErrorCode::StorageFull,
        ErrorCode::QuotaExceeded,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::HostNotAllowed,
        ErrorCode::CrossOriginRefused,
        ErrorCode::RequestTimeout,
        ErrorCode::PluginBusy,
    ];

    /// The stable wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ComfyuiUnreachable => "COMFYUI_UNREACHABLE",
            ErrorCode::ComfyuiOom => "COMFYUI_OOM",
            ErrorCode::ComfyuiTimeout => "COMFYUI_TIMEOUT",
            ErrorCode::ComfyuiNodeError => "COMFYUI_NODE_ERROR",
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::WorkflowNotFound => "WORKFLOW_NOT_FOUND",
            ErrorCode::JobNotFound => "JOB_NOT_FOUND",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::PluginFailed => "PLUGIN_FAILED",
            ErrorCode::PluginLimitExceeded => "PLUGIN_LIMIT_EXCEEDED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::RangeNotSatisfiable => "RANGE_NOT_SATISFIABLE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::CallbackNotAllowed => "CALLBACK_NOT_ALLOWED",
            ErrorCode::BackendNotFound => "BACKEND_NOT_FOUND",
            ErrorCode::StorageUnavailable => "STORAGE_UNAVAILABLE",
            ErrorCode::StorageFull => "STORAGE_FULL",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::HostNotAllowed => "HOST_NOT_ALLOWED",
            ErrorCode::CrossOriginRefused => "CROSS_ORIGIN_REFUSED",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::PluginBusy => "PLUGIN_BUSY",
        }
    }

    /// The HTTP status a request failing with this code answers with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::ComfyuiUnreachable => 503,
            ErrorCode::ComfyuiOom => 507,
            ErrorCode::ComfyuiTimeout => 504,
            ErrorCode::ComfyuiNodeError => 502,
            ErrorCode::ValidationError => 400,
            ErrorCode::WorkflowNotFound => 404,
            ErrorCode::JobNotFound => 404,
            ErrorCode::RateLimited => 429,
            ErrorCode::AuthFailed => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::IdempotencyConflict => 422,
            ErrorCode::PluginFailed => 422,
            ErrorCode::PluginLimitExceeded => 422,
            ErrorCode::Conflict => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::Internal => 500,
            ErrorCode::CallbackNotAllowed => 400,
            ErrorCode::BackendNotFound => 404,
            ErrorCode::StorageUnavailable => 503,
            // RFC 4918 §11.5; RFC 4331 §6 answers an exceeded quota with it too.
            ErrorCode::StorageFull | ErrorCode::QuotaExceeded => 507,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::HostNotAllowed => 403,
            ErrorCode::CrossOriginRefused => 403,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PluginBusy => 503,
        }
    }

    /// Whether the same request may succeed if simply tried again later.
    pub fn retryable(self) -> bool {
        match self {
            ErrorCode::ComfyuiUnreachable
            | ErrorCode::ComfyuiOom
            | ErrorCode::ComfyuiTimeout
            | ErrorCode::RateLimited
            | ErrorCode::Internal
            | ErrorCode::StorageUnavailable
            | ErrorCode::StorageFull
            | ErrorCode::QuotaExceeded
            | ErrorCode::RequestTimeout
            | ErrorCode::PluginBusy => true,
            ErrorCode::ComfyuiNodeError
            | ErrorCode::ValidationError
            | ErrorCode::WorkflowNotFound
            | ErrorCode::JobNotFound
            | ErrorCode::AuthFailed
            | ErrorCode::Forbidden
            | ErrorCode::PayloadTooLarge
            | ErrorCode::IdempotencyConflict
            | ErrorCode::PluginFailed
            | ErrorCode::PluginLimitExceeded
            | ErrorCode::Conflict
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::RangeNotSatisfiable
            | ErrorCode::CallbackNotAllowed
            | ErrorCode::BackendNotFound
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::HostNotAllowed
            | ErrorCode::CrossOriginRefused => false,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that reaches a client: a code, a message for humans, optional structured
/// details (e.g. the offending fields), and for `Internal`, a cause that is logged only.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for a human. Never contains internals for `Internal`.
    pub message: String,
    /// Structured details (JSON), e.g. `[{"path": "/width", "message": "..."}]`.
    pub details: Option<serde_json::Value>,
    /// How many more details there were than `details` lists (see
    /// [`Error::with_details_capped`]); 0 when it lists them all.
    pub details_omitted: usize,
}

/// Most entries a `details` list holds; the rest are only counted (`detailsOmitted`), so an
/// error body stays small however many problems a request has.
pub const DETAILS_MAX: usize = 50;

impl Error {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), details: None, details_omitted: 0 }
    }

    /// Attach structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Attach a list of details, at most [`DETAILS_MAX`] of them: the rest are counted in
    /// `details_omitted`, never built.
    pub fn with_details_capped(mut self, details: impl ExactSizeIterator<Item = serde_json::Value>) -> Self {
        let total = details.len();
        let kept: Vec<serde_json::Value> = details.take(DETAILS_MAX).collect();
        self.details_omitted = total - kept.len();
        self.details = Some(serde_json::Value::Array(kept));
        self
    }

    /// A `VALIDATION_ERROR` naming one field (a JSON pointer such as `/inputs/width`).
    pub fn validation(path: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Error::new(ErrorCode::ValidationError, format!("{path}: {message}"))
            .with_details(serde_json::json!([{ "path": path, "message": message }]))
    }

    /// An internal error: the cause is logged here, once; the client sees a generic text.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Error::new(ErrorCode::Internal, "internal error; see the gateway log")
    }
}

/// Result with the gateway error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    /// Fails to compile when a code is added without a position here, and fails when
    /// `ALL` misses it.
    fn position(code: ErrorCode) -> usize {
        match code {
            ErrorCode::ComfyuiUnreachable => 0,
            ErrorCode::ComfyuiOom => 1,
            ErrorCode::ComfyuiTimeout => 2,
            ErrorCode::ComfyuiNodeError => 3,
            ErrorCode::ValidationError => 4,
            ErrorCode::WorkflowNotFound => 5,
            ErrorCode::JobNotFound => 6,
            ErrorCode::RateLimited => 7,
            ErrorCode::AuthFailed => 8,
            ErrorCode::Forbidden => 9,
            ErrorCode::PayloadTooLarge => 10,
            ErrorCode::IdempotencyConflict => 11,
            ErrorCode::PluginFailed => 12,
            ErrorCode::PluginLimitExceeded => 13,
            ErrorCode::Conflict => 14,
            ErrorCode::NotFound => 15,
            ErrorCode::MethodNotAllowed => 16,
            ErrorCode::RangeNotSatisfiable => 17,
            ErrorCode::Internal => 18,
            ErrorCode::CallbackNotAllowed => 19,
            ErrorCode::BackendNotFound => 20,
            ErrorCode::StorageUnavailable => 21,
            ErrorCode::StorageFull => 22,
            ErrorCode::QuotaExceeded => 23,
            ErrorCode::UnsupportedMediaType => 24,
            ErrorCode::HostNotAllowed => 25,
            ErrorCode::CrossOriginRefused => 26,
            ErrorCode::RequestTimeout => 27,
            ErrorCode::PluginBusy => 28,
        }
    }

    #[test]
    fn capped_details_keep_the_first_and_count_the_rest() {
        use super::{DETAILS_MAX, Error};
        let many = (0..DETAILS_MAX * 3).map(|i| serde_json::json!({"path": format!("/{i}")}));
        let e = Error::new(ErrorCode::ValidationError, "x").with_details_capped(many);
        let list = e.details.as_ref().and_then(|d| d.as_array()).unwrap();
        assert_eq!(list.len(), DETAILS_MAX);
        assert_eq!(list[0]["path"], "/0");
        assert_eq!(e.details_omitted, DETAILS_MAX * 2);
        let few = (0..3).map(|i| serde_json::json!({"path": format!("/{i}")}));
        let e = Error::new(ErrorCode::ValidationError, "x").with_details_capped(few);
        assert_eq!((e.details.unwrap().as_array().unwrap().len(), e.details_omitted), (3, 0));
    }

    #[test]
    fn all_lists_every_code_once_with_distinct_strings() {
        assert_eq!(ErrorCode::ALL.len(), 29);
        let mut strings = std::collections::HashSet::new();
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(position(*code), i);
            assert!(strings.insert(code.as_str()));
            assert!((400..600).contains(&code.status()));
        }
    }
}
