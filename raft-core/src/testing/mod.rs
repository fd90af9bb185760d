//! Test support (cargo feature `testing`): the [`LogStorage`](crate::LogStorage) and
//! [`Transport`](crate::Transport) conformance suites, a cluster harness with fault injection
//! over any transport, a hostile peer, a replicated KV register store
//! with a history-recording client, a linearizability checker for those histories, and a
//! storage wrapper whose writes can be made to fail.

pub mod breakable;
pub mod cluster;
pub mod conformance;
pub mod hostile;
pub mod impersonation;
pub mod kv;
pub mod linearizability;
pub mod simulation;
pub mod transport_conformance;

pub use crate::transport::faulty::{Faults, FaultyTransport};
