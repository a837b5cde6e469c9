//! Monte Carlo estimate of pi: each task throws darts at the unit square and
//! counts those inside the quarter circle; the driver adds them up.

#[arca::remote]
fn sample(seed: u64, n: u64) -> u64 {
    // splitmix64: a small, good generator, seeded per task.
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .filter(|_| next().powi(2) + next().powi(2) <= 1.0)
        .count() as u64
}

fn main() -> anyhow::Result<()> {
    arca::init()?; // in a worker process, this runs tasks and never returns
    let (tasks, per_task) = (16u64, 2_000_000u64);
    let t = std::time::Instant::now();
    let refs: Vec<_> = (0..tasks)
        .map(|i| sample::remote(i + 1, per_task))
        .collect();
    let inside: u64 = arca::get_many(&refs)?.into_iter().sum();
    let pi = 4.0 * inside as f64 / (tasks * per_task) as f64;
    println!(
        "pi ~ {pi:.5} from {} samples in {tasks} tasks ({:.2} s; error {:.5})",
        tasks * per_task,
        t.elapsed().as_secs_f64(),
        (pi - std::f64::consts::PI).abs()
    );
    arca::shutdown();
    Ok(())
}
