//! `arca._native`: the Rust half of Arca's Python package. It owns the
//! connection to the node, ObjectRefs and their counts, put/get/wait, task
//! submission and the worker's task loop; `arca/` (plain Python) is the
//! Ray API around it. Every blocking call releases the GIL.

mod api;
mod buffer;
mod codec;
mod errors;
mod refs;
mod worker;

use pyo3::prelude::*;

#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<refs::PyObjectRef>()?;
    m.add_class::<refs::Contained>()?;
    m.add_class::<refs::Source>()?;
    m.add_class::<buffer::StoreBuffer>()?;
    m.add_function(wrap_pyfunction!(refs::_borrow_ref, m)?)?;
    m.add_function(wrap_pyfunction!(api::kv_put, m)?)?;
    m.add_function(wrap_pyfunction!(api::kv_get, m)?)?;
    m.add_function(wrap_pyfunction!(api::kv_delete, m)?)?;
    m.add_function(wrap_pyfunction!(api::borrow_from, m)?)?;
    m.add_function(wrap_pyfunction!(api::detach, m)?)?;
    m.add_function(wrap_pyfunction!(refs::begin_collect, m)?)?;
    m.add_function(wrap_pyfunction!(refs::end_collect, m)?)?;
    m.add_function(wrap_pyfunction!(refs::begin_borrow, m)?)?;
    m.add_function(wrap_pyfunction!(refs::end_borrow, m)?)?;
    m.add_function(wrap_pyfunction!(api::node_running, m)?)?;
    m.add_function(wrap_pyfunction!(api::connect, m)?)?;
    m.add_function(wrap_pyfunction!(api::node_id, m)?)?;
    m.add_function(wrap_pyfunction!(api::shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(api::is_initialized, m)?)?;
    m.add_function(wrap_pyfunction!(api::put, m)?)?;
    m.add_function(wrap_pyfunction!(api::get, m)?)?;
    m.add_function(wrap_pyfunction!(api::wait, m)?)?;
    m.add_function(wrap_pyfunction!(api::submit, m)?)?;
    m.add_function(wrap_pyfunction!(api::new_actor_ref, m)?)?;
    m.add_function(wrap_pyfunction!(api::cancel, m)?)?;
    m.add_function(wrap_pyfunction!(api::kill, m)?)?;
    m.add_function(wrap_pyfunction!(api::exit_actor, m)?)?;
    m.add_function(wrap_pyfunction!(api::status, m)?)?;
    m.add_function(wrap_pyfunction!(api::memory, m)?)?;
    m.add_function(wrap_pyfunction!(api::store_mappings, m)?)?;
    m.add_function(wrap_pyfunction!(worker::worker_connect, m)?)?;
    m.add_function(wrap_pyfunction!(worker::next_task, m)?)?;
    m.add_function(wrap_pyfunction!(worker::next_tasks, m)?)?;
    m.add_function(wrap_pyfunction!(worker::task_done, m)?)?;
    m.add_function(wrap_pyfunction!(worker::task_cancelled, m)?)?;
    m.add("INLINE_MAX", arca_proto::consts::INLINE_RESULT_MAX)?;
    Ok(())
}
