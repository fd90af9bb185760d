//! The node a transport's server delivers to, until its [`ServerGuard`](super::ServerGuard)
//! is dropped.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::InboundHandler;

/// Holds a server's [`InboundHandler`] and its stop signal. Once stopped, nothing reaches the
/// node any more: [`Serving::handler`] answers `None`, and every task waiting on
/// [`Serving::stopped`] wakes.
pub struct Serving {
    handler: Mutex<Option<Arc<dyn InboundHandler>>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("stopped", &*self.stop.borrow())
            .finish()
    }
}

impl Serving {
    /// Starts delivering to `handler`.
    pub fn new(handler: Arc<dyn InboundHandler>) -> Self {
        Serving {
            handler: Mutex::new(Some(handler)),
            stop: watch::channel(false).0,
        }
    }

    /// The node, while the server runs.
    pub fn handler(&self) -> Option<Arc<dyn InboundHandler>> {
        self.handler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Cuts the node off and wakes every task waiting on [`Serving::stopped`].
    pub fn stop(&self) {
        drop(
            self.handler
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        self.stop.send_replace(true);
    }

    /// Resolves once the server has stopped (at once if it already has).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}
