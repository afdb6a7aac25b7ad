//! `CLUSTER FAILOVER`: TAKEOVER (a fresh epoch, no vote), FORCE (an election now), default
//! (the primary pauses writes, the replica catches up to its offset, then an election).

use super::gossip::PingKind;
use super::{
    ClusterError, ClusterNode, Dest, Event, FailoverMode, MANUAL_FAILOVER_TIMEOUT_MS, MF_PAUSE_MULT,
};
use crate::bus::Body;
use crate::topology::{NodeId, Role};

/// Replica side of CLUSTER FAILOVER (default or FORCE).
#[derive(Clone, Debug)]
pub(super) struct ManualFailover {
    pub(super) deadline_ms: u64,
    /// The primary's offset once it paused (default mode).
    pub(super) primary_offset: Option<u64>,
    pub(super) ready: bool,
    pub(super) mfstart_sent_ms: u64,
}

impl ClusterNode {
    /// Primary side: a replica's MFSTART pauses this node's writes (see [`Self::pauses_for`]);
    /// the ping that answers it carries the offset the replica must reach.
    pub(super) fn handle_mf_start(&mut self, now_ms: u64, sender: NodeId) {
        if self.pauses_for(sender) {
            // Twice the replica's deadline, as Redis (CLUSTER_MF_PAUSE_MULT): the pause
            // must outlast a promotion that comes at the end of it.
            self.paused_for = Some((
                sender,
                now_ms.saturating_add(MF_PAUSE_MULT * MANUAL_FAILOVER_TIMEOUT_MS),
            ));
            self.send_ping_kind(now_ms, sender, PingKind::Ping);
        }
    }

    /// `CLUSTER FAILOVER [FORCE|TAKEOVER]` on a replica.
    pub fn failover(&mut self, now_ms: u64, mode: FailoverMode) -> Result<(), ClusterError> {
        let Role::Replica { of: primary } = self.topo.myself().role else {
            return Err(ClusterError::NotReplica);
        };
        let p = self
            .topo
            .node(primary)
            .ok_or(ClusterError::UnknownNode(primary))?;
        match mode {
            FailoverMode::Takeover => {
                self.bump_epoch_without_consensus();
                let epoch = self.topo.myself().config_epoch;
                self.manual = None;
                self.election = None;
                self.take_over_from(now_ms, primary, epoch);
            }
            FailoverMode::Force => {
                self.manual = Some(ManualFailover {
                    deadline_ms: now_ms.saturating_add(MANUAL_FAILOVER_TIMEOUT_MS),
                    primary_offset: None,
                    ready: true,
                    mfstart_sent_ms: now_ms,
                });
            }
            FailoverMode::Default => {
                if p.flags.failing() {
                    return Err(ClusterError::PrimaryDown);
                }
                self.manual = Some(ManualFailover {
                    deadline_ms: now_ms.saturating_add(MANUAL_FAILOVER_TIMEOUT_MS),
                    primary_offset: None,
                    ready: false,
                    mfstart_sent_ms: now_ms,
                });
                self.send(Dest::Node(primary), Body::MfStart);
            }
        }
        Ok(())
    }

    pub(super) fn tick_manual_failover(&mut self, now_ms: u64) {
        let Some(m) = &mut self.manual else {
            return;
        };
        if now_ms > m.deadline_ms {
            self.manual = None;
            self.election = self.election.take().filter(|e| !e.manual);
            self.push_event(Event::ManualFailoverTimedOut);
            return;
        }
        let my_offset = self.topo.myself().repl_offset;
        if m.primary_offset.is_some_and(|o| my_offset >= o) {
            m.ready = true;
        }
        // The bus may lose MFSTART: ask again each ping interval until the primary paused.
        let resend = !m.ready
            && m.primary_offset.is_none()
            && now_ms.saturating_sub(m.mfstart_sent_ms) >= self.config.ping_interval_ms();
        if resend {
            m.mfstart_sent_ms = now_ms;
            if let Some(primary) = self.topo.myself().role.primary_id() {
                self.send(Dest::Node(primary), Body::MfStart);
            }
        }
    }
}
