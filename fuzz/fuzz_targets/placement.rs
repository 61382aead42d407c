//! Placement records (`prefix_sync::decode_placement`: a worker's record of where it placed a
//! new prompt, read back from Envoy's shared data by the other workers) against any bytes.
//!
//! Asserts: any bytes decode without a panic; what decodes names a pod of the list (below the
//! pod count given) and at most `PLACEMENT_MAX_BLOCKS` hashes, its block `known` the reader's;
//! a record encoded from the input reads back as itself.
//! Why: shared data outlives configurations and is written by every worker; one bad record
//! must cost a hint, never the VM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelroute::prefix_sync::{decode_placement, encode_placement, PLACEMENT_MAX_BLOCKS};

fuzz_target!(|data: &[u8]| {
    let (Some(&pods), Some(&known)) = (data.first(), data.get(1)) else {
        return;
    };
    let (pods, known) = (usize::from(pods), usize::from(known));
    let hashes: Vec<u64> = data
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
        .collect();
    if let Some((pod, placed)) = decode_placement(data, &hashes, known, (7, pods), 1_000) {
        assert!((pod as usize) < pods);
        assert!(placed.len() <= PLACEMENT_MAX_BLOCKS);
        assert_eq!(placed.get(known), hashes.get(known));
    }
    if pods > 0 && known < hashes.len() && hashes.len() <= PLACEMENT_MAX_BLOCKS {
        let pod = (known % pods) as u32;
        let record = encode_placement(&hashes, pod, 7, 1_000);
        let read = decode_placement(&record, &hashes, known, (7, pods), 1_500);
        assert_eq!(read, Some((pod, hashes.clone())));
    }
});
