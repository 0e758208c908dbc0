//! A fixed address in front of a service that tests take down and bring back up: the address
//! stays bound for the whole test, so bringing the service back never has to win back a port
//! that a test running alongside may have taken in between.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The front address and where it forwards to.
pub struct Front {
    /// The address clients dial.
    pub addr: SocketAddr,
    backend: Arc<Mutex<Option<SocketAddr>>>,
    stop: CancellationToken,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Front {
    /// Binds a front address on 127.0.0.1 that closes every connection until [`Front::set`].
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = Self {
            addr: listener.local_addr().unwrap(),
            backend: Arc::default(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(forward(listener, front.backend.clone(), front.stop.clone()));
        front
    }

    /// Pipes new connections to `backend`, or closes them at once when `None` (an outage).
    pub fn set(&self, backend: Option<SocketAddr>) {
        *self.backend.lock().unwrap() = backend;
    }
}

/// Accepts on `listener` until `stop`, piping each connection to the current backend.
async fn forward(
    listener: TcpListener,
    backend: Arc<Mutex<Option<SocketAddr>>>,
    stop: CancellationToken,
) {
    loop {
        let mut client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        let Some(target) = *backend.lock().unwrap() else {
            continue;
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
}
