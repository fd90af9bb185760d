//! The leader's per-member replication progress for [`crate::Status::progress`]: raft-rs's
//! `Progress` of each member, plus when this node last heard from it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use raft::ProgressState;

use crate::status::{MemberProgress, ReplicationState};

/// When this node last received a raft message from each member.
///
/// Bounded by the membership: the driver records only ids in its configuration and drops
/// the others when it reaps its peer state.
#[derive(Debug, Default)]
pub(crate) struct LastContact {
    at: HashMap<u64, Instant>,
}

impl LastContact {
    /// Notes a message from member `id`.
    pub(crate) fn record(&mut self, id: u64, now: Instant) {
        self.at.insert(id, now);
    }

    /// Keeps only the ids `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.at.retain(|&id, _| keep(id));
    }

    /// How long before `now` member `id` was last heard from; `None` if never.
    pub(crate) fn since(&self, id: u64, now: Instant) -> Option<Duration> {
        self.at
            .get(&id)
            .map(|&at| now.saturating_duration_since(at))
    }
}

/// Each member's progress as `raft` (a leader) tracks it; empty unless `raft` leads.
pub(crate) fn member_progress<T: raft::Storage>(
    raft: &raft::Raft<T>,
    contact: &LastContact,
    now: Instant,
) -> BTreeMap<u64, MemberProgress> {
    if raft.state != raft::StateRole::Leader {
        // A follower's trackers are stale leftovers of an earlier leadership, if anything.
        return BTreeMap::new();
    }
    let last = raft.raft_log.last_index();
    raft.prs()
        .iter()
        .map(|(&id, p)| {
            let state = match p.state {
                ProgressState::Probe => ReplicationState::Probe,
                ProgressState::Replicate => ReplicationState::Replicate,
                ProgressState::Snapshot => ReplicationState::Snapshot,
            };
            let last_contact = if id == raft.id {
                None
            } else {
                contact.since(id, now)
            };
            let progress = MemberProgress {
                matched: p.matched,
                next_index: p.next_idx,
                lag: last.saturating_sub(p.matched),
                state,
                last_contact,
                recent_active: p.recent_active,
            };
            (id, progress)
        })
        .collect()
}

#[cfg(all(test, feature = "testing"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use crate::mailbox::Mailbox;
    use crate::status::{ReplicationState, Role, Status};
    use crate::testing::cluster::{test_config, TestCluster};
    use crate::testing::kv::encode_op;
    use crate::testing::linearizability::KvOp;

    async fn put(mailbox: &Mailbox, key: String) {
        let op = KvOp::Put {
            key,
            value: "v".into(),
        };
        mailbox.send_proposal(encode_op(&op)).await.unwrap();
    }

    async fn leader_status(cluster: &TestCluster, leader: u64) -> Status {
        let status = cluster.mailbox(leader).status().await.unwrap();
        assert_eq!(status.role, Role::Leader);
        status
    }

    /// Polls the leader's status until `done` holds; panics with the last one otherwise.
    async fn wait_progress(
        cluster: &TestCluster,
        leader: u64,
        what: &str,
        done: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = leader_status(cluster, leader).await;
            if done(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {:#?}",
                status.progress
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A 3-node leader reports every caught-up member at its last index, followers as heard
    /// from recently; once a follower stops, its lag grows with every write and so does the
    /// time since it was last heard from. Followers report no progress.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leader_reports_each_members_replication() {
        let seed = crate::testing::cluster::seed("the_leader_reports_each_members_replication");
        let cluster = TestCluster::start(3, test_config(), seed).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let mailbox = cluster.mailbox(leader);
        for i in 0..20 {
            put(&mailbox, format!("k{i}")).await;
        }
        let caught_up = wait_progress(&cluster, leader, "all caught up", |s| {
            s.progress.len() == 3
                && s.progress
                    .values()
                    .all(|p| p.matched == s.last_log_index && p.lag == 0)
        })
        .await;
        for (&id, p) in &caught_up.progress {
            assert_eq!(p.next_index, caught_up.last_log_index + 1, "node {id}");
            if id == leader {
                assert_eq!(p.last_contact, None, "the leader does not hear from itself");
            } else {
                assert_eq!(p.state, ReplicationState::Replicate, "node {id}");
                let since = p.last_contact.expect("heard from the follower");
                assert!(since < Duration::from_secs(2), "node {id}: {since:?}");
            }
        }
        for follower in cluster.running().into_iter().filter(|&id| id != leader) {
            let status = cluster.mailbox(follower).status().await.unwrap();
            assert!(
                status.progress.is_empty(),
                "follower {follower} reports progress"
            );
            // Asked through a follower, the leader answers with its progress.
            let from_leader = cluster.mailbox(follower).leader_status().await.unwrap();
            assert_eq!((from_leader.id, from_leader.role), (leader, Role::Leader));
            assert_eq!(from_leader.progress.len(), 3, "{from_leader:?}");
        }

        let stopped = *caught_up.progress.keys().find(|&&id| id != leader).unwrap();
        cluster.crash(stopped).await;
        let before = leader_status(&cluster, leader).await.progress[&stopped];
        for i in 0..30 {
            put(&mailbox, format!("later{i}")).await;
        }
        let live = caught_up
            .progress
            .keys()
            .copied()
            .find(|&id| id != leader && id != stopped)
            .unwrap();
        let after = wait_progress(&cluster, leader, "the stopped follower lags", |s| {
            let p = s.progress[&stopped];
            p.lag >= 30
                && p.last_contact
                    .is_some_and(|c| c >= Duration::from_millis(300))
                && s.progress[&live].lag == 0
        })
        .await;
        let p = after.progress[&stopped];
        assert_eq!(
            p.matched, before.matched,
            "nothing reached the stopped node"
        );
        assert_eq!(p.lag, after.last_log_index - p.matched);
        assert!(p.lag > before.lag, "{before:?} -> {p:?}");
        assert!(p.last_contact > before.last_contact, "{before:?} -> {p:?}");
        assert_eq!(after.progress[&live].matched, after.last_log_index);
        // Seeing it lag again later: the time since last contact keeps growing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let later = leader_status(&cluster, leader).await.progress[&stopped];
        assert!(later.last_contact > p.last_contact, "{p:?} -> {later:?}");
        cluster.shutdown().await;
    }
}
