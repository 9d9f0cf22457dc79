//! Tsunagu wire protocol: the frames exchanged over the websocket, the HTTP
//! enrolment bodies, the error codes and the envelope that travels inside MLS
//! application messages.
//!
//! This crate does no IO and knows nothing of axum, sqlx or openmls; it builds
//! for `wasm32-unknown-unknown` so the browser client shares it. PROTOCOL.md is
//! the prose form of this file and the two must say the same thing.

pub mod bytes;
pub mod envelope;
pub mod frames;
pub mod ids;
pub mod people;
pub mod policy;

pub use bytes::Bytes;
pub use envelope::{Attachment, Envelope, Post, PostKind};
pub use policy::TimelinePolicy;
pub use frames::{ClientFrame, ErrorCode, ServerFrame};

/// The protocol version spoken by this crate; announced in `ready`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest websocket text frame the server accepts, in bytes. A larger
/// frame is answered with `frame_too_large` and the connection stays open.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;
