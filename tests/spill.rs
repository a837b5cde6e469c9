//! Spilling end to end: a store holding several times its memory for
//! several client processes, byte for byte; a corrupt or truncated spill
//! file, a full spill disk, a daemon killed mid-spill and restarted, the
//! spill threshold, and what `arca memory` shows about spilled objects.
//!
//! Nothing here depends on the layout of records inside spill files (it is
//! still changing): a test that damages a file finds it through
//! `ObjectInfo::spill_file` and makes sure the object it damages is the only
//! one in it.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arca_client::{Error, INLINE_MAX, ObjectId, ObjectInfo, PutOptions, StoreClient};
use common::{
    Daemon, GET, KIB, MIB, Spec, TEST_LIMIT, TempDir, WAIT, child_client, child_file, env,
    fill_pattern, join_timeout, raise_flag, run_arca, signal_ready, totals, wait_flag, wait_until,
    write_atomic,
};
use nix::sys::signal::Signal;

// ---------------------------------------------------------------------------
// Helpers

/// A spill directory of the test's own (it outlives any one daemon).
fn spill_root() -> TempDir {
    TempDir::new()
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Puts `s` as a primary copy under its own id: in place through a writer
/// when it is too big to travel inline, so no second copy is made.
fn put_spec(c: &StoreClient, s: &Spec) -> arca_client::Result<()> {
    let metadata = s.metadata();
    if s.size + metadata.len() > INLINE_MAX {
        let mut w = c.create(s.id, s.size as u64, &metadata, true)?;
        fill_pattern(s.seed, &mut w);
        w.seal()?;
    } else {
        let opts = PutOptions {
            id: Some(s.id),
            metadata: &metadata,
            primary: true,
        };
        c.put_with(&s.data(), &opts)?;
    }
    Ok(())
}

/// Gets `s` and checks every byte of its data and metadata.
fn check_spec(c: &StoreClient, s: &Spec) {
    let b = c
        .get_one(s.id, GET)
        .unwrap_or_else(|e| panic!("get of {} ({} bytes): {e}", s.id, s.size));
    s.check(&b);
}

/// What the daemon says about one object.
fn info(c: &StoreClient, id: ObjectId) -> Option<ObjectInfo> {
    c.list()
        .expect("list")
        .into_iter()
        .find(|o| o.id.as_ref() == id.as_bytes())
}

/// Only on disk: spilled, and its memory freed.
fn disk_only(o: &ObjectInfo) -> bool {
    o.on_disk && !o.in_memory
}

/// Waits (bounded) until every one of `ids` is spilled and out of memory.
fn wait_disk_only(c: &StoreClient, ids: &[ObjectId]) {
    wait_until("objects to be spilled out of memory", WAIT, || {
        ids.iter()
            .all(|id| info(c, *id).is_some_and(|o| disk_only(&o)))
    });
}

/// The files in a spill session directory other than its `lock`, with sizes.
fn spill_files(session: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = fs::read_dir(session) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != "lock")
        // A file unlinked between readdir and stat counts as gone.
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect()
}

/// The entries of a spill root: one session directory per daemon.
fn sessions(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root)
        .expect("read the spill root")
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// This daemon's session directory, as it reports it.
fn session_dir(c: &StoreClient) -> PathBuf {
    let dir = totals(c).spill_dir;
    assert!(!dir.is_empty(), "the store does not spill");
    PathBuf::from(dir)
}

/// XORs `n` bytes in the middle of `path` with 0xff.
fn flip_middle(path: &Path, n: usize) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let len = f.metadata().unwrap().len();
    assert!(len > 2 * n as u64, "{} is only {len} bytes", path.display());
    let at = len / 2;
    let mut buf = vec![0u8; n];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut buf).unwrap();
    for b in &mut buf {
        *b ^= 0xff;
    }
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&buf).unwrap();
    f.sync_all().unwrap();
}

/// `text` without terminal color sequences (`ESC [ ... m`): the daemon's log
/// has them even when it goes to a file.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// A deterministic generator (splitmix64), so every process derives the
/// same object list from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------
// Child processes

const PUTTER_VAR: &str = "ARCA_E2E_PUTTER";
const READER_VAR: &str = "ARCA_E2E_READER";

#[test]
#[ignore = "entry point of the child processes started by the other tests"]
fn child_entry() {
    common::child_main(|role| match role {
        "putter" => stress_putter(),
        "reader" => stress_reader(),
        other => panic!("unknown role {other}"),
    });
}

// ---------------------------------------------------------------------------
// 1. Stress

// The issue asks for a store of a few hundred MiB and objects up to 64 MiB,
// in about a minute of CI. Scaled to half: a 128 MiB store and objects up to
// 32 MiB keep its proportions (the largest object is a quarter of the store)
// with half the disk traffic (about 0.5 GiB written, more read back). The
// issue's full size took 8 s in a debug build on a 2-core VM here; half
// leaves room for a slower CI disk under the 90 s daemon watchdog.
const STRESS_MEMORY: &str = "128MiB";
const STRESS_PUTTERS: u64 = 3;
const STRESS_READERS: u64 = 2;
/// Bytes all putters put together: a bit over 4x the store.
const STRESS_TOTAL: u64 = 544 * MIB;
const STRESS_MIN: u64 = KIB;
const STRESS_MAX: u64 = 32 * MIB;
/// Every fifth object is temporary: its putter deletes it this many puts
/// later, so spill files die partly and compaction has work. Readers never
/// read temporary objects.
const TEMP_LIFETIME: usize = 6;
/// Bound on the whole put phase (the daemon watchdog ends a hang sooner).
const STRESS_PHASE: Duration = Duration::from_secs(80);

fn temporary(i: usize) -> bool {
    i % 5 == 4
}

fn stress_id(putter: u64, i: usize) -> ObjectId {
    let mut b = [0u8; ObjectId::LEN];
    b[..6].copy_from_slice(b"stress");
    b[6..14].copy_from_slice(&putter.to_le_bytes());
    b[14..].copy_from_slice(&(i as u64).to_le_bytes()[..6]);
    ObjectId::from_bytes(b)
}

/// What putter `p` puts, in order: the smallest and the largest size first,
/// then sizes spread evenly in log scale between them (many small objects
/// to batch, a few huge ones to stream), until its share of the total.
fn stress_specs(p: u64) -> Vec<Spec> {
    let mut rng = Rng(0x5eed_0000 + p);
    let (lo, hi) = ((STRESS_MIN as f64).log2(), (STRESS_MAX as f64).log2());
    let mut v = Vec::new();
    let mut total = 0;
    while total < STRESS_TOTAL / STRESS_PUTTERS {
        let i = v.len();
        let size = match i {
            0 => STRESS_MAX,
            1 => STRESS_MIN,
            _ => 2f64.powf(lo + (hi - lo) * rng.unit()) as u64,
        };
        v.push(Spec {
            id: stress_id(p, i),
            size: size as usize,
            seed: (p << 32) | i as u64,
        });
        total += size;
    }
    v
}

fn progress_file(p: u64) -> PathBuf {
    child_file(&format!("putter{p}.count"))
}

/// How many objects putter `p` has put so far (0 before its first).
fn progress(p: u64) -> usize {
    fs::read_to_string(progress_file(p))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Puts its share, publishing its progress after each put and deleting
/// each temporary object a few puts later, then holds its primary copies
/// (they live as long as this client) until the parent says `release`.
fn stress_putter() {
    let c = child_client();
    let p: u64 = env(PUTTER_VAR).parse().unwrap();
    let specs = stress_specs(p);
    for (i, s) in specs.iter().enumerate() {
        put_spec(&c, s).unwrap_or_else(|e| panic!("put #{i} ({} bytes): {e}", s.size));
        write_atomic(&progress_file(p), (i + 1).to_string().as_bytes());
        if i >= TEMP_LIFETIME && temporary(i - TEMP_LIFETIME) {
            let old = &specs[i - TEMP_LIFETIME];
            assert!(c.delete(old.id).unwrap(), "temporary {} vanished", old.id);
        }
    }
    let last = specs.len().saturating_sub(TEMP_LIFETIME);
    for (i, s) in specs.iter().enumerate().skip(last) {
        if temporary(i) {
            assert!(c.delete(s.id).unwrap(), "temporary {} vanished", s.id);
        }
    }
    signal_ready();
    wait_flag(&child_file("release"), TEST_LIMIT);
}

/// Most bytes a reader gets in one call of several objects. Small next to
/// the store: a get of spilled objects that do not fit in free memory
/// together can restore them in turn forever (see
/// `one_get_restores_several_spilled_objects_that_do_not_fit_in_free_memory_together`).
const GROUP_BYTES: usize = 4 * MIB as usize;

/// While the putters put, gets random objects they put earlier (one at a
/// time or up to three in one call) and checks every byte; once the parent
/// says `stop`, checks its share of all the objects, several per call.
fn stress_reader() {
    let c = child_client();
    let r: u64 = env(READER_VAR).parse().unwrap();
    let specs: Vec<Vec<Spec>> = (0..STRESS_PUTTERS).map(stress_specs).collect();
    let mut rng = Rng(0xbeef_0000 + r);
    let stop = child_file("stop");
    let deadline = Instant::now() + STRESS_PHASE;
    let mut reads = 0u64;
    let pick = |rng: &mut Rng| -> Option<Spec> {
        let p = rng.below(STRESS_PUTTERS);
        let done = progress(p);
        if done == 0 {
            return None;
        }
        let mut i = rng.below(done as u64) as usize;
        if temporary(i) {
            i -= 1;
        }
        Some(specs[p as usize][i])
    };
    while !stop.exists() {
        assert!(
            Instant::now() < deadline,
            "no stop flag after {STRESS_PHASE:?}"
        );
        if reads % 4 == 3 {
            let mut bytes = 0;
            let group: Vec<Spec> = (0..3)
                .filter_map(|_| pick(&mut rng))
                .filter(|s| {
                    bytes += s.size;
                    bytes <= GROUP_BYTES
                })
                .collect();
            let ids: Vec<ObjectId> = group.iter().map(|s| s.id).collect();
            let bufs = c.get(&ids, GET).unwrap();
            for (s, b) in group.iter().zip(&bufs) {
                s.check(b.as_ref().unwrap_or_else(|| panic!("{} missing", s.id)));
            }
            // At least one, so that the next read is a single one.
            reads += group.len().max(1) as u64;
        } else if let Some(s) = pick(&mut rng) {
            check_spec(&c, &s);
            reads += 1;
        } else {
            // Nothing put yet: a bounded poll, ended by the deadline above.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let random_reads = reads;
    // Final pass: every live object, split between the readers, several
    // per call (one alone if it is large).
    let mine: Vec<Spec> = specs
        .iter()
        .flat_map(|v| v.iter().enumerate())
        .filter(|(i, s)| !temporary(*i) && s.seed % STRESS_READERS == r)
        .map(|(_, s)| *s)
        .collect();
    let mut groups: Vec<Vec<Spec>> = vec![Vec::new()];
    for s in mine {
        let g = groups.last_mut().unwrap();
        let bytes: usize = g.iter().map(|s| s.size).sum();
        if !g.is_empty() && (bytes + s.size > GROUP_BYTES || g.len() == 16) {
            groups.push(Vec::new());
        }
        groups.last_mut().unwrap().push(s);
    }
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let ids: Vec<ObjectId> = group.iter().map(|s| s.id).collect();
        let bufs = c.get(&ids, GET).unwrap();
        for (s, b) in group.iter().zip(&bufs) {
            s.check(b.as_ref().unwrap_or_else(|| panic!("{} missing", s.id)));
        }
        reads += group.len() as u64;
    }
    let name = env(common::NAME_VAR);
    write_atomic(
        &child_file(&format!("{name}.reads")),
        format!("{random_reads} {}", reads - random_reads).as_bytes(),
    );
}

#[test]
fn stress_processes_put_four_times_the_memory_and_read_every_byte_back() {
    let root = spill_root();
    let d = Daemon::start_with(STRESS_MEMORY, &["--spill-dir", arg(root.path())]);
    let c = d.client();
    let capacity = c.capacity();
    let specs: Vec<Vec<Spec>> = (0..STRESS_PUTTERS).map(stress_specs).collect();
    let total: u64 = specs.iter().flatten().map(|s| s.size as u64).sum();
    assert!(
        total >= 4 * capacity,
        "{total} bytes put into a {capacity}-byte store"
    );
    let sizes = specs.iter().flatten().map(|s| s.size as u64);
    assert_eq!(sizes.clone().min(), Some(STRESS_MIN));
    assert_eq!(sizes.max(), Some(STRESS_MAX));

    // Memory in use never passes the capacity, sampled all along.
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let done = done.clone();
        let socket = d.socket().to_path_buf();
        std::thread::spawn(move || {
            let c = StoreClient::connect(socket).unwrap();
            let (mut samples, mut peak) = (0u64, 0u64);
            while !done.load(Ordering::Relaxed) {
                let t = totals(&c);
                assert!(
                    t.allocated <= t.capacity,
                    "allocated {} of {}: {t:?}",
                    t.allocated,
                    t.capacity
                );
                peak = peak.max(t.allocated);
                samples += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (samples, peak)
        })
    };

    let readers: Vec<_> = (0..STRESS_READERS)
        .map(|r| {
            d.child(
                "reader",
                &format!("reader{r}"),
                &[(READER_VAR, r.to_string())],
            )
        })
        .collect();
    let mut putters: Vec<_> = (0..STRESS_PUTTERS)
        .map(|p| {
            d.child(
                "putter",
                &format!("putter{p}"),
                &[(PUTTER_VAR, p.to_string())],
            )
        })
        .collect();
    let began = Instant::now();
    for p in &mut putters {
        p.wait_ready_within(STRESS_PHASE.saturating_sub(began.elapsed()));
    }
    raise_flag(&d.file("stop"));
    for r in readers {
        r.wait_success_within(STRESS_PHASE.saturating_sub(began.elapsed()).max(WAIT));
    }
    done.store(true, Ordering::Relaxed);
    let (samples, peak) = join_timeout("the memory monitor", monitor, WAIT);
    assert!(samples > 0 && peak > 0, "monitor saw nothing");
    // Reads checked while the putters put, and in the final pass.
    let (mut random_reads, mut final_reads) = (0, 0);
    for r in 0..STRESS_READERS {
        let text = fs::read_to_string(d.file(&format!("reader{r}.reads"))).unwrap();
        let n: Vec<u64> = text.split(' ').map(|n| n.parse().unwrap()).collect();
        random_reads += n[0];
        final_reads += n[1];
    }

    let t = totals(&c);
    assert!(t.spilled_total_objects > 0, "nothing spilled: {t:?}");
    assert!(t.restored_total_objects > 0, "nothing restored: {t:?}");
    assert!(
        random_reads > 0,
        "the readers read nothing while the putters put"
    );
    assert_eq!(t.failed_spills, 0, "{t:?}");
    assert!(t.spill_stopped.is_empty(), "{t:?}");
    eprintln!(
        "stress: {} MiB put, {random_reads} random reads while putting and \
         {final_reads} at the end checked, peak {} MiB of {} MiB, \
         {} objects ({} MiB) spilled, {} ({} MiB) restored",
        total / MIB,
        peak / MIB,
        capacity / MIB,
        t.spilled_total_objects,
        t.spilled_total_bytes / MIB,
        t.restored_total_objects,
        t.restored_total_bytes / MIB
    );

    // Exactly the live objects are left, every one readable.
    let live: Vec<Spec> = specs
        .iter()
        .flat_map(|v| v.iter().enumerate())
        .filter(|(i, _)| !temporary(*i))
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(
        final_reads,
        live.len() as u64,
        "every live object was checked"
    );
    let listed = c.list().unwrap();
    let live_ids: HashSet<&[u8]> = live.iter().map(|s| &s.id.as_bytes()[..]).collect();
    let listed_ids: HashSet<&[u8]> = listed.iter().map(|o| o.id.as_ref()).collect();
    assert_eq!(
        listed_ids, live_ids,
        "the store holds exactly the live objects"
    );
    for o in &listed {
        assert!(o.error.is_empty(), "{}", o.error);
        assert!(o.in_memory || o.on_disk, "an object is nowhere: {o:?}");
    }

    // The spill files on disk are what the daemon counts, and they track
    // live data: each file is more than half alive once compaction has run
    // (records may carry headers and padding: allow 8 KiB per record).
    let session = session_dir(&c);
    assert!(session.starts_with(root.path()), "{}", session.display());
    let mut last = String::new();
    wait_until("spill files to add up and track live data", WAIT, || {
        let t = totals(&c);
        let on_disk: Vec<ObjectInfo> = c
            .list()
            .unwrap()
            .into_iter()
            .filter(|o| o.on_disk)
            .collect();
        let live_bytes: u64 = on_disk.iter().map(|o| o.data_size + o.metadata_size).sum();
        let files = spill_files(&session);
        let file_bytes: u64 = files.iter().map(|f| f.1).sum();
        last = format!(
            "{} files, {file_bytes} bytes on disk; daemon says {} files, {} bytes; \
             {} objects with {live_bytes} bytes on disk, {} bytes only on disk",
            files.len(),
            t.spill_files,
            t.spill_disk_bytes,
            on_disk.len(),
            t.spilled_bytes
        );
        file_bytes == t.spill_disk_bytes
            && files.len() as u64 == t.spill_files
            && t.spill_disk_bytes >= live_bytes
            && live_bytes >= t.spilled_bytes
            && t.spill_disk_bytes < 2 * (live_bytes + 8 * KIB * on_disk.len() as u64)
    });
    eprintln!("stress: at the end {last}");
    assert!(
        t.spilled_bytes > 0,
        "some objects are only on disk at the end: {t:?}"
    );

    // Delete everything: all disk space comes back, every file goes.
    let ids: Vec<ObjectId> = live.iter().map(|s| s.id).collect();
    let deleted = c.delete_many(&ids).unwrap();
    assert!(deleted.iter().all(|&d| d), "every live object existed");
    wait_until("every spill file to be removed", WAIT, || {
        let t = totals(&c);
        t.spill_disk_bytes == 0
            && t.spill_files == 0
            && t.objects == 0
            && t.allocated == 0
            && spill_files(&session).is_empty()
    });
    raise_flag(&d.file("release"));
    for p in putters {
        p.wait_success();
    }
    d.stop();
    assert!(
        sessions(root.path()).is_empty(),
        "a clean stop leaves nothing"
    );
}

// ---------------------------------------------------------------------------
// 2. Corruption

#[test]
fn a_corrupt_or_truncated_spill_file_fails_only_its_object() {
    let root = spill_root();
    // Threshold 0: every primary copy is spilled as soon as it is put, so
    // each object put and waited for alone gets a spill file of its own.
    let d = Daemon::start_with(
        "32MiB",
        &["--spill-dir", arg(root.path()), "--spill-threshold", "0"],
    );
    let c = d.client();
    let session = session_dir(&c);
    let flipped = Spec::new(4 * MIB as usize, 1);
    let truncated = Spec::new(4 * MIB as usize, 2);
    let big = Spec::new(4 * MIB as usize, 3);
    for s in [&flipped, &truncated, &big] {
        put_spec(&c, s).unwrap();
        wait_disk_only(&c, &[s.id]);
    }
    // Small ones, batched into files of their own.
    let small: Vec<Spec> = (0..20)
        .map(|i| Spec::new(3000 + i * 100, 10 + i as u64))
        .collect();
    for s in &small {
        put_spec(&c, s).unwrap();
    }
    let small_ids: Vec<ObjectId> = small.iter().map(|s| s.id).collect();
    wait_disk_only(&c, &small_ids);

    let file_of = |id: ObjectId| PathBuf::from(info(&c, id).unwrap().spill_file);
    let (flipped_file, truncated_file) = (file_of(flipped.id), file_of(truncated.id));
    for f in [&flipped_file, &truncated_file] {
        assert!(
            f.starts_with(&session),
            "{} outside {}",
            f.display(),
            session.display()
        );
        let sharing: Vec<ObjectInfo> = c
            .list()
            .unwrap()
            .into_iter()
            .filter(|o| Path::new(&o.spill_file) == f)
            .collect();
        assert_eq!(
            sharing.len(),
            1,
            "{} holds one object: {sharing:?}",
            f.display()
        );
    }
    for s in small.iter().chain([&big]) {
        let f = file_of(s.id);
        assert!(f != flipped_file && f != truncated_file, "{}", f.display());
    }

    flip_middle(&flipped_file, 16);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&truncated_file)
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    drop(f);

    for (s, file) in [(&flipped, &flipped_file), (&truncated, &truncated_file)] {
        // Twice: the second get gets the error the first one recorded.
        for _ in 0..2 {
            match c.get_one(s.id, GET) {
                Err(Error::Unreadable(msg)) => {
                    assert!(msg.contains(&s.id.to_hex()), "names the object: {msg}");
                    assert!(msg.contains(arg(file)), "names the file: {msg}");
                }
                Err(e) => panic!("get of the damaged {}: expected Unreadable, got {e}", s.id),
                Ok(_) => panic!("get of the damaged {} returned bytes", s.id),
            }
        }
        let o = info(&c, s.id).unwrap();
        assert!(!o.error.is_empty() && !o.in_memory, "{o:?}");
        assert!(
            c.contains(s.id).unwrap(),
            "a damaged object still exists until deleted"
        );
    }
    // A batch with a damaged object fails as a whole, naming it.
    match c.get(&[big.id, flipped.id], GET) {
        Err(Error::Unreadable(msg)) => assert!(msg.contains(&flipped.id.to_hex()), "{msg}"),
        other => panic!(
            "a batch with a damaged object: {:?}",
            other.map(|v| v.len())
        ),
    }

    // Everything else comes back intact, one at a time and in one call.
    check_spec(&c, &big);
    for s in &small {
        check_spec(&c, s);
    }
    let bufs = c.get(&small_ids, GET).unwrap();
    for (s, b) in small.iter().zip(&bufs) {
        s.check(b.as_ref().unwrap());
    }
    drop(bufs);
    let mut d = d;
    d.assert_alive();
    assert!(
        d.log().contains(&flipped.id.to_hex()),
        "the daemon logs the failed restore"
    );

    // Deleting a damaged object works and takes its file with it.
    assert!(
        c.delete_many(&[flipped.id, truncated.id])
            .unwrap()
            .iter()
            .all(|&x| x)
    );
    assert!(!c.contains(flipped.id).unwrap());
    wait_until("the damaged files to be removed", WAIT, || {
        !flipped_file.exists() && !truncated_file.exists()
    });
    let t = totals(&c);
    assert_eq!(t.objects, 1 + small.len() as u64, "{t:?}");
    // The id is free again.
    let again = Spec {
        seed: 99,
        ..flipped
    };
    put_spec(&c, &again).unwrap();
    wait_disk_only(&c, &[again.id]);
    check_spec(&c, &again);
    check_spec(&c, &big);
    d.stop();
}

// ---------------------------------------------------------------------------
// 3. Full disk

/// A 32 MiB store whose spill files may take at most 16 MiB: the full-disk hook.
fn store_with_16mib_spill_quota(root: &TempDir) -> Daemon {
    Daemon::start_with(
        "32MiB",
        &[
            "--spill-dir",
            arg(root.path()),
            "--spill-max-bytes",
            "16MiB",
            "--create-timeout-ms",
            "200",
        ],
    )
}

#[test]
fn a_full_spill_disk_fails_creates_clearly_and_loses_nothing() {
    let root = spill_root();
    let d = store_with_16mib_spill_quota(&root);
    let c = d.client();
    let capacity = c.capacity();
    let session = session_dir(&c);
    let size = MIB as usize;
    let mut put: Vec<Spec> = Vec::new();
    let msg = loop {
        let s = Spec::new(size, put.len() as u64);
        match put_spec(&c, &s) {
            Ok(()) => put.push(s),
            Err(Error::ObjectStoreFull(msg)) => break msg,
            Err(e) => panic!(
                "put #{}: expected success or ObjectStoreFull, got {e}",
                put.len()
            ),
        }
        // Memory plus quota hold under 50 of these.
        assert!(
            put.len() < 100,
            "no ObjectStoreFull after {} puts",
            put.len()
        );
    };
    for part in ["object store full", "spilling stopped"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(
        msg.contains("quota") || msg.contains("No space left"),
        "the message says the spill disk is full: {msg}"
    );
    let put_bytes = (put.len() * size) as u64;
    assert!(
        put_bytes > capacity,
        "spilling held more than memory: {put_bytes} bytes"
    );
    let t = totals(&c);
    assert!(t.spilled_objects > 0, "{t:?}");
    wait_until("spill files to match the daemon's count", WAIT, || {
        let on_disk: u64 = spill_files(&session).iter().map(|f| f.1).sum();
        on_disk == totals(&c).spill_disk_bytes
    });

    // Nothing is lost: what is in memory reads back now...
    let by_id = |o: &ObjectInfo| {
        put.iter()
            .find(|s| &s.id.as_bytes()[..] == o.id.as_ref())
            .copied()
    };
    let listed = c.list().unwrap();
    assert_eq!(listed.len(), put.len(), "every successful put is there");
    let spilled: Vec<ObjectInfo> = listed.iter().filter(|o| disk_only(o)).cloned().collect();
    for o in listed.iter().filter(|o| o.in_memory) {
        check_spec(&c, &by_id(o).unwrap());
    }
    // ...while a spilled one cannot come back (no memory, no disk to make
    // room): a clear error, not a hang and not wrong bytes.
    let stuck = by_id(&spilled[0]).unwrap();
    match c.get_one(stuck.id, GET) {
        Err(Error::Unreadable(msg)) => {
            assert!(msg.contains(&stuck.id.to_hex()), "{msg}");
            assert!(msg.contains("no room to restore"), "{msg}");
        }
        Err(e) => panic!("restore with memory and spill disk full: expected Unreadable, got {e}"),
        Ok(_) => panic!("restored with memory and spill disk full"),
    }

    // Delete the objects of all spill files but the last: their files go,
    // the quota has room, and spilling resumes by itself.
    let mut files: BTreeMap<String, Vec<ObjectId>> = BTreeMap::new();
    for o in &spilled {
        files
            .entry(o.spill_file.clone())
            .or_default()
            .push(by_id(o).unwrap().id);
    }
    assert!(files.len() >= 2, "spilled into {} files", files.len());
    let doomed: Vec<ObjectId> = files
        .values()
        .take(files.len() - 1)
        .flatten()
        .copied()
        .collect();
    let still_spilled = spilled.len() - doomed.len();
    assert!(c.delete_many(&doomed).unwrap().iter().all(|&x| x));
    put.retain(|s| !doomed.contains(&s.id));
    wait_until("spilling to resume", WAIT, || {
        totals(&c).spill_stopped.is_empty()
    });

    // Every remaining object reads back, restores included.
    for s in &put {
        check_spec(&c, s);
    }
    let t = totals(&c);
    assert!(
        t.restored_total_objects >= still_spilled as u64,
        "{still_spilled} restored: {t:?}"
    );

    // New puts succeed again (retrying while spilling is still stopped:
    // it tries again about a second after a failure).
    for i in 0..4 {
        let s = Spec::new(size, 1000 + i);
        let deadline = Instant::now() + WAIT;
        loop {
            match put_spec(&c, &s) {
                Ok(()) => break,
                Err(Error::ObjectStoreFull(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("put after freeing spill space: {e}"),
            }
        }
        put.push(s);
    }
    for s in &put {
        check_spec(&c, s);
    }
    d.stop();
}

#[test]
fn the_spill_quota_is_never_exceeded() {
    let root = spill_root();
    let quota = 16 * MIB;
    let d = store_with_16mib_spill_quota(&root);
    let c = d.client();
    let session = session_dir(&c);
    let mut holders = Vec::new();
    // Rounds of four clients putting at once until the store is full (both
    // spill workers busy), then the spilled objects deleted to make room.
    for round in 0..4u64 {
        let putters: Vec<_> = (0..4u64)
            .map(|p| {
                let socket = d.socket().to_path_buf();
                std::thread::spawn(move || {
                    let c = StoreClient::connect(socket).unwrap();
                    for i in 0..100 {
                        match put_spec(&c, &Spec::new(MIB as usize, round << 16 | p << 8 | i)) {
                            Ok(()) => {}
                            Err(Error::ObjectStoreFull(_)) => return c,
                            Err(e) => panic!("put: {e}"),
                        }
                    }
                    panic!("100 puts and no ObjectStoreFull");
                })
            })
            .collect();
        let mut peak = 0;
        while !putters.iter().all(|p| p.is_finished()) {
            let t = totals(&c);
            let files: u64 = spill_files(&session).iter().map(|f| f.1).sum();
            peak = peak.max(t.spill_disk_bytes).max(files);
            std::thread::sleep(Duration::from_millis(2));
        }
        for p in putters {
            holders.push(join_timeout("a putter", p, WAIT));
        }
        let t = totals(&c);
        assert!(
            peak <= quota && t.spill_disk_bytes <= quota,
            "round {round}: a quota of {quota} bytes, but the daemon counts {} bytes \
             in {} files, and up to {peak} bytes of spill files were seen",
            t.spill_disk_bytes,
            t.spill_files
        );
        let spilled: Vec<ObjectId> = c
            .list()
            .unwrap()
            .iter()
            .filter(|o| disk_only(o))
            .map(|o| ObjectId::from_slice(&o.id).unwrap())
            .collect();
        c.delete_many(&spilled).unwrap();
        wait_until("spilling to resume", WAIT, || {
            totals(&c).spill_stopped.is_empty()
        });
    }
    drop(holders);
    d.stop();
}

// ---------------------------------------------------------------------------
// 4. SIGKILL mid-spill

#[test]
fn a_daemon_killed_mid_spill_leaves_files_the_next_one_removes() {
    let root = spill_root();
    let spill_args = ["--spill-dir", arg(root.path())];
    let mut first = Daemon::start_with("32MiB", &spill_args);
    let c = first.client();
    let old_session = session_dir(&c);

    // Put 2 MiB primary copies without pause until the daemon dies: it
    // spills all the while.
    let socket = first.socket().to_path_buf();
    let putter = std::thread::spawn(move || {
        let c = StoreClient::connect(socket).unwrap();
        for i in 0..1000u64 {
            if let Err(e) = put_spec(&c, &Spec::new(2 * MIB as usize, i)) {
                return (i, e);
            }
        }
        panic!("1000 puts and the daemon is still alive");
    });
    wait_until("the daemon to spill", WAIT, || {
        totals(&c).spilled_total_objects >= 4 && !putter.is_finished()
    });
    assert!(
        !spill_files(&old_session).is_empty(),
        "spill files in {}",
        old_session.display()
    );
    first.signal(Signal::SIGKILL);
    assert_eq!(first.wait_exit().signal(), Some(9));
    let (puts, err) = join_timeout("the putter", putter, WAIT);
    assert!(
        matches!(err, Error::Disconnected(_)),
        "after {puts} puts: {err}"
    );
    assert!(old_session.exists(), "a killed daemon cannot clean up");
    let left = spill_files(&old_session);
    assert!(!left.is_empty());

    // The next daemon on the same directory removes them and says so.
    let second = Daemon::start_with("32MiB", &spill_args);
    let c2 = second.client();
    let new_session = session_dir(&c2);
    assert!(!old_session.exists(), "the dead session is removed");
    assert_eq!(sessions(root.path()), vec![new_session.clone()]);
    let log = plain(&second.log());
    assert!(
        log.contains("removed spill files left by stores that died") && log.contains("sessions=1"),
        "the log says what was removed:\n{log}"
    );
    // And works, spilling included.
    let specs: Vec<Spec> = (0..20)
        .map(|i| Spec::new(2 * MIB as usize, 100 + i))
        .collect();
    for s in &specs {
        put_spec(&c2, s).unwrap();
    }
    for s in &specs {
        check_spec(&c2, s);
    }
    assert!(totals(&c2).spilled_total_objects > 0);

    // A third daemon on the same directory leaves the live session alone.
    let third = Daemon::start_with("16MiB", &spill_args);
    let third_session = session_dir(&third.client());
    assert!(
        !third.log().contains("removed spill files"),
        "{}",
        third.log()
    );
    assert!(new_session.exists());
    let mut both = vec![new_session.clone(), third_session.clone()];
    both.sort();
    assert_eq!(sessions(root.path()), both);
    for s in &specs {
        check_spec(&c2, s);
    }
    // Clean stops leave nothing.
    third.stop();
    drop(c2);
    second.stop();
    assert!(
        sessions(root.path()).is_empty(),
        "{:?}",
        sessions(root.path())
    );
}

// ---------------------------------------------------------------------------
// 5. Threshold

#[test]
fn spilling_starts_at_the_threshold_without_memory_running_out() {
    let root = spill_root();
    let d = Daemon::start_with(
        "64MiB",
        &["--spill-dir", arg(root.path()), "--spill-threshold", "0.5"],
    );
    let c = d.client();
    let capacity = c.capacity();
    let limit = capacity / 2;
    // 11 x 4 MiB: about 70% of the store, so no create ever needs room.
    let specs: Vec<Spec> = (0..11).map(|i| Spec::new(4 * MIB as usize, i)).collect();
    for s in &specs {
        put_spec(&c, s).unwrap();
    }
    let held = |t: &arca_client::StoreTotals| t.allocated - t.evictable;
    let mut last = None;
    wait_until(
        "spilling to bring held memory under the threshold",
        WAIT,
        || {
            let t = totals(&c);
            let ok = t.spilled_total_objects > 0 && held(&t) <= limit;
            last = Some(t);
            ok
        },
    );
    let t = last.unwrap();
    assert_eq!(t.failed_spills, 0, "{t:?}");
    assert_eq!(t.evicted_objects, 0, "{t:?}");
    // Least recently used first: what left memory is the oldest objects.
    let listed = c.list().unwrap();
    let out: Vec<bool> = specs
        .iter()
        .map(|s| {
            let o = listed
                .iter()
                .find(|o| o.id.as_ref() == s.id.as_bytes())
                .unwrap();
            !o.in_memory
        })
        .collect();
    let n = out.iter().filter(|&&x| x).count();
    assert!(
        n > 0 && out[..n].iter().all(|&x| x),
        "the oldest spill first: {out:?}"
    );
    eprintln!(
        "threshold: {n} of {} objects spilled, {} MiB held of {} MiB limit",
        specs.len(),
        held(&t) / MIB,
        limit / MIB
    );
    for s in &specs {
        check_spec(&c, s);
    }
    d.stop();
}

// ---------------------------------------------------------------------------
// Restoring several objects in one get

/// A 64 MiB store that spills only when a create needs room (threshold 1),
/// so its memory stays full of primary copies, and a few of its spilled
/// objects that together need just more memory than is free: restoring
/// them all means spilling some primary copies first.
fn store_short_of_memory_for_restores(root: &TempDir) -> (Daemon, StoreClient, Vec<Spec>) {
    let d = Daemon::start_with(
        "64MiB",
        &["--spill-dir", arg(root.path()), "--spill-threshold", "1"],
    );
    let c = d.client();
    let capacity = c.capacity();
    let specs: Vec<Spec> = (0..12).map(|i| Spec::new(8 * MIB as usize, i)).collect();
    for s in &specs {
        put_spec(&c, s).unwrap();
    }
    let listed = c.list().unwrap();
    let t = totals(&c);
    let free = capacity - t.allocated;
    let mut wanted = 0;
    let spilled: Vec<Spec> = specs
        .iter()
        .filter(|s| {
            listed
                .iter()
                .any(|o| o.id.as_ref() == s.id.as_bytes() && disk_only(o))
        })
        .take_while(|s| {
            let more = wanted <= free;
            if more {
                wanted += s.size as u64;
            }
            more
        })
        .copied()
        .collect();
    assert!(
        wanted > free && wanted <= capacity / 2 && t.evictable == 0,
        "{wanted} bytes to restore, {free} free: {t:?}"
    );
    (d, c, spilled)
}

/// Runs `get(ids, timeout)` on its own connection and thread, and waits at
/// most [`WAIT`] for it to return, reporting the restore counters if not.
fn get_in_thread(
    d: &Daemon,
    ids: &[ObjectId],
    timeout: Duration,
) -> arca_client::Result<Vec<Option<arca_client::ObjectBuffer>>> {
    let socket = d.socket().to_path_buf();
    let ids = ids.to_vec();
    let handle = std::thread::spawn(move || {
        let c = StoreClient::connect(socket).unwrap();
        c.get(&ids, Some(timeout))
    });
    let c = d.client();
    let before = totals(&c).restored_total_objects;
    let deadline = Instant::now() + WAIT;
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            let t = totals(&c);
            panic!(
                "a get with a {timeout:?} timeout has not returned after {WAIT:?}; \
                 the daemon restored {} objects meanwhile: {t:?}",
                t.restored_total_objects - before
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.join().unwrap()
}

#[test]
fn one_get_restores_several_spilled_objects_that_do_not_fit_in_free_memory_together() {
    let root = spill_root();
    let (d, _c, spilled) = store_short_of_memory_for_restores(&root);
    let ids: Vec<ObjectId> = spilled.iter().map(|s| s.id).collect();
    let bufs = get_in_thread(&d, &ids, Duration::from_secs(15)).unwrap();
    for (s, b) in spilled.iter().zip(&bufs) {
        s.check(
            b.as_ref()
                .unwrap_or_else(|| panic!("{} not restored within 15 s", s.id)),
        );
    }
    drop(bufs);
    d.stop();
}

#[test]
fn a_get_returns_by_its_timeout_even_while_it_keeps_restoring() {
    let root = spill_root();
    let (d, _c, spilled) = store_short_of_memory_for_restores(&root);
    let ids: Vec<ObjectId> = spilled.iter().map(|s| s.id).collect();
    // Whatever it returns (all objects, or None for some), it returns.
    let _ = get_in_thread(&d, &ids, Duration::from_secs(1)).unwrap();
    d.stop();
}

// ---------------------------------------------------------------------------
// 6. `arca memory`

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A store with three objects only on disk and a cache entry in memory.
fn store_with_spilled_objects(root: &TempDir) -> (Daemon, StoreClient, Vec<Spec>, ObjectId) {
    let d = Daemon::start_with(
        "32MiB",
        &["--spill-dir", arg(root.path()), "--spill-threshold", "0"],
    );
    let c = d.client();
    let specs: Vec<Spec> = [2 * MIB as usize, 100_000, 5000]
        .into_iter()
        .enumerate()
        .map(|(i, n)| Spec::new(n, i as u64))
        .collect();
    for s in &specs {
        put_spec(&c, s).unwrap();
    }
    let ids: Vec<ObjectId> = specs.iter().map(|s| s.id).collect();
    wait_disk_only(&c, &ids);
    // Not a primary copy: never spilled.
    let cached = c
        .put_with(
            &common::pattern(9, 300_000),
            &PutOptions {
                primary: false,
                ..PutOptions::default()
            },
        )
        .unwrap();
    (d, c, specs, cached)
}

#[test]
fn arca_memory_shows_spilled_objects_and_spill_totals() {
    let root = spill_root();
    let (d, c, specs, cached) = store_with_spilled_objects(&root);
    let t = totals(&c);
    let sock = arg(d.socket());

    let out = run_arca(&["memory", "--socket", sock, "--limit", "0"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("spill {}", t.spill_dir)),
        "spill section:\n{text}"
    );
    assert!(
        text.contains(&format!("on disk only: {} objects", specs.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!("files: {}", t.spill_files)),
        "{text}"
    );
    let row = |id: ObjectId| {
        text.lines()
            .find(|l| l.contains(&id.to_hex()))
            .unwrap_or_else(|| panic!("{id} not listed:\n{text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    for s in &specs {
        assert!(row(s.id).iter().any(|w| w == "disk"), "{:?}", row(s.id));
    }
    assert!(
        row(cached).iter().any(|w| w == "memory"),
        "{:?}",
        row(cached)
    );

    let out = run_arca(&["memory", "--socket", sock, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{}", stdout(&out)));
    let spill = &v["totals"]["spill"];
    assert_eq!(spill["dir"], t.spill_dir, "{v}");
    assert_eq!(spill["files"], t.spill_files, "{v}");
    assert!(t.spill_files >= 1, "{t:?}");
    assert_eq!(spill["disk_bytes"], t.spill_disk_bytes, "{v}");
    let data: u64 = specs
        .iter()
        .map(|s| (s.size + s.metadata().len()) as u64)
        .sum();
    assert!(t.spill_disk_bytes >= data, "{t:?}");
    assert_eq!(spill["objects_on_disk_only"], specs.len(), "{v}");
    assert_eq!(spill["bytes_on_disk_only"], data, "{v}");
    assert!(
        spill["spilled_objects"].as_u64().unwrap() >= specs.len() as u64,
        "{v}"
    );
    assert!(spill["stopped"].is_null(), "{v}");
    let objects = v["objects"].as_array().unwrap();
    let obj = |id: ObjectId| {
        objects
            .iter()
            .find(|o| o["id"] == id.to_hex())
            .unwrap_or_else(|| panic!("{id} missing from {v}"))
    };
    for s in &specs {
        let o = obj(s.id);
        assert_eq!(o["where"], "disk", "{o}");
        let file = o["spill_file"].as_str().unwrap();
        assert!(
            file.starts_with(&t.spill_dir) && Path::new(file).exists(),
            "{o}"
        );
    }
    assert_eq!(obj(cached)["where"], "memory");
    assert!(obj(cached)["spill_file"].is_null());

    // A restored object is in both places.
    check_spec(&c, &specs[0]);
    let out = run_arca(&["memory", "--socket", sock, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == specs[0].id.to_hex())
        .unwrap()
        .clone();
    assert_eq!(o["where"], "memory+disk", "{o}");
    assert!(
        v["totals"]["spill"]["restored_objects"].as_u64().unwrap() >= 1,
        "{v}"
    );
    d.stop();
}

#[test]
fn arca_memory_object_table_has_a_where_heading() {
    let root = spill_root();
    let (d, _c, specs, _cached) = store_with_spilled_objects(&root);
    let out = run_arca(&["memory", "--socket", arg(d.socket())]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let heading = lines
        .iter()
        .position(|l| l.trim_start().starts_with("ID "))
        .unwrap_or_else(|| panic!("no object heading:\n{text}"));
    let head = lines[heading];
    assert!(head.contains("WHERE"), "no WHERE heading:\n{text}");
    // The heading starts where the value does.
    let row = lines
        .iter()
        .find(|l| l.contains(&specs[0].id.to_hex()))
        .unwrap();
    let at = row.find(" disk").unwrap() + 1;
    assert_eq!(head.find("WHERE"), Some(at), "misaligned:\n{head}\n{row}");
    d.stop();
}
