//! The primary's end of one replica's stream: the resync decision, the snapshot's chunks,
//! then backlog frames and pings out, acks in.

use super::backlog::Backlog;
use super::frame::{decode_frame, encode_frame, ReplicaFrame, SNAPSHOT_CHUNK_BYTES};
use super::{StreamError, LINK_TIMEOUT_MS, PING_INTERVAL_MS, SEND_BATCH_BYTES};
use crate::codec::KeyState;
use bytes::Bytes;
use meridian_crdt::Entry;

/// `MERIDIAN SYNC <replid|?> <applied offset> <listening port>`: what a replica asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    /// The primary's replication id the replica followed (`?`: none).
    pub replid: String,
    pub offset: u64,
    /// The replica's client port (INFO's `slaveN:port=`).
    pub listening_port: u16,
}

impl SyncRequest {
    /// Parse the three arguments after `MERIDIAN SYNC`.
    pub fn parse(replid: &[u8], offset: &[u8], port: &[u8]) -> Result<SyncRequest, &'static str> {
        let replid = std::str::from_utf8(replid)
            .ok()
            .filter(|r| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or("ERR invalid replication id")?;
        let offset = std::str::from_utf8(offset)
            .ok()
            .and_then(|o| o.parse::<u64>().ok())
            .ok_or("ERR invalid offset")?;
        let listening_port = std::str::from_utf8(port)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or("ERR invalid port")?;
        Ok(SyncRequest {
            replid: replid.to_string(),
            offset,
            listening_port,
        })
    }

    /// The inverse of [`SyncRequest::encode`], for drivers without a RESP parser (the
    /// simulator, tests; the server parses every request with its own): `None` until the
    /// bytes hold a whole request.
    pub fn decode(bytes: &[u8]) -> Option<Result<SyncRequest, &'static str>> {
        let text = std::str::from_utf8(bytes).ok()?;
        // *5, $8, MERIDIAN, $4, SYNC, $n, replid, $n, offset, $n, port, (end)
        let parts: Vec<&str> = text.split("\r\n").collect();
        if parts.len() < 12 {
            return None;
        }
        Some(SyncRequest::parse(
            parts[6].as_bytes(),
            parts[8].as_bytes(),
            parts[10].as_bytes(),
        ))
    }

    /// The request as a RESP command (what the replica writes).
    pub fn encode(&self) -> Vec<u8> {
        let offset = self.offset.to_string();
        let port = self.listening_port.to_string();
        let args: [&[u8]; 5] = [
            b"MERIDIAN",
            b"SYNC",
            self.replid.as_bytes(),
            offset.as_bytes(),
            port.as_bytes(),
        ];
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// The primary's answer to a [`SyncRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resync {
    /// The backlog covers the replica's position: stream on from `offset`.
    Partial { replid: String, offset: u64 },
    /// A snapshot of every entry, covering every change up to `offset`, then the stream.
    Full { replid: String, offset: u64 },
}

impl Resync {
    /// The offset the stream continues after.
    pub fn offset(&self) -> u64 {
        match self {
            Resync::Partial { offset, .. } | Resync::Full { offset, .. } => *offset,
        }
    }

    pub fn is_partial(&self) -> bool {
        matches!(self, Resync::Partial { .. })
    }

    /// The handshake line (`+CONTINUE …` / `+FULLRESYNC …`).
    pub fn line(&self) -> Vec<u8> {
        match self {
            Resync::Partial { replid, offset } => format!("+CONTINUE {replid} {offset}\r\n"),
            Resync::Full { replid, offset } => format!("+FULLRESYNC {replid} {offset}\r\n"),
        }
        .into_bytes()
    }

    /// Parse a handshake line (without its `\r\n`), as the replica does.
    pub fn parse(line: &str) -> Result<Resync, StreamError> {
        let mut parts = line.split(' ');
        let word = parts.next().unwrap_or("");
        let replid = parts.next().unwrap_or("").to_string();
        let offset = parts.next().and_then(|o| o.parse::<u64>().ok());
        match (word, offset) {
            ("+FULLRESYNC", Some(offset)) if !replid.is_empty() => {
                Ok(Resync::Full { replid, offset })
            }
            ("+CONTINUE", Some(offset)) if !replid.is_empty() => {
                Ok(Resync::Partial { replid, offset })
            }
            _ => Err(StreamError::Refused(line.chars().take(200).collect())),
        }
    }
}

/// Partial or full resync for `req`, given this primary's stream: its replication id,
/// whether the feed is recording (it records only once a replica asked), and its backlog.
/// Call it holding the backlog's lock, and start recording (if not yet) under the same
/// lock, so the backlog cannot move between the decision and the stream's start.
pub fn decide(req: &SyncRequest, replid: &str, recording: bool, backlog: &Backlog) -> Resync {
    if recording && req.replid == replid && backlog.covers(req.offset) {
        Resync::Partial {
            replid: replid.to_string(),
            offset: req.offset,
        }
    } else {
        Resync::Full {
            replid: replid.to_string(),
            offset: backlog.offset(),
        }
    }
}

/// Cuts a snapshot into `Entries` frames of about [`SNAPSHOT_CHUNK_BYTES`]. The shell
/// pushes every entry of every slot (one slot under its shard lock at a time) and writes
/// out what [`SnapshotWriter::take_ready`] gives it; then [`SnapshotWriter::finish`].
#[derive(Default)]
pub struct SnapshotWriter {
    chunk: Vec<KeyState>,
    chunk_bytes: usize,
    out: Vec<u8>,
    entries: u64,
}

impl SnapshotWriter {
    pub fn new() -> SnapshotWriter {
        SnapshotWriter::default()
    }

    /// Add one key's whole state (tombstones included).
    pub fn push(&mut self, key: &[u8], state: Entry) -> Result<(), StreamError> {
        let size = key.len() + state.heap_bytes() + 64;
        if size >= SNAPSHOT_CHUNK_BYTES && !self.chunk.is_empty() {
            self.flush()?;
        }
        self.chunk.push(KeyState {
            key: Bytes::copy_from_slice(key),
            state,
        });
        self.chunk_bytes += size;
        self.entries += 1;
        if self.chunk_bytes >= SNAPSHOT_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Encoded frames ready to write, once they amount to a chunk.
    pub fn take_ready(&mut self) -> Option<Vec<u8>> {
        (self.out.len() >= SNAPSHOT_CHUNK_BYTES).then(|| std::mem::take(&mut self.out))
    }

    /// The rest of the snapshot and its end (`SnapshotEnd { offset }`); the entry count.
    pub fn finish(mut self, offset: u64) -> Result<(Vec<u8>, u64), StreamError> {
        self.flush()?;
        encode_frame(&ReplicaFrame::SnapshotEnd { offset }, &mut self.out)?;
        Ok((self.out, self.entries))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.chunk_bytes = 0;
        if self.chunk.is_empty() {
            return Ok(());
        }
        let frame = ReplicaFrame::Entries(std::mem::take(&mut self.chunk));
        // A key too large for one frame cannot be streamed: the replica would silently
        // miss it, so the sync fails instead (logged by the shell; the replica retries).
        encode_frame(&frame, &mut self.out)?;
        Ok(())
    }
}

/// The primary's end of one replica's stream after the handshake (and snapshot): backlog
/// frames after `sent` and pings out, acks in.
#[derive(Debug)]
pub struct StreamSender {
    sent: u64,
    acked: u64,
    last_heard_ms: u64,
    next_ping_ms: u64,
    inbuf: Vec<u8>,
}

impl StreamSender {
    /// A stream whose replica holds every change up to `offset` (the resync's offset).
    pub fn new(now_ms: u64, offset: u64) -> StreamSender {
        StreamSender {
            sent: offset,
            acked: offset,
            last_heard_ms: now_ms,
            next_ping_ms: now_ms + PING_INTERVAL_MS,
            inbuf: Vec::new(),
        }
    }

    /// The last offset handed out to write.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The greatest offset the replica acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes from the replica: returns the new acknowledged offset when it grew.
    pub fn handle_bytes(&mut self, now_ms: u64, bytes: &[u8]) -> Result<Option<u64>, StreamError> {
        self.last_heard_ms = now_ms;
        self.inbuf.extend_from_slice(bytes);
        let mut grew = None;
        let mut used_total = 0;
        while let Some((frame, used)) = decode_frame(&self.inbuf[used_total..])? {
            used_total += used;
            match frame {
                ReplicaFrame::Ack { offset } => {
                    if offset > self.sent {
                        return Err(StreamError::Protocol(format!(
                            "ack of offset {offset}, beyond the {} sent",
                            self.sent
                        )));
                    }
                    if offset > self.acked {
                        self.acked = offset;
                        grew = Some(offset);
                    }
                }
                other => {
                    return Err(StreamError::Protocol(format!(
                        "unexpected frame from a replica: {}",
                        frame_name(&other)
                    )))
                }
            }
        }
        self.inbuf.drain(..used_total);
        Ok(grew)
    }

    /// Append what to write now to `out`: the backlog's frames after `sent` (up to
    /// [`SEND_BATCH_BYTES`]), or a ping when one is due. Call holding the backlog's lock.
    pub fn poll_transmit(
        &mut self,
        now_ms: u64,
        backlog: &Backlog,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let before = out.len();
        self.sent = backlog.read_after(self.sent, SEND_BATCH_BYTES, out)?;
        if out.len() > before {
            self.next_ping_ms = now_ms + PING_INTERVAL_MS;
        } else if now_ms >= self.next_ping_ms {
            encode_frame(&ReplicaFrame::Ping, out)?;
            self.next_ping_ms = now_ms + PING_INTERVAL_MS;
        }
        Ok(())
    }

    /// When to call [`StreamSender::handle_timeout`] and `poll_transmit` again, at the
    /// latest (new backlog frames wake the shell earlier).
    pub fn poll_timeout(&self) -> u64 {
        self.next_ping_ms
            .min(self.last_heard_ms.saturating_add(LINK_TIMEOUT_MS))
    }

    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), StreamError> {
        if now_ms >= self.last_heard_ms.saturating_add(LINK_TIMEOUT_MS) {
            return Err(StreamError::Timeout);
        }
        Ok(())
    }
}

/// A frame's name for error messages (never its payload).
pub(crate) fn frame_name(f: &ReplicaFrame) -> &'static str {
    match f {
        ReplicaFrame::Entries(_) => "Entries",
        ReplicaFrame::SnapshotEnd { .. } => "SnapshotEnd",
        ReplicaFrame::Delta(_) => "Delta",
        ReplicaFrame::State { .. } => "State",
        ReplicaFrame::Ping => "Ping",
        ReplicaFrame::Ack { .. } => "Ack",
        ReplicaFrame::Forget { .. } => "Forget",
        ReplicaFrame::ForgetSlot { .. } => "ForgetSlot",
    }
}
