//! `raft-kv serve`'s configuration as an operator meets it: flags, RAFT_KV_* variables and a
//! TOML file (and their precedence), refusals that name the bad key, listen versus advertised
//! addresses, and the raft-engine log backend surviving `kill -9`.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, KvCluster, Transport};

/// `raft-kv serve` with `args`, this process's RAFT_KV_* settings removed (they would leak
/// into the node) and `env` set instead.
fn serve_cmd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
    cmd.arg("serve").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RAFT_KV_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied())
        .env("RUST_LOG", "info,raft_rs=warn")
        .stdin(Stdio::null());
    cmd
}

/// Runs a `serve` that must stop by itself within 30 s (a refusal or `--print-config`).
fn run_to_end(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve kept running; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `--print-config` output as key -> (value, source comment).
fn printed(out: &Output) -> BTreeMap<String, (String, String)> {
    assert!(
        out.status.success(),
        "--print-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, rest) = l.split_once(" = ")?;
            let (value, source) = rest.split_once("  # ")?;
            Some((key.to_string(), (value.to_string(), source.to_string())))
        })
        .collect()
}

/// Writes through whichever node leads, retrying while leadership moves (a loaded machine
/// may see an election at any time; the value is the same on every try).
async fn put_retry(c: &KvCluster, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = c.leader(Duration::from_secs(30)).await;
        match c.put(leader, key, value).await {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "put {key}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The address flags go by group: a layer that sets any of `raft-addr`, `raft-listen`,
/// `raft-advertise` replaces the whole group of the layers below it.
#[test]
fn an_address_given_higher_up_replaces_the_whole_group_below() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "node.toml",
        "id = 1\ndata-dir = \"/nonexistent/raft-kv\"\nhttp-addr = \"127.0.0.1:7101\"\n\
         raft-listen = \"0.0.0.0:7001\"\nraft-advertise = \"10.0.0.1:7001\"\n",
    );
    // The command line's --raft-addr beats the file's listen/advertise pair...
    let out = run_to_end(serve_cmd(
        &[
            "--config",
            &file,
            "--raft-addr",
            "127.0.0.1:7009",
            "--print-config",
        ],
        &[("RAFT_KV_RAFT_LISTEN", "127.0.0.1:1")],
    ));
    let got = printed(&out);
    assert_eq!(got["raft-addr"].0, "\"127.0.0.1:7009\"", "{got:?}");
    assert!(!got.contains_key("raft-listen"), "{got:?}");
    assert!(!got.contains_key("raft-advertise"), "{got:?}");
    // ...and so does an environment variable of the group.
    let out = run_to_end(serve_cmd(
        &["--config", &file, "--print-config"],
        &[("RAFT_KV_RAFT_ADDR", "127.0.0.1:7008")],
    ));
    let got = printed(&out);
    assert_eq!(got["raft-addr"].0, "\"127.0.0.1:7008\"", "{got:?}");
    assert!(!got.contains_key("raft-advertise"), "{got:?}");
}

#[test]
fn print_config_shows_command_line_over_env_over_file_over_default() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        "node.toml",
        &format!(
            "id = 7\n\
             data-dir = {:?}\n\
             raft-addr = \"127.0.0.1:7001\"\n\
             http-addr = \"127.0.0.1:8001\"\n\
             election-ticks = 20\n\
             heartbeat-ticks = 3\n\
             tick-interval-ms = 50\n\
             join = [\"10.0.0.1:7001\", \"10.0.0.2:7001\"]\n\
             insecure-transport = true\n\
             pre-vote = false\n\
             http-request-timeout = \"20s\"\n",
            data.display().to_string()
        ),
    );
    let cmd = serve_cmd(
        &[
            "--config",
            &file,
            "--print-config",
            "--heartbeat-ticks",
            "2",
            "--id=9",
        ],
        &[
            ("RAFT_KV_ELECTION_TICKS", "15"),
            ("RAFT_KV_HEARTBEAT_TICKS", "4"),
            ("RAFT_KV_JOIN", "10.0.0.3:7001,10.0.0.4:7001"),
        ],
    );
    let out = run_to_end(cmd);
    let got = printed(&out);
    let expect = |key: &str, value: &str, source: &str| {
        let (v, s) = got
            .get(key)
            .unwrap_or_else(|| panic!("{key} not printed:\n{got:#?}"));
        assert_eq!((v.as_str(), s.as_str()), (value, source), "{key}");
    };
    let from_file = format!("config file {file}");
    // Command line beats env, which beats the file.
    expect("id", "9", "command line");
    expect("heartbeat-ticks", "2", "command line");
    expect("election-ticks", "15", "env RAFT_KV_ELECTION_TICKS");
    expect(
        "join",
        r#"["10.0.0.3:7001", "10.0.0.4:7001"]"#,
        "env RAFT_KV_JOIN",
    );
    // The file beats the defaults.
    expect("tick-interval-ms", "50", &from_file);
    expect("raft-addr", r#""127.0.0.1:7001""#, &from_file);
    expect("insecure-transport", "true", &from_file);
    expect("pre-vote", "false", &from_file);
    expect("http-request-timeout", r#""20s""#, &from_file);
    expect("check-quorum", "true", "default");
    expect("snapshot-threshold", "10000", "default");
    // Printing is not starting: nothing was created.
    assert!(!data.exists(), "--print-config touched the data dir");

    // What it printed is itself a config file that gives the same settings.
    let again = write(
        dir.path(),
        "again.toml",
        &String::from_utf8_lossy(&out.stdout),
    );
    let out2 = run_to_end(serve_cmd(&["--config", &again, "--print-config"], &[]));
    let got2 = printed(&out2);
    for (key, (value, _)) in &got {
        assert_eq!(&got2[key].0, value, "{key} after a round trip");
    }
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "--id",
        "1",
        "--raft-addr",
        "127.0.0.1:1",
        "--http-addr",
        "127.0.0.1:2",
        "--storage",
        "memory",
    ];
    let data = dir.path().join("data").display().to_string();
    let refused = |file_text: &str, env: &[(&str, &str)], want: &[&str]| {
        let file = write(dir.path(), "bad.toml", file_text);
        let mut args = base.to_vec();
        args.extend(["--data-dir", &data, "--config", &file]);
        let out = run_to_end(serve_cmd(&args, env));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{file_text:?} was accepted");
        for w in want {
            assert!(stderr.contains(w), "{file_text:?}: no {w:?} in:\n{stderr}");
        }
        stderr
    };
    // A value clap refuses: the file and the key are named.
    let file = dir.path().join("bad.toml").display().to_string();
    refused(
        "election-ticks = \"abc\"\n",
        &[],
        &[&file, "key election-ticks", "abc"],
    );
    refused(
        "transport = \"pigeon\"\n",
        &[],
        &["key transport", "pigeon"],
    );
    refused(
        "insecure-transport = \"yes\"\n",
        &[],
        &["key insecure-transport", "true or false"],
    );
    refused(
        "http-max-connections = 0\n",
        &[],
        &["key http-max-connections"],
    );
    // An unknown key (a typo) is named, not ignored.
    refused(
        "electon-ticks = 5\n",
        &[],
        &[&file, "unknown key \"electon-ticks\""],
    );
    // A combination that makes no sense names the flags and where the values came from.
    refused(
        "election-ticks = 2\nheartbeat-ticks = 2\n",
        &[],
        &["--election-ticks", "--heartbeat-ticks", &file],
    );
    // Not TOML at all.
    refused("id = [1\n", &[], &[&file, "line 1"]);
    // A bad environment value names its flag too (and nothing was started).
    refused(
        "",
        &[("RAFT_KV_TICK_INTERVAL_MS", "soon")],
        &["--tick-interval-ms", "soon"],
    );
    assert!(
        !dir.path().join("data").exists(),
        "a refused node touched its data dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_from_a_config_file_with_an_env_override() {
    let dir = tempfile::tempdir().unwrap();
    let (http, file_raft, env_raft) = (free_port(), free_port(), free_port());
    let file = write(
        dir.path(),
        "node.toml",
        &format!(
            "id = 1\n\
             data-dir = {:?}\n\
             raft-addr = \"127.0.0.1:{file_raft}\"\n\
             http-addr = \"127.0.0.1:{http}\"\n\
             storage = \"memory\"\n\
             tick-interval-ms = 20\n\
             election-ticks = 10\n",
            dir.path().join("data").display().to_string()
        ),
    );
    let env_addr = format!("127.0.0.1:{env_raft}");
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let mut cmd = serve_cmd(
        &[],
        &[("RAFT_KV_CONFIG", &file), ("RAFT_KV_RAFT_ADDR", &env_addr)],
    );
    cmd.stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    let mut child = cmd.spawn().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{http}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the node exited ({status}):\n{}",
                std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default()
            );
        }
        if let Ok(r) = client.get(format!("{base}/status")).send().await {
            if let Ok(s) = r.json::<serde_json::Value>().await {
                if s["role"] == "leader" {
                    break s;
                }
            }
        }
        assert!(Instant::now() < deadline, "the node never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The environment beat the file: the membership holds the env's raft address.
    assert_eq!(status["members"]["1"], env_addr.as_str(), "{status}");
    let put = client
        .put(format!("{base}/kv/from-file"))
        .body("yes")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let got = client
        .get(format!("{base}/kv/from-file"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "yes");
    let _ = child.kill();
    let _ = child.wait();
}

/// A node listening on every interface but advertising loopback: peers dial, and the
/// membership stores, the advertised address; its HTTP API listens on every interface too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_on_the_wildcard_and_advertises_loopback() {
    // QUIC: always mutual TLS, so listening on every interface needs no plaintext opt-in.
    let mut c = KvCluster::start(2, Transport::Quic).await;
    c.add(3);
    let raft = c.node(3).raft.clone();
    let http = c.node(3).http.clone();
    let raft_port = raft.rsplit_once(':').unwrap().1.to_string();
    let http_port = http.rsplit_once(':').unwrap().1.to_string();
    let join = c.node(1).raft.clone();
    c.spawn_with(
        3,
        &[
            "--join".into(),
            join,
            "--raft-listen".into(),
            format!("0.0.0.0:{raft_port}"),
            "--raft-advertise".into(),
            raft.clone(),
            "--http-listen".into(),
            format!("0.0.0.0:{http_port}"),
            "--http-advertise".into(),
            http.clone(),
        ],
    );
    c.wait_voters(&[1, 2, 3], Duration::from_secs(90)).await;
    for id in [1, 2, 3] {
        let s = c
            .wait_status(id, Duration::from_secs(30), |s| {
                s["members"]["3"].is_string()
            })
            .await;
        assert_eq!(s["members"]["3"], raft.as_str(), "node {id}: {s}");
    }
    let own = c.status(3).await.unwrap();
    assert_eq!(own["http_advertise"], http.as_str(), "{own}");
    // Traffic flows both ways through the advertised address.
    c.put(3, "through-3", "a").await.unwrap();
    c.put(1, "through-1", "b").await.unwrap();
    c.wait_replicated("through-3", Some("a"), Duration::from_secs(30))
        .await;
    c.wait_replicated("through-1", Some("b"), Duration::from_secs(30))
        .await;
    let log = c.log_text(3);
    assert!(
        log.contains(&format!("0.0.0.0:{raft_port}")),
        "node 3 did not report listening on the wildcard:\n{}",
        c.log_tail(3)
    );
    c.assert_no_panics();
}

/// A 3-node cluster on raft-engine takes writes; a node killed with SIGKILL comes back with
/// them, and so does the whole cluster killed at once (only the disk can hold them then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_engine_cluster_survives_kill_9() {
    let storage = ["--storage".to_string(), "raft-engine".to_string()];
    let mut c = KvCluster::empty(Transport::Grpc);
    for id in 1..=3 {
        c.add(id);
    }
    c.spawn_with(1, &storage);
    c.wait_status(1, Duration::from_secs(30), |s| s["role"] == "leader")
        .await;
    let join = ["--join".to_string(), c.node(1).raft.clone()];
    for id in [2, 3] {
        c.spawn_with(id, &[&storage[..], &join[..]].concat());
    }
    c.wait_voters(&[1, 2, 3], Duration::from_secs(90)).await;
    for i in 0..20 {
        put_retry(&c, &format!("k{i}"), &format!("v{i}")).await;
    }
    assert!(
        c.data_dir(2).join("raft-engine").is_dir(),
        "no <data-dir>/raft-engine"
    );
    assert!(!c.data_dir(2).join("raft").exists(), "RocksDB was used");

    // One follower dies hard, misses a write, and comes back from its directory.
    let leader = c.leader(Duration::from_secs(30)).await;
    let victim = if leader == 2 { 3 } else { 2 };
    c.kill9(victim);
    put_retry(&c, "while-down", "x").await;
    c.spawn_with(victim, &storage);
    c.wait_replicated("while-down", Some("x"), Duration::from_secs(60))
        .await;
    c.wait_replicated("k19", Some("v19"), Duration::from_secs(30))
        .await;

    // The whole cluster dies at once: everything must come back from raft-engine.
    for id in 1..=3 {
        c.kill9(id);
    }
    for id in 1..=3 {
        c.spawn_with(id, &storage);
    }
    c.leader(Duration::from_secs(60)).await;
    for i in 0..20 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = c.leader(Duration::from_secs(30)).await;
            match c.get(leader, &format!("k{i}"), "linearizable").await {
                Ok(got) => {
                    assert_eq!(got.as_deref(), Some(format!("v{i}").as_str()), "k{i}");
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "k{i}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    for id in 1..=3 {
        c.assert_running(id);
    }
    c.assert_no_panics();
}
