//! Resources: tasks reserve CPUs (fractions too), GPUs and custom
//! resources; the scheduler runs a task only when its request fits, and
//! says at once when a request can never fit.

use std::time::{Duration, Instant};

use arca::scheduler::NodeConfig;

#[arca::remote]
fn busy(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn timed(label: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let t = Instant::now();
    f()?;
    println!("{label}: {:.2} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // A running node if there is one (as every example), else an embedded
    // node with 2 CPUs and 1 of a custom resource "Sensor".
    let dir = std::env::var_os(arca::ENV_TEMP_DIR).map_or_else(
        || arca::DEFAULT_SESSION_DIR.into(),
        std::path::PathBuf::from,
    );
    if arca::node_running(&dir) || std::env::var_os(arca::ENV_ADDRESS).is_some() {
        arca::init()?;
    } else {
        arca::init_with(arca::Config {
            embedded: Some(NodeConfig {
                num_cpus: 2.0,
                custom: vec![("Sensor".into(), 1.0)],
                object_store_memory: 256 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })?;
    }
    let s = arca::status()?;
    let sensors: f64 = s
        .cluster
        .iter()
        .filter_map(|n| n.total.as_ref()?.amounts.get("Sensor").copied())
        .sum();
    println!(
        "node resources: {:?}",
        s.total.map(|r| r.amounts).unwrap_or_default()
    );

    timed("4 tasks of 0.3 s, 1 CPU each, 2 CPUs (two rounds)", || {
        let refs: Vec<_> = (0..4).map(|_| busy::remote(300)).collect();
        arca::get_many(&refs)?;
        Ok(())
    })?;
    timed("4 tasks of 0.3 s, 0.5 CPU each (one round)", || {
        let refs: Vec<_> = (0..4)
            .map(|_| busy::options().num_cpus(0.5).remote(300))
            .collect();
        arca::get_many(&refs)?;
        Ok(())
    })?;
    if sensors > 0.0 {
        timed(
            "2 tasks of 0.3 s needing a Sensor (one after the other if there is one)",
            || {
                let refs: Vec<_> = (0..2)
                    .map(|_| busy::options().resources("Sensor", 1.0).remote(300))
                    .collect();
                arca::get_many(&refs)?;
                Ok(())
            },
        )?;
    } else {
        println!(
            "no node has a Sensor: start one with `arca start --head --resources '{{\"Sensor\": 1}}'` to see tasks wait for it"
        );
    }
    let gpu = busy::options().num_gpus(1.0).remote(10);
    println!(
        "a task asking for a GPU on a node without one: {}",
        arca::get(&gpu).unwrap_err()
    );
    arca::shutdown();
    Ok(())
}
