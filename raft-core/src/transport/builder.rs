//! The settings every network transport takes, and the one builder that sets them.
//!
//! `GrpcTransportBuilder` and `QuicTransportBuilder` are this [`TransportBuilder`], so the two
//! transports have the same knobs with the same meaning, and switching is one line.

use std::marker::PhantomData;
use std::time::Duration;

use super::link::LinkSettings;
use super::tls::{TlsConfig, TlsPem};
use crate::error::TransportError;

/// Default [`NetworkSettings::max_message_size`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Where a transport's TLS identity comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files, read when the transport is built.
    Files(TlsConfig),
    /// PEM bytes held in memory.
    Pem(TlsPem),
}

/// What every network transport is built from. See [`TransportBuilder`] for each field's
/// meaning.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// TLS identity and trust; `None` is plaintext where the transport allows it.
    pub tls: Option<TlsSource>,
    /// Verify peers' certificates against this name instead of the dialled host.
    pub server_name: Option<String>,
    /// Largest encoded message accepted or sent, in bytes.
    pub max_message_size: usize,
    /// How long connecting may take; also how long `send` waits for a full queue.
    pub connect_timeout: Duration,
    /// Keepalive interval: a dead peer is noticed within a few of these.
    pub keepalive: Duration,
    /// How long an inbound connection may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// Frames queued per peer raft stream before `send` waits.
    pub stream_queue: usize,
    /// Longest pause between attempts to reconnect to a peer.
    pub max_backoff: Duration,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            tls: None,
            server_name: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connect_timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            stream_queue: 1024,
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl NetworkSettings {
    /// The TLS material, read (files) and with [`NetworkSettings::server_name`] applied.
    pub fn read_tls(&self) -> Result<Option<TlsPem>, TransportError> {
        let mut pem = match &self.tls {
            None => return Ok(None),
            Some(TlsSource::Files(files)) => files.read()?,
            Some(TlsSource::Pem(pem)) => pem.clone(),
        };
        if self.server_name.is_some() {
            pem.server_name.clone_from(&self.server_name);
        }
        Ok(Some(pem))
    }

    /// The settings of the transport's [`PeerLinks`](super::link::PeerLinks).
    pub fn links(&self) -> LinkSettings {
        LinkSettings {
            max_message_size: self.max_message_size,
            connect_timeout: self.connect_timeout,
            queue: self.stream_queue,
            max_backoff: self.max_backoff,
        }
    }
}

/// A transport a [`TransportBuilder`] can build.
pub trait NetworkTransport: Sized {
    /// The transport's defaults.
    fn defaults() -> NetworkSettings {
        NetworkSettings::default()
    }

    /// Checks the settings, loads the TLS material, and builds the transport.
    fn from_settings(settings: NetworkSettings) -> Result<Self, TransportError>;
}

/// Builds a network transport `T`: TLS, message size limit, timeouts, queue sizes.
pub struct TransportBuilder<T> {
    settings: NetworkSettings,
    transport: PhantomData<fn() -> T>,
}

impl<T> Clone for TransportBuilder<T> {
    fn clone(&self) -> Self {
        TransportBuilder {
            settings: self.settings.clone(),
            transport: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for TransportBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportBuilder")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<T: NetworkTransport> Default for TransportBuilder<T> {
    fn default() -> Self {
        TransportBuilder {
            settings: T::defaults(),
            transport: PhantomData,
        }
    }
}

impl<T: NetworkTransport> TransportBuilder<T> {
    /// TLS from PEM files: [`TlsConfig::mutual`] or [`TlsConfig::server_auth`].
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.settings.tls = Some(TlsSource::Files(tls));
        self
    }

    /// Mutual TLS from PEM bytes: the CA certificate(s), this node's certificate chain and its
    /// private key.
    pub fn tls_pem(
        mut self,
        ca_pem: impl Into<Vec<u8>>,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.settings.tls = Some(TlsSource::Pem(TlsPem::mutual(ca_pem, cert_pem, key_pem)));
        self
    }

    /// Verifies peers' certificates against `name` rather than the host they are dialled at
    /// (overrides [`TlsConfig::with_server_name`]).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.settings.server_name = Some(name.into());
        self
    }

    /// Largest encoded message accepted or sent, in bytes (at least 1 KiB). Raft batches
    /// larger than this are sent as several frames; a single raft message or call larger than
    /// this is refused with [`TransportError::Malformed`]; an inbound message announcing more
    /// is refused. Keep it above `Config::snapshot_chunk_size` and `Config::max_size_per_msg`.
    /// Default [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.settings.max_message_size = bytes.clamp(1024, u32::MAX as usize);
        self
    }

    /// How long opening a connection or raft stream may take; also how long `send` waits for
    /// a link's first stream or a full stream queue. Default 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Keepalive interval, both ways: a dead peer is noticed within a few intervals.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.settings.keepalive = interval.max(Duration::from_millis(10));
        self
    }

    /// How long an inbound connection may take to complete its handshake (and, where the
    /// transport has them, a call stream to deliver its request) before it is closed.
    /// Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.settings.handshake_timeout = timeout;
        self
    }

    /// Frames queued per peer raft stream before `send` waits. Default 1024.
    pub fn stream_queue(mut self, frames: usize) -> Self {
        self.settings.stream_queue = frames.max(1);
        self
    }

    /// Longest pause between attempts to re-open a broken stream or reconnect. Default 1 s.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.settings.max_backoff = backoff;
        self
    }

    /// Checks the settings, loads the TLS material, and builds the transport.
    pub fn build(self) -> Result<T, TransportError> {
        T::from_settings(self.settings)
    }
}
