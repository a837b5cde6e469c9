//! `arca memory`: what is in a node (or a standalone store) and what holds it.
//!
//! For a node, each object the node knows (its owner, the processes, tasks
//! and objects that hold references to it, the task that makes it) is joined
//! by id with what its store says (size, where the bytes are, which
//! processes pin them). Objects only the store has (written by a plain
//! `StoreClient`) are listed too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arca_client::{
    ByteSize, ClientOptions, MemoryReport, ObjectId, ObjectInfo, ObjectState, StoreClient,
};
use arca_proto::node as pb;
use serde_json::json;

use super::UsageError;
use super::node::{NodeClient, SessionArgs, not_running};

#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// A standalone store's socket (`arca store`), instead of a node.
    #[arg(long, conflicts_with = "temp_dir")]
    socket: Option<PathBuf>,
    #[command(flatten)]
    session: SessionArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Show at most this many objects (largest first); 0 shows all.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

fn connect_store(socket: &Path) -> anyhow::Result<StoreClient> {
    let opts = ClientOptions {
        name: "arca memory".into(),
        populate: false,
        ..ClientOptions::default()
    };
    Ok(StoreClient::connect_with(socket, opts)?)
}

pub fn run(a: MemoryArgs) -> anyhow::Result<()> {
    let Some(socket) = &a.socket else {
        return run_node(&a);
    };
    let client = connect_store(socket)?;
    let report = client.memory()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&report))?);
    } else {
        print!("{}", render(&report, a.limit, client.client_id()));
    }
    Ok(())
}

fn run_node(a: &MemoryArgs) -> anyhow::Result<()> {
    let dir = a.session.dir();
    let Some(mut node) = NodeClient::connect(&dir, "arca memory")? else {
        // Nothing named and nothing at the default place: say what to name.
        if a.session.temp_dir.is_none() {
            return Err(UsageError(format!(
                "no node is running in {} and no --socket was given; start a node with `arca start --head`, or pass --socket PATH for a standalone store",
                dir.display()
            ))
            .into());
        }
        return Err(not_running(&dir));
    };
    let status = node.status()?;
    let objects = node.memory()?.objects;
    let client = connect_store(Path::new(&node.hello.store_socket))?;
    let report = client.memory()?;
    let rows = join(&objects, &report);
    if a.json {
        let v = json!({
            "node": { "name": status.node_name, "pid": status.pid, "session_dir": status.session_dir },
            "totals": totals_json(&report),
            "clients": clients_json(&report),
            "objects": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut out = format!(
            "node {} (pid {}) in {}: {} objects known to the node\n\nstore ",
            status.node_name,
            status.pid,
            status.session_dir,
            objects.len()
        );
        out += &render_totals(&report);
        out += &render_clients(&report, client.client_id());
        out += &render_rows(&rows, a.limit);
        print!("{out}");
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
    let mut out = render_totals(r);
    out += &render_clients(r, me);
    let pids = client_pids(r);
    let shown = shown(limit, r.objects.len());
    out += &format!(
        "\nobjects (largest first, {shown} of {})\n",
        r.objects.len()
    );
    out += &format!(
        "  {:<40} {:>11} {:>9} {:<11} {:<22} {:>12} {:>8}\n",
        "ID", "SIZE", "STATE", "WHERE", "PINNED BY (pid x n)", "PRIMARY PID", "AGE"
    );
    for o in r.objects.iter().take(shown) {
        let primary = primary_pid(o, &pids).map_or_else(|| "-".into(), |p| p.to_string());
        out += &format!(
            "  {:<40} {:>11} {:>9} {:<11} {:<22} {:>12} {:>8}\n",
            hex(&o.id),
            ByteSize(o.data_size + o.metadata_size).to_string(),
            state(o.state),
            place(o),
            truncate(&pins(o), 22),
            primary,
            age(o.age_ms)
        );
    }
    out
}

fn shown(limit: usize, len: usize) -> usize {
    if limit == 0 { len } else { limit.min(len) }
}

fn client_pids(r: &MemoryReport) -> HashMap<u64, u32> {
    r.clients.iter().map(|c| (c.client, c.pid)).collect()
}

/// The pid of the client holding the primary copy, if any.
fn primary_pid(o: &ObjectInfo, pids: &HashMap<u64, u32>) -> Option<u32> {
    (o.primary_client != 0).then(|| {
        pids.get(&o.primary_client)
            .copied()
            .unwrap_or(o.primary_pid)
    })
}

/// `pid x count` for each pinning process, or `-`.
fn pins(o: &ObjectInfo) -> String {
    if o.pins.is_empty() {
        return "-".into();
    }
    let pins: Vec<String> = o
        .pins
        .iter()
        .map(|p| format!("{}x{}", p.pid, p.count))
        .collect();
    pins.join(",")
}

/// The store's capacity, use and spilling.
fn render_totals(r: &MemoryReport) -> String {
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
    out
}

/// The store's clients, except `me` (this tool's own connection).
fn render_clients(r: &MemoryReport, me: u64) -> String {
    let b = |n: u64| ByteSize(n).to_string();
    let mut out = "\nclients\n".to_string();
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
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('~')).collect()
    }
}

/// One object of a node: what the node knows of it, what its store has.
#[derive(Debug)]
struct Row<'a> {
    id: &'a [u8],
    node: Option<&'a pb::NodeObject>,
    store: Option<&'a ObjectInfo>,
}

impl Row<'_> {
    fn size(&self) -> u64 {
        match (self.node, self.store) {
            (_, Some(s)) => s.data_size + s.metadata_size,
            (Some(n), None) => n.size,
            (None, None) => 0,
        }
    }

    /// The node's state; for an object only the store has, the store's.
    fn state(&self) -> &str {
        match (self.node, self.store) {
            (Some(n), _) => &n.state,
            (None, Some(s)) => state(s.state),
            (None, None) => "unknown",
        }
    }

    /// Where the value is: the store's answer, or the node's memory for
    /// small values that travel inline.
    fn place(&self) -> &'static str {
        match (self.node, self.store) {
            (_, Some(s)) => place(s),
            (Some(n), None) if n.state == "inline" => "node",
            _ => "-",
        }
    }

    /// Who holds references: pids, then tasks and containing objects.
    fn holders(&self) -> String {
        let Some(n) = self.node else {
            return "-".into();
        };
        let mut parts: Vec<String> = n.holder_pids.iter().map(u32::to_string).collect();
        if n.task_holds > 0 {
            parts.push(format!("{} task{}", n.task_holds, plural(n.task_holds)));
        }
        if n.contained_in > 0 {
            parts.push(format!("in {} obj", n.contained_in));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(",")
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let n = self.node;
        json!({
            "id": hex(self.id),
            "size": self.size(),
            "state": self.state(),
            "where": self.place(),
            "owner_pid": n.map(|n| n.owner_pid),
            "ref_count": n.map(|n| n.ref_count),
            "holder_pids": n.map(|n| &n.holder_pids),
            "task_holds": n.map(|n| n.task_holds),
            "contained_in": n.map(|n| n.contained_in),
            "function": n.filter(|n| !n.function.is_empty()).map(|n| &n.function),
            "store": self.store.map(store_object_json),
        })
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The node's objects joined with the store's by id, largest first.
fn join<'a>(objects: &'a [pb::NodeObject], r: &'a MemoryReport) -> Vec<Row<'a>> {
    let mut in_store: HashMap<&[u8], &ObjectInfo> =
        r.objects.iter().map(|o| (&o.id[..], o)).collect();
    let mut rows: Vec<Row<'a>> = objects
        .iter()
        .map(|n| Row {
            id: &n.id,
            node: Some(n),
            store: in_store.remove(&n.id[..]),
        })
        .collect();
    rows.extend(in_store.into_values().map(|s| Row {
        id: &s.id,
        node: None,
        store: Some(s),
    }));
    rows.sort_by(|a, b| b.size().cmp(&a.size()).then_with(|| a.id.cmp(b.id)));
    rows
}

fn render_rows(rows: &[Row<'_>], limit: usize) -> String {
    let shown = shown(limit, rows.len());
    let mut out = format!("\nobjects (largest first, {shown} of {})\n", rows.len());
    let line = |cols: [&str; 9]| {
        format!(
            "  {:<40} {:>11} {:<8} {:<11} {:>8} {:>4} {:<20} {:<18} {}\n",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8]
        )
    };
    out += &line([
        "ID",
        "SIZE",
        "STATE",
        "WHERE",
        "OWNER",
        "REFS",
        "HELD BY",
        "PINNED BY (pid x n)",
        "FUNCTION",
    ]);
    for row in rows.iter().take(shown) {
        let n = row.node;
        out += &line([
            &hex(row.id),
            &ByteSize(row.size()).to_string(),
            row.state(),
            row.place(),
            &n.map_or_else(|| "-".into(), |n| n.owner_pid.to_string()),
            &n.map_or_else(|| "-".into(), |n| n.ref_count.to_string()),
            &truncate(&row.holders(), 20),
            &truncate(&row.store.map_or_else(|| "-".into(), pins), 18),
            n.map(|n| n.function.as_str())
                .filter(|f| !f.is_empty())
                .unwrap_or("-"),
        ]);
    }
    out
}

fn totals_json(r: &MemoryReport) -> serde_json::Value {
    let t = r.totals.clone().unwrap_or_default();
    json!({
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
    })
}

fn clients_json(r: &MemoryReport) -> serde_json::Value {
    r.clients.iter().map(|c| json!({
        "client": c.client, "pid": c.pid, "name": c.name, "pinned": c.pinned_bytes,
        "primary": c.primary_bytes, "creating": c.creating_bytes, "connected_ms": c.connected_ms,
    })).collect()
}

fn store_object_json(o: &ObjectInfo) -> serde_json::Value {
    json!({
        "id": hex(&o.id), "data_size": o.data_size, "metadata_size": o.metadata_size,
        "allocated": o.allocated, "state": state(o.state),
        "pins": o.pins.iter().map(|p| json!({"client": p.client, "pid": p.pid, "count": p.count})).collect::<Vec<_>>(),
        "primary_pid": if o.primary_client == 0 { None } else { Some(o.primary_pid) },
        "creator_pid": o.creator_pid, "age_ms": o.age_ms, "where": place(o),
        "spill_file": if o.spill_file.is_empty() { None } else { Some(&o.spill_file) },
        "error": if o.error.is_empty() { None } else { Some(&o.error) },
    })
}

fn to_json(r: &MemoryReport) -> serde_json::Value {
    json!({
        "totals": totals_json(r),
        "clients": clients_json(r),
        "objects": r.objects.iter().map(store_object_json).collect::<Vec<_>>(),
    })
}
