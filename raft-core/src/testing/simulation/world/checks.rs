//! The properties every run checks, and what a failure reports.

use super::*;

impl World {
    pub(super) fn fail(&mut self, what: String) {
        if self.failure.is_some() {
            return;
        }
        let mut nodes = String::new();
        for node in &self.nodes {
            match node.running.as_ref() {
                Some(r) => {
                    let s = r.core.status();
                    nodes.push_str(&format!(
                        "\n  node {}: {:?} term {} leader {:?} commit {} applied {} log {}..={} \
                         snapshot {} voters {:?} learners {:?}",
                        node.id,
                        s.role,
                        s.term,
                        s.leader_id,
                        s.commit_index,
                        r.applied(),
                        s.first_log_index,
                        s.last_log_index,
                        s.snapshot_index,
                        s.voters,
                        s.learners
                    ));
                }
                None => nodes.push_str(&format!("\n  node {}: down", node.id)),
            }
        }
        self.failure = Some(format!("at {:?}: {what}{nodes}", self.now));
    }

    pub(super) fn record_applied(&mut self, node: u64, index: u64, term: u64, data: u64) {
        match self.applied_entries.get(&index) {
            Some(&seen) if seen != (term, data) => self.fail(format!(
                "node {node} applied (term {term}, data {data:x}) at index {index}, \
                 another node applied (term {}, data {:x})",
                seen.0, seen.1
            )),
            Some(_) => {}
            None => {
                self.applied_entries.insert(index, (term, data));
            }
        }
    }

    /// After the run: every node holds the same state, and the history is linearizable.
    pub(super) fn final_checks(&mut self) {
        // Let every node catch up with the last commits: heartbeats carry the commit index.
        let quiet = self.now + Duration::from_secs(2);
        self.queue
            .retain(|_, e| !matches!(e, Event::ClientStep(_) | Event::Check));
        while let Some(((time, _), event)) = self.queue.pop_first() {
            if time > quiet || self.failure.is_some() {
                break;
            }
            self.now = time;
            self.handle(event);
            self.poll_joins();
        }
        if self.failure.is_some() {
            return;
        }
        let mut states = Vec::new();
        for node in &self.nodes {
            let Some(running) = node.running.as_ref() else {
                continue;
            };
            let state = running
                .applier
                .store
                .snapshot()
                .now_or_never()
                .and_then(Result::ok)
                .unwrap_or_default();
            states.push((node.id, running.applied(), state));
        }
        if states.len() < self.nodes.len() {
            let up: Vec<u64> = states.iter().map(|s| s.0).collect();
            self.fail(format!("only nodes {up:?} run after recovery"));
            return;
        }
        if let Some((first, rest)) = states.split_first() {
            for other in rest {
                if other.1 != first.1 || other.2 != first.2 {
                    self.fail(format!(
                        "replicas disagree after quiescing: node {} applied {}, node {} \
                         applied {}{}",
                        first.0,
                        first.1,
                        other.0,
                        other.1,
                        if other.1 == first.1 {
                            " with different state"
                        } else {
                            ""
                        }
                    ));
                    return;
                }
            }
        }
        match check(&self.history.operations()) {
            Verdict::Linearizable => {}
            verdict => self.fail(verdict.to_string()),
        }
    }
}
