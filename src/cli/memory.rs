//! `arca memory`: what is in a store and what holds it.

use std::collections::HashMap;
use std::path::PathBuf;

use arca_client::{
    ByteSize, ClientOptions, MemoryReport, ObjectId, ObjectInfo, ObjectState, StoreClient,
};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// The store's socket.
    #[arg(long)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Show at most this many objects (largest first); 0 shows all.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

pub fn run(a: MemoryArgs) -> anyhow::Result<()> {
    let opts = ClientOptions {
        name: "arca memory".into(),
        populate: false,
        ..ClientOptions::default()
    };
    let client = StoreClient::connect_with(&a.socket, opts)?;
    let report = client.memory()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&report))?);
    } else {
        print!("{}", render(&report, a.limit, client.client_id()));
    }
    Ok(())
}

fn state(s: i32) -> &'static str {
    match ObjectState::try_from(s) {
        Ok(ObjectState::Creating) => "creating",
        Ok(ObjectState::Sealed) => "sealed",
        Ok(ObjectState::Deleting) => "deleting",
        _ => "unknown",
    }
}

/// Where the bytes are: memory, disk (spilled), or both; "unreadable" if
/// the spilled copy failed its checks.
fn place(o: &ObjectInfo) -> &'static str {
    match (o.error.is_empty(), o.in_memory, o.on_disk) {
        (false, _, _) => "unreadable",
        (true, true, true) => "memory+disk",
        (true, true, false) => "memory",
        (true, false, true) => "disk",
        (true, false, false) => "restoring",
    }
}

fn hex(id: &[u8]) -> String {
    ObjectId::from_slice(id).map_or_else(|_| "?".into(), |i| i.to_hex())
}

fn age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..120_000 => format!("{:.1}s", ms as f64 / 1e3),
        120_000..7_200_000 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

fn render(r: &MemoryReport, limit: usize, me: u64) -> String {
    let t = r.totals.clone().unwrap_or_default();
    let b = |n: u64| ByteSize(n).to_string();
    let mut out = format!(
        "capacity {}  used {} ({:.1}%)  objects {}\n  pinned {}  primary {}  creating {}  evictable {}  free {}\n  since start: {} objects created, {} evicted ({})\n",
        b(t.capacity),
        b(t.allocated),
        100.0 * t.allocated as f64 / t.capacity.max(1) as f64,
        t.objects,
        b(t.pinned),
        b(t.primary),
        b(t.creating),
        b(t.evictable),
        b(t.capacity.saturating_sub(t.allocated)),
        t.created_objects,
        t.evicted_objects,
        b(t.evicted_bytes),
    );
    if !t.spill_dir.is_empty() {
        let rate = |bytes: u64, secs: f64| {
            if secs > 0.0 {
                format!("{:.2} GB/s", bytes as f64 / secs / 1e9)
            } else {
                "-".into()
            }
        };
        out += &format!(
            "spill {}\n  on disk only: {} objects, {}  files: {}, {} on disk\n  since start: spilled {} objects ({}, {}), restored {} ({}, {}), {} failed spills\n",
            t.spill_dir,
            t.spilled_objects,
            b(t.spilled_bytes),
            t.spill_files,
            b(t.spill_disk_bytes),
            t.spilled_total_objects,
            b(t.spilled_total_bytes),
            rate(t.spilled_total_bytes, t.spill_seconds),
            t.restored_total_objects,
            b(t.restored_total_bytes),
            rate(t.restored_total_bytes, t.restore_seconds),
            t.failed_spills,
        );
        if t.fallback_capacity > 0 {
            out += &format!(
                "  fallback file: {} of {} used by primary copies memory could not take\n",
                b(t.fallback_bytes),
                b(t.fallback_capacity)
            );
        }
        if !t.spill_stopped.is_empty() {
            out += &format!("  SPILLING STOPPED: {}\n", t.spill_stopped);
        }
    }
    out += "\nclients\n";
    out += &format!(
        "  {:>6} {:>8} {:<20} {:>11} {:>11} {:>11} {:>9}\n",
        "CLIENT", "PID", "NAME", "PINNED", "PRIMARY", "CREATING", "CONNECTED"
    );
    for c in r.clients.iter().filter(|c| c.client != me) {
        out += &format!(
            "  {:>6} {:>8} {:<20} {:>11} {:>11} {:>11} {:>9}\n",
            c.client,
            c.pid,
            truncate(&c.name, 20),
            b(c.pinned_bytes),
            b(c.primary_bytes),
            b(c.creating_bytes),
            age(c.connected_ms)
        );
    }
    let pids: HashMap<u64, u32> = r.clients.iter().map(|c| (c.client, c.pid)).collect();
    let shown = if limit == 0 {
        r.objects.len()
    } else {
        limit.min(r.objects.len())
    };
    out += &format!(
        "\nobjects (largest first, {shown} of {})\n",
        r.objects.len()
    );
    out += &format!(
        "  {:<40} {:>11} {:>9} {:<11} {:<22} {:>12} {:>8}\n",
        "ID", "SIZE", "STATE", "WHERE", "PINNED BY (pid x n)", "PRIMARY PID", "AGE"
    );
    for o in r.objects.iter().take(shown) {
        let pins: Vec<String> = o
            .pins
            .iter()
            .map(|p| format!("{}x{}", p.pid, p.count))
            .collect();
        let primary = if o.primary_client == 0 {
            "-".to_string()
        } else {
            pids.get(&o.primary_client)
                .copied()
                .unwrap_or(o.primary_pid)
                .to_string()
        };
        out += &format!(
            "  {:<40} {:>11} {:>9} {:<11} {:<22} {:>12} {:>8}\n",
            hex(&o.id),
            b(o.data_size + o.metadata_size),
            state(o.state),
            place(o),
            if pins.is_empty() {
                "-".into()
            } else {
                truncate(&pins.join(","), 22)
            },
            primary,
            age(o.age_ms)
        );
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('~')).collect()
    }
}

fn to_json(r: &MemoryReport) -> serde_json::Value {
    let t = r.totals.clone().unwrap_or_default();
    json!({
        "totals": {
            "capacity": t.capacity, "allocated": t.allocated, "pinned": t.pinned,
            "primary": t.primary, "creating": t.creating, "evictable": t.evictable,
            "objects": t.objects, "created_objects": t.created_objects,
            "evicted_objects": t.evicted_objects, "evicted_bytes": t.evicted_bytes,
            "spill": if t.spill_dir.is_empty() { serde_json::Value::Null } else { json!({
                "dir": t.spill_dir, "objects_on_disk_only": t.spilled_objects, "bytes_on_disk_only": t.spilled_bytes,
                "files": t.spill_files, "disk_bytes": t.spill_disk_bytes,
                "spilled_objects": t.spilled_total_objects, "spilled_bytes": t.spilled_total_bytes, "spill_seconds": t.spill_seconds,
                "restored_objects": t.restored_total_objects, "restored_bytes": t.restored_total_bytes, "restore_seconds": t.restore_seconds,
                "failed_spills": t.failed_spills, "stopped": if t.spill_stopped.is_empty() { None } else { Some(&t.spill_stopped) },
                "fallback_bytes": t.fallback_bytes, "fallback_capacity": t.fallback_capacity,
            })},
        },
        "clients": r.clients.iter().map(|c| json!({
            "client": c.client, "pid": c.pid, "name": c.name, "pinned": c.pinned_bytes,
            "primary": c.primary_bytes, "creating": c.creating_bytes, "connected_ms": c.connected_ms,
        })).collect::<Vec<_>>(),
        "objects": r.objects.iter().map(|o| json!({
            "id": hex(&o.id), "data_size": o.data_size, "metadata_size": o.metadata_size,
            "allocated": o.allocated, "state": state(o.state),
            "pins": o.pins.iter().map(|p| json!({"client": p.client, "pid": p.pid, "count": p.count})).collect::<Vec<_>>(),
            "primary_pid": if o.primary_client == 0 { None } else { Some(o.primary_pid) },
            "creator_pid": o.creator_pid, "age_ms": o.age_ms, "where": place(o),
            "spill_file": if o.spill_file.is_empty() { None } else { Some(&o.spill_file) },
            "error": if o.error.is_empty() { None } else { Some(&o.error) },
        })).collect::<Vec<_>>(),
    })
}
