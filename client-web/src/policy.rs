//! Client-side glue for the timeline policy (roles, end dates, consent; see
//! `tsunagu_protocol::policy`): reading it from a group, and describing a
//! commit — one this device is about to make, or one it received — as the
//! [`CommitEffect`] that `check_commit` judges. The core checks its own
//! changes before sending them and every incoming commit before merging it,
//! so a forged commit that a compromised server lets through changes
//! nothing on this device.

use std::collections::BTreeSet;

use openmls::prelude::*;
use tsunagu_protocol::policy::{CommitEffect, TimelinePolicy};

use crate::mls as m;
use crate::ClientError;

/// A group's policy: `Ok(None)` for a timeline made before policies.
pub fn of_group(group: &MlsGroup) -> Result<Option<TimelinePolicy>, ClientError> {
    match m::policy_of(group.extensions()) {
        None => Ok(None),
        Some(Ok(p)) => Ok(Some(p)),
        Some(Err(e)) => Err(e.into()),
    }
}

/// The account of every leaf of a group.
pub fn leaf_accounts(group: &MlsGroup) -> Vec<(LeafNodeIndex, Option<String>)> {
    group.members().map(|mb| (mb.index, m::credential_account_id(&mb.credential))).collect()
}

/// What a commit does, in accounts: `removed` lists the leaves it removes,
/// each with whether the committer proposed the removal itself (the
/// server's external proposals are not the committer's).
pub fn effect(
    leaves: &[(LeafNodeIndex, Option<String>)],
    committer: &str,
    external: bool,
    added: impl IntoIterator<Item = String>,
    removed: &[(LeafNodeIndex, bool)],
) -> CommitEffect {
    let added_accounts: BTreeSet<String> = added.into_iter().collect();
    let account_of = |leaf: LeafNodeIndex| leaves.iter().find(|(i, _)| *i == leaf).and_then(|(_, a)| a.clone());
    let removed_by_committer = removed.iter().filter(|(_, own)| *own).filter_map(|(leaf, _)| account_of(*leaf)).collect();
    let mut accounts_after: BTreeSet<String> = leaves
        .iter()
        .filter(|(i, _)| !removed.iter().any(|(r, _)| r == i))
        .filter_map(|(_, a)| a.clone())
        .collect();
    accounts_after.extend(added_accounts.iter().cloned());
    CommitEffect { committer: committer.to_owned(), external, added_accounts, removed_by_committer, accounts_after }
}

/// The effect of a received commit on `group` (before it is merged).
pub fn staged_effect(group: &MlsGroup, sender: &Sender, committer: &str, staged: &StagedCommit) -> CommitEffect {
    let external = matches!(sender, Sender::NewMemberCommit);
    let mut added: Vec<String> = staged
        .add_proposals()
        .filter_map(|a| m::credential_account_id(a.add_proposal().key_package().leaf_node().credential()))
        .collect();
    if external {
        added.push(committer.to_owned());
    }
    let removed: Vec<(LeafNodeIndex, bool)> = staged
        .remove_proposals()
        .map(|r| (r.remove_proposal().removed(), matches!(r.sender(), Sender::Member(_))))
        .collect();
    effect(&leaf_accounts(group), committer, external, added, &removed)
}

/// The policy a received commit leaves (the old one when it changes no
/// group-context extension).
pub fn staged_policy(staged: &StagedCommit) -> Result<Option<TimelinePolicy>, ClientError> {
    match m::policy_of(staged.group_context().extensions()) {
        None => Ok(None),
        Some(Ok(p)) => Ok(Some(p)),
        Some(Err(e)) => Err(e.into()),
    }
}
