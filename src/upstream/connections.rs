//! Counts the upstream connections every worker's client opens. A call that goes out on a new
//! connection reaches Tencent a TCP (and TLS) handshake after its send, later than a call on a
//! connection already open; the budget holds the slot of any call in flight while a connection was
//! opened for its whole answer time, and keeps it out of the latency every call pays
//! (`budget::window`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;

/// How many upstream connections have been opened (or tried) so far.
#[derive(Debug, Default)]
pub(crate) struct ConnectionsOpened(AtomicU64);

impl ConnectionsOpened {
    pub(crate) fn so_far(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// awc's own resolver and TCP connector, counting each connection it starts to open.
#[derive(Clone)]
pub(super) struct CountingConnector {
    inner: ConnectorService,
    opened: Arc<ConnectionsOpened>,
}

impl CountingConnector {
    pub(super) fn new(opened: Arc<ConnectionsOpened>) -> Self {
        Self {
            inner: ConnectorService::default(),
            opened,
        }
    }
}

impl Service<ConnectInfo<Uri>> for CountingConnector {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = <ConnectorService as Service<ConnectInfo<Uri>>>::Future;

    // awc's connector is always ready (it resolves and connects per call).
    actix_service::always_ready!();

    fn call(&self, info: ConnectInfo<Uri>) -> Self::Future {
        // Counted before the connect starts: a call in flight from here on may be waiting on it.
        self.opened.0.fetch_add(1, Ordering::AcqRel);
        self.inner.call(info)
    }
}
