//! Submitting tasks: arguments, options, and the ObjectRefs they return.

use std::collections::BTreeMap;

use arca_proto::node as pb;
use arca_store::ObjectId;

use super::codec::{Encoded, ToObject};
use super::{ObjectRef, runtime};
use crate::error::Result;

/// An argument to a remote call: a value, or an ObjectRef whose value the
/// task receives.
#[derive(Debug)]
pub enum Arg<T> {
    /// A value, serialized with the call.
    Value(T),
    /// A reference, resolved before the task runs.
    Ref(ObjectRef<T>),
}

/// Anything that can be passed where a remote function takes a `T`: a `T`,
/// an `ObjectRef<T>` or a `&ObjectRef<T>`.
pub trait IntoArg<T> {
    /// Converts.
    fn into_arg(self) -> Arg<T>;
}

impl<T: ToObject> IntoArg<T> for T {
    fn into_arg(self) -> Arg<T> {
        Arg::Value(self)
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg::Ref(self)
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg::Ref(self.clone())
    }
}

/// Options of a task or actor: resources, retries, restarts.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    pub(crate) function: std::sync::Arc<str>,
    pub(crate) language: pb::Language,
    /// For Python: the object holding the pickled function or class.
    pub(crate) function_ref: Option<ObjectId>,
    pub(crate) max_concurrency: u32,
    pub(crate) resources: Option<BTreeMap<String, f64>>,
    pub(crate) max_retries: u32,
    pub(crate) max_restarts: u32,
    /// Actors reserve nothing unless asked; tasks 1 CPU.
    pub(crate) actor: bool,
    /// The results are the elements of the returned list.
    pub(crate) split_returns: bool,
}

/// Default retries for a task whose worker dies, as in Ray.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

impl TaskOptions {
    /// Options for the function registered as `function`.
    pub fn new(function: &str) -> Self {
        Self {
            function: function.into(),
            language: pb::Language::Rust,
            function_ref: None,
            max_concurrency: 0,
            resources: None,
            max_retries: DEFAULT_MAX_RETRIES,
            max_restarts: 0,
            actor: false,
            split_returns: false,
        }
    }

    /// Options for the actor whose constructor is registered as `constructor`.
    pub fn actor(constructor: &str) -> Self {
        Self {
            actor: true,
            max_retries: 0,
            ..Self::new(constructor)
        }
    }

    fn resource(mut self, name: &str, amount: f64) -> Self {
        let actor = self.actor;
        let r = self.resources.get_or_insert_with(|| {
            // A task asks for 1 CPU unless told otherwise.
            if actor {
                BTreeMap::new()
            } else {
                BTreeMap::from([("CPU".to_string(), 1.0)])
            }
        });
        r.insert(name.to_string(), amount);
        self
    }

    /// CPUs to reserve while it runs (default 1 for tasks, 0 for actors).
    pub fn num_cpus(self, n: f64) -> Self {
        self.resource("CPU", n)
    }

    /// GPUs to reserve.
    pub fn num_gpus(self, n: f64) -> Self {
        self.resource("GPU", n)
    }

    /// Bytes of memory to reserve (scheduling only; not enforced).
    pub fn memory(self, bytes: u64) -> Self {
        self.resource("memory", bytes as f64)
    }

    /// A custom resource.
    pub fn resources(mut self, name: &str, amount: f64) -> Self {
        self = self.resource(name, amount);
        self
    }

    /// Times a task is retried when its worker process dies (default 3).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The function's returned `Vec` is split into one result per element.
    /// Used by the code `#[arca::remote]` generates for `num_returns(n)`.
    #[doc(hidden)]
    pub fn split_returns(mut self) -> Self {
        self.split_returns = true;
        self
    }

    /// Times an actor is restarted when its process dies (default 0).
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }

    /// Method calls an actor may run at once (default 1: in order).
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = n;
        self
    }

    /// A Python function or class, pickled into object `function_ref`
    /// (which the submitting process holds), named `function` for display.
    /// (`None` for an actor method: the actor's worker has its instance.)
    pub fn python(mut self, function_ref: Option<ObjectId>) -> Self {
        self.language = pb::Language::Python;
        self.function_ref = function_ref;
        self
    }

    /// Replaces the resources asked for (nothing is added by default).
    pub fn with_resources(mut self, resources: BTreeMap<String, f64>) -> Self {
        self.resources = Some(resources);
        self
    }
}

/// Builds a task's arguments. Used by the code `#[arca::remote]` generates.
#[derive(Debug, Default)]
pub struct ArgsBuilder {
    pub(crate) args: Vec<pb::Arg>,
    pub(crate) contained: Vec<ObjectId>,
    /// References that must live until the submit is sent.
    keep: Vec<ObjectRef<()>>,
}

impl ArgsBuilder {
    /// Adds an argument. Values larger than the inline limit are put in the
    /// store first and passed by reference.
    pub fn push<T: ToObject>(&mut self, arg: impl IntoArg<T>) -> Result<()> {
        match arg.into_arg() {
            Arg::Value(v) => {
                let e = v.to_object()?;
                if e.len() > arca_proto::consts::INLINE_RESULT_MAX {
                    let r: ObjectRef<()> = runtime()?.put_encoded(e)?;
                    self.push_ref(r.id());
                    self.keep.push(r);
                } else {
                    self.push_encoded(e)?;
                }
            }
            Arg::Ref(r) => {
                self.push_ref(r.id());
                self.keep.push(r.cast());
            }
        }
        Ok(())
    }

    /// Adds an encoded value, passed inline (the caller keeps the refs
    /// nested in it alive until the submit is sent).
    pub fn push_encoded(&mut self, mut e: Encoded) -> Result<()> {
        self.contained.append(&mut e.contained);
        self.keep.append(&mut e.keep);
        let encoding = e.encoding as i32;
        self.args.push(pb::Arg {
            kind: Some(pb::arg::Kind::Value(e.into_bytes()?)),
            encoding,
        });
        Ok(())
    }

    /// Adds an ObjectRef argument: the task receives its value (the caller
    /// holds the ref until the submit is sent).
    pub fn push_ref(&mut self, id: ObjectId) {
        self.args.push(pb::Arg {
            kind: Some(pb::arg::Kind::Object(id.as_bytes().to_vec().into())),
            encoding: 0,
        });
    }

    /// Holds `id` for as long as the task lives without passing it as an
    /// argument (a Python function's pickle, refs nested in keyword args).
    pub fn hold(&mut self, id: ObjectId) {
        self.contained.push(id);
    }
}

pub(crate) fn ids(ids: &[ObjectId]) -> Vec<bytes::Bytes> {
    ids.iter().map(|id| id.as_bytes().to_vec().into()).collect()
}

/// Submits a task; returns the ids of its `num_returns` results, which the
/// node counts as held by this process. Used by generated code.
pub fn submit(opts: &TaskOptions, args: ArgsBuilder, num_returns: usize) -> Result<Vec<ObjectId>> {
    submit_kind(opts, args, num_returns, pb::TaskKind::Normal, None)
}

/// Submits a task of any kind (for actor creation, `actor` is the new
/// actor's id, which is also its one return); returns the ids of its results.
pub fn submit_kind(
    opts: &TaskOptions,
    args: ArgsBuilder,
    num_returns: usize,
    kind: pb::TaskKind,
    actor: Option<ObjectId>,
) -> Result<Vec<ObjectId>> {
    let rt = runtime()?;
    let task_id = ObjectId::random();
    let returns: Vec<ObjectId> = match (kind, actor) {
        (pb::TaskKind::ActorCreation, Some(a)) => vec![a],
        _ => (0..num_returns).map(|_| ObjectId::random()).collect(),
    };
    let spec = pb::TaskSpec {
        task_id: task_id.as_bytes().to_vec().into(),
        kind: kind as i32,
        function: opts.function.to_string(),
        args: args.args,
        returns: ids(&returns),
        resources: opts.resources.as_ref().map(|r| pb::Resources {
            amounts: r.clone().into_iter().collect(),
        }),
        max_retries: opts.max_retries,
        actor_id: actor
            .map(|a| a.as_bytes().to_vec().into())
            .unwrap_or_default(),
        max_restarts: opts.max_restarts,
        contained: ids(&args.contained),
        split_returns: opts.split_returns,
        language: opts.language as i32,
        function_ref: opts
            .function_ref
            .map(|r| r.as_bytes().to_vec().into())
            .unwrap_or_default(),
        max_concurrency: opts.max_concurrency,
        resubmitted: false,
    };
    match (kind, actor) {
        (pb::TaskKind::ActorMethod, Some(a)) => {
            super::direct::submit_call(&rt, a, spec, args.keep)?
        }
        _ => {
            super::direct::promote(&rt, &refs_of(&spec))?;
            rt.send(pb::request::Kind::Submit(pb::Submit { spec: Some(spec) }))?;
            drop(args.keep);
        }
    }
    Ok(returns)
}

/// A task's ObjectRef arguments, in order.
pub(crate) fn ref_args(spec: &pb::TaskSpec) -> impl Iterator<Item = ObjectId> + '_ {
    spec.args.iter().filter_map(|a| match &a.kind {
        Some(pb::arg::Kind::Object(b)) => ObjectId::from_slice(b).ok(),
        _ => None,
    })
}

/// The refs a task's spec passes: its ObjectRef arguments and the refs
/// nested in its values.
pub(crate) fn refs_of(spec: &pb::TaskSpec) -> Vec<ObjectId> {
    ref_args(spec)
        .chain(
            spec.contained
                .iter()
                .filter_map(|b| ObjectId::from_slice(b).ok()),
        )
        .collect()
}

/// Wraps result ids in typed refs. Used by generated code.
pub fn returns<T>(ids: &[ObjectId], i: usize) -> ObjectRef<T> {
    ObjectRef::owned(ids[i])
}
