//! The client side: raft batches go through raft-core's [`PeerLinks`] over one long-lived
//! stream per peer; calls are unary RPCs on a second connection to the same peer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::transport::link::{check_call_size, OpenStream, PeerLinks, RaftStreams};
use raft_core::wire::{self, RaftBatch};
use raft_core::TransportError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::proto::raftkit_client::RaftkitClient;
use crate::server::NOT_PROCESSED;

/// What the client needs from the transport's settings.
#[derive(Clone)]
pub(crate) struct ClientOptions {
    pub(crate) tls: Option<ClientTlsConfig>,
    pub(crate) max_message_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
}

/// The two connections to one peer: snapshot chunks and forwarded requests never queue
/// behind, or in front of, raft messages.
#[derive(Clone)]
struct PeerChannels {
    calls: RaftkitClient<Channel>,
    stream: RaftkitClient<Channel>,
}

/// Outbound connections of one transport, by peer address; opens raft streams for the links.
pub(crate) struct Channels {
    options: ClientOptions,
    peers: Mutex<HashMap<String, PeerChannels>>,
}

impl Channels {
    pub(crate) fn new(options: ClientOptions) -> Self {
        Channels {
            options,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, TransportError> {
        let o = &self.options;
        let scheme = if o.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| {
                TransportError::unreachable(addr, format!("not a host:port address: {e}"))
            })?
            .connect_timeout(o.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(o.keepalive)
            .keep_alive_timeout(o.keepalive)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(o.stream_window)
            .initial_connection_window_size(o.connection_window);
        match &o.tls {
            None => Ok(endpoint),
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| TransportError::Setup(format!("TLS towards {addr}: {e}"))),
        }
    }

    fn client(&self, channel: Channel) -> RaftkitClient<Channel> {
        RaftkitClient::new(channel)
            .max_decoding_message_size(self.options.max_message_size)
            .max_encoding_message_size(self.options.max_message_size)
    }

    /// The connections to `addr`, created (lazily connecting) on first use.
    fn peer(&self, addr: &str) -> Result<PeerChannels, TransportError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peers.get(addr) {
            return Ok(peer.clone());
        }
        let endpoint = self.endpoint(addr)?;
        let peer = PeerChannels {
            calls: self.client(endpoint.connect_lazy()),
            stream: self.client(endpoint.connect_lazy()),
        };
        peers.insert(addr.to_string(), peer.clone());
        Ok(peer)
    }
}

#[async_trait]
impl RaftStreams for Channels {
    type Frame = RaftBatch;

    fn frame(&self, batch: RaftBatch, _max: usize) -> Result<RaftBatch, TransportError> {
        Ok(batch)
    }

    async fn open(
        &self,
        addr: &str,
        frames: mpsc::Receiver<RaftBatch>,
    ) -> Result<OpenStream, String> {
        let mut client = self.peer(addr).map_err(|e| e.to_string())?.stream;
        let response = client
            .raft_stream(ReceiverStream::new(frames))
            .await
            .map_err(|status| describe(&status))?;
        let peer = addr.to_string();
        Ok(Box::pin(async move {
            let mut acks = response.into_inner();
            loop {
                match acks.message().await {
                    Ok(Some(ack)) => tracing::warn!(
                        %peer,
                        rejected = ack.rejected,
                        received = ack.received,
                        "the peer refused a raft batch: {}",
                        ack.error
                    ),
                    Ok(None) => return "the peer closed the raft stream".to_string(),
                    Err(status) => return describe(&status),
                }
            }
        }))
    }
}

/// Outbound traffic of one transport: raft links and calls.
pub(crate) struct Clients {
    links: PeerLinks<Channels>,
    max_message_size: usize,
}

impl Clients {
    pub(crate) fn new(links: PeerLinks<Channels>, max_message_size: usize) -> Self {
        Clients {
            links,
            max_message_size,
        }
    }

    /// Queues `batch` on the raft stream to `addr`.
    pub(crate) async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        self.links.send(addr, batch).await
    }

    /// One request/response call.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: wire::Request,
        timeout: Duration,
    ) -> Result<wire::Response, TransportError> {
        check_call_size(&request, self.max_message_size)?;
        let mut client = self.links.streams().peer(addr)?.calls;
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.call(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(classify(addr, status)),
            Err(_) => Err(TransportError::failed(
                addr,
                format!("no answer within {timeout:?}"),
            )),
        }
    }
}

fn describe(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

/// True when the request certainly did not reach the peer's node: the connection could not
/// be made, or the peer's server had stopped.
fn not_delivered(status: &Status) -> bool {
    if status.metadata().get(NOT_PROCESSED).is_some() {
        return true;
    }
    if status.code() == Code::Unknown && status.message().starts_with("Service was not ready") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Maps a failed call to what raft-core needs to know: was it delivered?
fn classify(addr: &str, status: Status) -> TransportError {
    let reason = describe(&status);
    if not_delivered(&status) {
        TransportError::unreachable(addr, reason)
    } else {
        TransportError::failed(addr, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_servers_and_connect_errors_mean_not_delivered() {
        let mut stopped = Status::unavailable("stopped");
        stopped.metadata_mut().insert(
            NOT_PROCESSED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        assert!(matches!(
            classify("a", stopped),
            TransportError::Unreachable { .. }
        ));
        let connect =
            Status::from_error(Box::new(tonic::ConnectError("connection refused".into())));
        assert!(matches!(
            classify("a", connect),
            TransportError::Unreachable { .. }
        ));
        assert!(matches!(
            classify("a", Status::internal("boom")),
            TransportError::Failed { .. }
        ));
    }
}
