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

/// Sequential direct-I/O (`O_DIRECT`) write and read bandwidth in GB/s of the
/// disk holding `dir`: `size` bytes in 16 MiB blocks to a scratch file there,
/// removed after. Falls back to buffered I/O (and says so) where the
/// filesystem has no direct I/O.
pub fn disk_gbps(dir: &std::path::Path, size: usize) -> std::io::Result<(f64, f64, bool)> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 16 << 20;
    let path = dir.join(format!("arca-disk-probe-{}", std::process::id()));
    let mut buf = memmap2::MmapMut::map_anon(BLOCK)?; // page-aligned, as O_DIRECT needs
    buf.fill(0x5a);
    let open = |write: bool, direct: bool| {
        let mut o = OpenOptions::new();
        if write {
            o.write(true).create(true).truncate(true);
        } else {
            o.read(true);
        }
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(&path)
    };
    let (file, direct) = match open(true, true) {
        Ok(f) => (f, true),
        Err(_) => (open(true, false)?, false),
    };
    let result = (|| {
        let blocks = size.div_ceil(BLOCK);
        let t = Instant::now();
        for i in 0..blocks {
            file.write_all_at(&buf, (i * BLOCK) as u64)?;
        }
        file.sync_data()?;
        let write = (blocks * BLOCK) as f64 / t.elapsed().as_secs_f64() / 1e9;
        let reader = open(false, direct)?;
        let t = Instant::now();
        for i in 0..blocks {
            reader.read_exact_at(&mut buf, (i * BLOCK) as u64)?;
        }
        let read = (blocks * BLOCK) as f64 / t.elapsed().as_secs_f64() / 1e9;
        Ok((write, read, direct))
    })();
    let _ = std::fs::remove_file(&path);
    result
}
