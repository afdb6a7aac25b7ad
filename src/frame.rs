//! RESP codec: decodes client requests and encodes replies (RESP2 and RESP3). Pure: no I/O,
//! no clocks, and no panic on any byte sequence.
//!
//! # Decoding requests
//!
//! [`parse_request`] parses one request from the front of a buffer and returns the number of
//! bytes it consumed; the arguments come back as byte ranges into that same buffer, so a
//! command borrows `&buf[range]` and nothing is copied or allocated (the caller reuses the
//! `args` vector across requests). The buffer is `&mut [u8]` for one reason: inline requests
//! may carry quotes and escapes (`SET k "a\x00b"`), whose unescaped text is never longer than
//! its source, so the parser rewrites it in place inside the consumed line and the ranges
//! stay ranges. Multibulk requests (everything real clients and redis-benchmark send, bar
//! `PING_INLINE`) are never written to. `Err(Incomplete)` means "read more and call again"
//! and never touches the buffer; after `Err(Protocol)` the connection is over, like in Redis
//! (reply `-ERR <message>` and close), and bytes of the offending line may have been rewritten.
//!
//! The grammar and error texts follow Redis 7 (`processMultibulkBuffer`,
//! `processInlineBuffer`, `sdssplitargs`, `string2ll`), with these deliberate differences:
//! - the CR that ends a `*`/`$` line must be followed by LF, and a bulk payload by CRLF
//!   (Redis skips those two bytes unchecked). The errors are "invalid multibulk length" /
//!   "invalid bulk length" for a bad line end and [`ERR_BULK_TERMINATOR`] for a bad payload end;
//! - a NUL byte does not hide the end of line from the scanner (Redis' `strchr` stops at NUL, so
//!   it waits for more input); as in `sdssplitargs`, a NUL ends the inline argument list;
//! - the multibulk count is bounded by [`Limits::max_multibulk_len`] (Redis 7: `INT_MAX`), and
//!   a client that has not authenticated is held to Redis' pre-auth bounds
//!   ([`Limits::unauthenticated`]: at most 10 arguments of at most 16 KB each).
//!
//! [`parse_request`] keeps no state between calls. [`parse_request_resume`] keeps the
//! progress on an incomplete request in a [`Partial`] (the arguments complete so far, where
//! the current line's scan stopped, the bytes the next attempt needs), so a request that
//! arrives a byte at a time is scanned once in all, not once per arrival (which would be
//! quadratic in its size); a bulk payload is skipped by length, never scanned.
//!
//! # Encoding replies
//!
//! [`encode`] appends one [`Reply`] to an output buffer in RESP2 or RESP3; RESP3-only types
//! degrade the way Redis degrades them (map → flat array, double → bulk string, bool → integer).

use std::borrow::Cow;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// Redis `proto-max-bulk-len` default: the largest bulk argument a client may send.
pub const DEFAULT_MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// The largest argument count of one multibulk request.
pub const DEFAULT_MAX_MULTIBULK_LEN: usize = 1024 * 1024;
/// Redis `PROTO_INLINE_MAX_SIZE`: the longest inline request, and the longest `*`/`$` line
/// we wait for before calling the request garbage.
pub const DEFAULT_MAX_INLINE_LEN: usize = 64 * 1024;

pub const ERR_INVALID_MULTIBULK_LEN: &str = "Protocol error: invalid multibulk length";
pub const ERR_INVALID_BULK_LEN: &str = "Protocol error: invalid bulk length";
pub const ERR_TOO_BIG_MBULK_COUNT: &str = "Protocol error: too big mbulk count string";
pub const ERR_TOO_BIG_BULK_COUNT: &str = "Protocol error: too big bulk count string";
pub const ERR_UNAUTH_MULTIBULK_LEN: &str = "Protocol error: unauthenticated multibulk length";
pub const ERR_UNAUTH_BULK_LEN: &str = "Protocol error: unauthenticated bulk length";
/// Redis' bounds for a client that has not authenticated (`networking.c`).
pub const UNAUTH_MAX_MULTIBULK_LEN: u64 = 10;
pub const UNAUTH_MAX_BULK_LEN: u64 = 16 * 1024;
pub const ERR_TOO_BIG_INLINE: &str = "Protocol error: too big inline request";
pub const ERR_UNBALANCED_QUOTES: &str = "Protocol error: unbalanced quotes in request";
/// Not in Redis, which does not check the two bytes after a bulk payload.
pub const ERR_BULK_TERMINATOR: &str = "Protocol error: expected CRLF after bulk argument";

/// Upper bound of the `args` capacity reserved up front from a client-declared count, so a
/// lying `*1048576` header cannot make us allocate before its arguments arrive.
const MAX_ARGS_PREALLOC: usize = 1024;

/// Bounds on what one request may declare; exceeding one is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk argument, in bytes (Redis `proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Largest argument count of a multibulk request.
    pub max_multibulk_len: usize,
    /// Longest inline request line, and longest unterminated `*`/`$` line, in bytes.
    pub max_inline_len: usize,
    /// The client has not authenticated: Redis' pre-auth bounds apply too
    /// ([`UNAUTH_MAX_MULTIBULK_LEN`], [`UNAUTH_MAX_BULK_LEN`]).
    pub unauthenticated: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: DEFAULT_MAX_BULK_LEN,
            max_multibulk_len: DEFAULT_MAX_MULTIBULK_LEN,
            max_inline_len: DEFAULT_MAX_INLINE_LEN,
            unauthenticated: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The buffer holds a strict prefix of a request: read more bytes and parse again.
    #[error("incomplete request")]
    Incomplete,
    /// The client broke the protocol. The message has no `ERR ` prefix; the connection
    /// replies `-ERR <message>` and closes, as Redis does.
    #[error("{0}")]
    Protocol(String),
}

impl ParseError {
    /// The reply Redis sends before closing the connection (`None` for `Incomplete`).
    pub fn to_reply(&self) -> Option<Reply> {
        match self {
            ParseError::Incomplete => None,
            ParseError::Protocol(message) => Some(Reply::Error(format!("ERR {message}").into())),
        }
    }
}

fn protocol(message: &str) -> ParseError {
    ParseError::Protocol(message.to_owned())
}

/// Parses one client request from the front of `buf`.
///
/// On success returns the number of bytes consumed and leaves in `args` (cleared first) the
/// arguments as ranges into `buf`. An empty `args` (`*0`, `*-1`, a blank inline line) is a
/// request to skip: consume the bytes and run nothing. On error `args` is empty.
/// Only an inline request containing quotes or escapes writes to `buf`, and only inside the
/// consumed bytes (see the module docs).
pub fn parse_request(
    buf: &mut [u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<usize, ParseError> {
    parse_request_resume(buf, limits, args, &mut Partial::default())
}

/// Where the parse of an incomplete request stopped, so that the next attempt (the same
/// request, its buffer grown) resumes there instead of starting over: a request dribbled
/// in a few bytes at a time costs one pass in all, not one pass per arrival. It also tells
/// the shortest buffer the next attempt can get further with ([`Partial::need`]): a bulk
/// whose payload is still on its way is not looked at again until all of it is there (as
/// Redis' `bulklen`).
#[derive(Debug, Default)]
pub struct Partial {
    /// Bytes of the request done: its `*` line and its complete arguments (0: none yet).
    done: usize,
    /// Arguments still to come after `done`.
    remaining: u64,
    /// Where the search for the end of the current line resumes (bytes before it hold none).
    scan_from: usize,
    /// The buffer length below which another attempt cannot get further.
    need: usize,
    /// The ranges of the complete arguments, kept between attempts.
    args: Vec<Range<usize>>,
}

impl Partial {
    /// The buffer length the request needs before it is worth parsing again (0: none
    /// known). For a large bulk this is the end of its payload, so a caller can size its
    /// buffer once and refuse a client whose declared request would exceed its limits.
    pub fn need(&self) -> usize {
        self.need
    }

    /// Forget the request in progress (the buffer no longer starts with it).
    pub fn reset(&mut self) {
        self.done = 0;
        self.remaining = 0;
        self.scan_from = 0;
        self.need = 0;
        self.args.clear();
    }

    /// Whether an attempt on this request already found part of it.
    pub fn in_progress(&self) -> bool {
        self.need > 0
    }
}

/// [`parse_request`] resuming an earlier attempt on the same request (`partial`, which the
/// call updates; start from `Partial::default()` and [`Partial::reset`] it when the buffer
/// no longer starts with that request). Results as [`parse_request`]'s.
pub fn parse_request_resume(
    buf: &mut [u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
    partial: &mut Partial,
) -> Result<usize, ParseError> {
    if buf.len() < partial.need {
        args.clear();
        return Err(ParseError::Incomplete);
    }
    let resumed = partial.done > 0;
    if resumed {
        std::mem::swap(args, &mut partial.args);
    } else {
        args.clear();
    }
    let parsed = match buf.first() {
        None => Err(ParseError::Incomplete),
        Some(b'*') => parse_multibulk(buf, limits, args, partial),
        Some(_) => parse_inline(buf, limits, args, partial),
    };
    match parsed {
        Ok(consumed) => {
            debug_assert!(consumed > 0 && consumed <= buf.len());
            debug_assert!(args.iter().all(|r| r.start <= r.end && r.end <= consumed));
            partial.reset();
            Ok(consumed)
        }
        Err(ParseError::Incomplete) => {
            if partial.done > 0 {
                // Keep the complete arguments' ranges for the next attempt.
                std::mem::swap(args, &mut partial.args);
            }
            args.clear();
            Err(ParseError::Incomplete)
        }
        Err(e) => {
            partial.reset();
            args.clear();
            Err(e)
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Bytes the parser looked at, for the tests that check resumed parsing is linear.
    static SCANNED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[inline]
fn count_scanned(_n: usize) {
    #[cfg(test)]
    SCANNED.with(|c| c.set(c.get() + _n));
}

enum LineError {
    /// No end of line yet; the search may resume at this offset.
    Incomplete(usize),
    TooLong,
}

/// Finds the CR ending the `*`/`$` line that starts at `start` the way Redis does: the first
/// CR after `start` with at least one byte after it; while there is none, the request is
/// incomplete until the unterminated tail grows past `max_line_len`. Bytes before `from`
/// (≥ `start`) are known to hold no CR.
#[inline]
fn find_line_cr(
    buf: &[u8],
    start: usize,
    from: usize,
    max_line_len: usize,
) -> Result<usize, LineError> {
    let from = from.max(start);
    let rest = buf.get(from..).unwrap_or_default();
    let found = rest.iter().position(|&b| b == b'\r');
    count_scanned(found.map_or(rest.len(), |i| i + 1));
    match found {
        Some(i) if from + i + 1 < buf.len() => Ok(from + i),
        Some(i) => Err(LineError::Incomplete(from + i)),
        None if buf.len().saturating_sub(start) > max_line_len => Err(LineError::TooLong),
        None => Err(LineError::Incomplete(buf.len().max(from))),
    }
}

fn parse_multibulk(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
    st: &mut Partial,
) -> Result<usize, ParseError> {
    debug_assert_eq!(buf.first(), Some(&b'*'));
    let (mut pos, mut remaining) = if st.done > 0 {
        (st.done, st.remaining)
    } else {
        let cr = match find_line_cr(buf, 0, st.scan_from, limits.max_inline_len) {
            Ok(cr) => cr,
            Err(LineError::Incomplete(from)) => {
                st.scan_from = from;
                st.need = buf.len() + 1;
                return Err(ParseError::Incomplete);
            }
            Err(LineError::TooLong) => return Err(protocol(ERR_TOO_BIG_MBULK_COUNT)),
        };
        // `cr >= 1` because buf[0] is '*'; `cr + 1 < buf.len()` by find_line_cr.
        if buf[cr + 1] != b'\n' {
            return Err(protocol(ERR_INVALID_MULTIBULK_LEN));
        }
        let count = match string2ll(&buf[1..cr]) {
            Some(n) if n <= 0 => return Ok(cr + 2),
            Some(n) if n as u64 <= limits.max_multibulk_len as u64 => n as u64,
            _ => return Err(protocol(ERR_INVALID_MULTIBULK_LEN)),
        };
        if limits.unauthenticated && count > UNAUTH_MAX_MULTIBULK_LEN {
            return Err(protocol(ERR_UNAUTH_MULTIBULK_LEN));
        }
        args.reserve((count as usize).min(MAX_ARGS_PREALLOC));
        (cr + 2, count)
    };
    while remaining > 0 {
        // Incomplete from here on: the next attempt resumes at this argument.
        let wait = |st: &mut Partial, scan_from: usize, need: usize| {
            st.done = pos;
            st.remaining = remaining;
            st.scan_from = scan_from;
            st.need = need;
            Err(ParseError::Incomplete)
        };
        let cr = match find_line_cr(buf, pos, st.scan_from, limits.max_inline_len) {
            Ok(cr) => cr,
            Err(LineError::Incomplete(from)) => return wait(st, from, buf.len() + 1),
            Err(LineError::TooLong) => return Err(protocol(ERR_TOO_BIG_BULK_COUNT)),
        };
        // pos <= cr < cr + 1 < buf.len()
        let prefix = buf[pos];
        if prefix != b'$' {
            return Err(ParseError::Protocol(format!(
                "Protocol error: expected '$', got '{}'",
                char::from(prefix)
            )));
        }
        if buf[cr + 1] != b'\n' {
            return Err(protocol(ERR_INVALID_BULK_LEN));
        }
        let len = match string2ll(&buf[pos + 1..cr]) {
            Some(n) if n >= 0 && n as u64 <= limits.max_bulk_len as u64 => n as usize,
            _ => return Err(protocol(ERR_INVALID_BULK_LEN)),
        };
        if limits.unauthenticated && len as u64 > UNAUTH_MAX_BULK_LEN {
            return Err(protocol(ERR_UNAUTH_BULK_LEN));
        }
        let start = cr + 2;
        // Overflow only with a limit near usize::MAX: such a buffer can never exist.
        let Some(end) = start.checked_add(len) else {
            return wait(st, pos, usize::MAX);
        };
        let Some(next) = end.checked_add(2) else {
            return wait(st, pos, usize::MAX);
        };
        match buf.get(end..next) {
            // The `$` line (a few bytes, validated) is read again with the payload.
            None => return wait(st, pos, next),
            Some(b"\r\n") => {}
            Some(_) => return Err(protocol(ERR_BULK_TERMINATOR)),
        }
        count_scanned(2);
        args.push(start..end);
        pos = next;
        remaining -= 1;
        st.scan_from = pos;
    }
    Ok(pos)
}

fn parse_inline(
    buf: &mut [u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
    st: &mut Partial,
) -> Result<usize, ParseError> {
    let from = st.scan_from.min(buf.len());
    let found = buf[from..].iter().position(|&b| b == b'\n');
    count_scanned(found.map_or(buf.len() - from, |i| i + 1));
    let Some(newline) = found.map(|i| from + i) else {
        return if buf.len() > limits.max_inline_len {
            Err(protocol(ERR_TOO_BIG_INLINE))
        } else {
            st.scan_from = buf.len();
            st.need = buf.len() + 1;
            Err(ParseError::Incomplete)
        };
    };
    let mut line_end = newline;
    if line_end > 0 && buf[line_end - 1] == b'\r' {
        line_end -= 1;
    }
    // sdssplitargs works on a C string: a NUL ends it.
    let line = &mut buf[..line_end];
    let text_len = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    split_args_in_place(&mut line[..text_len], args)?;
    Ok(newline + 1)
}

/// C `isspace` in the "C" locale, which `sdssplitargs` uses to skip blanks between arguments
/// and to check what follows a closing quote.
#[inline]
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

#[inline]
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte at `i`, or 0 past the end: the C string view `sdssplitargs` has of the line.
#[inline]
fn byte_at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

#[derive(Clone, Copy)]
enum Quote {
    None,
    Double,
    Single,
}

/// Redis `sdssplitargs`, writing each unescaped argument over its own source text.
///
/// `s` holds no NUL. The write cursor `w` never passes the read cursor `p` (every output byte
/// consumes at least one input byte, quotes consume input and output nothing), and every byte
/// is read before anything is written at or after its position, so rewriting in place is exact.
fn split_args_in_place(s: &mut [u8], args: &mut Vec<Range<usize>>) -> Result<(), ParseError> {
    let n = s.len();
    let mut p = 0;
    loop {
        while p < n && is_c_space(s[p]) {
            p += 1;
        }
        if p >= n {
            return Ok(());
        }
        let start = p;
        let mut w = p;
        let mut quote = Quote::None;
        loop {
            debug_assert!(w <= p);
            let c = byte_at(s, p);
            match quote {
                Quote::Double => {
                    let hex = match (byte_at(s, p + 1), byte_at(s, p + 2), byte_at(s, p + 3)) {
                        (b'x', hi, lo) if c == b'\\' => hex_value(hi).zip(hex_value(lo)),
                        _ => None,
                    };
                    if let Some((hi, lo)) = hex {
                        s[w] = (hi << 4) | lo;
                        w += 1;
                        p += 4;
                    } else if c == b'\\' && byte_at(s, p + 1) != 0 {
                        s[w] = match s[p + 1] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => b'\x08',
                            b'a' => b'\x07',
                            other => other,
                        };
                        w += 1;
                        p += 2;
                    } else if c == b'"' {
                        let next = byte_at(s, p + 1);
                        if next != 0 && !is_c_space(next) {
                            return Err(protocol(ERR_UNBALANCED_QUOTES));
                        }
                        p += 1;
                        break;
                    } else if c == 0 {
                        return Err(protocol(ERR_UNBALANCED_QUOTES));
                    } else {
                        s[w] = c;
                        w += 1;
                        p += 1;
                    }
                }
                Quote::Single => {
                    if c == b'\\' && byte_at(s, p + 1) == b'\'' {
                        s[w] = b'\'';
                        w += 1;
                        p += 2;
                    } else if c == b'\'' {
                        let next = byte_at(s, p + 1);
                        if next != 0 && !is_c_space(next) {
                            return Err(protocol(ERR_UNBALANCED_QUOTES));
                        }
                        p += 1;
                        break;
                    } else if c == 0 {
                        return Err(protocol(ERR_UNBALANCED_QUOTES));
                    } else {
                        s[w] = c;
                        w += 1;
                        p += 1;
                    }
                }
                Quote::None => match c {
                    0 => break,
                    b' ' | b'\n' | b'\r' | b'\t' => {
                        p += 1;
                        break;
                    }
                    b'"' => {
                        quote = Quote::Double;
                        p += 1;
                    }
                    b'\'' => {
                        quote = Quote::Single;
                        p += 1;
                    }
                    _ => {
                        s[w] = c;
                        w += 1;
                        p += 1;
                    }
                },
            }
        }
        args.push(start..w);
    }
}

/// Redis `string2ll`: a strict decimal i64 (no '+', no spaces, no leading zeros, no "-0").
#[inline]
fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let (&first, rest) = digits.split_first()?;
    if !(b'1'..=b'9').contains(&first) {
        return None;
    }
    let mut v = u64::from(first - b'0');
    for &d in rest {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        // -(2^63) is representable; 0u64.wrapping_sub maps it onto i64::MIN.
        (v <= i64::MAX as u64 + 1).then(|| 0u64.wrapping_sub(v) as i64)
    } else {
        i64::try_from(v).ok()
    }
}

/// One reply, encodable in RESP2 or RESP3.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// Simple string (`+...`); CR/LF are replaced by spaces on the wire.
    Simple(Cow<'static, str>),
    /// Full error text including its code, e.g. "ERR unknown command" or "WRONGTYPE ...";
    /// CR/LF are replaced by spaces on the wire.
    Error(Cow<'static, str>),
    Int(i64),
    Bulk(Bytes),
    /// RESP2 `$-1`, RESP3 `_`.
    Null,
    /// RESP2 `*-1`, RESP3 `_`.
    NullArray,
    Array(Vec<Reply>),
    /// RESP3 `%`; RESP2 flat array of keys and values.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~`; RESP2 array.
    Set(Vec<Reply>),
    /// RESP3 `,`; RESP2 bulk string. Formatted like Redis 7.2 (`d2string`).
    Double(f64),
    /// RESP3 `#t`/`#f`; RESP2 `:1`/`:0`.
    Bool(bool),
    /// RESP3 `=` with format `txt`; RESP2 bulk string.
    Verbatim(String),
    /// RESP3 `>`; RESP2 array.
    Push(Vec<Reply>),
}

/// Appends `reply` to `out` in RESP3 if `resp3`, else RESP2.
pub fn encode(reply: &Reply, resp3: bool, out: &mut BytesMut) {
    match reply {
        Reply::Ok => out.put_slice(b"+OK\r\n"),
        Reply::Simple(text) => put_line(out, b'+', text.as_bytes()),
        Reply::Error(text) => put_line(out, b'-', text.as_bytes()),
        Reply::Int(n) => {
            let mut digits = itoa::Buffer::new();
            put_line(out, b':', digits.format(*n).as_bytes());
        }
        Reply::Bulk(data) => put_bulk(out, data),
        Reply::Null => out.put_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" }),
        Reply::NullArray => out.put_slice(if resp3 { b"_\r\n" } else { b"*-1\r\n" }),
        Reply::Array(items) => {
            put_len(out, b'*', items.len());
            for item in items {
                encode(item, resp3, out);
            }
        }
        Reply::Map(pairs) => {
            if resp3 {
                put_len(out, b'%', pairs.len());
            } else {
                put_len(out, b'*', pairs.len().saturating_mul(2));
            }
            for (key, value) in pairs {
                encode(key, resp3, out);
                encode(value, resp3, out);
            }
        }
        Reply::Set(items) => {
            put_len(out, if resp3 { b'~' } else { b'*' }, items.len());
            for item in items {
                encode(item, resp3, out);
            }
        }
        Reply::Double(d) => {
            let mut text = DoubleText::new();
            let text = text.format(*d);
            if resp3 {
                put_line(out, b',', text);
            } else {
                put_bulk(out, text);
            }
        }
        Reply::Bool(b) => out.put_slice(match (resp3, *b) {
            (true, true) => b"#t\r\n",
            (true, false) => b"#f\r\n",
            (false, true) => b":1\r\n",
            (false, false) => b":0\r\n",
        }),
        Reply::Verbatim(text) => {
            if resp3 {
                put_len(out, b'=', text.len() + 4);
                out.reserve(text.len() + 6);
                out.put_slice(b"txt:");
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            } else {
                put_bulk(out, text.as_bytes());
            }
        }
        Reply::Push(items) => {
            put_len(out, if resp3 { b'>' } else { b'*' }, items.len());
            for item in items {
                encode(item, resp3, out);
            }
        }
    }
}

/// `<kind><text>\r\n`, with CR and LF in `text` turned into spaces so a line never breaks
/// the framing (Redis does the same for error replies).
#[inline]
fn put_line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(kind);
    if text.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.put_slice(text);
    }
    out.put_slice(b"\r\n");
}

#[inline]
fn put_len(out: &mut BytesMut, kind: u8, len: usize) {
    let mut digits = itoa::Buffer::new();
    put_line(out, kind, digits.format(len).as_bytes());
}

#[inline]
/// Appends a client request (a multibulk of bulk strings) to `out`: what meridian sends when
/// it is a client itself (MIGRATE, the replica handshake).
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    put_len(out, b'*', args.len());
    for arg in args {
        put_bulk(out, arg.as_ref());
    }
}

fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    put_len(out, b'$', data.len());
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Stack buffer for a double formatted like Redis 7.2 `d2string`: "nan", "inf", "-inf", "0",
/// "-0", integral values in (-2^62, 2^62) as integers, anything else as the shortest
/// round-trip digits (ryu) laid out like Redis' `fpconv_dtoa` ("0.1", "1.5e-10", "1e+300").
struct DoubleText {
    buf: [u8; 32],
    len: usize,
}

impl DoubleText {
    fn new() -> Self {
        DoubleText {
            buf: [0; 32],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        // The longest text is 24 bytes ("-1.2345678901234567e-308"); never silently wrap.
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn push_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
    }

    fn format(&mut self, d: f64) -> &[u8] {
        self.len = 0;
        if d.is_nan() {
            self.push_all(b"nan");
        } else if d.is_infinite() {
            self.push_all(if d < 0.0 { b"-inf" } else { b"inf" });
        } else if d == 0.0 {
            self.push_all(if d.is_sign_negative() { b"-0" } else { b"0" });
        } else if let Some(n) = double_to_i64(d) {
            let mut digits = itoa::Buffer::new();
            self.push_all(digits.format(n).as_bytes());
        } else {
            self.format_shortest(d);
        }
        &self.buf[..self.len]
    }

    /// Redis `fpconv_dtoa` layout (`emit_digits`) over ryu's shortest digits.
    fn format_shortest(&mut self, d: f64) {
        let mut ryu_buf = ryu::Buffer::new();
        let text = ryu_buf.format_finite(d.abs()).as_bytes();
        let (digits, digit_count, k) = decimal_digits(text);
        let digits = &digits[..digit_count];
        let nd = digit_count as i32;
        if d < 0.0 {
            self.push(b'-');
        }
        let exp = (k + nd - 1).abs();
        if k >= 0 && exp < nd + 7 {
            self.push_all(digits);
            for _ in 0..k {
                self.push(b'0');
            }
        } else if k < 0 && (k > -7 || exp < 4) {
            let offset = nd - k.abs();
            if offset <= 0 {
                self.push_all(b"0.");
                for _ in 0..-offset {
                    self.push(b'0');
                }
                self.push_all(digits);
            } else {
                let (int_part, frac_part) = digits.split_at(offset as usize);
                self.push_all(int_part);
                self.push(b'.');
                self.push_all(frac_part);
            }
        } else {
            if let Some((first, rest)) = digits.split_first() {
                self.push(*first);
                if !rest.is_empty() {
                    self.push(b'.');
                    self.push_all(rest);
                }
            }
            self.push(b'e');
            self.push(if k + nd - 1 < 0 { b'-' } else { b'+' });
            let mut digits = itoa::Buffer::new();
            self.push_all(digits.format(exp).as_bytes());
        }
    }
}

/// Redis `double2ll`: the value as an i64 when it is integral and well inside i64's range.
fn double_to_i64(d: f64) -> Option<i64> {
    const LIMIT: f64 = (i64::MAX / 2) as f64;
    if !(-LIMIT..=LIMIT).contains(&d) {
        return None;
    }
    let n = d as i64;
    (n as f64 == d).then_some(n)
}

/// Splits ryu's text ("1.5", "1e16", "1.2345e-7"; no sign) into significant digits (no
/// leading or trailing zeros) and the exponent `k` with value = digits * 10^k.
fn decimal_digits(text: &[u8]) -> ([u8; 24], usize, i32) {
    let (mantissa, exponent) = match text.iter().position(|&b| b == b'e') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &b""[..]),
    };
    let mut k: i32 = 0;
    let (negative_exp, exp_digits) = match exponent.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, exponent),
    };
    for &b in exp_digits {
        k = k * 10 + i32::from(b.wrapping_sub(b'0') % 10);
    }
    if negative_exp {
        k = -k;
    }
    let mut digits = [0u8; 24];
    let mut count = 0;
    let mut after_point = false;
    for &b in mantissa {
        if b == b'.' {
            after_point = true;
            continue;
        }
        if count == 0 && b == b'0' {
            // leading zero: no value, but still shifts the exponent if after the point
            if after_point {
                k -= 1;
            }
            continue;
        }
        if let Some(slot) = digits.get_mut(count) {
            *slot = b;
            count += 1;
        }
        if after_point {
            k -= 1;
        }
    }
    while count > 1 && digits[count - 1] == b'0' {
        count -= 1;
        k += 1;
    }
    (digits, count, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(buf: &[u8]) -> Result<(usize, Vec<Vec<u8>>), ParseError> {
        parse_with(buf, &Limits::default())
    }

    fn parse_with(buf: &[u8], limits: &Limits) -> Result<(usize, Vec<Vec<u8>>), ParseError> {
        let mut owned = buf.to_vec();
        let mut args = Vec::new();
        let consumed = parse_request(&mut owned, limits, &mut args)?;
        Ok((
            consumed,
            args.iter().map(|r| owned[r.clone()].to_vec()).collect(),
        ))
    }

    fn protocol_err(buf: &[u8]) -> String {
        match parse(buf) {
            Err(ParseError::Protocol(m)) => m,
            other => panic!("expected a protocol error for {buf:?}, got {other:?}"),
        }
    }

    fn strs(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_command(args, &mut out);
        out.to_vec()
    }

    /// Parses `buf` the way a connection does: request after request until Incomplete or a
    /// protocol error, checking the invariants of every success on the way.
    #[test]
    fn unauthenticated_clients_get_redis_pre_auth_bounds() {
        let limits = Limits {
            unauthenticated: true,
            ..Limits::default()
        };
        let ten = multibulk(&strs(&["a"; 10]));
        assert!(parse_with(&ten, &limits).is_ok());
        assert_eq!(
            parse_with(b"*11\r\n", &limits),
            Err(ParseError::Protocol(ERR_UNAUTH_MULTIBULK_LEN.into()))
        );
        let big = "x".repeat(16 * 1024);
        let ok = multibulk(&strs(&[big.as_str()]));
        assert!(parse_with(&ok, &limits).is_ok());
        assert_eq!(
            parse_with(b"*1\r\n$16385\r\n", &limits),
            Err(ParseError::Protocol(ERR_UNAUTH_BULK_LEN.into()))
        );
        assert_eq!(
            parse_with(b"*1\r\n$16385\r\n", &Limits::default()),
            Err(ParseError::Incomplete)
        );
    }

    fn drain(buf: &[u8], limits: &Limits) -> (Vec<Vec<Vec<u8>>>, usize, Option<ParseError>) {
        let mut owned = buf.to_vec();
        let mut args = Vec::new();
        let mut requests = Vec::new();
        let mut pos = 0;
        loop {
            match parse_request(&mut owned[pos..], limits, &mut args) {
                Ok(consumed) => {
                    assert!(consumed > 0, "no progress at {pos}");
                    assert!(pos + consumed <= owned.len());
                    for r in &args {
                        assert!(r.start <= r.end && r.end <= consumed);
                    }
                    let base = pos;
                    requests.push(
                        args.iter()
                            .map(|r| owned[base + r.start..base + r.end].to_vec())
                            .collect(),
                    );
                    pos += consumed;
                }
                Err(ParseError::Incomplete) => {
                    assert!(args.is_empty());
                    return (requests, pos, None);
                }
                Err(e @ ParseError::Protocol(_)) => {
                    assert!(args.is_empty());
                    return (requests, pos, Some(e));
                }
            }
        }
    }

    // ---- multibulk ----

    #[test]
    fn multibulk_simple() {
        let buf = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
        assert_eq!(parse(buf), Ok((buf.len(), strs(&["SET", "key", "value"]))));
    }

    #[test]
    fn multibulk_ranges_point_into_buffer() {
        let mut buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nextra".to_vec();
        let mut args = vec![0..0; 7]; // stale content must be cleared
        let consumed = parse_request(&mut buf, &Limits::default(), &mut args).unwrap();
        assert_eq!(consumed, buf.len() - 5);
        assert_eq!(args, vec![8..11, 17..18]);
    }

    #[test]
    fn multibulk_binary_and_empty_args() {
        let args = vec![b"\r\n\0*$".to_vec(), vec![], vec![0xff; 3]];
        let buf = multibulk(&args);
        assert_eq!(parse(&buf), Ok((buf.len(), args)));
    }

    #[test]
    fn multibulk_empty_requests_are_skipped() {
        assert_eq!(parse(b"*0\r\n"), Ok((4, vec![])));
        assert_eq!(parse(b"*-1\r\n"), Ok((5, vec![])));
        assert_eq!(parse(b"*-10\r\nPING\r\n"), Ok((6, vec![])));
    }

    #[test]
    fn multibulk_invalid_count() {
        for buf in [
            &b"*3000000000\r\n"[..],
            b"*1048577\r\n",
            b"*abc\r\n",
            b"*\r\n",
            b"*+1\r\n",
            b"*01\r\n",
            b"*-0\r\n",
            b"* 1\r\n",
            b"*1 \r\n",
            b"*99999999999999999999\r\n",
            b"*1\rX$1\r\na\r\n",
        ] {
            assert_eq!(protocol_err(buf), ERR_INVALID_MULTIBULK_LEN, "{buf:?}");
        }
        // exactly at the limit is fine (and just waits for the arguments)
        assert_eq!(parse(b"*1048576\r\n"), Err(ParseError::Incomplete));
    }

    #[test]
    fn multibulk_count_limit_is_configurable() {
        let limits = Limits {
            max_multibulk_len: 2,
            ..Limits::default()
        };
        let two = multibulk(&strs(&["a", "b"]));
        assert_eq!(
            parse_with(&two, &limits),
            Ok((two.len(), strs(&["a", "b"])))
        );
        let three = multibulk(&strs(&["a", "b", "c"]));
        assert_eq!(
            parse_with(&three, &limits),
            Err(ParseError::Protocol(ERR_INVALID_MULTIBULK_LEN.into()))
        );
    }

    #[test]
    fn multibulk_expected_dollar() {
        assert_eq!(
            protocol_err(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n"),
            "Protocol error: expected '$', got 'f'"
        );
        assert_eq!(
            protocol_err(b"*1\r\nfoo\r\n"),
            "Protocol error: expected '$', got 'f'"
        );
        assert_eq!(
            protocol_err(b"*1\r\n:1\r\n"),
            "Protocol error: expected '$', got ':'"
        );
        // the line may even be empty: Redis reports the CR itself
        assert_eq!(
            protocol_err(b"*1\r\n\r\n"),
            "Protocol error: expected '$', got '\r'"
        );
    }

    #[test]
    fn multibulk_invalid_bulk_length() {
        for buf in [
            &b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n"[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$03\r\nfoo\r\n",
            b"*1\r\n$3\rXfoo\r\n",
            b"*1\r\n$536870913\r\n",
        ] {
            assert_eq!(protocol_err(buf), ERR_INVALID_BULK_LEN, "{buf:?}");
        }
        // exactly proto-max-bulk-len is accepted (and waits for the payload)
        assert_eq!(parse(b"*1\r\n$536870912\r\n"), Err(ParseError::Incomplete));
    }

    #[test]
    fn multibulk_bulk_limit_is_configurable() {
        let limits = Limits {
            max_bulk_len: 3,
            ..Limits::default()
        };
        let ok = multibulk(&strs(&["abc"]));
        assert_eq!(parse_with(&ok, &limits), Ok((ok.len(), strs(&["abc"]))));
        let too_big = multibulk(&strs(&["abcd"]));
        assert_eq!(
            parse_with(&too_big, &limits),
            Err(ParseError::Protocol(ERR_INVALID_BULK_LEN.into()))
        );
    }

    #[test]
    fn multibulk_payload_must_end_in_crlf() {
        for buf in [
            &b"*1\r\n$3\r\nfooXY"[..],
            b"*1\r\n$3\r\nfoo\rX",
            b"*1\r\n$3\r\nfoo\n\r",
            b"*1\r\n$2\r\nfoo\r\n",
        ] {
            assert_eq!(protocol_err(buf), ERR_BULK_TERMINATOR, "{buf:?}");
        }
    }

    #[test]
    fn too_big_count_strings() {
        let limits = Limits::default();
        let mut buf = vec![b'*'];
        buf.resize(limits.max_inline_len, b'1');
        assert_eq!(parse(&buf), Err(ParseError::Incomplete));
        buf.push(b'1');
        assert_eq!(protocol_err(&buf), ERR_TOO_BIG_MBULK_COUNT);

        let mut buf = b"*2\r\n$1\r\na\r\n".to_vec();
        let header = buf.len();
        buf.push(b'$');
        buf.resize(header + limits.max_inline_len, b'1');
        assert_eq!(parse(&buf), Err(ParseError::Incomplete));
        buf.push(b'1');
        assert_eq!(protocol_err(&buf), ERR_TOO_BIG_BULK_COUNT);

        // Redis' desync regression test: "*\0" then garbage without CR
        let mut buf = b"*\0".to_vec();
        buf.extend(b"payload".repeat(10_000));
        assert_eq!(protocol_err(&buf), ERR_TOO_BIG_MBULK_COUNT);
    }

    #[test]
    fn long_lines_with_cr_are_parsed_not_rejected_as_too_big() {
        // Like Redis: a CR anywhere in the buffer ends the line; the number is then invalid.
        let mut buf = vec![b'*'];
        buf.resize(100_000, b'1');
        buf.extend_from_slice(b"\r\n");
        assert_eq!(protocol_err(&buf), ERR_INVALID_MULTIBULK_LEN);
    }

    #[test]
    fn incomplete_multibulk_waits() {
        assert_eq!(parse(b""), Err(ParseError::Incomplete));
        assert_eq!(parse(b"*"), Err(ParseError::Incomplete));
        assert_eq!(parse(b"*abc"), Err(ParseError::Incomplete)); // Redis waits for the CR
        assert_eq!(parse(b"*1\r"), Err(ParseError::Incomplete));
        assert_eq!(parse(b"*1\r\n$3\r\nfo"), Err(ParseError::Incomplete));
        assert_eq!(parse(b"*1\r\n$3\r\nfoo\r"), Err(ParseError::Incomplete));
    }

    /// Feed `wire` to [`parse_request_resume`] `step` bytes at a time (as a connection
    /// does: same buffer, growing), returning the parsed arguments and the bytes the parser
    /// scanned in all.
    fn dribble(wire: &[u8], step: usize) -> (Vec<Vec<u8>>, usize) {
        SCANNED.with(|c| c.set(0));
        let mut buf = Vec::new();
        let mut partial = Partial::default();
        let mut args = Vec::new();
        let limits = Limits::default();
        for chunk in wire.chunks(step) {
            buf.extend_from_slice(chunk);
            match parse_request_resume(&mut buf, &limits, &mut args, &mut partial) {
                Ok(n) => {
                    assert_eq!(n, wire.len(), "parsed before the last byte");
                    let got = args.iter().map(|r: &Range<usize>| buf[r.clone()].to_vec());
                    return (got.collect(), SCANNED.with(|c| c.get()));
                }
                Err(ParseError::Incomplete) => {}
                Err(e) => panic!("{e}"),
            }
        }
        panic!("never complete");
    }

    #[test]
    fn a_request_dribbled_in_is_scanned_once_not_once_per_arrival() {
        // 1 MB in 20 000 small arguments, 7 bytes at a time: parsing from the start at every
        // arrival would scan ~150 000 × 500 000 bytes; resumed, about the request once.
        let parts: Vec<Vec<u8>> = (0..20_000)
            .map(|i| format!("{i:045}").into_bytes())
            .collect();
        let wire = multibulk(&parts);
        assert!(wire.len() > 1_000_000);
        let (got, scanned) = dribble(&wire, 7);
        assert_eq!(got, parts);
        assert!(
            scanned <= 2 * wire.len(),
            "scanned {scanned} for {}",
            wire.len()
        );
        // One 1 MB bulk, 100 bytes at a time: the payload is never scanned, and the parser
        // is not even entered again until the whole of it can be there.
        let big = vec![vec![b'x'; 1 << 20]];
        let wire = multibulk(&big);
        let (got, scanned) = dribble(&wire, 100);
        assert_eq!(got, big);
        assert!(scanned < 100, "scanned {scanned}");
        // An inline request 1 byte at a time.
        let wire = format!("SET k {}\r\n", "v".repeat(60_000)).into_bytes();
        let (got, scanned) = dribble(&wire, 1);
        assert_eq!(got.len(), 3);
        assert!(scanned <= 2 * wire.len(), "scanned {scanned}");
    }

    #[test]
    fn partial_tells_the_bytes_a_bulk_still_needs() {
        let mut buf = b"*2\r\n$3\r\nSET\r\n$100000\r\nab".to_vec();
        let (mut partial, mut args) = (Partial::default(), Vec::new());
        let r = parse_request_resume(&mut buf, &Limits::default(), &mut args, &mut partial);
        assert_eq!(r, Err(ParseError::Incomplete));
        assert!(args.is_empty());
        let header = b"*2\r\n$3\r\nSET\r\n$100000\r\n".len();
        assert_eq!(partial.need(), header + 100_000 + 2);
        // Every strict prefix of the rest is incomplete, resumed; the whole parses.
        let rest = vec![b'y'; 100_000 - 2];
        buf.extend_from_slice(&rest);
        buf.extend_from_slice(b"\r\n");
        let n = parse_request_resume(&mut buf, &Limits::default(), &mut args, &mut partial);
        assert_eq!(n, Ok(buf.len()));
        assert_eq!(args.len(), 2);
        assert!(!partial.in_progress());
        // A protocol error found on resuming is reported as when parsed whole.
        let mut bad = b"*2\r\n$1\r\na\r\n".to_vec();
        let mut partial = Partial::default();
        let r = parse_request_resume(&mut bad, &Limits::default(), &mut args, &mut partial);
        assert_eq!(r, Err(ParseError::Incomplete));
        bad.extend_from_slice(b"+x\r\n");
        let r = parse_request_resume(&mut bad, &Limits::default(), &mut args, &mut partial);
        assert_eq!(r, Err(protocol("Protocol error: expected '$', got '+'")));
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let requests: Vec<Vec<u8>> = vec![
            multibulk(&strs(&["SET", "key", "value"])),
            multibulk(&[vec![], b"\r\n\r\n".to_vec(), vec![b'x'; 300]]),
            b"PING\r\n".to_vec(),
            b"SET k \"a b\\x41\" 'c\\'d'\n".to_vec(),
            b"*0\r\n".to_vec(),
            b"*-1\r\n".to_vec(),
            b"\r\n".to_vec(),
        ];
        for request in requests {
            let full = parse(&request).expect("full request parses");
            assert_eq!(full.0, request.len());
            for cut in 0..request.len() {
                assert_eq!(
                    parse(&request[..cut]),
                    Err(ParseError::Incomplete),
                    "prefix {cut} of {request:?}"
                );
            }
        }
    }

    #[test]
    fn pipelined_requests() {
        let mut expected = Vec::new();
        let mut buf = Vec::new();
        for i in 0..1000 {
            let args = match i % 4 {
                0 => strs(&["SET", &format!("key:{i}"), &"v".repeat(i % 50)]),
                1 => strs(&["GET", &format!("key:{i}")]),
                2 => strs(&["PING"]),
                _ => vec![],
            };
            if i % 8 == 2 {
                buf.extend_from_slice(b"PING\r\n");
            } else {
                buf.extend_from_slice(&multibulk(&args));
            }
            expected.push(args);
        }
        let (requests, consumed, error) = drain(&buf, &Limits::default());
        assert_eq!(error, None);
        assert_eq!(consumed, buf.len());
        assert_eq!(requests, expected);

        // a trailing partial request is left in the buffer
        let mut partial = buf.clone();
        partial.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nke");
        let (requests, consumed, error) = drain(&partial, &Limits::default());
        assert_eq!((requests.len(), consumed, error), (1000, buf.len(), None));
    }

    // ---- inline ----

    #[test]
    fn inline_simple() {
        assert_eq!(parse(b"PING\r\n"), Ok((6, strs(&["PING"]))));
        assert_eq!(parse(b"PING\n"), Ok((5, strs(&["PING"]))));
        assert_eq!(
            parse(b"  set  key\t value \r\nGET"),
            Ok((20, strs(&["set", "key", "value"])))
        );
        // inline and multibulk may follow each other on one connection
        assert_eq!(parse(b"$3\r\n"), Ok((4, strs(&["$3"]))));
    }

    #[test]
    fn inline_blank_lines_are_skipped() {
        assert_eq!(parse(b"\r\n"), Ok((2, vec![])));
        assert_eq!(parse(b"\n"), Ok((1, vec![])));
        assert_eq!(parse(b" \t\x0b\x0c \r\n"), Ok((7, vec![])));
    }

    #[test]
    fn inline_quotes_and_escapes() {
        assert_eq!(
            parse(b"set \"a b\" 'c d'\r\n"),
            Ok((17, strs(&["set", "a b", "c d"])))
        );
        assert_eq!(
            parse(b"x \"\\n\\r\\t\\b\\a\\\\\\\"\\q\"\n").unwrap().1,
            vec![b"x".to_vec(), b"\n\r\t\x08\x07\\\"q".to_vec()]
        );
        assert_eq!(
            parse(b"\"\\x41\\x4a\\x00\\xfF\\x4\\xzz\"\n").unwrap().1,
            vec![b"AJ\x00\xffx4xzz".to_vec()]
        );
        assert_eq!(
            parse(b"'it\\'s' 'a\\nb' '\\x'\n").unwrap().1,
            vec![b"it's".to_vec(), b"a\\nb".to_vec(), b"\\x".to_vec()]
        );
        assert_eq!(
            parse(b"\"\" ''\n").unwrap().1,
            vec![Vec::<u8>::new(), Vec::new()]
        );
        // a quote may open mid-argument
        assert_eq!(
            parse(b"a\"b c\" d\n").unwrap().1,
            vec![b"ab c".to_vec(), b"d".to_vec()]
        );
        // a closing quote may be followed by any C space
        assert_eq!(
            parse(b"\"a\"\x0b'b'\x0cc\n").unwrap().1,
            strs(&["a", "b", "c"])
        );
        // \v and \f separate arguments only between them, not inside one
        assert_eq!(parse(b"a\x0bb\n").unwrap().1, vec![b"a\x0bb".to_vec()]);
        // a lone CR inside the line separates arguments
        assert_eq!(parse(b"a\rb\r\n").unwrap().1, strs(&["a", "b"]));
    }

    #[test]
    fn inline_nul_ends_the_argument_list() {
        assert_eq!(parse(b"GET a\0b c\r\n"), Ok((11, strs(&["GET", "a"]))));
        assert_eq!(protocol_err(b"GET \"a\0b\"\r\n"), ERR_UNBALANCED_QUOTES);
    }

    #[test]
    fn inline_unbalanced_quotes() {
        for buf in [
            &b"set \"\"\"test-key\"\"\" test-value\r\n"[..],
            b"\"foo\"bar\n",
            b"'foo'bar\n",
            b"\"foo\n",
            b"'foo\n",
            b"\"foo\\\"\n",
            b"'foo\\'\n",
            b"\"a\\\n",
            b"a\"b c\"d\n",
            b"'\\\\'\n", // '\\' : the second backslash escapes the closing quote
        ] {
            assert_eq!(protocol_err(buf), ERR_UNBALANCED_QUOTES, "{buf:?}");
        }
    }

    #[test]
    fn inline_too_big() {
        let limits = Limits::default();
        let line = vec![b'a'; limits.max_inline_len];
        assert_eq!(parse(&line), Err(ParseError::Incomplete));
        let mut longer = line.clone();
        longer.push(b'a');
        assert_eq!(protocol_err(&longer), ERR_TOO_BIG_INLINE);
        // Redis' desync regression tests: "\0" / "$\0" then garbage without a newline
        for start in [&b"\0"[..], b"$\0"] {
            let mut buf = start.to_vec();
            buf.extend(b"payload".repeat(10_000));
            assert_eq!(protocol_err(&buf), ERR_TOO_BIG_INLINE);
        }
        let small = Limits {
            max_inline_len: 4,
            ..Limits::default()
        };
        assert_eq!(
            parse_with(b"PING", &small),
            Err(ParseError::Incomplete),
            "at the limit"
        );
        assert_eq!(
            parse_with(b"PINGX", &small),
            Err(ParseError::Protocol(ERR_TOO_BIG_INLINE.into()))
        );
    }

    #[test]
    fn string2ll_matches_redis() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"-1"), Some(-1));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"18446744073709551616",
            b"123456789012345678901",
        ] {
            assert_eq!(string2ll(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn protocol_error_reply() {
        let err = ParseError::Protocol(ERR_INVALID_BULK_LEN.into());
        assert_eq!(
            err.to_reply(),
            Some(Reply::Error(
                "ERR Protocol error: invalid bulk length".into()
            ))
        );
        assert_eq!(ParseError::Incomplete.to_reply(), None);
        assert_eq!(err.to_string(), ERR_INVALID_BULK_LEN);
    }

    // ---- encoding ----

    fn enc(reply: &Reply, resp3: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(reply, resp3, &mut out);
        out.to_vec()
    }

    fn both(reply: &Reply) -> (String, String) {
        (
            String::from_utf8_lossy(&enc(reply, false)).into_owned(),
            String::from_utf8_lossy(&enc(reply, true)).into_owned(),
        )
    }

    fn same(reply: Reply, wire: &str) {
        assert_eq!(
            both(&reply),
            (wire.to_owned(), wire.to_owned()),
            "{reply:?}"
        );
    }

    #[test]
    fn encode_scalars() {
        same(Reply::Ok, "+OK\r\n");
        same(Reply::Simple("PONG".into()), "+PONG\r\n");
        same(
            Reply::Error("ERR unknown command 'FOO'".into()),
            "-ERR unknown command 'FOO'\r\n",
        );
        same(
            Reply::Error("WRONGTYPE Operation against a key".into()),
            "-WRONGTYPE Operation against a key\r\n",
        );
        same(Reply::Int(0), ":0\r\n");
        same(Reply::Int(-42), ":-42\r\n");
        same(Reply::Int(i64::MIN), ":-9223372036854775808\r\n");
        same(Reply::Int(i64::MAX), ":9223372036854775807\r\n");
        same(Reply::Bulk(Bytes::from_static(b"hello")), "$5\r\nhello\r\n");
        same(Reply::Bulk(Bytes::new()), "$0\r\n\r\n");
        same(
            Reply::Bulk(Bytes::from_static(b"a\r\nb")),
            "$4\r\na\r\nb\r\n",
        );
    }

    #[test]
    fn encode_lines_never_break_framing() {
        same(
            Reply::Error("ERR bad\r\nthing\n".into()),
            "-ERR bad  thing \r\n",
        );
        same(Reply::Simple("a\rb".into()), "+a b\r\n");
    }

    #[test]
    fn encode_nulls() {
        assert_eq!(both(&Reply::Null), ("$-1\r\n".into(), "_\r\n".into()));
        assert_eq!(both(&Reply::NullArray), ("*-1\r\n".into(), "_\r\n".into()));
    }

    #[test]
    fn encode_aggregates() {
        let array = Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"a")),
            Reply::Int(1),
            Reply::Null,
            Reply::Array(vec![]),
        ]);
        assert_eq!(
            both(&array),
            (
                "*4\r\n$1\r\na\r\n:1\r\n$-1\r\n*0\r\n".into(),
                "*4\r\n$1\r\na\r\n:1\r\n_\r\n*0\r\n".into()
            )
        );
        let map = Reply::Map(vec![
            (Reply::Simple("k1".into()), Reply::Int(1)),
            (Reply::Bulk(Bytes::from_static(b"k2")), Reply::Bool(true)),
        ]);
        assert_eq!(
            both(&map),
            (
                "*4\r\n+k1\r\n:1\r\n$2\r\nk2\r\n:1\r\n".into(),
                "%2\r\n+k1\r\n:1\r\n$2\r\nk2\r\n#t\r\n".into()
            )
        );
        let set = Reply::Set(vec![Reply::Bulk(Bytes::from_static(b"m"))]);
        assert_eq!(
            both(&set),
            ("*1\r\n$1\r\nm\r\n".into(), "~1\r\n$1\r\nm\r\n".into())
        );
        let push = Reply::Push(vec![
            Reply::Bulk(Bytes::from_static(b"message")),
            Reply::Bulk(Bytes::from_static(b"ch")),
        ]);
        assert_eq!(
            both(&push),
            (
                "*2\r\n$7\r\nmessage\r\n$2\r\nch\r\n".into(),
                ">2\r\n$7\r\nmessage\r\n$2\r\nch\r\n".into()
            )
        );
        assert_eq!(
            both(&Reply::Map(vec![])),
            ("*0\r\n".into(), "%0\r\n".into())
        );
    }

    #[test]
    fn encode_bool_and_verbatim() {
        assert_eq!(both(&Reply::Bool(true)), (":1\r\n".into(), "#t\r\n".into()));
        assert_eq!(
            both(&Reply::Bool(false)),
            (":0\r\n".into(), "#f\r\n".into())
        );
        assert_eq!(
            both(&Reply::Verbatim("# Server\r\nx:1".into())),
            (
                "$13\r\n# Server\r\nx:1\r\n".into(),
                "=17\r\ntxt:# Server\r\nx:1\r\n".into()
            )
        );
    }

    fn double_text(d: f64) -> String {
        String::from_utf8(DoubleText::new().format(d).to_vec()).unwrap()
    }

    #[test]
    fn encode_doubles() {
        assert_eq!(
            both(&Reply::Double(1.5)),
            ("$3\r\n1.5\r\n".into(), ",1.5\r\n".into())
        );
        assert_eq!(
            both(&Reply::Double(f64::INFINITY)),
            ("$3\r\ninf\r\n".into(), ",inf\r\n".into())
        );
        assert_eq!(
            both(&Reply::Double(f64::NEG_INFINITY)),
            ("$4\r\n-inf\r\n".into(), ",-inf\r\n".into())
        );
        assert_eq!(
            both(&Reply::Double(f64::NAN)),
            ("$3\r\nnan\r\n".into(), ",nan\r\n".into())
        );
        assert_eq!(
            both(&Reply::Double(3.0)),
            ("$1\r\n3\r\n".into(), ",3\r\n".into())
        );
    }

    #[test]
    fn double_text_matches_redis_d2string() {
        // Expected values are what Redis 7.2 prints (d2string / fpconv_dtoa).
        for (d, text) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (10.0, "10"),
            (1e15, "1000000000000000"),
            (1e17, "100000000000000000"),
            (4611686018427387904.0, "4611686018427387904"),
            (9223372036854775808.0, "9223372036854776000"),
            (1e20, "1e+20"),
            (1.5e300, "1.5e+300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.1, "0.1"),
            (-0.1, "-0.1"),
            (0.3, "0.3"),
            (1.5, "1.5"),
            (2.71, "2.71"),
            (123.456, "123.456"),
            (0.001, "0.001"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-10, "1.5e-10"),
            (5e-324, "5e-324"),
            (1234567.125, "1234567.125"),
            (9007199254740993.0, "9007199254740992"),
            (0.30000000000000004, "0.30000000000000004"),
        ] {
            assert_eq!(double_text(d), text, "{d:e}");
        }
    }

    // ---- a minimal RESP3 reader for checking the encoder's framing ----

    /// Returns the length of the one RESP2/RESP3 value at the front of `buf`, if well-formed.
    fn resp_value_len(buf: &[u8]) -> Option<usize> {
        let cr = buf.iter().position(|&b| b == b'\r')?;
        if buf.get(cr + 1) != Some(&b'\n') {
            return None;
        }
        let line = std::str::from_utf8(&buf[1..cr]).ok()?;
        let mut pos = cr + 2;
        let children = |count: usize, pos: &mut usize| -> Option<()> {
            for _ in 0..count {
                *pos += resp_value_len(&buf[*pos..])?;
            }
            Some(())
        };
        match buf.first()? {
            b'+' | b'-' | b',' | b'#' | b'_' => {}
            b':' => {
                line.parse::<i64>().ok()?;
            }
            b'$' | b'=' => {
                let n: i64 = line.parse().ok()?;
                if n >= 0 {
                    let end = pos + n as usize;
                    if buf.get(end..end + 2)? != b"\r\n" {
                        return None;
                    }
                    pos = end + 2;
                } else if n != -1 {
                    return None;
                }
            }
            b'*' | b'~' | b'>' => {
                let n: i64 = line.parse().ok()?;
                if n >= 0 {
                    children(n as usize, &mut pos)?;
                } else if n != -1 {
                    return None;
                }
            }
            b'%' => children(line.parse::<usize>().ok()? * 2, &mut pos)?,
            _ => return None,
        }
        Some(pos)
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        let text = "(?s).{0,20}";
        let leaf = prop_oneof![
            Just(Reply::Ok),
            text.prop_map(|s| Reply::Simple(s.into())),
            text.prop_map(|s| Reply::Error(s.into())),
            any::<i64>().prop_map(Reply::Int),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| Reply::Bulk(b.into())),
            Just(Reply::Null),
            Just(Reply::NullArray),
            any::<f64>().prop_map(Reply::Double),
            any::<bool>().prop_map(Reply::Bool),
            text.prop_map(Reply::Verbatim),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Reply::Array),
                prop::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Reply::Map),
                prop::collection::vec(inner.clone(), 0..8).prop_map(Reply::Set),
                prop::collection::vec(inner, 0..8).prop_map(Reply::Push),
            ]
        })
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Insert(usize, u8),
        Delete(usize),
    }

    fn arb_mutation() -> impl Strategy<Value = Mutation> {
        // Bytes biased towards the ones the grammar cares about.
        let byte = prop_oneof![
            any::<u8>(),
            prop::sample::select(&b"*$\r\n-0123456789 \"'\\x\0"[..]),
        ];
        prop_oneof![
            (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Delete),
        ]
    }

    fn arb_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..16)
    }

    fn arb_valid_request() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            arb_args().prop_map(|args| multibulk(&args)),
            "[ a-zA-Z0-9\"'\\\\]{0,40}\r?\n".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..512)) {
            drain(&buf, &Limits::default());
            drain(&buf, &Limits { max_bulk_len: 8, max_multibulk_len: 4, max_inline_len: 16, unauthenticated: false });
        }

        #[test]
        fn random_resp_like_bytes_never_panic(
            buf in prop::collection::vec(
                prop::sample::select(&b"*$\r\n-0123 \"'\\xaf\0"[..]), 0..256)
        ) {
            drain(&buf, &Limits::default());
        }

        #[test]
        fn multibulk_round_trip(args in arb_args()) {
            let buf = multibulk(&args);
            prop_assert_eq!(parse(&buf), Ok((buf.len(), args.clone())));
            // and with the next request already in the buffer
            let mut two = buf.clone();
            two.extend_from_slice(&multibulk(&args));
            let (requests, consumed, error) = drain(&two, &Limits::default());
            prop_assert_eq!(requests, vec![args.clone(), args]);
            prop_assert_eq!((consumed, error), (two.len(), None));
        }

        #[test]
        fn multibulk_prefixes_are_incomplete(args in arb_args(), cut in any::<prop::sample::Index>()) {
            let buf = multibulk(&args);
            let cut = cut.index(buf.len());
            prop_assert_eq!(parse(&buf[..cut]), Err(ParseError::Incomplete));
        }

        #[test]
        fn mutated_requests_never_panic(
            requests in prop::collection::vec(arb_valid_request(), 1..4),
            mutations in prop::collection::vec(arb_mutation(), 1..6),
        ) {
            let mut buf = requests.concat();
            for mutation in mutations {
                match mutation {
                    Mutation::Flip(i, b) if !buf.is_empty() => {
                        let i = i % buf.len();
                        buf[i] = b;
                    }
                    Mutation::Insert(i, b) => {
                        let i = i % (buf.len() + 1);
                        buf.insert(i, b);
                    }
                    Mutation::Delete(i) if !buf.is_empty() => {
                        let i = i % buf.len();
                        buf.remove(i);
                    }
                    _ => {}
                }
            }
            // drain asserts the invariants of every outcome (Ok / Incomplete / Protocol)
            drain(&buf, &Limits::default());
            drain(&buf, &Limits { max_bulk_len: 16, max_multibulk_len: 4, max_inline_len: 32, unauthenticated: false });
        }

        #[test]
        fn inline_without_quotes_splits_on_whitespace(words in prop::collection::vec("[a-zA-Z0-9]{1,8}", 0..8)) {
            let line = format!("{}\r\n", words.join(" \t "));
            let expected: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
            prop_assert_eq!(parse(line.as_bytes()), Ok((line.len(), expected)));
        }

        #[test]
        fn encoded_replies_are_well_framed(reply in arb_reply()) {
            for resp3 in [false, true] {
                let out = enc(&reply, resp3);
                prop_assert_eq!(resp_value_len(&out), Some(out.len()), "{:?}", String::from_utf8_lossy(&out));
            }
        }

        #[test]
        fn double_text_round_trips(d in any::<f64>()) {
            let text = double_text(d);
            let back: f64 = text.parse().unwrap();
            if d.is_nan() {
                prop_assert!(back.is_nan());
            } else {
                prop_assert_eq!(back.to_bits(), d.to_bits(), "{}", text);
            }
        }
    }
}
