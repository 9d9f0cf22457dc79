//! Removal that really removes. The server cannot commit in MLS, so it is the
//! external sender of every group (RFC 9420 §12.1.8.1, the `external_senders`
//! extension, index 0): when a device is revoked, the server
//!
//! 1. marks it revoked in the database (its token stops working, its key
//!    packages are dropped) and tells every node of the cluster;
//! 2. closes its live connections at once and stops delivering to it (the
//!    hub skips revoked devices; a connection re-checks on catch-up) and
//!    refuses what it sends;
//! 3. appends to every timeline it is in an MLS **Remove proposal** signed
//!    as external sender at the timeline's current epoch (a `proposal`
//!    message from sender `server`), and queues it in the timeline's public
//!    state, so that the next member's commit can cover it by reference.
//!
//! A proposal is void once its epoch ends. After every accepted commit the
//! commit path calls [`propose_locked`] again: revoked devices still in the
//! group at the new epoch get fresh proposals in the same transaction. At
//! start-up [`sweep`] does the same for every timeline (a crash between 1 and
//! 3 loses nothing).
//!
//! [`revoke_devices`] is the one entry point for other code (device
//! revocation over HTTP or the websocket, removal of staff).

use std::collections::BTreeSet;

use tsunagu_protocol::frames::{ExternalSenderInfo, MessageKind, SERVER_SENDER};
use tsunagu_protocol::{Bytes, ErrorCode};

use crate::audit::{self, AuditEntry, Outcome};
use crate::db::revocation::StoredServerKey;
use crate::db::{Db, StoredMessage, Tx};
use crate::error::{ApiError, StoreError};
use crate::mls::{self, ExternalSenderKey, PublicState};
use crate::{now_ms, AppState};

/// `server_keys.purpose` of the external-sender key.
const EXTERNAL_SENDER_PURPOSE: &str = "external_sender";
/// The identity of the server's basic credential.
pub const SERVER_IDENTITY: &str = "tsunagu-server";

/// The server's external-sender key: generated on the first start and stored,
/// so that every node of a cluster (and a restored backup) signs with it.
pub async fn load_or_create_key(db: &Db) -> Result<ExternalSenderKey, StoreError> {
    if let Some(k) = db.server_key(EXTERNAL_SENDER_PURPOSE).await? {
        return decode_key(&k);
    }
    let fresh = ExternalSenderKey::generate(SERVER_IDENTITY).map_err(|e| StoreError::Corrupt(e.message))?;
    let stored = StoredServerKey {
        purpose: EXTERNAL_SENDER_PURPOSE.to_owned(),
        identity: fresh.identity.clone(),
        private_key: fresh.key_pair_bytes(),
        public_key: fresh.public_key().to_vec(),
    };
    db.insert_server_key_if_absent(&stored, now_ms()).await?;
    // Another node may have stored its key first: use whichever is stored.
    let k = db.server_key(EXTERNAL_SENDER_PURPOSE).await?.ok_or_else(|| StoreError::Corrupt("external sender key not stored".into()))?;
    tracing::info!("generated the server's external-sender key");
    decode_key(&k)
}

fn decode_key(k: &StoredServerKey) -> Result<ExternalSenderKey, StoreError> {
    let key = ExternalSenderKey::from_stored(&k.identity, &k.private_key).map_err(|e| StoreError::Corrupt(e.message))?;
    if key.public_key() != k.public_key.as_slice() {
        return Err(StoreError::Corrupt("the stored external sender key pair does not match its public key".into()));
    }
    Ok(key)
}

/// What the `ready` frame tells clients about the external sender.
pub fn external_sender_info(key: &ExternalSenderKey) -> ExternalSenderInfo {
    ExternalSenderInfo { identity: key.identity.clone(), signature_key: Bytes(key.public_key().to_vec()) }
}

/// Revoke devices: mark them revoked (durably, on every node), disconnect
/// them, stop delivery to them, and propose their removal from every timeline
/// they are in. Idempotent: revoking a revoked device proposes again only
/// where no proposal is pending. `reason` is a short reason code for the
/// audit log (e.g. `revoked_by_owner`, `person_removed`). Unknown device ids
/// are refused (`invalid_argument`) and nothing is revoked.
pub async fn revoke_devices(state: &AppState, device_ids: &[String], reason: &str) -> Result<(), ApiError> {
    let ids: Vec<String> = device_ids.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = state.db.begin().await?;
    let found = Db::revoke_devices_tx(&mut tx, &ids, now_ms()).await?;
    if found.len() != ids.len() {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "no such device"));
    }
    state.cluster.devices_revoked(&mut tx, &found).await?;
    for device in &found {
        let (account_id, organisation_id) = Db::device_owner_tx(&mut tx, device).await?;
        let entry = AuditEntry {
            action: "device_revoked",
            outcome: Outcome::Ok,
            actor_account_id: None,
            actor_device_id: None,
            organisation_id: organisation_id.as_deref(),
            subject: Some(device),
            detail: &format!("{reason} account={account_id}"),
            remote_addr: None,
        };
        audit::record_in(&mut tx, entry).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    state.hub.revoke(&found);
    tracing::info!(devices = found.len(), reason, "devices revoked");

    for timeline_id in state.db.open_timelines_of(&found).await? {
        propose_removals(state, &timeline_id).await?;
    }
    Ok(())
}

/// Propose the removal of every revoked device still in a timeline (those
/// without a pending proposal), in its own transaction, and deliver the
/// proposals to the members.
pub async fn propose_removals(state: &AppState, timeline_id: &str) -> Result<usize, ApiError> {
    let mut tx = state.db.begin().await?;
    let Some(locked) = Db::lock_timeline(&mut tx, timeline_id).await? else { return Ok(0) };
    let mut public = PublicState::load(timeline_id, &locked.public_state)?;
    let proposals = propose_locked(&mut tx, &state.external_sender, timeline_id, &mut public, locked.epoch, locked.head_seq).await?;
    if proposals.is_empty() {
        return Ok(0);
    }
    let head = locked.head_seq + proposals.len() as i64;
    Db::store_proposals_tx(&mut tx, timeline_id, head, &public.encode()).await?;
    state.cluster.messages_stored(&mut tx, timeline_id, locked.head_seq + 1, head).await?;
    record_proposals(&mut tx, timeline_id, &proposals).await?;
    tx.commit().await.map_err(StoreError::from)?;
    publish_proposals(state, &public, &proposals)?;
    Ok(proposals.len())
}

/// A removal proposal as stored, with the device it removes.
pub struct Proposed {
    pub device_id: String,
    pub message: StoredMessage,
}

/// Under a timeline's lock, at `epoch` with the head at `head_seq`: store a
/// Remove proposal (seqs `head_seq + 1 …`) for every revoked member not yet
/// covered by one, and queue them in `public`. The caller stores `public`,
/// moves the head over the returned messages, notifies the cluster and,
/// after the commit, publishes them. A group that does not name the server
/// as external sender (created before revocation existed) gets none: its
/// revoked devices are still cut off from delivery, but stay in the group
/// until a member removes them.
pub async fn propose_locked(
    tx: &mut Tx,
    key: &ExternalSenderKey,
    timeline_id: &str,
    public: &mut PublicState,
    epoch: i64,
    head_seq: i64,
) -> Result<Vec<Proposed>, StoreError> {
    let members: Vec<String> = mls::device_set(&public.members().map_err(corrupt)?).into_iter().collect();
    let mut revoked = Db::revoked_among_tx(tx, &members).await?;
    // And the devices of people whose access has ended (policy end dates).
    revoked.extend(crate::policy::expired_devices(public, now_ms()));
    if revoked.is_empty() {
        return Ok(Vec::new());
    }
    if !public.names_external_sender(key) {
        tracing::warn!(timeline = %timeline_id, devices = revoked.len(), "revoked devices in a timeline without the server as external sender; no removal proposed");
        return Ok(Vec::new());
    }
    let proposals = match public.propose_removals(key, &revoked) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(timeline = %timeline_id, error = %e.message, "removal proposals not built");
            return Ok(Vec::new());
        }
    };
    let now = now_ms();
    let mut stored = Vec::with_capacity(proposals.len());
    for (i, (device, data)) in proposals.into_iter().enumerate() {
        let m = StoredMessage {
            timeline_id: timeline_id.to_owned(),
            seq: head_seq + 1 + i as i64,
            epoch,
            kind: MessageKind::Proposal.as_str().to_owned(),
            sender_device_id: SERVER_SENDER.to_owned(),
            // Unique per (timeline, epoch, device): one proposal each.
            msg_id: proposal_msg_id(timeline_id, epoch, &device),
            stored_at: now,
            data,
        };
        Db::insert_message(tx, &m).await?;
        tracing::info!(timeline = %timeline_id, seq = m.seq, epoch, device = %device, "removal proposed");
        stored.push(Proposed { device_id: device, message: m });
    }
    Ok(stored)
}

/// Audit the proposals of one transaction (call last: it locks the chain).
pub async fn record_proposals(tx: &mut Tx, timeline_id: &str, proposals: &[Proposed]) -> Result<(), StoreError> {
    for p in proposals {
        let detail = format!("removal_proposed device={} epoch={}", p.device_id, p.message.epoch);
        // The organisation of the person whose device leaves.
        let (_, organisation_id) = Db::device_owner_tx(tx, &p.device_id).await?;
        let entry = AuditEntry {
            action: "membership_changed",
            outcome: Outcome::Ok,
            actor_account_id: None,
            actor_device_id: None,
            organisation_id: organisation_id.as_deref(),
            subject: Some(timeline_id),
            detail: &detail,
            remote_addr: None,
        };
        audit::record_in(tx, entry).await?;
    }
    Ok(())
}

/// Deliver stored proposals to the members' live connections (the hub skips
/// revoked devices).
pub fn publish_proposals(state: &AppState, public: &PublicState, proposals: &[Proposed]) -> Result<(), ApiError> {
    let recipients: Vec<String> = mls::device_set(&public.members()?).into_iter().collect();
    for p in proposals {
        state.hub.publish_message(&recipients, &p.message);
    }
    Ok(())
}

/// At start-up: propose removals wherever a revoked device is still a member
/// without a pending proposal (say, the server stopped between revoking and
/// proposing).
pub async fn sweep(state: &AppState) -> Result<(), ApiError> {
    let timelines = state.db.timelines_with_revoked_members().await?;
    let mut proposed = 0;
    for timeline_id in &timelines {
        proposed += propose_removals(state, timeline_id).await?;
    }
    if proposed > 0 {
        tracing::info!(timelines = timelines.len(), proposed, "pending removals proposed at start");
    }
    Ok(())
}

fn proposal_msg_id(timeline_id: &str, epoch: i64, device_id: &str) -> String {
    // msg_id allows [A-Za-z0-9_-] only, up to 64 characters: a hash of the
    // timeline and device keeps it short and unique.
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{timeline_id}/{device_id}").as_bytes());
    format!("rm-{}-{epoch}", hex::encode(&digest[..16]))
}

fn corrupt(e: ApiError) -> StoreError {
    StoreError::Corrupt(e.message)
}
