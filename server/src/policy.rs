//! Timeline policies on the server (roles, end dates, consent; the policy
//! is an MLS group-context extension, see `tsunagu_protocol::policy`). The
//! server applies the same `check_commit` as every client, plus what only it
//! can check — that every newly listed person's organisation is the
//! registry's and that family accounts are readers — and refuses:
//!
//! - a new timeline without a valid policy whose only member and owner is
//!   its creator, with the creator's real organisation (`policy_violation`);
//! - a commit its committer's role does not allow (`policy_violation`), or
//!   that adds someone from outside the owner's organisation before the
//!   consent record (`consent_required`);
//! - a post from a device whose account is a reader or not listed
//!   (`forbidden`), from a per-timeline, per-epoch cache in the hub (no
//!   database query per send once cached);
//! - an external commit (rejoin) or group info for an account without
//!   access (listed, end date not passed).
//!
//! End dates: the devices of an account whose `until` has passed are
//! proposed for removal by the server as external sender (the revocation
//! machinery: [`expired_devices`] joins the revoked devices in
//! `revocation::propose_locked`, after every commit), and a periodic sweep
//! ([`spawn_end_date_sweep`], `--policy-sweep-seconds`) finds end dates
//! that passed while nothing happened in the timeline. Members' clients
//! commit the proposals when they sync.
//!
//! Timelines created before policies (no extension) keep their old rules.

use std::collections::BTreeSet;
use std::sync::Arc;

use tsunagu_protocol::people::AccountKind;
use tsunagu_protocol::policy::{self, PolicyError, Role, TimelinePolicy};
use tsunagu_protocol::ErrorCode;

use crate::db::Db;
use crate::error::ApiError;
use crate::mls::{PublicState, StagedChange};
use crate::{now_ms, AppState};

/// The error frame for a policy refusal.
pub fn refusal(e: PolicyError) -> ApiError {
    match e {
        PolicyError::ConsentRequired(m) => ApiError::new(ErrorCode::ConsentRequired, m),
        other => ApiError::new(ErrorCode::PolicyViolation, other.to_string()),
    }
}

/// An account's organisation and kind from the registry (`None`s for an
/// unknown account).
pub async fn registry(db: &Db, account_id: &str) -> Result<(Option<String>, Option<AccountKind>), ApiError> {
    Ok(match db.registered(account_id).await? {
        Some(r) => (r.organisation_id, AccountKind::parse(&r.kind)),
        None => (None, None),
    })
}

/// A new timeline's policy: valid, its only member and owner the creator,
/// with the creator's organisation in the registry.
pub async fn check_creation(db: &Db, creator: &str, public: &PublicState) -> Result<TimelinePolicy, ApiError> {
    let policy = public.policy().map_err(refusal)?.ok_or_else(|| {
        ApiError::new(ErrorCode::PolicyViolation, "a new timeline needs a policy (group-context extension 0xff54) naming its creator as owner")
    })?;
    let (organisation_id, _) = registry(db, creator).await?;
    match policy.members.as_slice() {
        [only] if only.account_id == creator && only.role == Role::Owner && only.organisation_id == organisation_id && only.until.is_none() => {}
        _ => {
            return Err(ApiError::new(
                ErrorCode::PolicyViolation,
                "a new timeline's policy lists only its creator, as owner, with the creator's organisation",
            ))
        }
    }
    if policy.consent_seq.is_some() {
        return Err(ApiError::new(ErrorCode::PolicyViolation, "a new timeline has no consent record yet"));
    }
    Ok(policy)
}

/// Check a staged commit against the timeline's policy before (`old`) and
/// after it; returns the policy after it (`None`: a timeline without one).
pub async fn check_commit(db: &Db, old: Result<Option<TimelinePolicy>, PolicyError>, staged: &StagedChange, now: i64) -> Result<Option<TimelinePolicy>, ApiError> {
    let old = old.map_err(|e| {
        tracing::error!(error = %e, "stored group has a malformed policy");
        ApiError::new(ErrorCode::Internal, "the timeline's policy is unreadable")
    })?;
    let new = staged.new_policy.clone().map_err(refusal)?;
    let (old, new) = match (old, new) {
        (None, None) => return Ok(None),
        (None, Some(_)) => return Err(ApiError::new(ErrorCode::PolicyViolation, "a timeline without a policy cannot gain one")),
        (Some(_), None) => return Err(ApiError::new(ErrorCode::PolicyViolation, "a commit cannot remove the timeline's policy")),
        (Some(old), Some(new)) => (old, new),
    };
    policy::check_commit(&old, &new, &staged.effect, now.max(0) as u64).map_err(refusal)?;
    // What only the server knows: the registry.
    for m in new.members.iter().filter(|m| old.member(&m.account_id).is_none()) {
        let (organisation_id, kind) = registry(db, &m.account_id).await?;
        if kind.is_none() {
            return Err(ApiError::new(ErrorCode::PolicyViolation, format!("account {} is not registered", m.account_id)));
        }
        if m.organisation_id != organisation_id {
            return Err(ApiError::new(ErrorCode::PolicyViolation, format!("account {} is listed with another organisation than its own", m.account_id)));
        }
        if kind == Some(AccountKind::Family) && m.role != Role::Reader {
            return Err(ApiError::new(ErrorCode::PolicyViolation, "family accounts can only be readers"));
        }
    }
    for (o, n) in new.members.iter().filter_map(|n| old.member(&n.account_id).map(|o| (o, n))) {
        if o.role == Role::Reader && n.role != Role::Reader {
            let (_, kind) = registry(db, &n.account_id).await?;
            if kind == Some(AccountKind::Family) {
                return Err(ApiError::new(ErrorCode::PolicyViolation, "family accounts can only be readers"));
            }
        }
    }
    Ok(Some(new))
}

/// The policy of a timeline as the hub caches it for `epoch` (loaded from
/// `timelines.policy` when the epoch is not cached yet).
async fn cached(state: &AppState, timeline_id: &str, epoch: i64) -> Result<Option<Arc<Option<TimelinePolicy>>>, ApiError> {
    if let Some(p) = state.hub.policy_at(timeline_id, epoch) {
        return Ok(Some(p));
    }
    let Some((current, json)) = state.db.timeline_policy(timeline_id).await? else { return Ok(None) };
    let policy = match json {
        None => None,
        Some(j) => Some(TimelinePolicy::decode(j.as_bytes()).map_err(|e| {
            tracing::error!(timeline = %timeline_id, error = %e, "stored policy is malformed");
            ApiError::new(ErrorCode::Internal, "the timeline's policy is unreadable")
        })?),
    };
    Ok(Some(state.hub.set_policy(timeline_id, current, policy)))
}

/// Whether a device of `account_id` may post in the timeline at `epoch`:
/// listed with a role that posts and an end date not passed (between the
/// end date and the commit of the server's removal proposal, the ward nurse
/// already cannot post). A timeline without a policy: everyone; an unknown
/// timeline: the writer refuses it anyway.
pub async fn may_post(state: &AppState, timeline_id: &str, epoch: i64, account_id: &str) -> Result<bool, ApiError> {
    Ok(match cached(state, timeline_id, epoch).await?.as_deref() {
        Some(Some(p)) => p.role(account_id).is_some_and(Role::may_post) && p.has_access(account_id, now_ms().max(0) as u64),
        _ => true,
    })
}

/// Whether an account may (re)join a timeline by external commit, or read
/// its group info: `Some(listed with access)` when the timeline has a
/// policy, `None` when it has none (the caller's older rule applies).
pub async fn has_access(state: &AppState, timeline_id: &str, account_id: &str) -> Result<Option<bool>, ApiError> {
    let Some((_, json)) = state.db.timeline_policy(timeline_id).await? else { return Ok(None) };
    let Some(json) = json else { return Ok(None) };
    let policy = TimelinePolicy::decode(json.as_bytes()).map_err(|_| ApiError::new(ErrorCode::Internal, "the timeline's policy is unreadable"))?;
    Ok(Some(policy.has_access(account_id, now_ms().max(0) as u64)))
}

/// Devices in the group whose account's end date has passed.
pub fn expired_devices(public: &PublicState, now: i64) -> BTreeSet<String> {
    let Ok(Some(policy)) = public.policy() else { return BTreeSet::new() };
    let expired = policy.expired(now.max(0) as u64);
    if expired.is_empty() {
        return BTreeSet::new();
    }
    public.members().unwrap_or_default().into_iter().filter(|l| expired.contains(&l.account_id.as_str())).map(|l| l.device_id).collect()
}

/// Propose the removal of the devices of every account whose end date has
/// passed, in every timeline whose policy has end dates (the proposals of
/// `revocation::propose_removals`, which skips devices already proposed).
pub async fn sweep_end_dates(state: &AppState) -> Result<usize, ApiError> {
    let now = now_ms().max(0) as u64;
    let mut proposed = 0;
    for (timeline_id, json) in state.db.timelines_with_end_dates().await? {
        let Ok(policy) = TimelinePolicy::decode(json.as_bytes()) else { continue };
        if policy.expired(now).is_empty() {
            continue;
        }
        proposed += crate::revocation::propose_removals(state, &timeline_id).await?;
    }
    if proposed > 0 {
        tracing::info!(proposed, "removals proposed for ended access");
    }
    Ok(proposed)
}

/// Run [`sweep_end_dates`] at start and every `every` until shutdown.
pub fn spawn_end_date_sweep(state: &AppState, every: std::time::Duration) {
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = sweep_end_dates(&state).await {
                tracing::warn!(code = e.code.as_str(), message = %e.message, "end-date sweep failed");
            }
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}
