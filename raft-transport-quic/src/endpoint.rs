//! The transport's settings and the quinn endpoints and QUIC parameters built from them.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, IdleTimeout, TokioRuntime, TransportConfig, VarInt};

use crate::tls::{restart_keys, LoadedTls};

/// Raft streams a peer connection may have open at once (one in use, a few being replaced).
const MAX_RAFT_STREAMS: u32 = 16;
/// Calls a peer connection may have in flight at once; more wait for a stream.
const MAX_CALL_STREAMS: u32 = 1024;
/// The round-trip time assumed before the first sample. quinn's default (333 ms, RFC 9002)
/// suits the open internet; raft clusters live on LANs, and a lower value makes a lost
/// handshake packet (a peer that is just restarting) get resent after ~300 ms instead of 1 s.
const INITIAL_RTT: Duration = Duration::from_millis(100);
/// Per-stream receive window: unread bytes a peer may send on one stream.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection receive window: unread bytes a peer may send on all its streams together
/// (quinn's default is unlimited).
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// Everything a transport's client and server sides need.
pub(crate) struct Settings {
    pub(crate) tls: LoadedTls,
    pub(crate) max_message_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_backoff: Duration,
}

impl Settings {
    /// QUIC parameters both sides share: a dead peer is noticed within three keepalives;
    /// no unreliable datagrams.
    fn transport(&self, server: bool) -> TransportConfig {
        let mut t = TransportConfig::default();
        let idle = IdleTimeout::try_from(self.keepalive.saturating_mul(3))
            .unwrap_or_else(|_| IdleTimeout::from(VarInt::from_u32(30_000)));
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keepalive))
            .datagram_receive_buffer_size(None)
            .initial_rtt(INITIAL_RTT)
            .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
            .receive_window(VarInt::from_u32(CONNECTION_WINDOW));
        if server {
            t.max_concurrent_uni_streams(VarInt::from_u32(MAX_RAFT_STREAMS))
                .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CALL_STREAMS));
        } else {
            // Servers never open streams towards clients.
            t.max_concurrent_uni_streams(VarInt::from_u32(0))
                .max_concurrent_bidi_streams(VarInt::from_u32(0));
        }
        t
    }

    pub(crate) fn client_config(&self) -> quinn::ClientConfig {
        let mut config = quinn::ClientConfig::new(self.tls.client.clone());
        config.transport_config(Arc::new(self.transport(false)));
        config
    }

    pub(crate) fn server_config(&self) -> quinn::ServerConfig {
        let mut config = quinn::ServerConfig::with_crypto(self.tls.server.clone());
        config.transport_config(Arc::new(self.transport(true)));
        config
    }
}

/// A client endpoint on an ephemeral port of the given family.
pub(crate) fn client(ipv6: bool) -> Result<Endpoint, String> {
    let bind: SocketAddr = if ipv6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).map_err(|e| format!("cannot bind {bind}: {e}"))?;
    Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(TokioRuntime),
    )
    .map_err(|e| format!("cannot start a QUIC client endpoint: {e}"))
}

/// A server endpoint on `socket`, whose connection IDs and stateless resets survive a
/// restart at `addr` (see [`restart_keys`]).
pub(crate) fn server(
    settings: &Settings,
    socket: UdpSocket,
    addr: &str,
) -> std::io::Result<Endpoint> {
    let (reset, cid_key) = restart_keys(&settings.tls.reset_seed, addr);
    let mut config = EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Endpoint::new(
        config,
        Some(settings.server_config()),
        socket,
        Arc::new(TokioRuntime),
    )
}
