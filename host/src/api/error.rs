//! API errors: a status and a message, answered as `{"error": "..."}`.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
    /// Extra JSON fields (e.g. `committed`), merged into the body.
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            extra: None,
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such route or object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Adds a JSON field to the body.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    /// The response carrying this error.
    pub fn response(&self) -> http::Response<Full<Bytes>> {
        let mut body = self.extra.clone().unwrap_or_default();
        body.insert("error".into(), self.message.clone().into());
        json_response(self.status, &serde_json::Value::Object(body))
    }
}

/// A JSON response with this status.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> http::Response<Full<Bytes>> {
    typed_json_response(status, value)
}

/// A JSON answer from any serializable value (no `Value` tree built first:
/// what the push API answers per task).
pub fn typed_json_response(
    status: StatusCode,
    value: &impl serde::Serialize,
) -> http::Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
