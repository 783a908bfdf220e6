//! Errors as clients see them: an HTTP-agnostic [`ErrorKind`] and a stable machine `code` (RFC 9457 plus `code`).
//!
//! Every error type a route can return implements [`Problem`]; `scenefin-guest` renders it as
//! `application/problem+json` with the status of its kind. Codes are stable snake_case strings: clients branch on
//! them, so a code, once shipped, never changes meaning.

use std::fmt;

/// What went wrong, independent of HTTP. Each kind maps to exactly one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input: 400.
    Invalid,
    /// Missing or bad credentials: 401.
    Unauthenticated,
    /// Authenticated but not allowed: 403.
    Forbidden,
    /// No such resource, or not the caller's: 404.
    NotFound,
    /// Method not allowed on the resource: 405.
    MethodNotAllowed,
    /// Conflicts with current state (idempotency key reuse, concurrent change): 409.
    Conflict,
    /// Body too large: 413.
    PayloadTooLarge,
    /// Wrong content type: 415.
    UnsupportedMediaType,
    /// Well-formed but refused by a business rule: 422.
    Unprocessable,
    /// Rate or attempt limit hit: 429.
    TooManyRequests,
    /// A dependency is temporarily unavailable (store contention): 503.
    Unavailable,
    /// A bug or an infrastructure failure: 500, with no detail shown.
    Internal,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Unprocessable => 422,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// The standard reason phrase, used as the problem `title`.
    pub fn title(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "Bad Request",
            ErrorKind::Unauthenticated => "Unauthorized",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::NotFound => "Not Found",
            ErrorKind::MethodNotAllowed => "Method Not Allowed",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::PayloadTooLarge => "Payload Too Large",
            ErrorKind::UnsupportedMediaType => "Unsupported Media Type",
            ErrorKind::Unprocessable => "Unprocessable Content",
            ErrorKind::TooManyRequests => "Too Many Requests",
            ErrorKind::Unavailable => "Service Unavailable",
            ErrorKind::Internal => "Internal Server Error",
        }
    }
}

/// An error a client may see.
pub trait Problem: fmt::Display {
    /// The kind, which decides the status.
    fn kind(&self) -> ErrorKind;
    /// The stable machine code, e.g. `validation_failed`.
    fn code(&self) -> &'static str;
    /// The offending input field, for validation errors.
    fn field(&self) -> Option<&str> {
        None
    }
    /// The open order that holds what the request wanted (a bill already being paid), named in the problem as
    /// `open_order_id` so a client can show or resume it.
    fn open_order_id(&self) -> Option<&str> {
        None
    }
}

/// A general-purpose problem for errors that need no enum of their own (validation, auth, routing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Kind, deciding the status.
    pub kind: ErrorKind,
    /// Stable machine code.
    pub code: &'static str,
    /// Human explanation (never internal details).
    pub detail: String,
    /// Offending field, if any.
    pub field: Option<String>,
}

impl ApiError {
    /// A new problem.
    pub fn new(kind: ErrorKind, code: &'static str, detail: impl Into<String>) -> Self {
        Self { kind, code, detail: detail.into(), field: None }
    }

    /// `400 validation_failed` naming the field.
    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(ErrorKind::Invalid, "validation_failed", detail) }
    }

    /// `404 not_found`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", what)
    }

    /// `405 method_not_allowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(ErrorKind::MethodNotAllowed, "method_not_allowed", "method not allowed on this resource")
    }

    /// `500 internal_error`; the detail is for logs only.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal_error", detail)
    }

    /// Converts any problem into an `ApiError`, keeping kind, code, message and field.
    pub fn from_problem(p: &dyn Problem) -> Self {
        Self { kind: p.kind(), code: p.code(), detail: p.to_string(), field: p.field().map(str::to_owned) }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for ApiError {}

impl Problem for ApiError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
    fn code(&self) -> &'static str {
        self.code
    }
    fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

/// Gives a scenario's error enum — which has `Invalid { field: String, message: String }` and `Store(StoreError)`
/// variants — its `invalid(field, message)` constructor and the conversion from event errors (an unknown customer
/// is a validation error on `customer`).
#[macro_export]
macro_rules! scenario_error_basics {
    ($name:ident) => {
        impl From<$crate::events::EventError> for $name {
            fn from(e: $crate::events::EventError) -> Self {
                match e {
                    $crate::events::EventError::UnknownCustomer(_) => $name::invalid("customer", "unknown customer"),
                    $crate::events::EventError::Store(e) => $name::Store(e),
                }
            }
        }

        impl $name {
            /// A validation error on `field`.
            pub fn invalid(field: &str, message: impl Into<String>) -> Self {
                $name::Invalid { field: field.to_owned(), message: message.into() }
            }
        }
    };
}

/// The RFC 9457 body for a problem. `Internal` problems get a fixed detail: causes belong in logs. Not generic: one
/// copy serves every error type (component size).
pub fn problem_json(p: &dyn Problem) -> serde_json::Value {
    let kind = p.kind();
    let detail = if kind == ErrorKind::Internal { "internal error".to_owned() } else { p.to_string() };
    let mut body = serde_json::json!({
        "type": format!("/problems/{}", p.code()),
        "title": kind.title(),
        "status": kind.status(),
        "detail": detail,
        "code": p.code(),
    });
    if let (Some(field), Some(obj)) = (p.field(), body.as_object_mut()) {
        obj.insert("field".into(), field.into());
    }
    if let (Some(order), Some(obj)) = (p.open_order_id(), body.as_object_mut()) {
        obj.insert("open_order_id".into(), order.into());
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_problems_hide_their_detail() {
        let body = problem_json(&ApiError::internal("db password wrong"));
        assert_eq!(body["detail"], "internal error");
        assert_eq!(body["status"], 500);
    }

    #[test]
    fn validation_problems_name_the_field() {
        let body = problem_json(&ApiError::validation("amount_fen", "must be positive"));
        assert_eq!(body["code"], "validation_failed");
        assert_eq!(body["field"], "amount_fen");
        assert_eq!(body["status"], 400);
        assert_eq!(body["type"], "/problems/validation_failed");
    }
}
