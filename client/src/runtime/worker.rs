//! Worker mode: the program, started by the node with `ARCA_WORKER_ID`
//! set, runs tasks by their registered names until the node goes away.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use arca_proto::node as pb;
use arca_store::ObjectId;
use foldhash::HashMap;

use super::codec::{Encoded, FromObject, ToObject};
use super::core::RecentCancels;
use super::runtime;
use crate::ObjectBuffer;
use crate::error::Result;

/// An argument as a task receives it: bytes sent inline, or an object read
/// in place from the store.
#[derive(Debug)]
pub enum ArgData {
    /// Sent with the task.
    Inline(bytes::Bytes),
    /// Read from the store, zero-copy.
    Stored(ObjectBuffer),
}

impl ArgData {
    /// The argument's value.
    pub fn decode<T: FromObject>(&self) -> std::result::Result<T, TaskFailure> {
        T::from_object(self).map_err(|e| TaskFailure::new(e.to_string()))
    }

    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            ArgData::Inline(b) => b,
            ArgData::Stored(b) => b,
        }
    }
}

/// Why a task failed, as the worker reports it.
#[derive(Debug)]
pub struct TaskFailure {
    message: String,
    backtrace: String,
}

impl TaskFailure {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            backtrace: String::new(),
        }
    }
}

/// Encodes one return value. Used by generated code.
pub fn result<T: ToObject + ?Sized>(value: &T) -> std::result::Result<Encoded, TaskFailure> {
    value
        .to_object()
        .map_err(|e| TaskFailure::new(e.to_string()))
}

/// Encodes a returned `Vec` as one result, or with `split: Some(n)` as `n`
/// results, one per element. Used by generated code.
pub fn results<T: ToObject>(
    values: Vec<T>,
    split: Option<usize>,
) -> std::result::Result<Vec<Encoded>, TaskFailure>
where
    Vec<T>: ToObject,
{
    let Some(n) = split else {
        return Ok(vec![result(&values)?]);
    };
    if values.len() != n {
        return Err(TaskFailure::new(format!(
            "returned {} values but was called with num_returns({n})",
            values.len()
        )));
    }
    values.iter().map(|v| result(v)).collect()
}

/// Turns a function's `Err` into a task failure. Used by generated code.
pub fn failure<E: std::fmt::Display>(e: E) -> TaskFailure {
    TaskFailure::new(e.to_string())
}

/// Arguments, and (for a call with `num_returns(n)`) `Some(n)`.
type Call = fn(&[ArgData], Option<usize>) -> std::result::Result<Vec<Encoded>, TaskFailure>;
type Construct = fn(&[ArgData]) -> std::result::Result<Box<dyn Any + Send>, TaskFailure>;
type Method =
    fn(&mut (dyn Any + Send), &[ArgData]) -> std::result::Result<Vec<Encoded>, TaskFailure>;

/// A remote function, registered by `#[arca::remote]`.
#[derive(Debug)]
pub struct RemoteFunction {
    /// `module::path::function`.
    pub name: &'static str,
    /// Decodes the arguments, calls, encodes the results.
    pub call: Call,
}

/// An actor's constructor, registered by `#[arca::actor]`.
#[derive(Debug)]
pub struct ActorConstructor {
    /// `module::path::Type::new`.
    pub name: &'static str,
    /// Builds the actor's state.
    pub call: Construct,
}

/// An actor method, registered by `#[arca::actor]`.
#[derive(Debug)]
pub struct ActorMethod {
    /// `module::path::Type::method`.
    pub name: &'static str,
    /// Calls the method on the actor's state.
    pub call: Method,
}

inventory::collect!(RemoteFunction);
inventory::collect!(ActorConstructor);
inventory::collect!(ActorMethod);

struct Registry {
    functions: HashMap<&'static str, Call>,
    constructors: HashMap<&'static str, Construct>,
    methods: HashMap<&'static str, Method>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry {
        functions: inventory::iter::<RemoteFunction>
            .into_iter()
            .map(|f| (f.name, f.call))
            .collect(),
        constructors: inventory::iter::<ActorConstructor>
            .into_iter()
            .map(|f| (f.name, f.call))
            .collect(),
        methods: inventory::iter::<ActorMethod>
            .into_iter()
            .map(|f| (f.name, f.call))
            .collect(),
    })
}

thread_local! {
    /// The last panic's location and backtrace, captured by the hook.
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let bt = std::backtrace::Backtrace::force_capture();
        let loc = info
            .location()
            .map(|l| format!("panicked at {l}\n"))
            .unwrap_or_default();
        PANIC.with(|p| *p.borrow_mut() = Some(format!("{loc}{bt}")));
        if std::env::var_os("ARCA_WORKER_QUIET_PANICS").is_none() {
            default(info);
        }
    }));
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".into()
    }
}

/// Runs tasks until the node closes the connection, then exits the process.
pub(crate) fn serve() -> ! {
    install_panic_hook();
    exit_with_parent();
    let mut actor: Option<Box<dyn Any + Send>> = None;
    let mut inbox = Inbox::default();
    loop {
        let Ok(exec) = inbox.next() else {
            std::process::exit(0);
        };
        let (done, keep) = if inbox.cancelled(&exec) {
            (skipped(exec), Vec::new())
        } else {
            execute(exec, &mut actor)
        };
        let sent = runtime().and_then(|rt| rt.report(done));
        // The results' nested refs are released only now that the node has
        // them (it holds them for the results from TaskDone on).
        drop(keep);
        if sent.is_err() {
            std::process::exit(0);
        }
    }
}

/// The tasks the node sent this worker, and the cancels of those that have
/// not started. A Rust task cannot be interrupted (the node discards the
/// result of a running one), but actor calls wait here behind the running
/// one (the node's pipeline), and a cancelled one is skipped.
#[derive(Default)]
struct Inbox {
    queued: VecDeque<pb::Execute>,
    cancels: RecentCancels,
}

impl Inbox {
    /// The next task to run, after taking in all the node has sent so far.
    fn next(&mut self) -> Result<pb::Execute> {
        let rt = runtime()?;
        while let Some(k) = rt.try_next_execute()? {
            self.file(k);
        }
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Ok(e);
            }
            let k = rt.next_execute()?;
            self.file(k);
        }
    }

    fn file(&mut self, k: pb::reply::Kind) {
        match k {
            pb::reply::Kind::Execute(e) => self.queued.push_back(e),
            pb::reply::Kind::CancelTask(c) => {
                if let Ok(id) = ObjectId::from_slice(&c.task_id) {
                    self.cancels.insert(id);
                }
            }
            _ => {}
        }
    }

    fn cancelled(&mut self, exec: &pb::Execute) -> bool {
        let id = exec.spec.as_ref().map(|s| ObjectId::from_slice(&s.task_id));
        id.is_some_and(|id| id.is_ok_and(|id| self.cancels.remove(&id)))
    }
}

/// The report for a task cancelled before it started.
fn skipped(exec: pb::Execute) -> pb::TaskDone {
    let spec = exec.spec.unwrap_or_default();
    let e = pb::ErrorInfo {
        kind: pb::ErrorKind::TaskCancelled as i32,
        message: format!("{} was cancelled before it ran", spec.function),
        function: spec.function,
        ..Default::default()
    };
    pb::TaskDone {
        results: spec
            .returns
            .iter()
            .map(|id| pb::Object {
                id: id.clone(),
                body: Some(pb::object::Body::Error(e.clone())),
                ..Default::default()
            })
            .collect(),
        task_id: spec.task_id,
        given: Vec::new(),
    }
}

/// A worker busy in a long task would not notice its node dying (the
/// connection's end is read only between tasks), so a thread watches for
/// the node (its parent) to go away and ends the process.
pub(crate) fn exit_with_parent() {
    let parent = nix::unistd::getppid();
    let watch = move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if nix::unistd::getppid() != parent {
                std::process::exit(0);
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("arca-parent-watch".into())
        .spawn(watch)
    {
        tracing::warn!("cannot watch for the node's exit: {e}");
    }
}

fn execute(
    exec: pb::Execute,
    actor: &mut Option<Box<dyn Any + Send>>,
) -> (pb::TaskDone, Vec<super::ObjectRef<()>>) {
    let spec = exec.spec.unwrap_or_default();
    let returns: Vec<ObjectId> = spec
        .returns
        .iter()
        .filter_map(|b| ObjectId::from_slice(b).ok())
        .collect();
    let kind = pb::TaskKind::try_from(spec.kind).unwrap_or(pb::TaskKind::Normal);
    let f = spec.function.as_str();
    let outcome = load_args(&exec.args).and_then(|args| {
        let r = registry();
        let unknown = |what: &str| {
            Err(Failure::Unknown(format!(
                "{what} {f} is not registered in this program ({}, pid {}): declare it with #[arca::remote] / #[arca::actor] in the binary that calls arca::init()",
                std::env::args().next().unwrap_or_default(),
                std::process::id()
            )))
        };
        match kind {
            pb::TaskKind::Normal => match r.functions.get(f) {
                Some(call) => guarded(|| call(&args, spec.split_returns.then_some(returns.len()))),
                None => unknown("function"),
            },
            pb::TaskKind::ActorCreation => match r.constructors.get(f) {
                Some(call) => guarded(|| call(&args)).map(|state| {
                    *actor = Some(state);
                    vec![Encoded::default()]
                }),
                None => unknown("actor constructor"),
            },
            pb::TaskKind::ActorMethod => match (r.methods.get(f), actor.as_deref_mut()) {
                (Some(call), Some(state)) => guarded(|| call(state, &args)),
                (None, _) => unknown("actor method"),
                (Some(_), None) => Err(Failure::Task(TaskFailure::new("the actor's state was not constructed"))),
            },
        }
    });
    let mut keep = Vec::new();
    let results = match outcome {
        Ok(values) => values
            .into_iter()
            .map(|mut v: Encoded| {
                keep.append(&mut v.keep);
                v
            })
            .zip(&returns)
            .map(|(v, id)| {
                store_result(*id, v).unwrap_or_else(|e| {
                    error_object(
                        *id,
                        f,
                        pb::ErrorKind::TaskFailed,
                        e.to_string(),
                        String::new(),
                    )
                })
            })
            .collect(),
        Err(fail) => {
            let (kind, message, backtrace) = match fail {
                Failure::Unknown(m) => (pb::ErrorKind::UnknownFunction, m, String::new()),
                Failure::Task(t) => (pb::ErrorKind::TaskFailed, t.message, t.backtrace),
            };
            returns
                .iter()
                .map(|id| error_object(*id, f, kind, message.clone(), backtrace.clone()))
                .collect()
        }
    };
    (
        pb::TaskDone {
            task_id: spec.task_id,
            results,
            given: Vec::new(),
        },
        keep,
    )
}

enum Failure {
    Unknown(String),
    Task(TaskFailure),
}

fn guarded<T>(
    f: impl FnOnce() -> std::result::Result<T, TaskFailure>,
) -> std::result::Result<T, Failure> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Failure::Task),
        Err(p) => {
            let backtrace = PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
            Err(Failure::Task(TaskFailure {
                message: panic_message(&*p),
                backtrace,
            }))
        }
    }
}

fn load_args(args: &[pb::ResolvedArg]) -> std::result::Result<Vec<ArgData>, Failure> {
    super::core::load_args(args)
        .map(|v| v.into_iter().map(|v| v.data).collect())
        .map_err(|e| Failure::Task(TaskFailure::new(e)))
}

fn store_result(id: ObjectId, v: Encoded) -> Result<pb::Object> {
    let contained = super::task::ids(&v.contained);
    let encoding = v.encoding as i32;
    let body = v.into_body(id, runtime()?.store())?;
    Ok(pb::Object {
        id: id.as_bytes().to_vec().into(),
        body: Some(body),
        contained,
        encoding,
    })
}

fn error_object(
    id: ObjectId,
    f: &str,
    kind: pb::ErrorKind,
    message: String,
    backtrace: String,
) -> pb::Object {
    pb::Object {
        id: id.as_bytes().to_vec().into(),
        body: Some(pb::object::Body::Error(pb::ErrorInfo {
            kind: kind as i32,
            function: f.to_string(),
            message,
            backtrace,
            ..Default::default()
        })),
        contained: Vec::new(),
        encoding: 0,
    }
}
