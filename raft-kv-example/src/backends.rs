//! Picks the transport and log storage a node runs on.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use raft_core::{LogStorage, MemLogStorage, Transport};

use crate::{StorageKind, TlsArgs, TransportKind};

pub fn transport(kind: TransportKind, _tls: &TlsArgs) -> Result<Arc<dyn Transport>> {
    bail!("transport {kind:?} is not available in this build")
}

pub fn storage(kind: StorageKind, _dir: &Path) -> Result<Arc<dyn LogStorage>> {
    match kind {
        StorageKind::Memory => Ok(Arc::new(MemLogStorage::new())),
        StorageKind::Rocksdb => bail!("rocksdb storage is not available in this build"),
    }
}

pub fn write_dev_certs(_out: &Path, _nodes: u64) -> Result<()> {
    bail!("certificate generation is not available in this build")
}
