//! Published services: the proxy box listens on a kernel socket and, for
//! every connection that arrives there, opens a connection from a VNIC to a
//! session's service ([`ProxyEngine::open`]) and relays the two. The session
//! sees its peer as the proxy box's service address (`publish_source`), and
//! the connection follows the session across migrations like any other.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::stream::Splice;
use super::Shared;
use crate::proxybox::ProxyEngine;

/// Why a service could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0} is published already")]
    Taken(SocketAddr),
    #[error("at most {0} published services")]
    Full(usize),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

struct Service {
    session: SocketAddrV4,
    accept_loop: JoinHandle<()>,
    /// A second descriptor of the listening socket: aborting the accept
    /// loop closes its own only when the task is next polled, after the
    /// control reply; shutting the socket down through this one stops the
    /// listening at once.
    socket: std::net::TcpListener,
}

impl Service {
    /// Stops listening now (new connections are refused) and ends the
    /// accept loop; relayed connections go on.
    fn stop(&self) {
        if let Err(e) = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Read) {
            tracing::warn!(session = %self.session, error = %e, "stopping a published service's listener");
        }
        self.accept_loop.abort();
    }
}

/// The proxy box's published services, by listening address.
pub struct Publisher {
    engine: Rc<RefCell<ProxyEngine>>,
    shared: Rc<Shared>,
    source: Ipv4Addr,
    max: usize,
    services: RefCell<BTreeMap<SocketAddr, Service>>,
}

impl Publisher {
    pub fn new(
        engine: Rc<RefCell<ProxyEngine>>,
        shared: Rc<Shared>,
        source: Ipv4Addr,
        max: usize,
    ) -> Rc<Publisher> {
        Rc::new(Publisher {
            engine,
            shared,
            source,
            max,
            services: RefCell::new(BTreeMap::new()),
        })
    }

    /// Listens on `listen` (port 0: any) and relays what arrives to the
    /// session's service `session`. Returns the address it listens on.
    /// Must run inside the dataplane's `LocalSet`.
    pub fn publish(
        &self,
        listen: SocketAddr,
        session: SocketAddrV4,
    ) -> Result<SocketAddr, PublishError> {
        let mut services = self.services.borrow_mut();
        if services.contains_key(&listen) {
            return Err(PublishError::Taken(listen));
        }
        if services.len() >= self.max {
            return Err(PublishError::Full(self.max));
        }
        let listen_error = |source| PublishError::Listen {
            addr: listen,
            source,
        };
        let std_listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
        std_listener.set_nonblocking(true).map_err(listen_error)?;
        let bound = std_listener.local_addr().map_err(listen_error)?;
        let socket = std_listener.try_clone().map_err(listen_error)?;
        let listener = TcpListener::from_std(std_listener).map_err(listen_error)?;
        let accept_loop = tokio::task::spawn_local(accept_loop(
            listener,
            self.engine.clone(),
            self.shared.clone(),
            session,
            self.source,
        ));
        services.insert(
            bound,
            Service {
                session,
                accept_loop,
                socket,
            },
        );
        tracing::info!(listen = %bound, %session, "service published");
        Ok(bound)
    }

    /// Stops listening on `listen`; connections already relayed go on.
    /// Returns whether it was published.
    pub fn unpublish(&self, listen: SocketAddr) -> bool {
        match self.services.borrow_mut().remove(&listen) {
            Some(service) => {
                service.stop();
                tracing::info!(%listen, session = %service.session, "service unpublished");
                true
            }
            None => false,
        }
    }

    /// Every published service: listening address -> session service.
    pub fn list(&self) -> Vec<(SocketAddr, SocketAddrV4)> {
        self.services
            .borrow()
            .iter()
            .map(|(l, s)| (*l, s.session))
            .collect()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        for service in self.services.get_mut().values() {
            service.stop();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    engine: Rc<RefCell<ProxyEngine>>,
    shared: Rc<Shared>,
    session: SocketAddrV4,
    source: Ipv4Addr,
) {
    loop {
        match listener.accept().await {
            Ok((outside, peer)) => {
                let relay = relay(
                    engine.clone(),
                    shared.clone(),
                    session,
                    source,
                    outside,
                    peer,
                );
                tokio::task::spawn_local(relay);
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little
                // rather than spin, and carry on.
                tracing::warn!(%session, error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One outside connection: a VNIC connection to the session's service,
/// then both relayed until both sides closed.
async fn relay(
    engine: Rc<RefCell<ProxyEngine>>,
    shared: Rc<Shared>,
    session: SocketAddrV4,
    source: Ipv4Addr,
    outside: TcpStream,
    peer: SocketAddr,
) {
    let opened = engine.borrow_mut().open(shared.now(), session, source);
    let id = match opened {
        Ok(id) => id,
        Err(e) => {
            // Dropping `outside` closes it: the client sees the refusal.
            tracing::warn!(%session, %peer, error = %e, "cannot open a connection to the session");
            return;
        }
    };
    shared.kick();
    let _ = outside.set_nodelay(true);
    let splice = Splice::new(engine, shared.clone(), id, outside);
    match tokio::time::timeout(shared.connect_timeout, splice.established()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%session, %peer, error = %e, "the session refused the connection");
            return;
        }
        Err(_) => {
            tracing::debug!(%session, %peer, "the session did not answer");
            splice.abort();
            return;
        }
    }
    if let Err(e) = splice.run().await {
        tracing::debug!(%session, %peer, error = %e, "relay ended with an error");
        splice.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxybox::ProxyConfig;

    /// Unpublished means refused from the moment `unpublish` returns, before
    /// the runtime has run the aborted accept loop again (the control reply
    /// goes out in between).
    #[test]
    fn an_unpublished_service_refuses_connections_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let engine = Rc::new(RefCell::new(ProxyEngine::new(ProxyConfig::default(), 1)));
            let publisher = Publisher::new(
                engine,
                Shared::new(std::time::Duration::from_secs(1)),
                Ipv4Addr::new(100, 64, 0, 1),
                4,
            );
            let session = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 100), 5901);
            let listen = publisher
                .publish("127.0.0.1:0".parse().unwrap(), session)
                .unwrap();
            // Let the accept loop start.
            tokio::task::yield_now().await;
            assert_eq!(publisher.list(), [(listen, session)]);
            assert!(publisher.unpublish(listen));
            let refused = std::net::TcpStream::connect(listen).map_err(|e| e.kind());
            assert_eq!(refused.err(), Some(io::ErrorKind::ConnectionRefused));
            assert!(publisher.list().is_empty());
            assert!(!publisher.unpublish(listen));
        });
    }
}
