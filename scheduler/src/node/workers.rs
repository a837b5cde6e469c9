//! Worker processes: starting them, their connection, their death, and the
//! end of a job or of the node.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_proto::node as pb;
use arca_store::ObjectId;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Shared;
use super::objects::Hold;
use super::state::{
    ConnId, JobId, State, TaskState, Worker, WorkerCommand, WorkerId, WorkerState, error,
};
use crate::{ENV_NODE_SOCKET, ENV_WORKER_ID};
use arca_proto::consts::direct_socket;

use pb::ErrorKind as K;

/// Workers of a job that exit before connecting this many times in a row
/// fail the job's queued tasks instead of being started forever.
const MAX_STARTUP_FAILURES: u32 = 3;

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string());
                format!("was killed by {name}")
            }
            _ => format!("ended ({s})"),
        },
        Err(e) => format!("could not be waited for ({e})"),
    }
}

impl Shared {
    /// Frees a pool slot for `job` if the pool is full, by ending an idle
    /// worker of another job. True if a worker may be started.
    pub(crate) fn make_room(&self, st: &mut State, command: &WorkerCommand, cap: usize) -> bool {
        if st.pool_size() < cap {
            return true;
        }
        let victim = st
            .pools
            .iter_mut()
            .filter(|(c, _)| &***c != command)
            .find_map(|(_, p)| p.pop());
        match victim {
            Some(w) => {
                let e = error(
                    K::WorkerCrashed,
                    "",
                    "idle worker ended to make room".into(),
                );
                self.kill_worker(st, w, e);
                true
            }
            None => false,
        }
    }

    /// Starts a worker process for `job` (for `actor`, dedicated to it): the
    /// worker is known now, and its process is started once the lock is let
    /// go (`launch`), so that no fork happens under the lock.
    pub(crate) fn spawn_worker(
        &self,
        st: &mut State,
        job: JobId,
        actor: Option<ObjectId>,
    ) -> Option<WorkerId> {
        let command = Arc::clone(&st.jobs.get(&job).filter(|j| j.alive)?.command);
        let wid = st.next_worker;
        st.next_worker += 1;
        let mut cmd = Command::new(&command.argv[0]);
        cmd.args(&command.argv[1..])
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .env(ENV_WORKER_ID, wid.to_string())
            .env(ENV_NODE_SOCKET, self.config.node_socket())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !command.cwd.is_empty() {
            cmd.current_dir(&command.cwd);
        }
        let argv = command.argv.join(" ");
        st.workers.insert(
            wid,
            Worker {
                pid: 0,
                kill_on_start: false,
                job,
                command,
                conn: None,
                state: WorkerState::Starting,
                blocked: false,
                actor,
                killed: None,
                last_function: None,
                death_waiters: Vec::new(),
            },
        );
        let me = self.me.clone();
        st.after.push(Box::new(move || {
            if let Some(shared) = me.upgrade() {
                shared.launch(wid, job, cmd, argv);
            }
        }));
        Some(wid)
    }

    /// Starts worker `wid`'s process, with the lock let go, then records
    /// its pid (or its failure) under the lock.
    fn launch(&self, wid: WorkerId, job: JobId, mut cmd: Command, argv: String) {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start a worker process ({argv}): {e}");
                tracing::error!(job, "{msg}");
                let mut st = self.state.lock();
                self.startup_failed(&mut st, job, msg.clone());
                // Not started: its task goes back to the queue, its actor
                // is restarted or dead, as for a worker that died starting.
                if let Some(w) = st.workers.get_mut(&wid) {
                    w.killed
                        .get_or_insert(error(K::WorkerCrashed, "", msg.clone()));
                }
                self.worker_exited(&mut st, wid, msg);
                return;
            }
        };
        let pid = child.id();
        {
            let mut st = self.state.lock();
            match st.workers.get_mut(&wid) {
                Some(w) => {
                    w.pid = pid;
                    if w.kill_on_start {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                }
                // Gone already (the node is stopping): nothing waits for it.
                None => {
                    let _ = child.kill();
                }
            }
        }
        for (pipe, stderr) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                false,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                true,
            ),
        ] {
            if let Some(pipe) = pipe {
                self.forward_output(wid, pid, job, pipe, stderr);
            }
        }
        tracing::debug!(job, worker = wid, pid, "worker starting");
        let me = self.me.upgrade();
        let waiter = std::thread::Builder::new()
            .name(format!("arca-reap-{pid}"))
            .stack_size(64 << 10)
            .spawn(move || {
                let status = child.wait();
                if let Some(shared) = me {
                    let mut st = shared.state.lock();
                    shared.worker_exited(&mut st, wid, describe(status));
                }
            });
        if let Err(e) = waiter {
            tracing::error!("cannot start a thread to wait for worker {pid}: {e}");
        }
    }

    /// Sends what a worker writes to its driver's LOGS connection, line by
    /// line (lines that arrive together go in one message), or, without one
    /// (`log_to_driver=False`), to `workers.log` in the session directory,
    /// each line prefixed with the worker's task or actor and pid as Ray
    /// prints them.
    fn forward_output(
        &self,
        wid: WorkerId,
        pid: u32,
        job: JobId,
        pipe: Box<dyn Read + Send>,
        stderr: bool,
    ) {
        let me = self.me.clone();
        let log_path = self.config.session_dir.join("workers.log");
        let forward = move || {
            let mut reader = BufReader::with_capacity(64 << 10, pipe);
            let mut line = String::new();
            let mut label = String::from("worker");
            loop {
                let mut lines = Vec::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) if lines.is_empty() => return,
                        Ok(0) | Err(_) => break,
                        Ok(_) => lines.push(line.trim_end_matches(['\n', '\r']).to_string()),
                    }
                    if !reader.buffer().contains(&b'\n') || lines.len() >= 1000 {
                        break;
                    }
                }
                let Some(shared) = me.upgrade() else {
                    return;
                };
                let mut st = shared.state.lock();
                if let Some(l) = st.worker_label(wid) {
                    label = l;
                }
                let name = label.clone();
                let logs = st.jobs.get(&job).and_then(|j| j.logs);
                // A job forwarded here: its driver is on the owner's node.
                let origin = st
                    .remote_jobs
                    .iter()
                    .find(|(_, j)| **j == job)
                    .map(|((node, their_job), _)| (*node, *their_job));
                match (logs, origin) {
                    (Some(conn), _) => st.send(
                        conn,
                        0,
                        pb::reply::Kind::Log(pb::Log {
                            pid,
                            name,
                            stderr,
                            lines,
                            ip: String::new(),
                        }),
                    ),
                    (None, Some((node, their_job))) => {
                        let ip = shared
                            .cluster()
                            .map(|c| c.config.node_ip.clone())
                            .unwrap_or_default();
                        let log = pb::Log {
                            pid,
                            name,
                            stderr,
                            lines,
                            ip,
                        };
                        shared.send_peer(
                            node,
                            arca_proto::cluster::peer_message::Kind::Log(
                                arca_proto::cluster::WorkerLog {
                                    job_id: their_job,
                                    log: Some(log),
                                },
                            ),
                        );
                    }
                    (None, None) => {
                        drop(st);
                        let stream = if stderr { "err" } else { "out" };
                        let text: String = lines
                            .iter()
                            .map(|l| format!("({name} pid={pid} {stream}) {l}\n"))
                            .collect();
                        let file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&log_path);
                        if let Ok(mut f) = file {
                            let _ = f.write_all(text.as_bytes());
                        }
                    }
                }
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name(format!("arca-out-{pid}"))
            .stack_size(128 << 10)
            .spawn(forward)
        {
            tracing::error!("cannot start a thread to read worker {pid}'s output: {e}");
        }
    }

    fn startup_failed(&self, st: &mut State, job: JobId, why: String) {
        let Some(j) = st.jobs.get_mut(&job) else {
            return;
        };
        j.startup_failures += 1;
        if j.startup_failures < MAX_STARTUP_FAILURES {
            return;
        }
        j.startup_failures = 0;
        let e = error(
            K::WorkerCrashed,
            "",
            format!(
                "{MAX_STARTUP_FAILURES} worker processes in a row ended before connecting (last: {why}); \
                 the program must call arca::init() first thing in main(), and in worker mode it runs tasks there"
            ),
        );
        let queued: Vec<_> = st
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.job == job
                    && t.state != TaskState::Waiting
                    && !matches!(t.state, TaskState::Running(_))
            })
            .map(|(id, _)| *id)
            .collect();
        for t in queued {
            let mut e = e.clone();
            e.function = st
                .tasks
                .get(&t)
                .map_or_else(String::new, |t| t.function.to_string());
            self.fail_task(st, t, e);
        }
    }

    /// A worker said hello: it runs its actor's constructor or joins the pool.
    pub(crate) fn worker_connected(&self, st: &mut State, wid: WorkerId, conn: ConnId) {
        let Some(w) = st.workers.get_mut(&wid) else {
            return;
        };
        w.conn = Some(conn);
        let (job, actor) = (w.job, w.actor);
        if let Some(j) = st.jobs.get_mut(&job) {
            j.startup_failures = 0;
        }
        match actor {
            Some(a) => self.actor_worker_ready(st, &a, wid),
            None => {
                if let Some(w) = st.workers.get_mut(&wid) {
                    w.state = WorkerState::Idle;
                }
                st.pool_push(wid);
                self.schedule(st);
            }
        }
    }

    /// Kills a worker on purpose; `why` becomes its task's error.
    pub(crate) fn kill_worker(&self, st: &mut State, wid: WorkerId, why: pb::ErrorInfo) {
        let Some(w) = st.workers.get_mut(&wid) else {
            return;
        };
        w.killed.get_or_insert(why);
        st.pool_remove(wid);
        st.kill_process(wid);
    }

    /// A worker process ended: its task is retried or failed, its actor
    /// restarted or dead.
    pub(crate) fn worker_exited(&self, st: &mut State, wid: WorkerId, how: String) {
        st.pool_remove(wid);
        let Some(w) = st.workers.remove(&wid) else {
            return;
        };
        let how = format!("worker process {} {how}", w.pid);
        if w.state == WorkerState::Starting && w.killed.is_none() && w.conn.is_none() {
            tracing::warn!(job = w.job, "{how} before connecting");
            self.startup_failed(st, w.job, how.clone());
        } else if w.killed.is_none() {
            tracing::warn!(job = w.job, "{how}");
        }
        if let WorkerState::Busy(tid) = w.state
            && let Some(t) = st.tasks.get_mut(&tid)
            && w.actor.is_none()
        {
            if !w.blocked {
                let r = t.resources.clone();
                st.available.add(&r);
            }
            let f = Arc::clone(&t.function);
            let job_alive = st.jobs.get(&t.job).is_some_and(|j| j.alive);
            if t.cancelled {
                self.fail_task(
                    st,
                    tid,
                    error(
                        K::TaskCancelled,
                        &f,
                        format!("{f} was cancelled while it ran"),
                    ),
                );
            } else if let Some(e) = w.killed.clone() {
                let mut e = e;
                e.function = f.to_string();
                self.fail_task(st, tid, e);
            } else if t.retries_left > 0 && job_alive {
                t.retries_left -= 1;
                t.state = TaskState::Ready;
                tracing::info!(task = %f, retries_left = t.retries_left, "{how}; retrying its task");
                let r = t.resources.clone();
                st.queue_ready(tid, r, true);
            } else {
                let tries = t.attempt;
                self.fail_task(
                    st,
                    tid,
                    error(
                        K::WorkerCrashed,
                        &f,
                        format!("{how} while running {f} (attempt {tries}, no retries left; raise max_retries to retry more)"),
                    ),
                );
            }
        }
        if let Some(a) = w.actor {
            let socket = self.config.session_dir.join(direct_socket(wid));
            st.after.push(Box::new(move || {
                let _ = std::fs::remove_file(socket);
            }));
            let why = w
                .killed
                .clone()
                .unwrap_or_else(|| error(K::ActorDied, "", how));
            self.actor_worker_died(st, &a, why);
        }
        for (conn, seq) in w.death_waiters {
            let reply = pb::DirectActorReply::default();
            st.send(conn, seq, pb::reply::Kind::DirectActor(reply));
        }
        self.schedule(st);
    }

    /// A connection closed: its references go; a driver's job ends with it.
    pub(crate) fn disconnect(&self, st: &mut State, conn: ConnId) {
        self.fail_promises(st, conn);
        let Some(c) = st.conns.remove(&conn) else {
            return;
        };
        if c.role == pb::Role::Logs
            && let Some(j) = c.job.and_then(|j| st.jobs.get_mut(&j))
            && j.logs == Some(conn)
        {
            j.logs = None;
        }
        for w in c.waiters {
            self.drop_waiter(st, w);
        }
        for id in &c.holds {
            self.release(st, id, Hold::Conn);
        }
        // A worker that hangs up is ended; its exit (not this) decides
        // whether its task is retried.
        if let Some(w) = c.worker {
            st.kill_process(w);
        }
        if c.role == pb::Role::Driver {
            self.end_job(st, conn);
        }
    }

    /// The driver is gone: its queued tasks are dropped, the workers running
    /// its tasks and its actors killed. Idle workers stay for other jobs
    /// started by the same program, and go with the last of them.
    pub(crate) fn end_job(&self, st: &mut State, job: JobId) {
        let Some(j) = st.jobs.remove(&job) else {
            return;
        };
        for key in &j.keys {
            self.kv_delete(st, None, key.clone());
        }
        let e = error(
            K::TaskCancelled,
            "",
            "the driver that submitted it exited".into(),
        );
        let queued: Vec<_> = st
            .tasks
            .iter()
            .filter(|(_, t)| t.job == job && !matches!(t.state, TaskState::Running(_)))
            .map(|(id, _)| *id)
            .collect();
        for t in queued {
            self.fail_task(st, t, e.clone());
        }
        for a in st
            .actors
            .values_mut()
            .filter(|a| a.job == job && !a.detached)
        {
            a.restarts_left = 0;
        }
        let detached: Vec<ObjectId> = st
            .actors
            .iter()
            .filter(|(_, a)| a.detached)
            .map(|(id, _)| *id)
            .collect();
        let command_in_use = st.jobs.values().any(|o| o.command == j.command);
        let doomed: Vec<_> = st
            .workers
            .iter()
            .filter(|(_, w)| match w.state {
                WorkerState::Busy(t) => st.tasks.get(&t).is_some_and(|t| t.job == job),
                _ if w.actor.is_some() => {
                    w.job == job && !w.actor.is_some_and(|a| detached.contains(&a))
                }
                _ => !command_in_use && w.command == j.command,
            })
            .map(|(id, _)| *id)
            .collect();
        for w in doomed {
            self.kill_worker(st, w, e.clone());
        }
        st.actors
            .retain(|_, a| a.job != job || a.worker.is_some() || a.detached);
    }

    /// Kills every worker and waits (up to `timeout`) for them to be reaped.
    pub(crate) fn stop_all(&self, timeout: Duration) {
        {
            let mut st = self.state.lock();
            let e = error(K::WorkerCrashed, "", "the node is stopping".into());
            let ids: Vec<_> = st.workers.keys().copied().collect();
            for w in ids {
                self.kill_worker(&mut st, w, e.clone());
            }
        }
        // Apart from the kills, so that their replies are written first;
        // the sockets are shut with the lock let go.
        let transports: Vec<_> = {
            let st = self.state.lock();
            st.conns
                .values()
                .map(|c| Arc::clone(&c.transport))
                .collect()
        };
        for t in transports {
            t.close();
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !self.state.lock().workers.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.store().stop();
    }

    pub(crate) fn status_reply(
        &self,
        st: &State,
        totals: &arca_proto::store::StoreTotals,
    ) -> pb::StatusReply {
        let mut workers: Vec<pb::WorkerInfo> = st
            .workers
            .iter()
            .map(|(id, w)| {
                let (state, task) = match w.state {
                    WorkerState::Starting => ("starting", String::new()),
                    WorkerState::Idle if w.actor.is_some() => ("actor", String::new()),
                    WorkerState::Idle => ("idle", String::new()),
                    WorkerState::Busy(t) => (
                        if w.blocked { "blocked" } else { "busy" },
                        st.tasks
                            .get(&t)
                            .map_or_else(String::new, |t| t.function.to_string()),
                    ),
                };
                // A job forwarded here is shown by its owner's numbering.
                let (job_node, job_id) = st
                    .remote_jobs
                    .iter()
                    .find(|(_, local)| **local == w.job)
                    .map_or((Default::default(), w.job), |((node, job), _)| {
                        (node.to_bytes(), *job)
                    });
                pb::WorkerInfo {
                    pid: w.pid,
                    worker_id: *id,
                    job_id,
                    job_node,
                    state: state.into(),
                    task,
                    actor_id: w
                        .actor
                        .map(|a| a.as_bytes().to_vec().into())
                        .unwrap_or_default(),
                }
            })
            .collect();
        workers.sort_by_key(|w| w.worker_id);
        let running = st
            .tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Running(_)))
            .count();
        pb::StatusReply {
            node_name: self.config.name.clone(),
            pid: std::process::id(),
            session_dir: self.config.session_dir.display().to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            total: Some(st.total.to_proto()),
            available: Some(st.available.to_proto()),
            workers,
            tasks_queued: (st.tasks.len() - running) as u64,
            tasks_running: running as u64,
            tasks_finished: st.finished,
            tasks_failed: st.failed,
            actors_alive: st
                .actors
                .values()
                .filter(|a| !matches!(a.state, super::state::ActorState::Dead(_)))
                .count() as u32,
            drivers: st
                .conns
                .values()
                .filter(|c| c.role == pb::Role::Driver)
                .count() as u32,
            objects: st.objects.len() as u64,
            inline_bytes: st
                .objects
                .values()
                .map(|o| match &o.state {
                    super::state::ObjState::Ready(super::state::Body::Inline(b)) => b.len() as u64,
                    _ => 0,
                })
                .sum(),
            store_used: totals.allocated,
            store_capacity: totals.capacity,
            store_spilled: totals.spilled_bytes,
            cluster: self.cluster_nodes(st, totals),
            cluster_address: self
                .cluster()
                .map(|c| c.head_address.clone())
                .unwrap_or_default(),
            head_error: self
                .cluster()
                .and_then(|c| c.head_error.lock().clone())
                .unwrap_or_default(),
            tasks_infeasible_now: st
                .tasks
                .values()
                .filter(|t| {
                    t.state == TaskState::Ready && self.infeasible(st, &t.resources).is_some()
                })
                .count() as u64,
        }
    }
}
