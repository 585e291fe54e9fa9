//! The directory: which user is connected where (room, connection, device,
//! since when), online durations, and the list of live rooms.
//!
//! Rooms are the source of truth for who is connected; the directory is a
//! cache of what they report. Users are partitioned across register
//! processes by a hash of the user id (cluster mode: [`remote`], served
//! over links by [`RegisterService`], used through [`ClusterDirectory`]); in
//! standalone mode [`LocalDirectory`] serves everything in process.

use async_trait::async_trait;
use proto::{ConnId, RoomId, UserId};
use serde::{Deserialize, Serialize};

mod client;
mod lease;
mod local;
pub mod remote;
pub mod ring;
mod service;
mod wire;
pub use local::LocalDirectory;
pub use remote::{
    ClusterDirectory, LeaseOutcome, RegisterReq, RegisterResp, RegisterService, RoomLease,
};

/// One live connection as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// The user.
    pub user: UserId,
    /// The connection.
    pub conn: ConnId,
    /// The room holding it.
    pub room: RoomId,
    /// Device id, if the client gave one.
    pub device: Option<String>,
    /// Milliseconds since the epoch when it authenticated.
    pub since: i64,
}

/// A live room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// Room id.
    pub room: RoomId,
    /// Connections it holds.
    pub connections: u64,
}

/// Totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirStats {
    /// Live connections.
    pub connections: u64,
    /// Distinct users with at least one live connection.
    pub users: u64,
}

/// Errors from the directory.
///
/// [`DirError::is_retryable`] tells a register that is down, slow or
/// disconnected (transient) from one that refused the call or answered
/// wrongly, and from a misconfiguration (permanent).
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// No register is configured.
    #[error("directory unavailable: no register configured")]
    NoRegister,
    /// A call named a register partition that does not exist.
    #[error("directory unavailable: no register partition {partition} ({configured} configured)")]
    NoPartition {
        /// The partition asked for.
        partition: usize,
        /// How many partitions there are.
        configured: usize,
    },
    /// The link to a register failed (down, disconnected, timed out, bad frame).
    #[error("directory unavailable: register {partition}: {source}")]
    Link {
        /// The register partition.
        partition: usize,
        /// The link error.
        #[source]
        source: link::LinkError,
    },
    /// A register did not answer within the caller's own time limit.
    #[error("directory unavailable: register {partition}: no {call} answer within {timeout:?}")]
    Timeout {
        /// The register partition.
        partition: usize,
        /// The call.
        call: &'static str,
        /// The time limit.
        timeout: std::time::Duration,
    },
    /// A register refused the call (its message, as sent on the wire).
    #[error("directory unavailable: register at {addr}: {message}")]
    Remote {
        /// The register partition.
        partition: usize,
        /// The register's address.
        addr: String,
        /// The register's error message.
        message: String,
    },
    /// A register answered with something that does not fit the call.
    #[error("directory unavailable: register at {addr}: unexpected answer {answer}")]
    BadAnswer {
        /// The register partition.
        partition: usize,
        /// The register's address.
        addr: String,
        /// The answer, debug-formatted.
        answer: String,
    },
}

impl DirError {
    /// Whether the same call may succeed later: the register was down,
    /// disconnected or slow. Refusals, bad answers and bad configuration are
    /// permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            DirError::Link { source, .. } => source.is_retryable(),
            DirError::Timeout { .. } => true,
            DirError::NoRegister
            | DirError::NoPartition { .. }
            | DirError::Remote { .. }
            | DirError::BadAnswer { .. } => false,
        }
    }
}

/// The directory service.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Records a connection that authenticated.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn connected(&self, conn: ConnInfo) -> Result<(), DirError>;

    /// Records that a connection ended at `now_ms` (adds to the user's online time).
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn disconnected(&self, user: &UserId, conn: ConnId, now_ms: i64) -> Result<(), DirError>;

    /// The live connections of each user in `users` (batched lookup), in the
    /// same order; users with none get an empty list.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<ConnInfo>>, DirError>;

    /// Like [`Directory::lookup`], but tells "not known" from "offline": a
    /// user whose part of the directory could not answer gets `None`, so
    /// the caller can ask the rooms themselves (they are the source of
    /// truth) instead of skipping live delivery. The default: every user known.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable as a whole.
    async fn locate(&self, users: &[UserId]) -> Result<Vec<Option<Vec<ConnInfo>>>, DirError> {
        Ok(self.lookup(users).await?.into_iter().map(Some).collect())
    }

    /// Total time `user` has been online, in milliseconds, counting live
    /// connections up to `now_ms`.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn online_ms(&self, user: &UserId, now_ms: i64) -> Result<u64, DirError>;

    /// Announces (or renews) a live room.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn room_up(&self, room: RoomId) -> Result<(), DirError>;

    /// Removes a room and every connection it held.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn room_down(&self, room: RoomId) -> Result<(), DirError>;

    /// The live rooms, with their connection counts.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn rooms(&self) -> Result<Vec<RoomInfo>, DirError>;

    /// Totals.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn stats(&self) -> Result<DirStats, DirError>;
}

#[cfg(test)]
mod dir_error_tests {
    use std::error::Error as _;
    use std::time::Duration;

    use super::DirError;

    fn link(source: link::LinkError) -> DirError {
        DirError::Link {
            partition: 1,
            source,
        }
    }

    #[test]
    fn classification() {
        let addr = || "10.0.0.2:7".to_owned();
        for e in [
            link(link::LinkError::Unavailable {
                service: "register",
                addr: addr(),
            }),
            link(link::LinkError::Disconnected {
                service: "register",
                addr: addr(),
            }),
            link(link::LinkError::Timeout {
                service: "register",
                addr: addr(),
                timeout: Duration::from_secs(1),
            }),
            DirError::Timeout {
                partition: 0,
                call: "lease",
                timeout: Duration::from_secs(1),
            },
        ] {
            assert!(e.is_retryable(), "{e}");
        }
        for e in [
            link(link::LinkError::Protocol {
                service: "register",
                reason: "bad".to_owned(),
            }),
            DirError::NoRegister,
            DirError::NoPartition {
                partition: 3,
                configured: 2,
            },
            DirError::Remote {
                partition: 0,
                addr: addr(),
                message: "connection of another room".to_owned(),
            },
            DirError::BadAnswer {
                partition: 0,
                addr: addr(),
                answer: "Done".to_owned(),
            },
        ] {
            assert!(!e.is_retryable(), "{e}");
        }
    }

    #[test]
    fn link_error_is_the_source() {
        let e = link(link::LinkError::Unavailable {
            service: "register",
            addr: "10.0.0.2:7".to_owned(),
        });
        assert!(e.source().is_some());
        let text = e.to_string();
        assert!(text.contains("register 1"), "{text}");
        assert!(text.contains("10.0.0.2:7"), "{text}");
        assert!(DirError::NoRegister.source().is_none());
    }
}
