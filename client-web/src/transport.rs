//! The one thing the core needs from a connection: send and receive text
//! frames with a timeout, plus a clock. Native uses tokio-tungstenite; the
//! browser will implement it over a `WebSocket`.

use crate::ClientError;

/// A connected websocket carrying JSON text frames.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Send one text frame.
    async fn send_text(&mut self, text: String) -> Result<(), ClientError>;
    /// The next text frame, `Ok(None)` if none arrived within `timeout_ms`.
    /// A closed connection is `Err(ClientError::Disconnected)`.
    async fn recv_text(&mut self, timeout_ms: u64) -> Result<Option<String>, ClientError>;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}
