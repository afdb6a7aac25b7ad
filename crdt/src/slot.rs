//! Key → hash slot: CRC16-XMODEM of the key (or of its `{hash tag}`) mod 16384, as in Redis
//! Cluster.

pub const SLOT_COUNT: usize = 16384;

/// The part of a key that is hashed: the content of the first `{...}` if non-empty.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// CRC16-XMODEM with slice-by-16 tables (built at compile time): every command hashes its
/// keys, and the one-byte-per-step table loop was half of the dispatcher's own time.
static CRC16: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_XMODEM);

/// CRC16-XMODEM, the checksum Redis Cluster hashes keys with.
pub fn crc16_xmodem(bytes: &[u8]) -> u16 {
    CRC16.checksum(bytes)
}

/// The hash slot of a key.
pub fn key_slot(key: &[u8]) -> u16 {
    (crc16_xmodem(hash_tag(key)) as usize % SLOT_COUNT) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytewise CRC16-XMODEM (polynomial 0x1021), Redis' `crc16.c` loop: the oracle.
    fn bytewise(bytes: &[u8]) -> u16 {
        let table: [u16; 256] = std::array::from_fn(|i| {
            let mut crc = (i as u16) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
            crc
        });
        let mut crc: u16 = 0;
        for &b in bytes {
            crc = (crc << 8) ^ table[usize::from((crc >> 8) as u8 ^ b)];
        }
        crc
    }

    proptest! {
        #[test]
        fn sliced_crc_matches_the_bytewise_loop(key in prop::collection::vec(any::<u8>(), 0..80)) {
            prop_assert_eq!(crc16_xmodem(&key), bytewise(&key));
        }
    }

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    }

    #[test]
    fn matches_redis_cluster_keyslot() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
    }
}
