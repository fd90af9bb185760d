//! The simulated network: delay, loss, duplication and reordering of raft messages,
//! partitions, and the faults the run injects.

use super::*;

impl World {
    pub(super) fn reachable(&self, from: u64, to: u64) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Puts a message on the simulated network: delayed, maybe lost or duplicated.
    pub(super) fn send(&mut self, from: u64, msg: Message) {
        let to = msg.to;
        (from, to, msg.get_msg_type() as i32, msg.term, msg.index).hash(&mut self.trace);
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let lossy = self.config.faults && self.phase == Phase::Faults;
        let lost = !self.reachable(from, to)
            || to == 0
            || to > self.config.nodes
            || (lossy && self.rng.gen_bool(0.02));
        if lost {
            if snapshot {
                self.push_input(
                    from,
                    NodeInput::Msg(DriverMsg::SnapshotStatus(to, SnapshotStatus::Failure)),
                );
            }
            return;
        }
        let copies = if lossy && !snapshot && self.rng.gen_bool(0.01) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if lossy && self.rng.gen_bool(0.03) {
                self.between(10, 60)
            } else {
                self.between(0, 2)
            };
            self.at(
                delay,
                Event::Deliver {
                    from,
                    to,
                    msg: Box::new(msg.clone()),
                },
            );
        }
    }

    pub(super) fn deliver(&mut self, from: u64, to: u64, msg: Message) {
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        if !self.running(to) || !self.reachable(from, to) {
            if snapshot {
                self.push_input(
                    from,
                    NodeInput::Msg(DriverMsg::SnapshotStatus(to, SnapshotStatus::Failure)),
                );
            }
            return;
        }
        let route = if snapshot {
            Route::Chunks
        } else {
            Route::Batch
        };
        if let Err(refusal) = check_wire(&msg, to, route) {
            self.fail(format!(
                "node {to} refused an honest {:?} from node {from} ({} to {}): {refusal} (term {}, \
                 index {}, log term {}, entries (index, term) {:?})",
                msg.get_msg_type(),
                msg.from,
                msg.to,
                msg.term,
                msg.index,
                msg.log_term,
                msg.entries
                    .iter()
                    .map(|e| (e.index, e.term))
                    .collect::<Vec<_>>()
            ));
            return;
        }
        self.push_input(
            to,
            NodeInput::Msg(DriverMsg::Raft(Box::new(msg), Some(addr(from).into()))),
        );
        if snapshot {
            self.report.snapshots_delivered += 1;
            self.push_input(
                from,
                NodeInput::Msg(DriverMsg::SnapshotStatus(to, SnapshotStatus::Finish)),
            );
        }
    }

    pub(super) fn fault(&mut self) {
        if self.phase != Phase::Faults {
            return;
        }
        let n = self.config.nodes;
        let roll = self.rng.gen_range(0..100);
        if roll < 35 {
            let id = self.rng.gen_range(1..=n);
            if self.running(id) {
                // A prefix of the writes in flight reaches the disk: none, some or all.
                let in_flight = self.node(id).running.as_ref().map_or(0, |r| r.writes.len());
                let keep = if self.rng.gen_bool(0.5) {
                    0
                } else {
                    self.rng.gen_range(1..=in_flight.max(1))
                };
                self.report.crashes += 1;
                let forget = self.config.amnesiac_disks;
                self.node(id).crash(keep, forget);
                let after = self.between(100, 1500);
                self.at(after, Event::Restart { node: id });
            }
        } else if roll < 65 {
            self.cut.clear();
            let side: Vec<u64> = (1..=n).filter(|_| self.rng.gen_bool(0.5)).collect();
            for a in 1..=n {
                for b in 1..=n {
                    if side.contains(&a) != side.contains(&b) {
                        self.cut.insert((a, b));
                    }
                }
            }
            self.report.partitions += 1;
            let after = self.between(200, 2000);
            self.at(after, Event::Heal);
        } else if roll < 75 && self.report.disk_losses == 0 && (1..=n).all(|id| self.running(id)) {
            // A disk is lost once per run, while every other node runs: re-admission needs a
            // quorum of the other voters.
            let id = self.rng.gen_range(1..=n);
            self.report.disk_losses += 1;
            self.node(id).crash(0, false);
            self.node(id).disk = Arc::new(MemLogStorage::with_deferred_writes());
            let after = self.between(200, 1000);
            self.at(after, Event::Restart { node: id });
        }
        let after = self.between(200, 800);
        self.at(after, Event::Fault);
    }
}
