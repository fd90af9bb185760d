//! One Linux network namespace per node, so the nemesis can cut the raft network without
//! touching the clients.
//!
//! Every node gets two links:
//!
//! * a *cluster* veth (`c0` inside the namespace, address `10.77.<run>.<id>/24`) whose root
//!   end is a port of bridge A or bridge B in the root namespace. Raft traffic uses it. A
//!   partition moves root ends between the two bridges (nodes on different bridges cannot
//!   reach each other); healing puts every port back on A. No firewall is needed.
//! * a *client* veth, a point-to-point /30 to the root namespace (`10.78.<run>.<4*id+1>`
//!   root side, `.<4*id+2>` node side). The test's clients and status checks reach the
//!   HTTP API over it, whatever the partition.
//!
//! Names carry a run number (`rkj<run>…`) so that concurrent runs do not collide and the
//! leftovers of a crashed run can be found and removed. A run number is claimed with a
//! pid file in [`RUNS_DIR`]; a file whose process is gone marks a crashed run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where runs claim their number (one pid file per run number).
const RUNS_DIR: &str = "/tmp/raft-kv-jepsen-runs";

/// The largest run number (the third octet of the addresses).
const MAX_RUN: u32 = 250;

/// Runs `ip` with `args`; an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `name` belongs to run `run`: `rkj<run>` followed by a letter (so run 1 does not
/// match run 12).
fn owned_by(name: &str, run: u32) -> bool {
    name.strip_prefix(&format!("rkj{run}"))
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_alphabetic())
}

/// Removes every namespace, bridge and veth of run `run`, killing processes left in its
/// namespaces (a crashed run leaves its nodes behind).
fn remove_run(run: u32) -> Result<()> {
    for ns in ip_output(&["netns", "list"])?.lines() {
        let name = ns.split_whitespace().next().unwrap_or_default();
        if owned_by(name, run) {
            if let Ok(pids) = ip_output(&["netns", "pids", name]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            ip(&["netns", "del", name])?;
        }
    }
    for line in ip_output(&["-o", "link", "show"])?.lines() {
        // "7: rkj3c1@if2: <...>" — the name sits between the first ": " and '@' or ':'.
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if owned_by(name, run) {
            // Deleting one end of a veth deletes both; the peer may already be gone.
            let _ = ip(&["link", "del", name]);
        }
    }
    Ok(())
}

/// Whether this machine can run the suite: root, `ip`, and network namespaces that can be
/// created (a container without CAP_SYS_ADMIN cannot); a throwaway namespace proves it.
pub fn check_environment() -> Result<()> {
    if !is_root() {
        bail!("this runs as a user other than root");
    }
    let probe = format!("rkjprobe{}", std::process::id());
    ip(&["netns", "add", &probe])?;
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
}

/// Whether the effective user is root (from /proc: nix's `user` feature is not enabled).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Whether `pid` is a live raft-kv-jepsen: not gone, not a zombie (a killed run whose
/// parent has not reaped it yet), and not a reused pid running something else.
fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("X");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let me = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    !matches!(state, "Z" | "X" | "x") && comm == me
}

/// Claims a free run number: no pid file, or the pid file of a process that is gone (whose
/// leftovers are removed first).
fn claim_run() -> Result<(u32, PathBuf)> {
    std::fs::create_dir_all(RUNS_DIR).with_context(|| format!("creating {RUNS_DIR}"))?;
    let me = std::process::id();
    for run in 1..=MAX_RUN {
        let path = Path::new(RUNS_DIR).join(run.to_string());
        if let Ok(text) = std::fs::read_to_string(&path) {
            match text.trim().parse::<i32>() {
                Ok(pid) if pid_alive(pid) => continue,
                _ => {
                    remove_run(run)?;
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write as _;
                writeln!(file, "{me}")?;
                // A leftover without a pid file (deleted by hand) is removed too.
                remove_run(run)?;
                return Ok((run, path));
            }
            Err(_) => continue,
        }
    }
    bail!("all {MAX_RUN} run numbers in {RUNS_DIR} are taken")
}

/// Removes the leftovers of every crashed run (`raft-kv-jepsen --cleanup`).
pub fn cleanup_all() -> Result<()> {
    for run in 1..=MAX_RUN {
        let path = Path::new(RUNS_DIR).join(run.to_string());
        let live = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .is_some_and(pid_alive);
        if !live {
            remove_run(run)?;
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(())
}

/// The namespaces, links and bridges of one run; dropping it deletes them all.
pub struct Network {
    /// This run's number.
    pub run: u32,
    pid_file: PathBuf,
    ids: Vec<u64>,
    /// Nodes whose cluster port is on bridge B (empty: healed).
    on_b: BTreeSet<u64>,
}

impl Network {
    /// Creates the two bridges and a namespace with both links for each of `ids`.
    pub fn create(ids: &[u64]) -> Result<Network> {
        if !is_root() {
            bail!(
                "raft-kv-jepsen runs nodes in network namespaces and needs root \
                 (run it as root, e.g. with sudo)"
            );
        }
        if let Some(&bad) = ids.iter().find(|&&id| id == 0 || id > 60) {
            bail!("node ids must be 1..=60 for the address plan, not {bad}");
        }
        let (run, pid_file) = claim_run()?;
        let mut net = Network {
            run,
            pid_file,
            ids: ids.to_vec(),
            on_b: BTreeSet::new(),
        };
        net.build()
            .with_context(|| format!("creating the network namespaces of run {run}"))?;
        Ok(net)
    }

    fn build(&mut self) -> Result<()> {
        let r = self.run;
        for bridge in [self.bridge(false), self.bridge(true)] {
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            ip(&["link", "set", &bridge, "up"])?;
        }
        for &id in &self.ids.clone() {
            let ns = self.namespace(id);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Cluster link: root end on bridge A.
            let c = format!("rkj{r}c{id}");
            ip(&[
                "link", "add", &c, "type", "veth", "peer", "name", "c0", "netns", &ns,
            ])?;
            ip(&["link", "set", &c, "master", &self.bridge(false)])?;
            ip(&["link", "set", &c, "up"])?;
            let addr = format!("{}/24", self.cluster_ip(id));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "c0"])?;
            ip(&["-n", &ns, "link", "set", "c0", "up"])?;
            // Client link: a /30 to the root namespace.
            let h = format!("rkj{r}h{id}");
            ip(&[
                "link", "add", &h, "type", "veth", "peer", "name", "h0", "netns", &ns,
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("10.78.{r}.{}/30", 4 * id + 1),
                "dev",
                &h,
            ])?;
            ip(&["link", "set", &h, "up"])?;
            let addr = format!("{}/30", self.client_ip(id));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "h0"])?;
            ip(&["-n", &ns, "link", "set", "h0", "up"])?;
        }
        Ok(())
    }

    fn bridge(&self, b: bool) -> String {
        format!("rkj{}{}", self.run, if b { "b" } else { "a" })
    }

    /// The namespace node `id` runs in.
    pub fn namespace(&self, id: u64) -> String {
        format!("rkj{}n{id}", self.run)
    }

    /// The address node `id`'s raft transport binds (reachable from the other nodes).
    pub fn cluster_ip(&self, id: u64) -> String {
        format!("10.77.{}.{id}", self.run)
    }

    /// The address node `id`'s HTTP API binds (reachable from the root namespace).
    pub fn client_ip(&self, id: u64) -> String {
        format!("10.78.{}.{}", self.run, 4 * id + 2)
    }

    /// Splits the cluster network: the nodes in `minority` can reach each other only, the
    /// rest likewise.
    pub fn partition(&mut self, minority: &[u64]) -> Result<()> {
        self.heal()?;
        for &id in minority {
            ip(&[
                "link",
                "set",
                &format!("rkj{}c{id}", self.run),
                "master",
                &self.bridge(true),
            ])?;
            self.on_b.insert(id);
        }
        Ok(())
    }

    /// Puts every node back on bridge A.
    pub fn heal(&mut self) -> Result<()> {
        for id in std::mem::take(&mut self.on_b) {
            ip(&[
                "link",
                "set",
                &format!("rkj{}c{id}", self.run),
                "master",
                &self.bridge(false),
            ])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(e) = remove_run(self.run) {
            eprintln!(
                "raft-kv-jepsen: removing the network of run {}: {e:#}",
                self.run
            );
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

#[cfg(test)]
mod tests {
    use super::owned_by;

    #[test]
    fn names_belong_to_exactly_one_run() {
        assert!(owned_by("rkj1a", 1));
        assert!(owned_by("rkj1n3", 1));
        assert!(!owned_by("rkj12a", 1));
        assert!(owned_by("rkj12c4", 12));
        assert!(!owned_by("rkj1", 1));
        assert!(!owned_by("eth0", 1));
    }
}
