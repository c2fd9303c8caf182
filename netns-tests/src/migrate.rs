//! Migrating a session through the dataplanes' control sockets, the way
//! sessiond does around a CRIU checkpoint/restore: the session's connection
//! labels leave the old server's dataplane, the session moves, the new
//! server's dataplane takes the labels and announces the session (gratuitous
//! ARP), and, across subnets, the proxy box learns the new physical address.

use std::path::{Path, PathBuf};

use mobidesk_dataplane::control::{self, ProxyRequest, Response, ServerRequest};
use mobidesk_dataplane::server::SessionState;

use crate::lab::{Lab, Session};
use crate::{LabError, Result};

/// Where a lab's dataplanes listen: `<run dir>/dataplane-proxy.sock` and
/// `<run dir>/dataplane-server-<server>.sock` (the demo and
/// [`crate::dataplane`] both use these).
pub fn proxy_socket(lab: &Lab) -> Result<PathBuf> {
    Ok(lab.run_dir()?.join("dataplane-proxy.sock"))
}

pub fn server_socket(lab: &Lab, server: &str) -> Result<PathBuf> {
    Ok(lab
        .run_dir()?
        .join(format!("dataplane-server-{server}.sock")))
}

fn ask<R: serde::Serialize>(socket: &Path, request: &R) -> Result<Response> {
    let r = control::request(socket, request)
        .map_err(|e| LabError::Daemon(format!("dataplane at {}: {e}", socket.display())))?;
    if r.ok {
        Ok(r)
    } else {
        Err(LabError::Daemon(format!(
            "dataplane at {} refused: {}",
            socket.display(),
            r.error.unwrap_or_default()
        )))
    }
}

/// Moves `session` to server `to`, keeping the dataplanes in step; they
/// listen where [`proxy_socket`] and [`server_socket`] say.
pub fn migrate_session(lab: &Lab, session: &str, to: &str) -> Result<Session> {
    migrate_via(lab, session, to, &proxy_socket(lab)?, &|s| {
        server_socket(lab, s)
    })
}

/// [`migrate_session`] with the control sockets given: the proxy box's,
/// and a server's by name.
pub fn migrate_via(
    lab: &Lab,
    session: &str,
    to: &str,
    proxy: &Path,
    server_socket: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<Session> {
    let before = lab.session(session)?;
    lab.server(to)?;
    let exported = ask(
        &server_socket(&before.server)?,
        &ServerRequest::ExportSession {
            virtual_addr: before.virtual_addr,
        },
    )?
    .session
    .ok_or_else(|| LabError::Daemon("export returned no session".into()))?;
    let after = match lab.move_session(session, to) {
        Ok(after) => after,
        Err(e) => {
            // Put the labels back where the session still is.
            let _ = ask(
                &server_socket(&before.server)?,
                &ServerRequest::ImportSession {
                    session: exported,
                    announce: false,
                },
            );
            return Err(e);
        }
    };
    let crossed = after.physical_addr != before.physical_addr;
    let state = SessionState {
        physical: after.physical_addr,
        labelled: exported.labelled || crossed,
        ..exported
    };
    ask(
        &server_socket(to)?,
        &ServerRequest::ImportSession {
            session: state.clone(),
            announce: true,
        },
    )?;
    if state.labelled {
        ask(
            proxy,
            &ProxyRequest::SessionMoved {
                virtual_addr: before.virtual_addr,
                from: before.physical_addr,
                to: after.physical_addr,
            },
        )?;
    }
    Ok(after)
}
