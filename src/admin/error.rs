//! The admin API's errors and their one mapping to an HTTP response:
//! `{"error": {"code": "...", "message": "..."}}` with a status that fits.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::app::ReloadError;
use crate::config::ConfigError;
use crate::metrics::MetricsError;

/// A failed admin request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A mutating endpoint while no `[admin] token` is configured.
    #[error(
        "this endpoint is disabled: set [admin] token to enable the admin API's mutating endpoints"
    )]
    Disabled,
    #[error("missing bearer token: send `Authorization: Bearer <[admin] token>`")]
    MissingToken,
    #[error("wrong admin token")]
    WrongToken,
    #[error("no upstream named \"{0}\"")]
    UnknownUpstream(String),
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

impl AdminError {
    /// The machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Disabled => "disabled",
            AdminError::MissingToken => "unauthorized",
            AdminError::WrongToken => "unauthorized",
            AdminError::UnknownUpstream(_) => "unknown_upstream",
            AdminError::NotFound(_) => "not_found",
            AdminError::MethodNotAllowed => "method_not_allowed",
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Reload(ReloadError::NoConfigFile) => "no_config_file",
            AdminError::Reload(ReloadError::Invalid(ConfigError::Read { .. })) => {
                "config_unreadable"
            }
            AdminError::Reload(ReloadError::Invalid(_)) => "invalid_config",
            AdminError::Reload(ReloadError::Task(_)) => "internal",
            AdminError::Metrics(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Disabled => StatusCode::FORBIDDEN,
            AdminError::MissingToken | AdminError::WrongToken => StatusCode::UNAUTHORIZED,
            AdminError::UnknownUpstream(_) | AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Reload(ReloadError::NoConfigFile) => StatusCode::CONFLICT,
            AdminError::Reload(ReloadError::Invalid(ConfigError::Read { .. })) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            AdminError::Reload(ReloadError::Invalid(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Reload(ReloadError::Task(_)) | AdminError::Metrics(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "admin request failed");
        }
        let body = serde_json::json!({
            "error": {"code": self.code(), "message": self.to_string()}
        });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
