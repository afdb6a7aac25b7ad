//! Cluster-bus authentication with a shared secret (`[cluster] bus-secret`), sans-IO.
//!
//! Why an HMAC rather than mutual TLS: the bus is small, ordered gossip inside one region's
//! network, and what it must refuse is a stranger's frames (a MEET or a slot claim from
//! anyone who can reach the port), not an eavesdropper — bus messages carry topology, no
//! data or credentials. A secret shared by the region's nodes is one config line to deploy
//! and rotate, where TLS would need a certificate per node and the region's CA on every
//! bus hop; the inter-region links, which cross untrusted networks, keep mutual TLS.
//!
//! A bus connection is one-way (the connecting node only writes). The exchange:
//! 1. the accepting node sends a fresh random `challenge` ([`NONCE_BYTES`]);
//! 2. the connecting node answers with a [`HELLO_BYTES`] hello: a magic, its own random
//!    nonce and a proof, HMAC(secret, "hello" · challenge · nonce);
//! 3. both derive the session key HMAC(secret, "key" · challenge · nonce), and every frame
//!    that follows is trailed by a [`TAG_BYTES`] tag, HMAC(key, sequence · frame) truncated
//!    to 128 bits, with the sequence counting frames from 0.
//!
//! The challenge makes a recorded connection useless to replay, the sequence stops frames
//! being dropped, reordered or repeated within one, and a tag is checked (in constant time)
//! before the frame is decoded. Randomness is an input: the shell passes the nonces.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a challenge or a hello's nonce.
pub const NONCE_BYTES: usize = 16;
/// Bytes of the tag after every frame (HMAC-SHA256 truncated to 128 bits).
pub const TAG_BYTES: usize = 16;
const MAGIC: [u8; 4] = *b"MBA1";
const PROOF_BYTES: usize = 32;
/// Bytes of the connecting node's hello.
pub const HELLO_BYTES: usize = MAGIC.len() + NONCE_BYTES + PROOF_BYTES;
/// Shortest secret accepted (bytes): 16 random bytes, hex or base64 encoded, is plenty.
pub const MIN_SECRET_BYTES: usize = 16;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("not a cluster-bus hello (no bus-secret on the connecting node?)")]
    BadMagic,
    #[error("wrong bus-secret")]
    BadProof,
    #[error("frame tag mismatch")]
    BadTag,
}

/// The region's bus secret.
#[derive(Clone)]
pub struct BusSecret(Vec<u8>);

impl std::fmt::Debug for BusSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusSecret(..)")
    }
}

impl BusSecret {
    /// `None` if shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8]) -> Option<BusSecret> {
        (secret.len() >= MIN_SECRET_BYTES).then(|| BusSecret(secret.to_vec()))
    }

    fn mac(&self, label: &[u8], challenge: &[u8; NONCE_BYTES], nonce: &[u8]) -> HmacSha256 {
        let mut m = keyed(&self.0);
        m.update(label);
        m.update(challenge);
        m.update(nonce);
        m
    }

    fn session_key(&self, challenge: &[u8; NONCE_BYTES], nonce: &[u8]) -> [u8; 32] {
        self.mac(b"key", challenge, nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The connecting side: its hello for `challenge` (with its fresh `nonce`) and the
    /// signer for the frames it sends after it.
    pub fn hello(
        &self,
        challenge: &[u8; NONCE_BYTES],
        nonce: [u8; NONCE_BYTES],
    ) -> ([u8; HELLO_BYTES], FrameSigner) {
        let mut hello = [0u8; HELLO_BYTES];
        hello[..MAGIC.len()].copy_from_slice(&MAGIC);
        hello[MAGIC.len()..MAGIC.len() + NONCE_BYTES].copy_from_slice(&nonce);
        let proof = self
            .mac(b"hello", challenge, &nonce)
            .finalize()
            .into_bytes();
        hello[MAGIC.len() + NONCE_BYTES..].copy_from_slice(&proof);
        let signer = FrameSigner {
            key: self.session_key(challenge, &nonce),
            seq: 0,
        };
        (hello, signer)
    }

    /// The accepting side: checks a hello answering `challenge`; the verifier for the
    /// frames that follow it.
    pub fn accept(
        &self,
        challenge: &[u8; NONCE_BYTES],
        hello: &[u8; HELLO_BYTES],
    ) -> Result<FrameVerifier, AuthError> {
        if hello[..MAGIC.len()] != MAGIC {
            return Err(AuthError::BadMagic);
        }
        let nonce = &hello[MAGIC.len()..MAGIC.len() + NONCE_BYTES];
        self.mac(b"hello", challenge, nonce)
            .verify_slice(&hello[MAGIC.len() + NONCE_BYTES..])
            .map_err(|_| AuthError::BadProof)?;
        Ok(FrameVerifier {
            key: self.session_key(challenge, nonce),
            seq: 0,
        })
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => unreachable!("HMAC accepts every key length"),
    }
}

fn tag(key: &[u8; 32], seq: u64, frame: &[u8]) -> HmacSha256 {
    let mut m = keyed(key);
    m.update(&seq.to_le_bytes());
    m.update(frame);
    m
}

/// Signs the frames of one connection, in order.
pub struct FrameSigner {
    key: [u8; 32],
    seq: u64,
}

impl FrameSigner {
    /// The tag to send right after `frame`.
    pub fn sign(&mut self, frame: &[u8]) -> [u8; TAG_BYTES] {
        let full = tag(&self.key, self.seq, frame).finalize().into_bytes();
        self.seq = self.seq.wrapping_add(1);
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(&full[..TAG_BYTES]);
        out
    }
}

/// Checks the frames of one connection, in order.
pub struct FrameVerifier {
    key: [u8; 32],
    seq: u64,
}

impl FrameVerifier {
    /// Checks `frame`'s tag (constant time); the next frame must carry the next sequence.
    pub fn verify(&mut self, frame: &[u8], frame_tag: &[u8]) -> Result<(), AuthError> {
        if frame_tag.len() != TAG_BYTES {
            return Err(AuthError::BadTag);
        }
        tag(&self.key, self.seq, frame)
            .verify_truncated_left(frame_tag)
            .map_err(|_| AuthError::BadTag)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }
}

/// Total length of the frame at the front of `buf` (prefix included), once its length
/// prefix has arrived: lets the shell wait for frame + tag and check the tag before decoding.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let p = buf.get(..crate::wire::PREFIX_BYTES)?;
    let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
    Some(crate::wire::PREFIX_BYTES.saturating_add(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> BusSecret {
        BusSecret::new(s.as_bytes()).expect("long enough")
    }

    #[test]
    fn a_hello_and_its_frames_pass_with_the_right_secret() {
        let s = secret("0123456789abcdef-region-a");
        let challenge = [7u8; NONCE_BYTES];
        let (hello, mut signer) = s.hello(&challenge, [9u8; NONCE_BYTES]);
        let mut verifier = s.accept(&challenge, &hello).expect("accepted");
        for frame in [&b"one"[..], b"two", b""] {
            let t = signer.sign(frame);
            verifier.verify(frame, &t).expect("tag checks");
        }
    }

    #[test]
    fn a_wrong_secret_a_replayed_hello_or_a_tampered_frame_is_refused() {
        let s = secret("0123456789abcdef-region-a");
        let other = secret("0123456789abcdef-region-b");
        let challenge = [1u8; NONCE_BYTES];
        let (hello, mut signer) = other.hello(&challenge, [2u8; NONCE_BYTES]);
        assert_eq!(
            s.accept(&challenge, &hello).err(),
            Some(AuthError::BadProof)
        );
        // A hello recorded for one challenge does not answer another.
        let (hello, _) = s.hello(&challenge, [2u8; NONCE_BYTES]);
        assert_eq!(
            s.accept(&[3u8; NONCE_BYTES], &hello).err(),
            Some(AuthError::BadProof)
        );
        let mut not_hello = hello;
        not_hello[0] = b'*';
        assert_eq!(
            s.accept(&challenge, &not_hello).err(),
            Some(AuthError::BadMagic)
        );
        // Frames: tampered, replayed, reordered, or tagged by the wrong key.
        let (hello, mut signer_a) = s.hello(&challenge, [4u8; NONCE_BYTES]);
        let mut v = s.accept(&challenge, &hello).expect("accepted");
        let t0 = signer_a.sign(b"frame 0");
        let t1 = signer_a.sign(b"frame 1");
        assert_eq!(
            v.verify(b"frame 1", &t1),
            Err(AuthError::BadTag),
            "reordered"
        );
        assert_eq!(
            v.verify(b"frame X", &t0),
            Err(AuthError::BadTag),
            "tampered"
        );
        assert_eq!(
            v.verify(b"frame 0", &t0[..8]),
            Err(AuthError::BadTag),
            "short"
        );
        let wrong = signer.sign(b"frame 0");
        assert_eq!(
            v.verify(b"frame 0", &wrong),
            Err(AuthError::BadTag),
            "other key"
        );
        v.verify(b"frame 0", &t0).expect("in order");
        assert_eq!(
            v.verify(b"frame 0", &t0),
            Err(AuthError::BadTag),
            "replayed"
        );
        v.verify(b"frame 1", &t1).expect("next");
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_secret() {
        assert!(BusSecret::new(b"short").is_none());
        assert_eq!(format!("{:?}", secret("0123456789abcdef")), "BusSecret(..)");
    }
}
