//! `hello`, `connect` and `connect_pg`: the ops that set up a session.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::SslMode;
use crate::error::{Code, Error};
use crate::ipc::reply::Reply;
use crate::ipc::request::Request;
use crate::ipc::Shared;
use crate::supervisor::Credentials;
use crate::upstream::Upstream;

use super::statements::missing;

/// The protocol this daemon speaks.
pub const PROTOCOL: u32 = 1;

/// `hello`: checks the protocol and the token. Returns whether the session is now authenticated.
pub fn hello(
    shared: &Shared,
    session: &str,
    req: &Request<'_>,
    reply: &mut Reply,
) -> Result<bool, Error> {
    let protocol = req.protocol.ok_or_else(|| missing("protocol", "hello"))?;
    if protocol != PROTOCOL {
        return Err(Error::new(
            Code::UnsupportedProtocol,
            format!("protocol {protocol} is not supported; this daemon speaks protocol {PROTOCOL}"),
        ));
    }
    let authed = match (&shared.token, req.token.as_deref()) {
        (None, _) => true,
        (Some(expected), Some(given)) => {
            if !bool::from(expected.expose().as_bytes().ct_eq(given.as_bytes())) {
                return Err(Error::new(Code::AuthFailed, "wrong token"));
            }
            true
        }
        (Some(_), None) => {
            return Err(Error::new(
                Code::AuthFailed,
                "this daemon requires a token: send hello with \"token\"",
            ))
        }
    };
    reply.int_field("protocol", u64::from(PROTOCOL));
    reply.str_field("server", &shared.server);
    reply.str_field("session", session);
    Ok(authed)
}

/// `connect`: selects a configured upstream by name.
pub fn connect(
    shared: &Shared,
    req: &Request<'_>,
    reply: &mut Reply,
) -> Result<Arc<Upstream>, Error> {
    let name = req
        .upstream
        .as_deref()
        .ok_or_else(|| missing("upstream", "connect"))?;
    let up = shared.supervisor.get(name).ok_or_else(|| {
        let shown: String = name.chars().take(64).collect();
        Error::new(
            Code::UnknownUpstream,
            format!(
                "no upstream named \"{shown}\"; configured: {}",
                shared.supervisor.names().join(", ")
            ),
        )
    })?;
    reply.str_field("upstream", up.name());
    Ok(up)
}

/// `connect_pg`: selects the upstream matching the seed's credentials call.
pub async fn connect_pg(
    shared: &Shared,
    req: &Request<'_>,
    reply: &mut Reply,
) -> Result<Arc<Upstream>, Error> {
    let field = |v: &Option<std::borrow::Cow<'_, str>>, name: &str| {
        v.as_deref()
            .map(str::to_owned)
            .ok_or_else(|| missing(name, "connect_pg"))
    };
    let host = field(&req.host, "host")?;
    let user = field(&req.user, "user")?;
    let database = field(&req.database, "database")?;
    let port = req.port.ok_or_else(|| missing("port", "connect_pg"))?;
    let password = req.password.as_deref().unwrap_or("");
    let sslmode = match req.sslmode.as_deref() {
        None | Some("disable") => SslMode::Disable,
        Some("prefer") => SslMode::Prefer,
        Some("require") => SslMode::Require,
        Some(mode @ ("verify-ca" | "verify-full")) => {
            return Err(Error::bad_request(format!(
                "connect_pg takes sslmode \"disable\", \"prefer\" or \"require\"; \"{mode}\" needs the daemon to trust a certificate authority: configure the upstream with sslrootcert and connect to it by name"
            )))
        }
        Some(other) => {
            return Err(Error::bad_request(format!(
                "unknown sslmode {other:?}: connect_pg takes \"disable\", \"prefer\" or \"require\""
            )))
        }
    };
    let up = shared
        .supervisor
        .resolve_credentials(&Credentials {
            host: &host,
            port,
            user: &user,
            database: &database,
            password,
            sslmode,
        })
        .await?;
    reply.str_field("upstream", up.name());
    Ok(up)
}
