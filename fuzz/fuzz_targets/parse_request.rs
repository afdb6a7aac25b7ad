//! Feeds arbitrary bytes to `frame::parse_request` the way a connection does: the stream
//! arrives in chunks, requests are parsed until `Incomplete` or a protocol error, consumed
//! bytes are dropped from the front of the buffer. Checks that nothing panics, that every
//! success makes progress and points inside the bytes it consumed, and that parsing the stream
//! chunk by chunk gives the same requests and the same final outcome as parsing it whole.
//!
//! Run with `cargo +nightly fuzz run parse_request` from this directory.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian::frame::{parse_request, Limits, ParseError};

#[derive(Debug, PartialEq)]
enum End {
    Incomplete,
    Protocol(String),
}

/// Parses everything `buf` holds, appending each request's arguments to `requests`; returns
/// how many bytes were consumed and why parsing stopped.
fn drain(
    buf: &mut [u8],
    limits: &Limits,
    args: &mut Vec<std::ops::Range<usize>>,
    requests: &mut Vec<Vec<Vec<u8>>>,
) -> (usize, End) {
    let mut pos = 0;
    loop {
        match parse_request(&mut buf[pos..], limits, args) {
            Ok(consumed) => {
                assert!(consumed > 0, "no progress");
                assert!(pos + consumed <= buf.len(), "consumed past the buffer");
                let request = &buf[pos..pos + consumed];
                requests.push(
                    args.iter()
                        .map(|r| {
                            assert!(
                                r.start <= r.end && r.end <= consumed,
                                "range out of request"
                            );
                            request[r.clone()].to_vec()
                        })
                        .collect(),
                );
                pos += consumed;
            }
            Err(ParseError::Incomplete) => return (pos, End::Incomplete),
            Err(ParseError::Protocol(message)) => {
                assert!(message.starts_with("Protocol error: "), "{message}");
                assert!(args.is_empty());
                return (pos, End::Protocol(message));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    let mut args = Vec::new();

    let mut whole = stream.to_vec();
    let mut whole_requests = Vec::new();
    let (whole_consumed, whole_end) = drain(&mut whole, &limits, &mut args, &mut whole_requests);

    // The same stream arriving in chunks of 1..=64 bytes, as reads from a socket would.
    let chunk_len = usize::from(chunk_seed % 64) + 1;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunked_requests = Vec::new();
    let mut chunked_consumed = 0;
    let mut chunked_end = End::Incomplete;
    for chunk in stream.chunks(chunk_len) {
        buf.extend_from_slice(chunk);
        let (consumed, end) = drain(&mut buf, &limits, &mut args, &mut chunked_requests);
        buf.drain(..consumed);
        chunked_consumed += consumed;
        chunked_end = end;
        if chunked_end != End::Incomplete {
            break;
        }
    }

    // Only the "too big" checks look at how much is buffered, and they need more than
    // max_inline_len bytes; below that, chunking must not change the outcome.
    if stream.len() <= limits.max_inline_len {
        assert_eq!(chunked_requests, whole_requests);
        assert_eq!(chunked_end, whole_end);
        assert_eq!(chunked_consumed, whole_consumed);
    }
});
