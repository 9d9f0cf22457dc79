//! Tsunagu client library: the MLS client core (shared by the native client
//! and the browser build) and, with the `native` feature, a tokio websocket
//! transport and the `Client` API used by the `tsunagu` command.

pub mod attachments;
pub mod bench;
pub mod core;
pub mod error;
pub mod mls;
pub mod policy;
pub mod receipts;
pub mod state;
pub mod store;
pub mod transport;
pub mod web;

#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
pub mod wasm;

#[cfg(feature = "native")]
pub mod native;

pub use crate::core::{Core, RestoreNotice};
pub use crate::error::ClientError;
pub use crate::state::{PostStatus, ReceivedPost};
pub use crate::store::{MemoryStore, StateStore};
pub use crate::transport::Transport;

#[cfg(not(target_arch = "wasm32"))]
pub use crate::store::FileStore;

#[cfg(feature = "native")]
pub use crate::native::Client;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod web_tests;
