//! Scenario tests of the node: a few nodes on `Mesh`, driven through its inputs only.

use super::*;
use crate::bus::Header;
use crate::topology::SLOT_COUNT;

const TIMEOUT_MS: u64 = 1000;

/// Nodes wired together with a lossless, instant bus (quinn-proto's `Pair`, for n nodes).
struct Mesh {
    nodes: Vec<ClusterNode>,
    now_ms: u64,
    /// Messages to index `i` are discarded while `cut[i]`.
    cut: Vec<bool>,
}

impl Mesh {
    fn new(n: usize) -> Mesh {
        let config = NodeConfig {
            node_timeout_ms: TIMEOUT_MS,
            require_full_coverage: true,
        };
        let nodes = (0..n)
            .map(|i| {
                let info = NodeInfo::new(
                    NodeId::from_u128(i as u128 + 1),
                    format!("h{i}"),
                    7000,
                    17000,
                );
                ClusterNode::new(config.clone(), info)
            })
            .collect();
        Mesh {
            nodes,
            now_ms: 1,
            cut: vec![false; n],
        }
    }

    fn id(&self, i: usize) -> NodeId {
        self.nodes[i].myself_id()
    }

    fn index(&self, to: &Dest) -> Option<usize> {
        (0..self.nodes.len()).find(|&j| match to {
            Dest::Node(id) => self.id(j) == *id,
            Dest::Addr { host, .. } => self.nodes[j].topology().myself().host == *host,
        })
    }

    /// Delivers until no node has anything to send.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].poll_outgoing() {
                    moved = true;
                    let Some(j) = self.index(&out.to) else {
                        continue;
                    };
                    if self.cut[i] || self.cut[j] {
                        continue;
                    }
                    let now = self.now_ms;
                    self.nodes[j].handle_message(now, out.msg).unwrap();
                }
            }
            if !moved {
                return;
            }
        }
        panic!("bus never settled");
    }

    fn run(&mut self, duration_ms: u64) {
        let end = self.now_ms + duration_ms;
        while self.now_ms < end {
            self.now_ms += TICK_INTERVAL_MS;
            for i in 0..self.nodes.len() {
                let now = self.now_ms;
                self.nodes[i].tick(now, i as u64 * 7919 + now);
            }
            self.settle();
        }
    }

    /// Nodes 0..primaries own equal slot ranges; the rest replicate round-robin.
    fn cluster(n: usize, primaries: usize) -> Mesh {
        let mut m = Mesh::new(n);
        for j in 1..n {
            let host = format!("h{j}");
            m.nodes[0].meet(1, &host, 17000).unwrap();
        }
        let per = SLOT_COUNT / primaries;
        for p in 0..primaries {
            let end = if p + 1 == primaries {
                SLOT_COUNT
            } else {
                (p + 1) * per
            };
            let slots: Vec<u32> = (p * per..end).map(|s| s as u32).collect();
            m.nodes[p].add_slots(1, &slots).unwrap();
        }
        m.run(1000);
        for r in primaries..n {
            let p = m.id((r - primaries) % primaries);
            let now = m.now_ms;
            m.nodes[r].replicate(now, p).unwrap();
        }
        // Long enough for the nodes to settle and resolve epoch collisions.
        m.run(1000 + 2 * TIMEOUT_MS);
        m
    }
}

fn header_of(node: &ClusterNode) -> Header {
    node.header()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Corrupted frames either fail to decode or, if they still decode, are rejected or
    /// applied by the state machine — never a panic.
    #[test]
    fn corrupted_frames_never_panic_the_node(
        mutations in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
        kind in 0usize..4,
    ) {
        use std::sync::OnceLock;
        static BASE: OnceLock<(ClusterNode, Vec<Vec<u8>>)> = OnceLock::new();
        let (node, frames) = BASE.get_or_init(|| {
            let m = Mesh::cluster(4, 3);
            let h = header_of(&m.nodes[3]);
            let gossip = m.nodes[1].clone().gossip_for(None);
            let bodies = [
                Body::Ping { gossip },
                Body::FailoverAuthRequest { force_ack: true },
                Body::Update { node: m.id(1), config_epoch: 9, slots: m.nodes[1].topology().slot_map().bitmap_of(m.id(1)) },
                Body::Fail { node: m.id(2) },
            ];
            let frames = bodies
                .into_iter()
                .map(|body| bus::encode(&BusMessage { header: h.clone(), body }).unwrap())
                .collect();
            (m.nodes[0].clone(), frames)
        });
        let mut frame = frames[kind].clone();
        for (at, byte) in mutations {
            let i = at % frame.len();
            frame[i] = byte;
        }
        if let Ok(Some((msg, _))) = bus::decode(&frame) {
            let mut n = node.clone();
            let _ = n.handle_message(10_000, msg);
            n.tick(10_100, 1);
            while n.poll_outgoing().is_some() {}
        }
    }
}

#[test]
fn a_cluster_forms_with_unique_epochs() {
    let m = Mesh::cluster(4, 3);
    let mut epochs: Vec<u64> = (0..3)
        .map(|i| m.nodes[i].topology().myself().config_epoch)
        .collect();
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(epochs.len(), 3, "collision resolution gave unique epochs");
    for n in &m.nodes {
        assert!(n.topology().state_ok());
        assert_eq!(n.topology().size(), 3);
        assert_eq!(n.topology().nodes().count(), 4);
    }
    assert_eq!(
        m.nodes[3].topology().myself().role,
        Role::Replica { of: m.id(0) }
    );
}

#[test]
fn malformed_messages_are_rejected_without_change() {
    let mut m = Mesh::cluster(3, 3);
    let mut msg = BusMessage {
        header: header_of(&m.nodes[1]),
        body: Body::Ping { gossip: vec![] },
    };
    msg.header.slots = postcard::from_bytes(&[2, 0xff, 0xff]).unwrap();
    let before = m.nodes[0].topology().cluster_nodes();
    assert!(matches!(
        m.nodes[0].handle_message(m.now_ms, msg.clone()),
        Err(ClusterError::Bus(_))
    ));
    msg.header = header_of(&m.nodes[0]);
    assert!(m.nodes[0].handle_message(m.now_ms, msg).is_err(), "own id");
    assert_eq!(m.nodes[0].topology().cluster_nodes(), before);
}

#[test]
fn a_primary_votes_once_per_epoch() {
    let mut m = Mesh::cluster(5, 3);
    // Replicas 3 and 4 follow primaries 0 and 1. Pretend both primaries failed.
    let (p0, p1) = (m.id(0), m.id(1));
    for id in [p0, p1] {
        let n = m.nodes[2].topo.nodes.get_mut(&id).unwrap();
        n.flags.set(NodeFlags::FAIL);
    }
    let epoch = m.nodes[2].topology().current_epoch() + 1;
    let req = |i: usize| {
        let mut h = header_of(&m.nodes[i]);
        h.current_epoch = epoch;
        BusMessage {
            header: h,
            body: Body::FailoverAuthRequest { force_ack: false },
        }
    };
    let (r3, r4) = (req(3), req(4));
    let now = m.now_ms;
    m.nodes[2].handle_message(now, r3).unwrap();
    m.nodes[2].handle_message(now, r4).unwrap();
    let acks: Vec<Dest> = std::iter::from_fn(|| m.nodes[2].poll_outgoing())
        .filter(|o| o.msg.body == Body::FailoverAuthAck)
        .map(|o| o.to)
        .collect();
    assert_eq!(acks, vec![Dest::Node(m.id(3))]);
    assert_eq!(m.nodes[2].persistent_state().last_vote_epoch, epoch);
}

#[test]
fn no_vote_unless_the_primary_is_failed() {
    let mut m = Mesh::cluster(4, 3);
    let mut h = header_of(&m.nodes[3]);
    h.current_epoch += 1;
    let msg = BusMessage {
        header: h,
        body: Body::FailoverAuthRequest { force_ack: false },
    };
    let now = m.now_ms;
    m.nodes[1].handle_message(now, msg).unwrap();
    assert!(std::iter::from_fn(|| m.nodes[1].poll_outgoing())
        .all(|o| o.msg.body != Body::FailoverAuthAck));
}

#[test]
fn a_stale_claim_gets_an_update_and_yields() {
    let mut m = Mesh::cluster(3, 3);
    // Node 1 takes slot 0 from node 0 with a fresh epoch while node 0 does not hear it.
    m.cut[0] = true;
    let (now, id0, id1) = (m.now_ms, m.id(0), m.id(1));
    m.nodes[1]
        .set_slot(now, 0, SetSlot::Importing(id0), 0)
        .unwrap();
    m.nodes[1].set_slot(now, 0, SetSlot::Node(id1), 0).unwrap();
    m.settle();
    assert_eq!(m.nodes[2].topology().owner(0), Some(id1));
    assert_eq!(m.nodes[0].topology().owner(0), Some(m.id(0)));
    m.cut[0] = false;
    // Node 0's next ping claims slot 0 with its old epoch; node 1 or 2 answers UPDATE.
    m.run(1000);
    assert_eq!(m.nodes[0].topology().owner(0), Some(id1));
    assert!(
        m.nodes[0].topology().myself().role.is_primary(),
        "kept its other slots"
    );
}

#[test]
fn bumpepoch_keeps_a_unique_greatest_epoch_and_breaks_a_tie() {
    let mut m = Mesh::cluster(3, 3);
    let now = m.now_ms;
    let (bumped, top) = m.nodes[1].bump_epoch(now);
    assert!(bumped || top > 0);
    m.settle();
    // Already the unique greatest: BUMPEPOCH keeps it.
    assert_eq!(m.nodes[1].bump_epoch(now), (false, top));
    // Tied with another node's: it bumps above every epoch.
    m.nodes[2].topo.myself_mut().config_epoch = top;
    assert_eq!(m.nodes[2].bump_epoch(now), (true, top + 1));
}

#[test]
fn a_slot_in_transit_does_not_put_the_cluster_down() {
    let mut m = Mesh::cluster(3, 3);
    let (id0, id1) = (m.id(0), m.id(1));
    let now = m.now_ms;
    m.nodes[1]
        .set_slot(now, 0, SetSlot::Importing(id0), 0)
        .unwrap();
    m.nodes[0]
        .set_slot(now, 0, SetSlot::Migrating(id1), 0)
        .unwrap();
    // The source hands the slot over first: node 2 hears its claim without slot 0
    // before the target claims it.
    m.nodes[0].set_slot(now, 0, SetSlot::Node(id1), 0).unwrap();
    m.settle();
    assert_eq!(m.nodes[2].topology().owner(0), None, "released at node 2");
    assert!(
        m.nodes[2].can_write(m.now_ms),
        "a slot in transit is not a coverage hole"
    );
    m.run(TIMEOUT_MS / 2);
    assert!(m.nodes[2].can_write(m.now_ms));
    let now = m.now_ms;
    m.nodes[1].set_slot(now, 0, SetSlot::Node(id1), 0).unwrap();
    m.settle();
    assert_eq!(m.nodes[2].topology().owner(0), Some(id1));
    assert!(m.nodes[2].can_write(m.now_ms));
}

#[test]
fn an_unclaimed_slot_is_a_hole_after_a_node_timeout() {
    let mut m = Mesh::cluster(3, 3);
    let id1 = m.id(1);
    let now = m.now_ms;
    m.nodes[0].set_slot(now, 0, SetSlot::Node(id1), 0).unwrap();
    m.settle();
    assert!(m.nodes[2].can_write(m.now_ms));
    // Node 1 never claims it: after a node timeout node 2 counts the hole.
    m.run(TIMEOUT_MS + 200);
    assert_eq!(m.nodes[2].topology().owner(0), None);
    assert!(!m.nodes[2].can_write(m.now_ms));
}

#[test]
fn set_config_epoch_only_on_a_lone_fresh_node() {
    let mut m = Mesh::new(1);
    assert_eq!(
        m.nodes[0].set_config_epoch(-1),
        Err(ClusterError::BadEpoch(-1))
    );
    m.nodes[0].set_config_epoch(5).unwrap();
    let st = m.nodes[0].persistent_state();
    assert_eq!((st.config_epoch, st.current_epoch), (5, 5));
    assert_eq!(
        m.nodes[0].set_config_epoch(6),
        Err(ClusterError::EpochAlreadySet)
    );
    let mut m = Mesh::cluster(2, 2);
    m.nodes[1].topo.myself_mut().config_epoch = 0;
    assert_eq!(
        m.nodes[1].set_config_epoch(9),
        Err(ClusterError::EpochWithPeers)
    );
}

#[test]
fn an_isolated_primary_stops_writes_after_the_timeout_and_fails_over() {
    let mut m = Mesh::cluster(6, 3);
    let t0 = m.now_ms;
    assert!(m.nodes[0].can_write(t0));
    m.cut[0] = true;
    m.run(TIMEOUT_MS / 2);
    assert!(m.nodes[0].can_write(m.now_ms));
    m.run(TIMEOUT_MS / 2 + TICK_INTERVAL_MS);
    assert!(!m.nodes[0].can_write(m.now_ms));
    m.run(4 * TIMEOUT_MS);
    assert!(m.nodes[3].topology().myself().role.is_primary());
    assert_eq!(m.nodes[1].topology().owner(0), Some(m.id(3)));
    m.cut[0] = false;
    m.run(2 * TIMEOUT_MS);
    assert_eq!(
        m.nodes[0].topology().myself().role,
        Role::Replica { of: m.id(3) }
    );
    assert!(m.nodes.iter().all(|n| n.topology().state_ok()));
}

#[test]
fn a_returning_primary_with_a_colliding_epoch_does_not_win_its_slots_back() {
    // Node 0 fails over to node 3 while cut off. It comes back with a config epoch equal
    // to node 1's (a collision not yet resolved when it went away) and the lowest id, so
    // the collision rule makes it take a fresh epoch: that epoch must not outbid the
    // failover and win its old slots back.
    let mut m = Mesh::cluster(6, 3);
    m.cut[0] = true;
    m.run(5 * TIMEOUT_MS);
    assert_eq!(m.nodes[1].topology().owner(0), Some(m.id(3)));
    let e1 = m.nodes[1].topology().myself().config_epoch;
    m.nodes[0].topo.myself_mut().config_epoch = e1;
    m.cut[0] = false;
    m.run(3 * TIMEOUT_MS);
    assert_eq!(
        m.nodes[0].topology().myself().role,
        Role::Replica { of: m.id(3) }
    );
    for n in &m.nodes {
        assert_eq!(n.topology().owner(0), Some(m.id(3)));
    }
}

#[test]
fn admin_errors_use_redis_wording() {
    let mut m = Mesh::cluster(4, 3);
    let now = m.now_ms;
    let e = m.nodes[0].add_slots(now, &[0]).unwrap_err();
    assert_eq!(e.to_string(), "ERR Slot 0 is already busy");
    let e = m.nodes[0].add_slots(now, &[16384]).unwrap_err();
    assert_eq!(e.to_string(), "ERR Invalid or out of range slot");
    let e = m.nodes[0].failover(now, FailoverMode::Force).unwrap_err();
    assert_eq!(e, ClusterError::NotReplica);
    let primary = m.id(0);
    assert_eq!(
        m.nodes[3].forget(now, primary),
        Err(ClusterError::ForgetPrimary)
    );
    let me = m.id(3);
    assert_eq!(
        m.nodes[3].replicate(now, me),
        Err(ClusterError::ReplicateSelf)
    );
    let id1 = m.id(1);
    assert_eq!(m.nodes[0].replicate(now, id1), Err(ClusterError::NotEmpty));
}

#[test]
fn takeover_needs_no_votes() {
    let mut m = Mesh::cluster(4, 3);
    m.cut[0] = true;
    m.cut[1] = true;
    m.cut[2] = true;
    let now = m.now_ms;
    m.nodes[3].failover(now, FailoverMode::Takeover).unwrap();
    assert!(m.nodes[3].topology().myself().role.is_primary());
    assert_eq!(m.nodes[3].topology().owner(0), Some(m.id(3)));
    let epochs = m.nodes[3].persistent_state();
    assert_eq!(epochs.config_epoch, epochs.current_epoch);
    assert!(matches!(
        std::iter::from_fn(|| m.nodes[3].poll_event()).last(),
        Some(Event::StateChanged { .. }) | Some(Event::PromotedToPrimary { .. })
    ));
}

#[test]
fn reset_forgets_everything() {
    let mut m = Mesh::cluster(4, 3);
    let now = m.now_ms;
    m.nodes[1].reset(now, Some(NodeId::from_u128(99)));
    let t = m.nodes[1].topology();
    assert_eq!(t.nodes().count(), 1);
    assert_eq!(t.slot_map().assigned(), 0);
    assert_eq!(t.myself_id(), NodeId::from_u128(99));
    assert_eq!(t.current_epoch(), 0);
}

/// Delivers node `from`'s queued messages one at a time (none dropped), handing each
/// to `check` after the receiver applied it.
fn deliver_each(m: &mut Mesh, from: usize, mut check: impl FnMut(&Mesh, usize, &'static str)) {
    while let Some(out) = m.nodes[from].poll_outgoing() {
        let Some(j) = m.index(&out.to) else {
            continue;
        };
        let kind = out.msg.kind();
        let now = m.now_ms;
        m.nodes[j].handle_message(now, out.msg).unwrap();
        check(m, j, kind);
    }
}

#[test]
fn learns_repl_port_from_meet_ping_and_pong() {
    let mut m = Mesh::new(2);
    m.nodes[0].set_repl_port(7102);
    m.nodes[1].set_repl_port(7202);
    let (a, b) = (m.id(0), m.id(1));
    m.nodes[0].meet(1, "h1", 17000).unwrap();
    let mut seen_meet = false;
    deliver_each(&mut m, 0, |m, j, kind| {
        assert_eq!((j, kind), (1, "meet"));
        let a_at_b = m.nodes[1].topology().node(a).unwrap();
        assert_eq!(a_at_b.repl_port, 7102);
        assert_eq!(a_at_b.repl_addr().as_deref(), Some("h0:7102"));
        seen_meet = true;
    });
    assert!(seen_meet);
    // The meeting node ignores the PONG of a node it cannot name yet (as Redis) and
    // learns it from the PING that follows; whichever message introduces it carries
    // the port, and every later PING/PONG header keeps it.
    let mut kinds = Vec::new();
    for _ in 0..20 {
        m.now_ms += TICK_INTERVAL_MS;
        let now = m.now_ms;
        m.nodes[0].tick(now, 5);
        m.nodes[1].tick(now, 3);
        deliver_each(&mut m, 1, |m, j, kind| {
            if j == 0 {
                if let Some(b_at_a) = m.nodes[0].topology().node(b) {
                    assert_eq!(b_at_a.repl_addr().as_deref(), Some("h1:7202"));
                    kinds.push(kind);
                }
            }
        });
        deliver_each(&mut m, 0, |_, _, _| {});
    }
    assert!(
        kinds.contains(&"ping") && kinds.contains(&"pong"),
        "{kinds:?}"
    );
    m.run(500);
    // A changed port (a restart with another `[replication] listen`) reaches the peer
    // with the next header; none (0) reads as no address.
    m.nodes[1].set_repl_port(7302);
    m.run(500);
    assert_eq!(m.nodes[0].topology().node(b).unwrap().repl_port, 7302);
    m.nodes[1].set_repl_port(0);
    m.run(500);
    assert_eq!(m.nodes[0].topology().node(b).unwrap().repl_addr(), None);
    // Redis-compatible output does not show it.
    assert!(!m.nodes[0].topology().cluster_nodes().contains("7302"));
}

#[test]
fn gossip_carries_repl_port() {
    let mut m = Mesh::new(3);
    for i in 0..3 {
        m.nodes[i].set_repl_port(7100 + i as u16);
    }
    let c = m.id(2);
    // 0 and 2 form a cluster; 1 has never heard of 2.
    m.nodes[0].meet(1, "h2", 17000).unwrap();
    m.run(500);
    assert!(m.nodes[1].topology().node(c).is_none());
    let gossip = m.nodes[0].gossip_for(None);
    let g = gossip
        .iter()
        .find(|g| g.id == c)
        .expect("0 gossips about 2");
    assert_eq!(g.repl_port, 7102);
    // 0 meets 1: the MEET's gossip introduces 2 to 1, with its replication port,
    // before 2 and 1 ever talked.
    let now = m.now_ms;
    m.nodes[0].meet(now, "h1", 17000).unwrap();
    let mut learned = false;
    deliver_each(&mut m, 0, |m, j, kind| {
        if (j, kind) == (1, "meet") {
            let c_at_1 = m.nodes[1].topology().node(c).expect("learned by gossip");
            assert!(c_at_1.flags.has(NodeFlags::HANDSHAKE));
            assert_eq!(c_at_1.repl_addr().as_deref(), Some("h2:7102"));
            learned = true;
        }
    });
    assert!(learned);
    m.run(1000);
    for i in 0..3 {
        for j in 0..3 {
            let n = m.nodes[i].topology().node(m.id(j)).unwrap();
            assert_eq!(n.repl_port, 7100 + j as u16, "node {j} as node {i} sees it");
        }
    }
}

/// A stranger on the bus (issue 22): a header claiming every slot with a huge epoch, sent
/// as a PING, as a MEET, as an UPDATE or a vote request. Only the MEET makes it known, and
/// only in handshake: none of its claims is taken, the owners keep their slots, nobody
/// follows it, and the epochs do not move. If it ever answers with a PONG it is a member
/// like any other (then its claims count, as in Redis: the bus trusts its members).
#[test]
fn a_strangers_frames_never_add_it_nor_move_slots_or_epochs() {
    let mut m = Mesh::cluster(3, 3);
    let owners: Vec<Option<NodeId>> = (0..SLOT_COUNT as u16)
        .map(|s| m.nodes[0].topology().owner(s))
        .collect();
    let epoch_before = m.nodes[0].topology().current_epoch;
    let stranger = NodeId::from_u128(0xBAD);
    let mut h = header_of(&m.nodes[2]);
    h.sender = stranger;
    h.host = "evil".into();
    h.config_epoch = u64::MAX - 1;
    h.current_epoch = u64::MAX;
    h.replica_of = None;
    for s in 0..SLOT_COUNT as u16 {
        h.slots.set(s, true);
    }
    let now = m.now_ms;
    let ignored = m.nodes[0].stats().stranger_messages_ignored;
    for body in [
        Body::Ping { gossip: vec![] },
        Body::Pong { gossip: vec![] },
        Body::FailoverAuthRequest { force_ack: true },
        Body::Update {
            node: stranger,
            config_epoch: u64::MAX,
            slots: h.slots.clone(),
        },
    ] {
        let msg = BusMessage {
            header: h.clone(),
            body,
        };
        m.nodes[0].handle_message(now, msg).unwrap();
    }
    assert!(m.nodes[0].topology().node(stranger).is_none(), "not added");
    assert_eq!(m.nodes[0].stats().stranger_messages_ignored, ignored + 4);
    // A MEET adds it, in handshake, and nothing it claims is applied.
    let meet = BusMessage {
        header: h.clone(),
        body: Body::Meet { gossip: vec![] },
    };
    m.nodes[0].handle_message(now, meet).unwrap();
    let n = m.nodes[0].topology().node(stranger).expect("met");
    assert!(n.flags.has(NodeFlags::HANDSHAKE));
    for again in [Body::Ping { gossip: vec![] }, Body::Meet { gossip: vec![] }] {
        let msg = BusMessage {
            header: h.clone(),
            body: again,
        };
        m.nodes[0].handle_message(now, msg).unwrap();
    }
    m.run(2 * TIMEOUT_MS);
    for i in 0..3 {
        let t = m.nodes[i].topology();
        assert_eq!(t.current_epoch, epoch_before, "node {i}'s epoch");
        for s in 0..SLOT_COUNT as u16 {
            assert_eq!(t.owner(s), owners[usize::from(s)], "node {i} slot {s}");
        }
        assert!(t.myself().role.is_primary(), "node {i} follows nobody");
    }
    // Never answered: dropped after the handshake timeout.
    assert!(
        m.nodes[0].topology().node(stranger).is_none(),
        "handshake expired"
    );
}

/// A node restarted with its identity and epochs but no peers (what the nodes file keeps)
/// greets one member: the PONG answering its MEET makes that member known, its gossip
/// the rest, and every node sees it up again.
#[test]
fn a_restarted_node_that_knows_nobody_rejoins_through_one_meet() {
    let mut m = Mesh::cluster(4, 3);
    let saved = m.nodes[3].persistent_state();
    let info = NodeInfo::new(m.id(3), "h3".to_string(), 7000, 17000);
    let config = m.nodes[3].config().clone();
    m.nodes[3] = ClusterNode::new(config, info);
    m.nodes[3].restore(saved);
    let now = m.now_ms;
    m.nodes[3].meet(now, "h1", 17000).unwrap();
    m.run(2000 + 2 * TIMEOUT_MS);
    let t = m.nodes[3].topology();
    assert_eq!(t.nodes().count(), 4, "it knows every member again");
    assert!(t.nodes().all(|n| !n.flags.has(NodeFlags::HANDSHAKE)));
    assert_eq!(
        t.slot_map().assigned(),
        SLOT_COUNT,
        "it learned every claim"
    );
    for i in 0..3 {
        let n = m.nodes[i].topology().node(m.id(3)).expect("still known");
        assert!(!n.flags.failing(), "node {i} sees it up");
    }
}
