//! Several server nodes on one PostgreSQL. A transaction that stores
//! messages or welcomes also queues a `NOTIFY` (PostgreSQL delivers it only if
//! the transaction commits); every node `LISTEN`s, reads the notified rows and
//! pushes them to its own connections. The database stays the source of
//! truth: when the listening connection drops, every local connection catches
//! up from the database. On SQLite there is one node and this is all a no-op.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;

use crate::db::{Db, Tx};
use crate::error::StoreError;
use crate::hub::{Hub, Push};

const CHANNEL: &str = "tsunagu_events";

/// What one notification says. Field names are short: a payload is limited
/// to 8000 bytes and there is one per transaction and timeline.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k")]
enum Event {
    /// Messages `from..=to` of timeline `t` were stored by node `n`.
    #[serde(rename = "m")]
    Messages { n: String, t: String, from: i64, to: i64 },
    /// Welcome `id` for device `d` was stored by node `n`.
    #[serde(rename = "w")]
    Welcome { n: String, id: i64, d: String },
    /// Devices `d` were revoked by node `n`: close their connections.
    #[serde(rename = "r")]
    Revoked { n: String, d: Vec<String> },
    /// Frame `f` about timeline `t` (a read mark, an urgent alert or
    /// acknowledgement) for its member devices, or only those of accounts `a`.
    #[serde(rename = "f")]
    Notice { n: String, t: String, #[serde(default, skip_serializing_if = "Option::is_none")] a: Option<Vec<String>>, f: String },
}

/// This node's side of the cluster.
#[derive(Clone)]
pub struct Cluster {
    node_id: Arc<str>,
    enabled: bool,
}

impl Cluster {
    /// A node of a cluster when the database is PostgreSQL, else a lone node.
    pub fn new(db: &Db) -> Cluster {
        Cluster { node_id: uuid::Uuid::new_v4().to_string().into(), enabled: db.is_postgres() }
    }

    pub async fn messages_stored(&self, tx: &mut Tx, timeline_id: &str, from: i64, to: i64) -> Result<(), StoreError> {
        self.notify(tx, &Event::Messages { n: self.node_id.to_string(), t: timeline_id.to_owned(), from, to }).await
    }

    pub async fn welcome_stored(&self, tx: &mut Tx, welcome_id: i64, device_id: &str) -> Result<(), StoreError> {
        self.notify(tx, &Event::Welcome { n: self.node_id.to_string(), id: welcome_id, d: device_id.to_owned() }).await
    }

    /// Devices were revoked in `tx`: every other node closes their
    /// connections once it commits.
    pub async fn devices_revoked(&self, tx: &mut Tx, device_ids: &[String]) -> Result<(), StoreError> {
        // 100 ids (about 4 KB) a notification, under PostgreSQL's 8000 bytes.
        for chunk in device_ids.chunks(100) {
            self.notify(tx, &Event::Revoked { n: self.node_id.to_string(), d: chunk.to_vec() }).await?;
        }
        Ok(())
    }

    /// A frame for a timeline's members (or the devices of `accounts`
    /// among them) that every other node pushes once `tx` commits.
    pub async fn notice(&self, tx: &mut Tx, timeline_id: &str, accounts: Option<&[String]>, frame: &str) -> Result<(), StoreError> {
        let (n, t, a, f) = (self.node_id.to_string(), timeline_id.to_owned(), accounts.map(<[String]>::to_vec), frame.to_owned());
        self.notify(tx, &Event::Notice { n, t, a, f }).await
    }

    async fn notify(&self, tx: &mut Tx, event: &Event) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let payload = serde_json::to_string(event).expect("events serialize");
        Db::notify(tx, CHANNEL, &payload).await
    }

    /// Listen for the other nodes' notifications until the process ends.
    pub fn spawn_listener(&self, database_url: &str, db: Db, hub: Arc<Hub>) {
        if !self.enabled {
            return;
        }
        let (url, node_id) = (database_url.to_owned(), self.node_id.clone());
        tokio::spawn(async move {
            loop {
                match listen(&url, &node_id, &db, &hub).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "cluster listener failed; reconnecting"),
                }
                // Whatever was notified meanwhile is in the database.
                hub.resync_all();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

async fn listen(url: &str, node_id: &str, db: &Db, hub: &Hub) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    tracing::info!(node = node_id, "listening for other nodes");
    loop {
        let Some(notification) = listener.try_recv().await? else {
            tracing::warn!("cluster listener lost its connection; local connections catch up");
            hub.resync_all();
            continue;
        };
        let event: Event = match serde_json::from_str(notification.payload()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable cluster notification");
                continue;
            }
        };
        if let Err(e) = relay(event, node_id, db, hub).await {
            tracing::warn!(error = %e, "cluster notification not relayed; local connections catch up");
            hub.resync_all();
        }
    }
}

/// Push what another node stored to this node's connections.
async fn relay(event: Event, node_id: &str, db: &Db, hub: &Hub) -> Result<(), StoreError> {
    match event {
        Event::Messages { n, .. } | Event::Welcome { n, .. } | Event::Revoked { n, .. } | Event::Notice { n, .. } if n == node_id => {}
        Event::Notice { t, a, f, .. } => crate::receipts::push_notices(db, hub, &t, a.as_deref(), &[f]).await?,
        Event::Revoked { d, .. } => hub.revoke(&d),
        Event::Messages { t, from, to, .. } => {
            for message in db.messages_after(&t, from - 1, to, to - from + 1).await? {
                let recipients = db.recipients_at(&t, message.seq).await?;
                hub.publish_message(&recipients, &message);
            }
        }
        Event::Welcome { id, d, .. } => {
            if let Some(w) = db.welcome(id).await? {
                hub.publish(&[d], &Push::welcome(id, &w.timeline_id, w.seq, w.data));
            }
        }
    }
    Ok(())
}
