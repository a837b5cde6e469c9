//! 1,000 tasks, each reporting which node and worker process ran it: the
//! pool grows to the CPU count and its workers are reused; on a cluster
//! (`ARCA_TEMP_DIR` naming a node of it), tasks spread over its nodes.

use std::collections::BTreeMap;

#[arca::remote]
fn whoami(i: u32) -> (u32, String, u32) {
    let node = arca::node_id().unwrap_or_default();
    (i, node, std::process::id())
}

fn main() -> anyhow::Result<()> {
    arca::init()?; // in a worker process, this runs tasks and never returns
    let refs: Vec<_> = (0..1000).map(whoami::remote).collect();
    let mut per_node: BTreeMap<String, BTreeMap<u32, u32>> = BTreeMap::new();
    for (_, node, pid) in arca::get_many(&refs)? {
        let node = if node.is_empty() {
            "this node".to_string()
        } else {
            node[..8].to_string()
        };
        *per_node.entry(node).or_default().entry(pid).or_insert(0) += 1;
    }
    let workers: usize = per_node.values().map(BTreeMap::len).sum();
    println!(
        "1000 tasks ran on {} node(s), {workers} worker processes:",
        per_node.len()
    );
    for (node, pids) in per_node {
        let n: u32 = pids.values().sum();
        println!("  node {node}: {n} tasks");
        for (pid, n) in pids {
            println!("    worker pid {pid}: {n} tasks");
        }
    }
    arca::shutdown();
    Ok(())
}
