//! The replica's end of the stream: the request, the handshake line, the snapshot and the
//! change frames in order, acks out.

use super::frame::{decode_frame, encode_frame, ReplicaFrame};
use super::sender::{frame_name, Resync, SyncRequest};
use super::{StreamError, ACK_INTERVAL_MS, LINK_TIMEOUT_MS, MAX_HANDSHAKE_LINE_BYTES};
use std::collections::VecDeque;

/// What the replica's shell must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// A full resync begins: drop every key (keys the primary deleted or moved away since
    /// would otherwise linger) and forget the old position (a connection lost during the
    /// snapshot must not resume partially).
    FullResync { replid: String, offset: u64 },
    /// The primary continues the stream from the replica's position.
    Continue { offset: u64 },
    /// Merge this frame into the store: `Entries` (snapshot), or a change (`Delta`,
    /// `State`, `Forget`, `ForgetSlot`) whose offset [`StreamReceiver::applied`] already
    /// counts.
    Apply(ReplicaFrame),
    /// The snapshot is complete: the replica now holds its primary's whole state as of
    /// `offset`, and follows `replid`'s stream.
    SnapshotDone { replid: String, offset: u64 },
}

#[derive(Debug)]
enum Phase {
    /// Waiting for `+CONTINUE`/`+FULLRESYNC`.
    Handshake,
    /// Receiving a snapshot that ends at `offset`.
    Snapshot {
        replid: String,
        offset: u64,
    },
    Streaming,
}

/// The replica's end of one connection to its primary.
#[derive(Debug)]
pub struct StreamReceiver {
    request: SyncRequest,
    phase: Phase,
    buf: Vec<u8>,
    /// Decoded frames not handed out yet (the shell prefetches their keys).
    ahead: VecDeque<ReplicaFrame>,
    /// Frames decoded ahead at most (the shell's prefetch distance).
    max_ahead: usize,
    /// The stream this replica follows and its last applied offset (`None`: none yet).
    position: Option<(String, u64)>,
    applied: u64,
    acked: Option<u64>,
    last_heard_ms: u64,
    next_ack_ms: u64,
}

impl StreamReceiver {
    /// A connection that resumes `position` (the primary's replid and the offset applied
    /// from it) if the primary can, announcing `listening_port`.
    pub fn new(
        now_ms: u64,
        position: Option<(String, u64)>,
        listening_port: u16,
        max_ahead: usize,
    ) -> StreamReceiver {
        let (replid, offset) = match &position {
            Some((r, o)) => (r.clone(), *o),
            None => ("?".to_string(), 0),
        };
        StreamReceiver {
            request: SyncRequest {
                replid,
                offset,
                listening_port,
            },
            phase: Phase::Handshake,
            buf: Vec::new(),
            ahead: VecDeque::new(),
            max_ahead: max_ahead.max(1),
            applied: offset,
            position,
            acked: None,
            last_heard_ms: now_ms,
            next_ack_ms: now_ms + ACK_INTERVAL_MS,
        }
    }

    /// The `MERIDIAN SYNC` request to write first.
    pub fn request(&self) -> Vec<u8> {
        self.request.encode()
    }

    /// The stream followed and the offset applied from it, for the next connection
    /// (`None` while a snapshot is incomplete, or before any sync).
    pub fn position(&self) -> Option<(String, u64)> {
        self.position.clone()
    }

    /// The last offset applied (handed out in an event).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn in_snapshot(&self) -> bool {
        matches!(self.phase, Phase::Snapshot { .. })
    }

    /// Has the primary answered the handshake?
    pub fn connected(&self) -> bool {
        !matches!(self.phase, Phase::Handshake)
    }

    /// Frames decoded but not handed out yet, next first (for prefetching their keys).
    pub fn ahead(&self) -> impl Iterator<Item = &ReplicaFrame> {
        self.ahead.iter()
    }

    /// Bytes from the primary.
    pub fn handle_bytes(&mut self, now_ms: u64, bytes: &[u8]) {
        self.last_heard_ms = now_ms;
        self.buf.extend_from_slice(bytes);
    }

    /// The next thing to do, if the bytes so far make one. An error closes the connection.
    pub fn poll_event(&mut self) -> Result<Option<ReceiverEvent>, StreamError> {
        if let Phase::Handshake = self.phase {
            return self.handshake();
        }
        let frame = loop {
            self.decode_ahead()?;
            match self.ahead.pop_front() {
                None => return Ok(None),
                Some(ReplicaFrame::Ping) => continue,
                Some(f) => break f,
            }
        };
        let change = frame.has_offset();
        match (&self.phase, frame) {
            (Phase::Snapshot { .. }, f) if change => Err(StreamError::Protocol(format!(
                "change frame {} inside a snapshot",
                frame_name(&f)
            ))),
            (Phase::Snapshot { .. }, f @ ReplicaFrame::Entries(_)) => {
                Ok(Some(ReceiverEvent::Apply(f)))
            }
            (Phase::Snapshot { replid, offset }, ReplicaFrame::SnapshotEnd { offset: end }) => {
                if end != *offset {
                    return Err(StreamError::Protocol(format!(
                        "snapshot announced to end at {offset} ends at {end}"
                    )));
                }
                let replid = replid.clone();
                self.applied = end;
                self.position = Some((replid.clone(), end));
                self.phase = Phase::Streaming;
                Ok(Some(ReceiverEvent::SnapshotDone {
                    replid,
                    offset: end,
                }))
            }
            (Phase::Streaming, f) if change => {
                self.applied += 1;
                if let Some(p) = &mut self.position {
                    p.1 = self.applied;
                }
                Ok(Some(ReceiverEvent::Apply(f)))
            }
            (_, f) => Err(StreamError::Protocol(format!(
                "unexpected frame {} from the primary",
                frame_name(&f)
            ))),
        }
    }

    fn handshake(&mut self) -> Result<Option<ReceiverEvent>, StreamError> {
        let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            if self.buf.len() > MAX_HANDSHAKE_LINE_BYTES {
                return Err(StreamError::Protocol("handshake line too long".into()));
            }
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
        self.buf.drain(..pos + 2);
        match Resync::parse(&line)? {
            Resync::Full { replid, offset } => {
                self.position = None;
                self.phase = Phase::Snapshot {
                    replid: replid.clone(),
                    offset,
                };
                Ok(Some(ReceiverEvent::FullResync { replid, offset }))
            }
            Resync::Partial { replid, offset } => {
                let asked = self.position.as_ref();
                if asked.is_none_or(|(r, o)| *r != replid || *o != offset) {
                    return Err(StreamError::Protocol(format!(
                        "primary continues {replid} at {offset}, we asked {} at {}",
                        self.request.replid, self.request.offset
                    )));
                }
                self.phase = Phase::Streaming;
                Ok(Some(ReceiverEvent::Continue { offset }))
            }
        }
    }

    fn decode_ahead(&mut self) -> Result<(), StreamError> {
        let mut used_total = 0;
        while self.ahead.len() <= self.max_ahead {
            match decode_frame(&self.buf[used_total..])? {
                Some((frame, used)) => {
                    used_total += used;
                    self.ahead.push_back(frame);
                }
                None => break,
            }
        }
        self.buf.drain(..used_total);
        Ok(())
    }

    /// An ack to write now, if one is due: after applying (once the shell handled every
    /// event the bytes so far made) and every [`ACK_INTERVAL_MS`]; none during a snapshot.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut Vec<u8>) -> Result<bool, StreamError> {
        if !matches!(self.phase, Phase::Streaming) {
            return Ok(false);
        }
        if self.acked == Some(self.applied) && now_ms < self.next_ack_ms {
            return Ok(false);
        }
        encode_frame(
            &ReplicaFrame::Ack {
                offset: self.applied,
            },
            out,
        )?;
        self.acked = Some(self.applied);
        self.next_ack_ms = now_ms + ACK_INTERVAL_MS;
        Ok(true)
    }

    /// When to call `poll_transmit` and `handle_timeout` again, at the latest.
    pub fn poll_timeout(&self) -> u64 {
        self.next_ack_ms
            .min(self.last_heard_ms.saturating_add(LINK_TIMEOUT_MS))
    }

    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), StreamError> {
        if now_ms >= self.last_heard_ms.saturating_add(LINK_TIMEOUT_MS) {
            return Err(StreamError::Timeout);
        }
        Ok(())
    }
}
