//! The first half of `arca tour`: tasks, ObjectRefs and actors on an
//! embedded node.

use std::path::Path;
use std::time::{Duration, Instant};

use arca::{Error, ObjectRef};
use arca_store::ByteSize;

#[arca::remote]
fn square(x: i64) -> (i64, u32) {
    (x * x, std::process::id())
}

#[arca::remote]
fn partial_sum(v: Vec<f64>, part: usize, parts: usize) -> f64 {
    let n = v.len() / parts;
    v[part * n..(part + 1) * n].iter().sum()
}

#[arca::remote]
fn total(sums: Vec<f64>) -> f64 {
    sums.iter().sum()
}

#[arca::remote]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[arca::remote]
fn parse(s: String) -> Result<i64, String> {
    s.parse::<i64>()
        .map_err(|e| format!("cannot parse {s:?}: {e}"))
}

#[arca::remote]
fn double(x: i64) -> i64 {
    x * 2
}

/// Dies by SIGKILL the first time (when `marker` does not exist yet).
#[arca::remote]
fn flaky(marker: String) -> String {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"killed once").ok();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
    "survived a SIGKILL by being retried".into()
}

struct Counter {
    n: i64,
}

#[arca::actor]
impl Counter {
    fn new(start: i64) -> Self {
        Counter { n: start }
    }

    fn add(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }
}

pub fn tour(dir: &Path) -> anyhow::Result<()> {
    arca::init_with(arca::Config {
        embedded: Some(arca::scheduler::NodeConfig {
            session_dir: dir.join("node"),
            object_store_memory: 256 << 20,
            remove_session_dir: true,
            ..Default::default()
        }),
        ..Default::default()
    })?;
    let result = steps(dir);
    arca::shutdown();
    result
}

fn steps(dir: &Path) -> anyhow::Result<()> {
    let s = arca::status()?;
    let total_res = s.total.unwrap_or_default().amounts;
    println!(
        "1. Started an embedded node (as arca::init() does when none runs): {} CPUs, a {} object store, session {}",
        total_res.get("CPU").copied().unwrap_or(0.0),
        ByteSize(s.store_capacity),
        s.session_dir
    );

    let refs: Vec<_> = (0..4).map(square::remote).collect();
    let out = arca::get_many(&refs)?;
    let squares: Vec<i64> = out.iter().map(|(s, _)| *s).collect();
    let mut pids: Vec<u32> = out.iter().map(|(_, p)| *p).collect();
    pids.sort_unstable();
    pids.dedup();
    println!(
        "2. square::remote(x) for x in 0..4 -> {squares:?}, run by worker processes {pids:?} (this is pid {})",
        std::process::id()
    );

    let v: Vec<f64> = (0..1_000_000).map(|i| i as f64).collect();
    let t = Instant::now();
    let v_ref: ObjectRef<Vec<f64>> = arca::put(&v)?;
    let sums: Vec<_> = (0..4).map(|p| partial_sum::remote(&v_ref, p, 4)).collect();
    let parts = arca::get_many(&sums)?;
    let sum = arca::get(&total::remote(parts))?;
    println!(
        "3. put a vector of 1M f64 ({}, into the store), passed its ObjectRef to 4 tasks and their sums to a 5th: {sum} ({:.1} ms)",
        ByteSize(8_000_000),
        t.elapsed().as_secs_f64() * 1e3
    );

    let big = arca::put(&arca::Buffer::from(vec![1u8; 256 << 20]))?;
    let small = arca::put(&arca::Buffer::from(vec![1u8; 1 << 10]))?;
    let time_get = |r: &ObjectRef<arca::Buffer>| -> anyhow::Result<(f64, usize)> {
        let t = Instant::now();
        let b = arca::get(r)?;
        Ok((t.elapsed().as_secs_f64() * 1e6, b.len()))
    };
    // The first get of each maps its pages; time the second.
    time_get(&big)?;
    time_get(&small)?;
    let ((big_us, big_len), (small_us, _)) = (time_get(&big)?, time_get(&small)?);
    println!(
        "   an arca::Buffer skips serialization: get of a {} one took {big_us:.0} us (a view of the store's shared memory, no copy), of a 1 KiB one {small_us:.0} us",
        ByteSize(big_len as u64)
    );
    drop((big, small));

    let naps: Vec<_> = [0, 100, 400, 800].into_iter().map(nap::remote).collect();
    let (ready, not_ready) = arca::wait(&naps, 4, Some(Duration::from_millis(250)))?;
    println!(
        "4. wait(4 naps of 0/100/400/800 ms, timeout 250 ms): {} ready, {} not yet",
        ready.len(),
        not_ready.len()
    );
    match arca::get_timeout(&naps[3], Some(Duration::from_millis(10))) {
        Err(e @ Error::GetTimeout { .. }) => {
            println!("   get with a 10 ms timeout on the slowest: {e}")
        }
        other => println!("   get with a timeout: {other:?}"),
    }

    let counter = Counter::remote(10);
    let calls: Vec<_> = (1..=5).map(|i| counter.add(i)).collect();
    println!(
        "5. An actor: Counter::remote(10), then add(1..=5) in one go -> {:?} (one process, calls in order, state kept)",
        arca::get_many(&calls)?
    );

    let bad = parse::remote("forty-two".to_string());
    let dependent = double::remote(double::remote(&bad));
    println!(
        "6. A task that returns an error: {}",
        arca::get(&bad).unwrap_err()
    );
    println!(
        "   ...and a task two steps downstream fails with the same cause: {}",
        arca::get(&dependent).unwrap_err()
    );

    let marker = dir.join("flaky.marker").display().to_string();
    println!(
        "7. A task whose worker is SIGKILLed on its first try is retried (max_retries, default 3): {}",
        arca::get(&flaky::remote(marker))?
    );
    let long = nap::remote(60_000);
    std::thread::sleep(Duration::from_millis(200));
    arca::cancel(&long, true)?;
    println!(
        "   a running 60 s task cancelled with force: {}",
        arca::get(&long).unwrap_err()
    );

    let before = arca::memory()?.objects.len();
    drop((
        refs, v_ref, sums, naps, ready, not_ready, calls, bad, dependent, long,
    ));
    let mut after = before;
    for _ in 0..100 {
        after = arca::memory()?.objects.len();
        if after <= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "8. Reference counting: the node held {before} objects; after dropping the ObjectRefs, {after} (the actor's own)"
    );
    let st = arca::status()?;
    println!(
        "   status: {} tasks finished, {} failed, {} workers; `arca start --head` runs such a node in the background",
        st.tasks_finished,
        st.tasks_failed,
        st.workers.len()
    );
    Ok(())
}
