//! Ray's core walkthrough in Arca: retrieve 8 items that take 0 to 0.7 s
//! each, first one after another, then as tasks in parallel; share the
//! database with `put`; take results as they come with `wait`; chain a
//! follow-up task on an ObjectRef; count calls with an actor.

use std::time::{Duration, Instant};

use arca::ObjectRef;

const DATABASE: [&str; 8] = [
    "Learning",
    "Ray",
    "Flexible",
    "Distributed",
    "Python",
    "for",
    "Machine",
    "Learning",
];

fn retrieve(item: usize, db: &[String]) -> (usize, String) {
    std::thread::sleep(Duration::from_millis(item as u64 * 100));
    (item, db[item].clone())
}

#[arca::remote]
fn retrieve_task(item: usize, db: Vec<String>) -> (usize, String) {
    retrieve(item, &db)
}

#[arca::remote]
fn follow_up(
    first: (usize, String),
    item: usize,
    db: Vec<String>,
) -> ((usize, String), (usize, String)) {
    (first, retrieve(item, &db))
}

struct DataTracker {
    count: u32,
}

#[arca::actor]
impl DataTracker {
    fn new() -> Self {
        DataTracker { count: 0 }
    }

    fn increment(&mut self) {
        self.count += 1;
    }

    fn counts(&self) -> u32 {
        self.count
    }
}

#[arca::remote]
fn retrieve_tracked(item: usize, tracker: DataTrackerHandle, db: Vec<String>) -> (usize, String) {
    tracker.increment();
    retrieve(item, &db)
}

fn main() -> anyhow::Result<()> {
    arca::init()?; // in a worker process, this runs tasks and never returns
    let db: Vec<String> = DATABASE.iter().map(|s| s.to_string()).collect();

    let t = Instant::now();
    let data: Vec<_> = (0..8).map(|i| retrieve(i, &db)).collect();
    println!("Serial: {:.2} s for {data:?}", t.elapsed().as_secs_f64());

    // The database goes to the object store once; every task gets a ref.
    let db_ref: ObjectRef<Vec<String>> = arca::put(&db)?;
    let t = Instant::now();
    let refs: Vec<_> = (0..8).map(|i| retrieve_task::remote(i, &db_ref)).collect();
    let data = arca::get_many(&refs)?;
    println!("Tasks: {:.2} s for {data:?}", t.elapsed().as_secs_f64());

    // Take results as they finish, waiting at most 0.7 s per round.
    let t = Instant::now();
    let mut pending: Vec<_> = (0..8).map(|i| retrieve_task::remote(i, &db_ref)).collect();
    while !pending.is_empty() {
        // A round can time out with one ready, leaving one: never ask for
        // more than remain (as in Ray, that is an error).
        let n = pending.len().min(2);
        let (ready, rest) = arca::wait(&pending, n, Some(Duration::from_millis(700)))?;
        for (i, word) in arca::get_many(&ready)? {
            println!(
                "  ready after {:.2} s: {i} {word}",
                t.elapsed().as_secs_f64()
            );
        }
        pending = rest;
    }

    // A follow-up task that takes the first task's ObjectRef: it runs when
    // that result exists, and receives its value.
    let t = Instant::now();
    let firsts: Vec<_> = (0..4).map(|i| retrieve_task::remote(i, &db_ref)).collect();
    let follow: Vec<_> = firsts
        .iter()
        .enumerate()
        .map(|(i, r)| follow_up::remote(r, i + 4, &db_ref))
        .collect();
    for pair in arca::get_many(&follow)? {
        println!("  follow-up: {pair:?}");
    }
    println!("Follow-ups: {:.2} s", t.elapsed().as_secs_f64());

    // An actor counts the calls made from the tasks.
    let tracker = DataTracker::remote();
    let refs: Vec<_> = (0..8)
        .map(|i| retrieve_tracked::remote(i, tracker.clone(), &db_ref))
        .collect();
    arca::get_many(&refs)?;
    println!("Tracker counted {} calls", arca::get(&tracker.counts())?);
    arca::shutdown();
    Ok(())
}
