//! Redis Cluster key slots (CRC16/XMODEM of the hash tag, mod 16384), so the
//! cluster backend can split a batch into single-slot pipelines.

/// The slot of a tally hash key, whose hash tag is the resource id.
pub fn slot_of_resource(resource_id: &str) -> u16 {
    crc16_xmodem(resource_id.as_bytes()) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_redis_cluster_keyslot() {
        // Values from `redis-cli CLUSTER KEYSLOT` and the cluster spec's test vector.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_of_resource("foo"), 12182);
        assert_eq!(slot_of_resource("bar"), 5061);
    }
}
