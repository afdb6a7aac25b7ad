//! The framing every meridian wire protocol shares: the cluster bus ([`crate::bus`]), the
//! region link and the in-region replica stream (meridian-replication's `codec` and
//! `replica`).
//!
//! Layout: `len: u32 LE` (bytes after the prefix) · `version: u8` · postcard body.
//! Decoding is pure, like mini-redis' frame parser: an incomplete frame is `Ok(None)` (read
//! more), anything malformed or over the size cap is an error — never a panic — and the
//! connection should be dropped. Each protocol validates the decoded value itself.

use serde::{de::DeserializeOwned, Serialize};

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("malformed frame body: {0}")]
    Malformed(String),
    #[error("trailing bytes after frame body")]
    Trailing,
}

/// One protocol's framing parameters.
#[derive(Clone, Copy, Debug)]
pub struct Framing {
    /// The version byte written and required.
    pub version: u8,
    /// Hard limit on a frame body (version byte included, prefix excluded).
    pub max_body: usize,
}

impl Framing {
    /// Appends one frame holding `value` to `out`; returns its size on the wire. On error
    /// `out` is left as it was.
    pub fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<usize, FrameError> {
        let start = out.len();
        let mut buf = std::mem::take(out);
        buf.extend_from_slice(&[0; PREFIX_BYTES]);
        buf.push(self.version);
        match postcard::to_extend(value, buf) {
            Ok(b) => *out = b,
            Err(e) => return Err(FrameError::Malformed(e.to_string())),
        }
        let body = out.len() - start - PREFIX_BYTES;
        let len = match u32::try_from(body) {
            Ok(len) if body <= self.max_body => len,
            _ => {
                out.truncate(start);
                return Err(FrameError::TooLarge {
                    len: body,
                    max: self.max_body,
                });
            }
        };
        out[start..start + PREFIX_BYTES].copy_from_slice(&len.to_le_bytes());
        Ok(body + PREFIX_BYTES)
    }

    /// Decodes one frame from the front of `buf`: `Ok(Some((value, consumed)))`, `Ok(None)`
    /// when more bytes are needed, or an error.
    pub fn decode<T: DeserializeOwned>(
        &self,
        buf: &[u8],
    ) -> Result<Option<(T, usize)>, FrameError> {
        let Some(prefix) = buf.get(..PREFIX_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_body {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_body,
            });
        }
        let Some(body) = buf.get(PREFIX_BYTES..PREFIX_BYTES + len) else {
            return Ok(None);
        };
        let (&version, rest) = body.split_first().ok_or(FrameError::Empty)?;
        if version != self.version {
            return Err(FrameError::Version(version));
        }
        let (value, trailing) = postcard::take_from_bytes::<T>(rest)
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(FrameError::Trailing);
        }
        Ok(Some((value, PREFIX_BYTES + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Framing = Framing {
        version: 3,
        max_body: 64,
    };

    #[test]
    fn round_trip_and_incomplete() {
        let mut out = Vec::new();
        let n = F
            .encode_into(&(7u32, "abc".to_string()), &mut out)
            .expect("encode");
        assert_eq!(n, out.len());
        for cut in 0..out.len() {
            assert_eq!(
                F.decode::<(u32, String)>(&out[..cut]),
                Ok(None),
                "cut {cut}"
            );
        }
        out.extend_from_slice(b"next");
        assert_eq!(
            F.decode::<(u32, String)>(&out),
            Ok(Some(((7, "abc".to_string()), n)))
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(F.decode::<u8>(&[0, 0, 0, 0]), Err(FrameError::Empty));
        assert_eq!(
            F.decode::<u8>(&[65, 0, 0, 0]),
            Err(FrameError::TooLarge { len: 65, max: 64 })
        );
        assert_eq!(
            F.decode::<u8>(&[2, 0, 0, 0, 9, 1]),
            Err(FrameError::Version(9))
        );
        assert_eq!(
            F.decode::<u8>(&[3, 0, 0, 0, 3, 1, 2]),
            Err(FrameError::Trailing)
        );
        assert!(matches!(
            F.decode::<String>(&[3, 0, 0, 0, 3, 5, b'a']),
            Err(FrameError::Malformed(_))
        ));
        let mut out = vec![1, 2];
        assert!(matches!(
            F.encode_into(&vec![0u8; 100], &mut out),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            out,
            vec![1, 2],
            "a refused frame leaves the buffer as it was"
        );
    }
}
