//! Direct actor calls (node.proto's `DirectActor`): a caller sends its calls
//! to a local actor straight to the actor's worker, and owns their results.
//! The node grants the switch, keeps the results a caller passes on
//! (`Promise`, then `Put`) and those a worker stores for a caller (`Give`),
//! and takes back the calls of a worker that died (`resubmitted`).

use arca_proto::consts::direct_socket;
use arca_proto::node as pb;
use arca_store::ObjectId;

use super::Shared;
use super::objects::{Taken, body_of};
use super::state::{ActorState, ConnId, ObjState, State, WorkerState, error};

impl Shared {
    /// The socket of actor `a`'s worker if `conn` may call it directly now:
    /// the actor is alive here, and none of `conn`'s calls to it is queued
    /// or running (the direct calls must come after them).
    pub(crate) fn direct_actor(
        &self,
        st: &State,
        conn: ConnId,
        a: &ObjectId,
    ) -> pb::DirectActorReply {
        let no = pb::DirectActorReply::default();
        let Some(actor) = st.actors.get(a) else {
            return no;
        };
        let wid = match actor.worker {
            Some(w)
                if actor.state == ActorState::Alive
                    && actor.location.is_none()
                    && actor.origin.is_none()
                    && st
                        .workers
                        .get(&w)
                        .is_some_and(|w| w.conn.is_some() && w.state != WorkerState::Starting) =>
            {
                w
            }
            _ => return no,
        };
        let mine = |t: &ObjectId| st.tasks.get(t).is_some_and(|t| t.submitter == Some(conn));
        if actor.queue.iter().chain(&actor.running).any(mine) {
            return no;
        }
        pb::DirectActorReply {
            socket: self
                .config
                .session_dir
                .join(direct_socket(wid))
                .display()
                .to_string(),
            max_concurrency: actor.max_concurrency as u32,
            worker_id: wid,
        }
    }

    /// `conn` will put `id` later: it is pending until then, held by `conn`.
    pub(crate) fn promise(&self, st: &mut State, conn: ConnId, id: ObjectId) -> Result<(), String> {
        if st.objects.contains_key(&id) {
            return Err(format!("Promise: object {id} already exists"));
        }
        // Pending on a "task" of its own id, which no task has: only the
        // promiser's put (or its exit) completes it.
        Self::insert_held(st, conn, id, "direct call".into());
        if let Some(c) = st.conns.get_mut(&conn) {
            c.promised.insert(id);
        }
        Ok(())
    }

    /// Whether `id` is an object `conn` promised and has not put yet.
    pub(crate) fn promised_by(st: &State, conn: ConnId, id: &ObjectId) -> bool {
        st.conns.get(&conn).is_some_and(|c| c.promised.contains(id))
            && st
                .objects
                .get(id)
                .is_some_and(|o| matches!(o.state, ObjState::Pending(t) if t == *id))
    }

    /// A worker stores a direct call's result for connection `holder`. An
    /// object `holder` promised is completed; else it is new, held by
    /// `holder` (or dropped at once if `holder` is gone).
    pub(crate) fn give(
        &self,
        st: &mut State,
        holder: ConnId,
        obj: pb::Object,
        taken: &Taken,
    ) -> Result<(), String> {
        let id = super::state::parse_id(&obj.id).ok_or("Give: malformed object id")?;
        let contained: Vec<ObjectId> = obj
            .contained
            .iter()
            .filter_map(|b| super::state::parse_id(b))
            .collect();
        let body = taken.body(&id, body_of(&obj), "direct call");
        if !Self::promised_by(st, holder, &id) {
            if st.objects.contains_key(&id) {
                return Err(format!("Give: object {id} already exists"));
            }
            if !st.conns.contains_key(&holder) {
                // The caller is gone: what was stored goes (`complete` of
                // an unknown id frees it).
                self.complete(st, id, body, Vec::new());
                return Ok(());
            }
            Self::insert_held(st, holder, id, "direct call".into());
        }
        if let Some(c) = st.conns.get_mut(&holder) {
            c.promised.remove(&id);
        }
        if let Some(o) = st.objects.get_mut(&id) {
            o.encoding = obj.encoding;
        }
        self.complete(st, id, body, contained);
        Ok(())
    }

    /// `conn` is going: the results it promised and never put are lost.
    pub(crate) fn fail_promises(&self, st: &mut State, conn: ConnId) {
        let Some(c) = st.conns.get(&conn) else {
            return;
        };
        let pid = c.pid;
        let lost: Vec<ObjectId> = c
            .promised
            .iter()
            .filter(|id| Self::promised_by(st, conn, id))
            .copied()
            .collect();
        for id in lost {
            let e = error(
                pb::ErrorKind::ObjectLost,
                "direct call",
                format!(
                    "object {id} is lost: process {pid}, which owned it (an actor call's \
                     result), exited before the call answered"
                ),
            );
            self.complete(st, id, super::state::Body::Error(e), Vec::new());
        }
    }
}
