//! `raft-kv member ...`: list the cluster's members with their replication progress, and
//! change the membership, through any node's HTTP API (`/cluster/*`, admin token).

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::Method;

use crate::client::Endpoint;
use crate::http::StatusBody;

/// The `member` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum MemberCmd {
    /// Lists every member with its replication progress, as the leader sees it (works
    /// against any node).
    List {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Adds a learner: it receives the log but does not vote until promoted. Then start the
    /// node with `serve --join <a member's raft address>`.
    AddLearner {
        #[command(flatten)]
        endpoint: Endpoint,
        /// The new node's id.
        id: u64,
        /// The new node's raft address (host:port), as given to its --raft-addr.
        addr: String,
    },
    /// Makes a learner a voter.
    Promote {
        #[command(flatten)]
        endpoint: Endpoint,
        /// The learner's id.
        id: u64,
    },
    /// Removes a member (the leader too: it hands over leadership first). The removed node's
    /// process stops.
    Remove {
        #[command(flatten)]
        endpoint: Endpoint,
        /// The member's id.
        id: u64,
    },
    /// Moves leadership to a voter and waits until it leads.
    TransferLeader {
        #[command(flatten)]
        endpoint: Endpoint,
        /// The voter's id.
        id: u64,
    },
}

/// Runs one `member` subcommand.
pub async fn run(cmd: MemberCmd) -> Result<()> {
    match cmd {
        MemberCmd::List { endpoint } => {
            let (_, body) = endpoint.call(Method::GET, "/cluster/members", None).await?;
            let status: StatusBody =
                serde_json::from_str(&body).context("the member list is not a status document")?;
            print!("{}", render(&status));
        }
        MemberCmd::AddLearner { endpoint, id, addr } => {
            let body = serde_json::to_vec(&serde_json::json!({ "addr": addr }))?;
            endpoint
                .call(
                    Method::POST,
                    &format!("/cluster/add-learner/{id}"),
                    Some((Bytes::from(body), "application/json")),
                )
                .await?;
            println!("node {id} added as a learner at {addr}");
        }
        MemberCmd::Promote { endpoint, id } => {
            post(&endpoint, &format!("/cluster/promote/{id}")).await?;
            println!("node {id} promoted to voter");
        }
        MemberCmd::Remove { endpoint, id } => {
            post(&endpoint, &format!("/cluster/remove/{id}")).await?;
            println!("node {id} removed");
        }
        MemberCmd::TransferLeader { endpoint, id } => {
            post(&endpoint, &format!("/cluster/transfer-leader/{id}")).await?;
            println!("node {id} leads");
        }
    }
    Ok(())
}

async fn post(endpoint: &Endpoint, path: &str) -> Result<()> {
    endpoint.call(Method::POST, path, None).await.map(drop)
}

/// The member table: a summary line, then one row per member (voters, then learners).
fn render(s: &StatusBody) -> String {
    let leader = s.leader_id.unwrap_or(0);
    let mut rows = vec![[
        "ID",
        "RAFT ADDRESS",
        "ROLE",
        "MATCHED",
        "LAG",
        "STATE",
        "LAST CONTACT (ms)",
    ]
    .map(String::from)];
    let members = s
        .voters
        .iter()
        .map(|&id| (id, "voter"))
        .chain(s.learners.iter().map(|&id| (id, "learner")));
    for (id, kind) in members {
        let role = if id == leader {
            format!("{kind} (leader)")
        } else {
            kind.to_string()
        };
        let addr = s.members.get(&id).cloned().unwrap_or_else(|| "?".into());
        let progress = s.progress.iter().find(|p| p.id == id);
        let [matched, lag, state, contact] = match progress {
            None => ["-", "-", "-", "-"].map(String::from),
            Some(p) => [
                p.matched.to_string(),
                p.lag.to_string(),
                p.state.clone(),
                match p.last_contact_ms {
                    _ if id == leader => "-".into(),
                    Some(ms) => ms.to_string(),
                    None => "never".into(),
                },
            ],
        };
        rows.push([id.to_string(), addr, role, matched, lag, state, contact]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "leader {}, term {}, commit index {}, last index {}\n",
        s.leader_id
            .map_or_else(|| "unknown".to_string(), |l| l.to_string()),
        s.term,
        s.commit_index,
        s.last_log_index
    );
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ProgressBody;

    fn progress(id: u64, matched: u64, contact: Option<u64>) -> ProgressBody {
        ProgressBody {
            id,
            matched,
            next_index: matched + 1,
            lag: 100 - matched,
            state: "replicate".into(),
            last_contact_ms: contact,
            recent_active: contact.is_some(),
        }
    }

    #[test]
    fn the_table_marks_the_leader_and_shows_each_members_progress() {
        let status = StatusBody {
            id: 2,
            role: "leader".into(),
            leader_id: Some(2),
            term: 4,
            commit_index: 100,
            applied_index: 100,
            voters: vec![1, 2],
            learners: vec![3, 4],
            members: [(1, "h1:1"), (2, "h2:2"), (3, "h3:3"), (4, "h4:4")]
                .map(|(id, a)| (id, a.to_string()))
                .into(),
            progress: vec![
                progress(1, 100, Some(7)),
                progress(2, 100, None),
                progress(3, 40, None),
            ],
            last_log_index: 100,
            cluster_id: "00000000000000aa".into(),
            http_advertise: None,
        };
        let table = render(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "leader 2, term 4, commit index 100, last index 100"
        );
        let cells = |line: &str| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(cells(lines[1])[0], "ID");
        assert_eq!(
            cells(lines[2]),
            ["1", "h1:1", "voter", "100", "0", "replicate", "7"]
        );
        assert_eq!(
            cells(lines[3]),
            [
                "2",
                "h2:2",
                "voter",
                "(leader)",
                "100",
                "0",
                "replicate",
                "-"
            ]
        );
        assert_eq!(
            cells(lines[4]),
            ["3", "h3:3", "learner", "40", "60", "replicate", "never"]
        );
        assert_eq!(
            cells(lines[5]),
            ["4", "h4:4", "learner", "-", "-", "-", "-"]
        );
        // Columns line up: every row's address starts where the header's does.
        let at = lines[1].find("RAFT ADDRESS");
        assert!(lines[2..]
            .iter()
            .all(|l| l.find("h").is_some_and(|i| Some(i) == at)));
    }
}
