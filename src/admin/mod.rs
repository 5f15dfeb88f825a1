//! The admin HTTP server (axum, TCP on `[admin] listen`): liveness, readiness, Prometheus
//! metrics, catalogue / pool / client stats, and a few operator actions.
//!
//! [`router`] builds the whole API from an [`AdminState`], so tests drive it with `oneshot`
//! without a socket; [`serve`] runs it until its cancellation token fires. Read-only endpoints
//! are open (bind the port to a trusted interface); mutating ones need
//! `Authorization: Bearer <[admin] token>` and are off when no token is configured. Every error
//! is an [`AdminError`], turned into a JSON response in one place. `docs/admin-api.md` is the
//! reference.

mod error;
mod handlers;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::AdminError;

use crate::app::Reloader;
use crate::config::Secret;
use crate::ipc::Shared;

/// What the handlers read; cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// `None` (or empty) turns the mutating endpoints off.
    token: Option<Secret>,
    reloader: Option<Reloader>,
    started: Instant,
}

impl AdminState {
    /// State for the admin API of the daemon whose sessions share `shared`. `token` is the
    /// `[admin] token`; `reloader` serves `POST /reload` (none: reloads are refused).
    pub fn new(shared: Arc<Shared>, token: Option<Secret>, reloader: Option<Reloader>) -> Self {
        AdminState {
            inner: Arc::new(Inner {
                shared,
                token: token.filter(|t| !t.is_empty()),
                reloader,
                started: Instant::now(),
            }),
        }
    }
}

/// The admin API.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(handlers::live))
        .route("/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .route("/cache", get(handlers::cache))
        .route("/pools", get(handlers::pools))
        .route("/clients", get(handlers::clients))
        .route("/version", get(handlers::version))
        .route("/reload", post(handlers::reload))
        .route("/cache/flush", post(handlers::flush_cache))
        .route("/upstreams/{name}/pause", post(handlers::pause))
        .route("/upstreams/{name}/resume", post(handlers::resume))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}

/// Serves `router` on `listener` until `cancel` fires, then lets open requests finish.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) {
    let addr = listener.local_addr().ok();
    tracing::debug!(?addr, "admin server listening");
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    match served {
        Ok(()) => tracing::debug!("admin server stopped"),
        Err(e) => tracing::error!(error = %e, "admin server failed"),
    }
}
