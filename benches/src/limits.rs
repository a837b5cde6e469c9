//! This machine's physical limits, measured in the same run as the workloads
//! so that the figures stand beside what the hardware does right now.

use std::time::{Duration, Instant};

/// Warm single-thread memcpy bandwidth in GB/s (1e9 bytes): copies between
/// two already-touched buffers of `size` bytes for about `time`. The mean over
/// all passes, as the put workloads report theirs.
pub fn memcpy_gbps(size: usize, time: Duration) -> f64 {
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src); // touch every page first
    let start = Instant::now();
    let mut passes = 0;
    while passes < 3 || start.elapsed() < time {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        passes += 1;
    }
    (size * passes) as f64 / start.elapsed().as_secs_f64() / 1e9
}
