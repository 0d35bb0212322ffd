//! Error types, one per operation. A failed send hands the message back.

use std::fmt;

use thiserror::Error;

use crate::message::{InvalidInput, Message};
use crate::session::EndReason;

/// Why [`Engine::try_send`](crate::Engine::try_send) did not take the message. The message is
/// inside; [`into_inner`](Self::into_inner) gives it back.
#[derive(Error)]
pub enum TrySendError {
    /// The shard's inbox is full: back-pressure. Retry later or use the async `send`.
    #[error("the shard inbox is full")]
    Full(Message),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown(Message),
    /// The message or user id is invalid.
    #[error("invalid input: {error}")]
    Invalid {
        /// What is wrong.
        error: InvalidInput,
        /// The message, untouched.
        message: Message,
    },
}

/// Why [`Engine::send`](crate::Engine::send) or
/// [`send_confirmed`](crate::Engine::send_confirmed) did not take the message. The message is
/// inside when the engine never accepted it.
#[derive(Error)]
pub enum SendError {
    /// The engine is shutting down and did not accept the message.
    #[error("the engine is shutting down")]
    ShuttingDown(Message),
    /// The message or user id is invalid.
    #[error("invalid input: {error}")]
    Invalid {
        /// What is wrong.
        error: InvalidInput,
        /// The message, untouched.
        message: Message,
    },
    /// The engine accepted the message but stopped before reporting its outcome (a confirmed
    /// send racing with shutdown). The shutdown report accounts for it.
    #[error("the engine stopped before confirming the outcome")]
    Unconfirmed,
}

macro_rules! message_error_impls {
    ($ty:ident { $($variant:ident),* }) => {
        impl $ty {
            /// The message, if the error holds it.
            pub fn into_inner(self) -> Option<Message> {
                match self {
                    $( $ty::$variant(m) => Some(m), )*
                    $ty::Invalid { message, .. } => Some(message),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // The payload may be large or private: show the error, not the message.
                write!(f, "{}::{}", stringify!($ty), self)
            }
        }
    };
}

message_error_impls!(TrySendError { Full, ShuttingDown });
message_error_impls!(SendError { ShuttingDown });

/// Why [`Engine::connect`](crate::Engine::connect) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The user id is invalid.
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine holds its maximum number of users and this user has no mailbox.
    #[error("the engine holds its maximum number of users")]
    TooManyUsers,
    /// A device connects for the first time while the user already has
    /// `max_devices_per_user` device mailboxes, all of them connected (with one away, the
    /// one away longest would have been evicted to make room).
    #[error("the user already has {max} devices, all connected")]
    TooManyDevices {
        /// The configured maximum.
        max: usize,
    },
}

/// Why [`Engine::set_user_limits`](crate::Engine::set_user_limits) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SetLimitsError {
    /// The user id is invalid, or a cap is zero.
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The shard already holds `max_users` overrides.
    #[error("the engine holds its maximum number of per-user overrides")]
    TooManyUsers,
}

/// Why [`Engine::abort_stream`](crate::Engine::abort_stream) did not abort.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AbortStreamError {
    /// The user id or stream id is invalid.
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Why [`Session::ack`](crate::Session::ack) refused an acknowledgement. A refused ack changes
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AckError {
    /// `seq` is beyond the last message this session received.
    #[error("seq {seq} was never delivered to this session (last received: {last_received})")]
    NotDelivered {
        /// The seq acknowledged.
        seq: u64,
        /// The highest seq this session has received.
        last_received: u64,
    },
    /// The session has ended; acknowledge from the new session instead.
    #[error("the session has ended")]
    Ended,
}

/// Why [`Session::try_recv`](crate::Session::try_recv) returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing to receive right now.
    #[error("no delivery ready")]
    Empty,
    /// The session ended; everything delivered to it was received.
    #[error("session ended: {0:?}")]
    Ended(EndReason),
}
