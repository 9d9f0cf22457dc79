//! The baseline server: `tsunagu-bench bare-server` (hidden), a bare
//! tokio-tungstenite websocket server in its own process, so that its memory
//! and CPU are measured like the real server's. No auth, no storage, no MLS.
//!
//! - `ws://ADDR/` — a plain connection: read and drop whatever arrives (the
//!   idle-memory baseline).
//! - `ws://ADDR/g/GROUP` — a broadcast relay: every text frame from a member
//!   of GROUP goes to every member of GROUP (the sender too); the group keeps
//!   its last [`REPLAY`] frames in memory.
//! - `ws://ADDR/g/GROUP?replay` — first the group's buffered frames, then
//!   `{"type":"caught_up"}`, then live frames (the reconnect-storm baseline).
//!
//! Every connection has a 4 KiB read buffer. It prints
//! `bare listening on ADDR` on stdout and runs until killed.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Frames a group keeps for `?replay`.
pub const REPLAY: usize = 100;

#[derive(Default)]
struct Group {
    next_id: u64,
    peers: Vec<(u64, mpsc::UnboundedSender<Message>)>,
    buffer: VecDeque<Message>,
}

type Groups = Arc<Mutex<HashMap<String, Group>>>;

pub fn main() -> i32 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(serve()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bare-server: {e:#}");
            1
        }
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("bare listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let groups: Groups = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let groups = groups.clone();
        tokio::spawn(async move {
            let mut path = String::new();
            let callback = |req: &Request, resp: Response| {
                path = req.uri().to_string();
                Ok(resp)
            };
            let Ok(ws) =
                tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config()))
                    .await
            else {
                return;
            };
            let (p, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
            match p.strip_prefix("/g/") {
                None => {
                    // Plain connection: read until closed.
                    let mut ws = ws;
                    while let Some(Ok(_)) = ws.next().await {}
                }
                Some(group) => relay(ws, group.to_string(), query == "replay", groups).await,
            }
        });
    }
}

async fn relay<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    group: String,
    replay: bool,
    groups: Groups,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let id = {
        let mut g = groups.lock().unwrap();
        let grp = g.entry(group.clone()).or_default();
        if replay {
            for m in &grp.buffer {
                let _ = tx.send(m.clone());
            }
            let _ = tx.send(Message::Text(r#"{"type":"caught_up"}"#.into()));
        }
        grp.next_id += 1;
        let id = grp.next_id;
        grp.peers.push((id, tx));
        id
    };
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            // Write everything queued, then flush once.
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(_) = &msg {
            let mut g = groups.lock().unwrap();
            let grp = g.get_mut(&group).expect("registered");
            if grp.buffer.len() == REPLAY {
                grp.buffer.pop_front();
            }
            grp.buffer.push_back(msg.clone());
            for (_, p) in &grp.peers {
                let _ = p.send(msg.clone());
            }
        }
    }
    if let Some(grp) = groups.lock().unwrap().get_mut(&group) {
        grp.peers.retain(|(i, _)| *i != id);
    }
    writer.abort();
}
