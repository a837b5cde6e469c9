//! Actor handles.

use arca_proto::node as pb;
use arca_store::ObjectId;
use serde::{Deserialize, Serialize};

use super::ObjectRef;
use super::task::{ArgsBuilder, TaskOptions, submit_kind};
use crate::error::Result;

/// A handle to an actor: a worker process holding the actor's state, which
/// runs the calls made through any handle one at a time, in the order each
/// caller made them. Handles are cheap to clone and can be passed to tasks
/// and other actors; the actor ends when the last handle anywhere is
/// dropped (after its queued calls), or with [`kill`](super::kill).
///
/// `#[arca::actor]` wraps this in a typed handle with one method per actor
/// method.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActorHandle {
    /// Holds the actor alive: counted like any reference.
    id: ObjectRef<()>,
}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> ObjectId {
        self.id.id()
    }

    /// Creates an actor: `opts.function` names its registered constructor.
    /// Used by generated code.
    pub fn create(opts: &TaskOptions, args: ArgsBuilder) -> Result<Self> {
        let id = ObjectId::random();
        submit_kind(opts, args, 1, pb::TaskKind::ActorCreation, Some(id))?;
        Ok(ActorHandle {
            id: ObjectRef::owned(id),
        })
    }

    /// Calls the method registered as `method`. Used by generated code.
    pub fn call(
        &self,
        method: &'static str,
        args: ArgsBuilder,
        num_returns: usize,
    ) -> Result<Vec<ObjectId>> {
        let opts = TaskOptions::new(method).max_retries(0);
        submit_kind(
            &opts,
            args,
            num_returns,
            pb::TaskKind::ActorMethod,
            Some(self.id()),
        )
    }

    /// A ref that is ready once the actor's constructor has run (or failed).
    pub fn ready(&self) -> ObjectRef<()> {
        self.id.clone()
    }
}
