//! 1,000 tasks, each reporting which worker process ran it: the pool grows
//! to the CPU count and its workers are reused.

use std::collections::BTreeMap;

#[arca::remote]
fn whoami(i: u32) -> (u32, u32) {
    (i, std::process::id())
}

fn main() -> anyhow::Result<()> {
    arca::init()?; // in a worker process, this runs tasks and never returns
    let refs: Vec<_> = (0..1000).map(whoami::remote).collect();
    let mut per_worker = BTreeMap::new();
    for (_, pid) in arca::get_many(&refs)? {
        *per_worker.entry(pid).or_insert(0) += 1;
    }
    println!("1000 tasks ran on {} worker processes:", per_worker.len());
    for (pid, n) in per_worker {
        println!("  worker pid {pid}: {n} tasks");
    }
    arca::shutdown();
    Ok(())
}
