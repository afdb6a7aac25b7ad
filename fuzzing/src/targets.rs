//! The fuzz targets: each takes arbitrary bytes, feeds them to one decoder the way the
//! server does, and panics if the decoder panics or breaks a property a caller relies on.
//! Shared by the stable harness (`meridian-fuzz`) and the cargo-fuzz targets in `fuzz/`.

use std::fmt::Debug;
use std::ops::Range;

use bytes::BytesMut;
use meridian::frame::{
    encode_command, parse_request, parse_request_resume, Limits, ParseError, Partial,
};
use meridian::kafka::{parse_record, MAX_KEYS_PER_RECORD};
use meridian_regions::bus;
use meridian_regions::bus_auth::{frame_len, HELLO_BYTES, NONCE_BYTES, TAG_BYTES};
use meridian_replication::codec;
use meridian_replication::replica_stream::frame::{decode_frame, encode_frame};

/// What the decoder made of one input (counted per run, to show how deep the inputs get).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// At least one frame/request/record decoded.
    Accepted,
    /// Refused as malformed before anything decoded.
    Rejected,
    /// Only a prefix of something: the decoder asks for more bytes.
    Incomplete,
}

/// `meridian::frame::parse_request` and `parse_request_resume` on a byte stream.
///
/// Input: a control byte, then the stream. Control bits 0-5: the stream arrives in chunks of
/// 1..=64 bytes; bit 6: the client is not authenticated (Redis' pre-auth limits); bit 7:
/// tight limits (short lines, small bulks, few arguments) so inputs reach every limit.
///
/// Parses the stream whole (`parse_request`, requests dropped from the front as a
/// connection does), then chunk by chunk with `parse_request_resume` keeping its `Partial`
/// between arrivals. Checks: no panic; every success makes progress and its argument ranges
/// lie inside the bytes it consumed; a protocol error is a `Protocol error: ...` with no
/// arguments left; chunking changes nothing (below `max_inline_len`, where only the
/// "too big" checks look at how much is buffered); and each request re-encoded as a
/// multibulk (`encode_command`) parses back to the same arguments.
pub fn resp(data: &[u8]) -> Outcome {
    let Some((&control, stream)) = data.split_first() else {
        return Outcome::Incomplete;
    };
    let mut limits = Limits {
        unauthenticated: control & 0x40 != 0,
        ..Limits::default()
    };
    if control & 0x80 != 0 {
        limits.max_inline_len = 64;
        limits.max_bulk_len = 32;
        limits.max_multibulk_len = 8;
    }
    let mut args = Vec::new();

    let mut whole = stream.to_vec();
    let mut whole_requests = Vec::new();
    let mut pos = 0;
    let whole_end = loop {
        match parse_request(&mut whole[pos..], &limits, &mut args) {
            Ok(n) => {
                whole_requests.push(request(&whole[pos..], n, &args));
                pos += n;
            }
            Err(e) => break end(e, &args),
        }
    };
    let whole_consumed = pos;

    let chunk_len = usize::from(control % 64) + 1;
    let mut buf: Vec<u8> = Vec::new();
    let mut partial = Partial::default();
    let mut chunked_requests = Vec::new();
    let mut chunked_consumed = 0;
    let mut chunked_end = End::Incomplete;
    'chunks: for chunk in stream.chunks(chunk_len) {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            match parse_request_resume(&mut buf[pos..], &limits, &mut args, &mut partial) {
                Ok(n) => {
                    chunked_requests.push(request(&buf[pos..], n, &args));
                    pos += n;
                }
                Err(e) => {
                    chunked_end = end(e, &args);
                    break;
                }
            }
        }
        buf.drain(..pos);
        chunked_consumed += pos;
        if chunked_end != End::Incomplete {
            break 'chunks;
        }
    }

    if stream.len() <= limits.max_inline_len {
        assert_eq!(chunked_requests, whole_requests, "chunked parse differs");
        assert_eq!(chunked_end, whole_end, "chunked parse ends differently");
        assert_eq!(chunked_consumed, whole_consumed);
    }

    // Round trip: what was parsed, written back as a multibulk, parses to the same.
    let roundtrip_limits = Limits::default();
    let mut out = BytesMut::new();
    for req in &whole_requests {
        out.clear();
        encode_command(req, &mut out);
        let mut bytes = out.to_vec();
        match parse_request(&mut bytes, &roundtrip_limits, &mut args) {
            Ok(n) => {
                assert_eq!(n, bytes.len(), "re-encoded request not consumed whole");
                assert_eq!(
                    &request(&bytes, n, &args),
                    req,
                    "re-encoded request differs"
                );
            }
            Err(e) => panic!("re-encoded request {req:?} does not parse: {e:?}"),
        }
    }

    match (whole_requests.is_empty(), whole_end) {
        (false, _) => Outcome::Accepted,
        (true, End::Protocol(_)) => Outcome::Rejected,
        (true, End::Incomplete) => Outcome::Incomplete,
    }
}

#[derive(Debug, PartialEq)]
enum End {
    Incomplete,
    Protocol(String),
}

fn end(e: ParseError, args: &[Range<usize>]) -> End {
    match e {
        ParseError::Incomplete => {
            assert!(args.is_empty(), "arguments left after Incomplete");
            End::Incomplete
        }
        ParseError::Protocol(message) => {
            assert!(message.starts_with("Protocol error: "), "{message}");
            assert!(args.is_empty(), "arguments left after a protocol error");
            End::Protocol(message)
        }
    }
}

/// The arguments of a request that consumed `n` bytes at the front of `buf`.
fn request(buf: &[u8], n: usize, args: &[Range<usize>]) -> Vec<Vec<u8>> {
    assert!(n > 0, "no progress");
    assert!(n <= buf.len(), "consumed past the buffer");
    args.iter()
        .map(|r| {
            assert!(
                r.start <= r.end && r.end <= n,
                "argument range out of the request"
            );
            buf[r.clone()].to_vec()
        })
        .collect()
}

/// Decodes frames from the front of `data` until the decoder asks for more or refuses, as
/// a connection does. For each decoded frame: it consumed a non-empty part of the buffer,
/// a strict prefix of it is `Ok(None)` (read more), and it re-encodes to bytes that decode
/// to the same value. Errors must display.
fn frame_stream<T: PartialEq + Debug, E: Debug + std::fmt::Display>(
    data: &[u8],
    decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
    encode: impl Fn(&T) -> Result<Vec<u8>, E>,
) -> Outcome {
    let mut rest = data;
    let mut decoded = 0usize;
    loop {
        match decode(rest) {
            Ok(Some((value, n))) => {
                assert!(
                    n > 0 && n <= rest.len(),
                    "consumed {n} of {} bytes",
                    rest.len()
                );
                for cut in [0, n / 2, n - 1] {
                    assert!(
                        matches!(decode(&rest[..cut]), Ok(None)),
                        "a {cut}-byte prefix of a {n}-byte frame is not incomplete"
                    );
                }
                let bytes = match encode(&value) {
                    Ok(b) => b,
                    Err(e) => panic!("a decoded frame does not re-encode: {e:?}\n{value:?}"),
                };
                match decode(&bytes) {
                    Ok(Some((again, m))) => {
                        assert_eq!(m, bytes.len());
                        assert_eq!(again, value, "re-encoded frame decodes differently");
                    }
                    other => panic!("a re-encoded frame does not decode: {other:?}"),
                }
                decoded += 1;
                rest = &rest[n..];
            }
            Ok(None) => break,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                if decoded == 0 {
                    return Outcome::Rejected;
                }
                break;
            }
        }
    }
    if decoded > 0 {
        Outcome::Accepted
    } else {
        Outcome::Incomplete
    }
}

/// `meridian_replication::codec::decode`: region link frames.
pub fn region_codec(data: &[u8]) -> Outcome {
    frame_stream(data, codec::decode, codec::encode)
}

/// `meridian_replication::replica_stream::frame::decode_frame`: the replica stream.
pub fn replica_stream(data: &[u8]) -> Outcome {
    frame_stream(data, decode_frame, |f| {
        let mut out = Vec::new();
        encode_frame(f, &mut out).map(|_| out)
    })
}

/// `meridian_regions::bus::decode`: cluster bus messages.
pub fn cluster_bus(data: &[u8]) -> Outcome {
    frame_stream(data, bus::decode, bus::encode)
}

/// `meridian_regions::bus_auth`: the accepting side of the handshake and the frame tags.
///
/// Input: challenge (16 bytes) · hello (52) · frames, each followed by its 16-byte tag.
/// Checks: `accept` takes exactly the hello the connecting side computes for that challenge
/// and the hello's nonce (anything else is refused); each frame's tag verifies exactly when
/// it is the tag the connecting side signs for that frame at that position; verified frames
/// go to the bus decoder (as the shell does); `frame_len` never under-reports the prefix.
pub fn bus_auth(data: &[u8]) -> Outcome {
    if let Some(n) = frame_len(data) {
        assert!(n >= meridian_regions::wire::PREFIX_BYTES);
    }
    let (Some(challenge), Some(hello)) = (
        data.get(..NONCE_BYTES)
            .and_then(|c| <[u8; NONCE_BYTES]>::try_from(c).ok()),
        data.get(NONCE_BYTES..NONCE_BYTES + HELLO_BYTES)
            .and_then(|h| <[u8; HELLO_BYTES]>::try_from(h).ok()),
    ) else {
        return Outcome::Incomplete;
    };
    let secret = crate::corpus::bus_secret();
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&hello[4..4 + NONCE_BYTES]);
    let (genuine, mut signer) = secret.hello(&challenge, nonce);
    let mut verifier = match secret.accept(&challenge, &hello) {
        Ok(v) => {
            assert_eq!(hello, genuine, "a forged hello was accepted");
            v
        }
        Err(e) => {
            assert_ne!(hello, genuine, "a genuine hello was refused: {e}");
            return Outcome::Rejected;
        }
    };
    let mut rest = &data[NONCE_BYTES + HELLO_BYTES..];
    while let Some(n) = frame_len(rest) {
        let Some(frame) = rest.get(..n) else { break };
        let Some(tag) = rest.get(n..n.saturating_add(TAG_BYTES)) else {
            break;
        };
        let expected = signer.sign(frame);
        match verifier.verify(frame, tag) {
            Ok(()) => assert_eq!(tag, expected, "a forged tag verified"),
            Err(e) => {
                assert_ne!(tag, expected, "a genuine tag was refused: {e}");
                break;
            }
        }
        cluster_bus(frame);
        rest = &rest[n + TAG_BYTES..];
    }
    Outcome::Accepted
}

/// `meridian::kafka::parse_record`.
///
/// Input: flags (bit 0: the record has a key, bit 1: a value) · key length (one byte) ·
/// key · value. Checks: no panic; an accepted record names 1..=MAX_KEYS_PER_RECORD keys,
/// a version that is positive when present, the record's key when the value has no key
/// list; the same invalidation written back the way producers write it (the batched JSON
/// form, or the record key with `{"version":N}`, or an empty value) parses to the same.
pub fn kafka_record(data: &[u8]) -> Outcome {
    let (flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (klen, rest) = rest.split_first().unwrap_or((&0, &[]));
    let klen = usize::from(*klen).min(rest.len());
    let (key, value) = rest.split_at(klen);
    let key = (flags & 1 != 0).then_some(key);
    let value = (flags & 2 != 0).then_some(value);
    let inv = match parse_record(key, value) {
        Ok(inv) => inv,
        Err(e) => {
            assert!(!e.is_empty());
            return Outcome::Rejected;
        }
    };
    assert!(!inv.keys.is_empty() && inv.keys.len() <= MAX_KEYS_PER_RECORD);
    let again = match inv.version {
        None => {
            assert_eq!(inv.keys.len(), 1);
            assert_eq!(
                Some(&inv.keys[0][..]),
                key,
                "an unversioned record names its key"
            );
            parse_record(key, Some(b""))
        }
        Some(version) => {
            assert!(version > 0);
            let utf8: Option<Vec<&str>> = inv
                .keys
                .iter()
                .map(|k| std::str::from_utf8(k).ok())
                .collect();
            match utf8 {
                Some(keys) => {
                    let json = serde_json::json!({ "version": version, "keys": keys });
                    parse_record(None, Some(json.to_string().as_bytes()))
                }
                // Keys from JSON are UTF-8; only the record key can be anything.
                None => {
                    assert_eq!(inv.keys.len(), 1);
                    assert_eq!(Some(&inv.keys[0][..]), key);
                    parse_record(key, Some(&meridian::kafka::record_value(Some(version))))
                }
            }
        }
    };
    assert_eq!(
        again.as_ref(),
        Ok(&inv),
        "the record written back parses differently"
    );
    Outcome::Accepted
}
