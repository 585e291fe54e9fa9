//! The API's errors and their JSON form, and a `Json` extractor whose
//! rejections use that form.
//!
//! Every error is answered `{"error":{"code":"<snake_case>","message":"<text>"}}`.
//! Bad input is 4xx and is detected before anything changes; 5xx means the
//! request was fine but a dependency (store, directory, ids) failed.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// An API error: a status, a machine-readable code and a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 401: missing or wrong API key.
    #[error("missing or invalid api key")]
    Unauthorized,
    /// 400: the body is not valid JSON.
    #[error("{0}")]
    BadJson(String),
    /// 400: valid JSON of the wrong shape (types, missing or unknown fields).
    #[error("{0}")]
    InvalidRequest(String),
    /// 400: `users` is empty.
    #[error("users must not be empty")]
    EmptyUsers,
    /// 400: more users than allowed in one push.
    #[error("too many users: {n} > {max}")]
    TooManyUsers {
        /// Users in the request.
        n: usize,
        /// The limit.
        max: usize,
    },
    /// 400: an empty or oversized user id.
    #[error("invalid user id: {0}")]
    InvalidUser(String),
    /// 400: an invalid channel name.
    #[error("invalid channel name")]
    InvalidChannel,
    /// 400: `ttl` out of range.
    #[error("ttl must be between 1 and {max} seconds")]
    InvalidTtl {
        /// Largest accepted ttl, in seconds.
        max: u64,
    },
    /// 413: the body is larger than the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    #[error("expected content-type: application/json")]
    UnsupportedMediaType,
    /// 404: no such resource or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 429: the center cannot serve the push within its request timeout
    /// (its queue is full, or what is queued ahead would take too long);
    /// nothing was done. Answered at once with `Retry-After`.
    #[error("too many pushes in flight, retry after {retry_after_s} s")]
    Overloaded {
        /// Seconds the caller should wait (the `Retry-After` header).
        retry_after_s: u64,
    },
    /// 503: the store failed; the push was not accepted.
    #[error("store unavailable, the push was not accepted")]
    StoreUnavailable,
    /// 503: another dependency (ids, directory, rooms) failed.
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// 503: the request took longer than the request timeout.
    #[error("request timed out")]
    Timeout,
    /// 503: the center is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadJson(_)
            | ApiError::InvalidRequest(_)
            | ApiError::EmptyUsers
            | ApiError::TooManyUsers { .. }
            | ApiError::InvalidUser(_)
            | ApiError::InvalidChannel
            | ApiError::InvalidTtl { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StoreUnavailable
            | ApiError::Unavailable(_)
            | ApiError::Timeout
            | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code, e.g. `"too_many_users"`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadJson(_) => "bad_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::EmptyUsers => "empty_users",
            ApiError::TooManyUsers { .. } => "too_many_users",
            ApiError::InvalidUser(_) => "invalid_user",
            ApiError::InvalidChannel => "invalid_channel",
            ApiError::InvalidTtl { .. } => "invalid_ttl",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::StoreUnavailable => "store_unavailable",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Timeout => "timeout",
            ApiError::ShuttingDown => "shutting_down",
        }
    }

    fn from_json_rejection(r: &JsonRejection) -> ApiError {
        match r {
            JsonRejection::JsonSyntaxError(e) => ApiError::BadJson(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::BadJson(other.body_text()),
        }
    }
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, `snake_case`.
    #[schema(example = "too_many_users")]
    pub code: String,
    /// Human-readable.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut r = (self.status(), axum::Json(body)).into_response();
        if let ApiError::Overloaded { retry_after_s } = self {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after_s.into());
        }
        r
    }
}

/// `axum::Json`, with rejections answered as [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<Object<T>>::from_request(req, state).await {
            Ok(axum::Json(Object(v))) => Ok(ApiJson(v)),
            Err(r) => Err(ApiError::from_json_rejection(&r)),
        }
    }
}

/// A request body that must be a JSON object. serde's derived structs also
/// take a JSON array (their fields in order); a body such as
/// `["news",1,true]` is refused here instead.
struct Object<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
            .map(Object)
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
