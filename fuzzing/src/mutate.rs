//! The mutator: takes a real frame from the seed corpus and damages it the way a broken or
//! hostile peer would (bit flips, inserted/deleted/duplicated bytes, truncation, splices of
//! other frames, dictionary tokens, tweaked length prefixes and varints). Deterministic from
//! its seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What the inputs' length fields look like, for the length-prefix tweaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lengths {
    /// `meridian_regions::wire` framing: `u32 LE` prefix, postcard varints in the body. The
    /// byte offset where the first frame starts (a header before it, as in `bus-auth`).
    Wire { first_frame: usize },
    /// RESP: decimal counts after `*` and `$`.
    Resp,
    /// No length fields (JSON): tweak numbers instead.
    Text,
}

/// Bytes that mean something to some decoder: framing, CRLF, quotes, varint edges.
const INTERESTING: &[u8] = &[
    0, 1, 2, 0x7f, 0x80, 0x81, 0xfe, 0xff, b'\r', b'\n', b'*', b'$', b'"', b'\'', b'\\', b' ',
    b'0', b'9', b'-', b'{', b'}', b'[', b']', b',', b':',
];

pub struct Mutator {
    rng: SmallRng,
    /// Largest input produced (splices and insertions stop there).
    pub max_len: usize,
}

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator {
            rng: SmallRng::seed_from_u64(seed),
            max_len: 8192,
        }
    }

    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// One input: a seed (sometimes two concatenated, as frames follow each other on a
    /// stream) with 1 to 8 mutations stacked on it; now and then the seed itself, unharmed.
    pub fn input(
        &mut self,
        seeds: &[Vec<u8>],
        dict: &[&[u8]],
        lengths: Lengths,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(&seeds[self.rng.random_range(0..seeds.len())]);
        if self.rng.random_ratio(1, 100) {
            return;
        }
        if self.rng.random_ratio(1, 8) {
            let other = &seeds[self.rng.random_range(0..seeds.len())];
            out.extend_from_slice(other);
        }
        // Mostly few mutations (a frame close to valid reaches deep), sometimes many.
        let n = match self.rng.random_range(0..10) {
            0..=4 => 1,
            5..=7 => 2,
            _ => self.rng.random_range(3..=8),
        };
        for _ in 0..n {
            self.mutate_once(seeds, dict, lengths, out);
        }
        out.truncate(self.max_len);
    }

    fn pos(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.rng.random_range(0..len)
        }
    }

    /// A range inside `0..len` (empty when `len` is 0), mostly short.
    fn range(&mut self, len: usize) -> std::ops::Range<usize> {
        let start = self.pos(len);
        let max = (len - start.min(len)).min(if self.rng.random_bool(0.8) { 16 } else { len });
        let n = if max == 0 {
            0
        } else {
            self.rng.random_range(1..=max)
        };
        start..start + n
    }

    fn mutate_once(
        &mut self,
        seeds: &[Vec<u8>],
        dict: &[&[u8]],
        lengths: Lengths,
        out: &mut Vec<u8>,
    ) {
        let room = self.max_len.saturating_sub(out.len());
        match self.rng.random_range(0..14) {
            // Flip one bit.
            0 if !out.is_empty() => {
                let i = self.pos(out.len());
                out[i] ^= 1 << self.rng.random_range(0..8);
            }
            // A random byte.
            1 if !out.is_empty() => {
                let i = self.pos(out.len());
                out[i] = self.rng.random();
            }
            // An interesting byte.
            2 if !out.is_empty() => {
                let i = self.pos(out.len());
                out[i] = INTERESTING[self.rng.random_range(0..INTERESTING.len())];
            }
            // Small arithmetic on a byte.
            3 if !out.is_empty() => {
                let i = self.pos(out.len());
                let d: u8 = self.rng.random_range(1..=16);
                out[i] = if self.rng.random() {
                    out[i].wrapping_add(d)
                } else {
                    out[i].wrapping_sub(d)
                };
            }
            // Insert random bytes.
            4 if room > 0 => {
                let i = self.pos(out.len() + 1);
                let n = self.rng.random_range(1..=room.min(8));
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                out.splice(i..i, bytes);
            }
            // Delete a range.
            5 if !out.is_empty() => {
                let r = self.range(out.len());
                out.drain(r);
            }
            // Truncate.
            6 if !out.is_empty() => {
                let i = self.pos(out.len());
                out.truncate(i);
            }
            // Splice a piece of another seed in (inserted or overwriting).
            7 => {
                let other = &seeds[self.rng.random_range(0..seeds.len())];
                let r = self.range(other.len());
                let piece = other[r].to_vec();
                let i = self.pos(out.len() + 1);
                if self.rng.random() {
                    let end = (i + piece.len()).min(out.len());
                    out.splice(i..end, piece);
                } else if piece.len() <= room {
                    out.splice(i..i, piece);
                }
            }
            // Duplicate a range in place.
            8 if !out.is_empty() && room > 0 => {
                let r = self.range(out.len());
                let piece = out[r.clone()].to_vec();
                if piece.len() <= room {
                    out.splice(r.end..r.end, piece);
                }
            }
            // Swap two ranges' first bytes / copy a range over another.
            9 if out.len() > 1 => {
                let r = self.range(out.len());
                let piece = out[r].to_vec();
                let i = self.pos(out.len());
                let end = (i + piece.len()).min(out.len());
                out.splice(i..end, piece);
            }
            // A dictionary token, inserted or overwriting.
            10 if !dict.is_empty() => {
                let tok = dict[self.rng.random_range(0..dict.len())];
                let i = self.pos(out.len() + 1);
                if self.rng.random() && tok.len() <= room {
                    out.splice(i..i, tok.iter().copied());
                } else {
                    let end = (i + tok.len()).min(out.len());
                    out.splice(i..end, tok.iter().copied());
                }
            }
            // Length fields.
            _ => self.tweak_length(lengths, out),
        }
    }

    fn tweak_length(&mut self, lengths: Lengths, out: &mut Vec<u8>) {
        match lengths {
            Lengths::Wire { first_frame } => {
                if self.rng.random_bool(0.5) && out.len() >= first_frame + 4 {
                    // The u32 LE frame prefix: off by a little, the true remainder, or wild.
                    let p = &mut out[first_frame..first_frame + 4];
                    let cur = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                    let new = match self.rng.random_range(0..5) {
                        0 => cur.wrapping_add(self.rng.random_range(1..=8)),
                        1 => cur.wrapping_sub(self.rng.random_range(1..=8)),
                        2 => [
                            0,
                            1,
                            u32::MAX,
                            1 << 20,
                            (1 << 20) + 1,
                            16 * 1024 + 1,
                            64 << 20,
                        ][self.rng.random_range(0..7)],
                        3 => self.rng.random(),
                        _ => cur,
                    };
                    p.copy_from_slice(&new.to_le_bytes());
                } else if !out.is_empty() {
                    // A postcard varint (a length or an integer) made long, huge or cut.
                    let i = self.pos(out.len());
                    let varint: &[u8] = match self.rng.random_range(0..6) {
                        0 => &[0x80],
                        1 => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                        2 => &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                        3 => &[
                            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                        ],
                        4 => &[0x81, 0x80, 0x80, 0x00],
                        _ => &[0x7f],
                    };
                    let end = (i + 1).min(out.len());
                    out.splice(i..end, varint.iter().copied());
                }
            }
            Lengths::Resp | Lengths::Text => {
                // A decimal number (after `*`/`$` for RESP) replaced by an edge value.
                let starts: Vec<usize> = (0..out.len())
                    .filter(|&i| {
                        let digit_here = out[i].is_ascii_digit() || out[i] == b'-';
                        let boundary = i == 0 || !out[i - 1].is_ascii_digit();
                        digit_here
                            && boundary
                            && (lengths == Lengths::Text
                                || (i > 0 && (out[i - 1] == b'*' || out[i - 1] == b'$')))
                    })
                    .collect();
                if starts.is_empty() {
                    return;
                }
                let start = starts[self.rng.random_range(0..starts.len())];
                let mut end = start + 1;
                while end < out.len() && out[end].is_ascii_digit() {
                    end += 1;
                }
                let cur: i128 = std::str::from_utf8(&out[start..end])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let new: String = match self.rng.random_range(0..9) {
                    0 => (cur + 1).to_string(),
                    1 => (cur - 1).to_string(),
                    2 => "-1".into(),
                    3 => "0".into(),
                    4 => "-0".into(),
                    5 => "2147483648".into(),
                    6 => "9223372036854775808".into(),
                    7 => "18446744073709551616".into(),
                    _ => self.rng.random_range(0..100_000u32).to_string(),
                };
                out.splice(start..end, new.into_bytes());
            }
        }
    }
}
