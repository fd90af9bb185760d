//! Safe defaults of `raft-kv serve` for the raft transport: plaintext only on loopback unless
//! the operator says `--insecure-transport`, and no private key that others may read.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn serve(dir: &std::path::Path, raft_addr: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
    cmd.args(["serve", "--id", "1", "--raft-addr", raft_addr])
        .args([
            "--http-addr",
            &format!("127.0.0.1:{}", support::free_port()),
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--storage", "memory"])
        .args(extra)
        .env("RUST_LOG", "info,raft_rs=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end (within 30 s) and returns its failure output.
async fn fails(mut cmd: Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the node should stop at once")
        .unwrap();
    assert!(!out.status.success(), "the node started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn plaintext_off_loopback_needs_insecure_transport_and_then_warns() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("0.0.0.0:{}", support::free_port());
    let err = fails(serve(dir.path(), &addr, &[])).await;
    assert!(
        err.contains("refusing plaintext gRPC") && err.contains("--insecure-transport"),
        "{err}"
    );

    // Accepted explicitly: it runs, and says loudly what it does.
    let mut child = serve(dir.path(), &addr, &["--insecure-transport"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("INSECURE") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(warned, "no start-up warning for --insecure-transport");
    assert!(child.try_wait().unwrap().is_none(), "the node stopped");
    child.kill().await.unwrap();

    // Loopback stays a one-command start.
    let loopback = format!("127.0.0.1:{}", support::free_port());
    let mut child = serve(dir.path(), &loopback, &[]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "plaintext on loopback was refused"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_private_key_others_may_read_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    raft_transport_quic::dev_certs::generate(&certs, &[1]).unwrap();
    let key = raft_transport_quic::dev_certs::key_path(&certs, 1);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let tls = raft_transport_quic::dev_certs::tls_config(&certs, 1);
    let addr = format!("127.0.0.1:{}", support::free_port());
    for transport in ["grpc", "quic"] {
        let mut cmd = serve(dir.path(), &addr, &["--transport", transport]);
        cmd.arg("--tls-ca")
            .arg(&tls.ca)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key);
        let err = fails(cmd).await;
        assert!(
            err.contains(&key.display().to_string()) && err.contains("chmod 600"),
            "{transport}: {err}"
        );
    }
}
