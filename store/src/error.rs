//! What can go wrong in the store, one enum per operation.

use crate::id::ObjectId;
use crate::size::ByteSize;

/// Why a create (or put) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The id is taken.
    #[error("object {0} already exists; object ids must be unique")]
    Exists(ObjectId),
    /// The id is taken by an object deleted while readers still hold it.
    #[error("object {0} was deleted but readers still hold it; retry once they release it")]
    Deleting(ObjectId),
    /// Larger than the store could ever hold.
    #[error("object of {size} is larger than the store ({capacity}); raise --memory")]
    TooLarge {
        /// Requested bytes (data + metadata).
        size: ByteSize,
        /// The largest segment's size.
        capacity: ByteSize,
    },
    /// Nothing left to evict and not enough free space.
    #[error("{0}")]
    Full(String),
    /// The client is not connected (a daemon bug if it ever shows).
    #[error("client {0} is not connected")]
    UnknownClient(u64),
}

/// Why a seal or abort failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// No such object.
    #[error("object {0} does not exist")]
    NotFound(ObjectId),
    /// The object is not one this client is creating.
    #[error(
        "object {0} is not being created by this client (already sealed, or created by another client)"
    )]
    NotCreating(ObjectId),
}
