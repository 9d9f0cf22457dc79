//! A timeline's roles, call lists and consent reference: the *timeline
//! policy*, carried in every group's MLS group context as a private
//! extension ([`POLICY_EXTENSION_TYPE`], JSON bytes). Because it is in the
//! group context, every member's client and the server see the same policy
//! at every epoch, and a commit that changes it is signed by its committer.
//!
//! The rules of who may change what ([`check_commit`]) live here, in the one
//! crate that both the server and the clients build, so the server's refusal
//! and every client's rejection of a forged commit are the same decision.
//!
//! The policy holds account ids, roles, organisation ids, end dates and the
//! sequence number of the consent record — never the patient's name or any
//! other content (those are encrypted application messages).
//!
//! A member's MLS credential is a basic credential whose identity is
//! `"{account_id}/{device_id}"` ([`credential_identity`]), so every client
//! knows the account (and therefore the role) of a message's sender without
//! asking the server; the server checks the pair against its registry
//! whenever a leaf enters a group.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The MLS extension type of the timeline policy (private-use range,
/// RFC 9420 §17.1). Every leaf must list it in its capabilities.
pub const POLICY_EXTENSION_TYPE: u16 = 0xff54;

/// The policy format this crate writes and reads.
pub const POLICY_VERSION: u32 = 1;

/// Default time an urgent post waits for the first call before the second
/// call is alerted.
pub const DEFAULT_ESCALATE_AFTER_SECS: u32 = 15 * 60;

/// What a person may do in one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The professional who opened the timeline (transferable): may invite,
    /// remove, change roles, call lists and consent.
    Owner,
    /// A professional: reads and posts.
    Member,
    /// A hospital's liaison officer (連携担当者): reads, posts, and invites and
    /// removes staff of their own organisation (as members).
    Liaison,
    /// A family member: reads only.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
            Role::Liaison => "liaison",
            Role::Reader => "reader",
        }
    }
    pub fn may_post(self) -> bool {
        self != Role::Reader
    }
}

/// One person of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPolicy {
    pub account_id: String,
    pub role: Role,
    /// The person's organisation (none for family). The server checks it
    /// against its registry when the person is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation_id: Option<String>,
    /// End of access, milliseconds since the Unix epoch: after it the server
    /// proposes the removal of the person's devices (ward staff of an
    /// admission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// Who added the person (account id); none for the creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_by: Option<String>,
}

/// The policy of one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelinePolicy {
    pub v: u32,
    /// Every person with access, sorted by account id. Exactly one owner.
    pub members: Vec<MemberPolicy>,
    /// Accounts alerted first by an urgent post (the nurse on duty).
    #[serde(default)]
    pub first_call: Vec<String>,
    /// Accounts alerted when no first-call account acknowledged an urgent
    /// post within `escalate_after_secs`.
    #[serde(default)]
    pub second_call: Vec<String>,
    pub escalate_after_secs: u32,
    /// The sequence number of the (encrypted) consent record. Required
    /// before anyone outside the owner's organisation is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_seq: Option<u64>,
}

impl TimelinePolicy {
    /// The policy of a new timeline: its creator is the owner and first call.
    pub fn new(owner_account_id: &str, organisation_id: Option<&str>) -> TimelinePolicy {
        TimelinePolicy {
            v: POLICY_VERSION,
            members: vec![MemberPolicy {
                account_id: owner_account_id.to_owned(),
                role: Role::Owner,
                organisation_id: organisation_id.map(str::to_owned),
                until: None,
                added_by: None,
            }],
            first_call: vec![owner_account_id.to_owned()],
            second_call: Vec::new(),
            escalate_after_secs: DEFAULT_ESCALATE_AFTER_SECS,
            consent_seq: None,
        }
    }

    /// The extension's bytes (canonical: members sorted by account id).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = self.clone();
        p.members.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        serde_json::to_vec(&p).expect("a policy serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<TimelinePolicy, PolicyError> {
        let p: TimelinePolicy =
            serde_json::from_slice(bytes).map_err(|e| PolicyError::Malformed(e.to_string()))?;
        if p.v != POLICY_VERSION {
            return Err(PolicyError::Malformed(format!("unsupported policy version {}", p.v)));
        }
        p.validate()?;
        Ok(p)
    }

    /// Internal consistency: one owner, no account twice, call lists name
    /// members who may post.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut seen = BTreeSet::new();
        for m in &self.members {
            if !seen.insert(m.account_id.as_str()) {
                return Err(PolicyError::Malformed(format!("account {} listed twice", m.account_id)));
            }
        }
        let owners = self.members.iter().filter(|m| m.role == Role::Owner).count();
        if owners != 1 {
            return Err(PolicyError::Malformed(format!("a timeline has exactly one owner, not {owners}")));
        }
        for a in self.first_call.iter().chain(&self.second_call) {
            if !self.member(a).is_some_and(|m| m.role.may_post()) {
                return Err(PolicyError::Malformed(format!("call list names {a}, who is not a posting member")));
            }
        }
        Ok(())
    }

    pub fn member(&self, account_id: &str) -> Option<&MemberPolicy> {
        self.members.iter().find(|m| m.account_id == account_id)
    }

    pub fn role(&self, account_id: &str) -> Option<Role> {
        self.member(account_id).map(|m| m.role)
    }

    pub fn owner(&self) -> &MemberPolicy {
        self.members.iter().find(|m| m.role == Role::Owner).expect("validated: one owner")
    }

    /// Whether the account has access at `now_ms` (listed, end date not passed).
    pub fn has_access(&self, account_id: &str, now_ms: u64) -> bool {
        self.member(account_id).is_some_and(|m| m.until.is_none_or(|u| now_ms < u))
    }

    /// Accounts whose end date has passed at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> Vec<&str> {
        self.members.iter().filter(|m| m.until.is_some_and(|u| now_ms >= u)).map(|m| m.account_id.as_str()).collect()
    }

    /// Whether the account is outside the owner's organisation (readers —
    /// family — always are): adding such a person needs the consent record.
    /// Professionals without an organisation (accounts the operator made)
    /// count as the same "organisation" as an owner without one.
    pub fn is_outsider(&self, m: &MemberPolicy) -> bool {
        let owner_org = self.owner().organisation_id.as_deref();
        m.role == Role::Reader || m.organisation_id.as_deref() != owner_org
    }
}

/// Why a policy or a commit's change of it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    Malformed(String),
    /// The committer's role does not allow the change.
    NotAllowed(String),
    /// Someone from another organisation is added before consent is recorded.
    ConsentRequired(String),
    /// A device in the group belongs to an account the policy does not list.
    Unlisted(String),
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyError::Malformed(e) => write!(f, "malformed timeline policy: {e}"),
            PolicyError::NotAllowed(e) => write!(f, "not allowed: {e}"),
            PolicyError::ConsentRequired(e) => write!(f, "consent required: {e}"),
            PolicyError::Unlisted(e) => write!(f, "unlisted member: {e}"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// What a commit does, as both the server (from its `PublicGroup`) and a
/// client (from the staged commit) see it, in accounts.
#[derive(Debug, Clone, Default)]
pub struct CommitEffect {
    /// The committer's account.
    pub committer: String,
    /// An external commit: a device (re)joining by itself.
    pub external: bool,
    /// Accounts of the leaves the commit adds (by Add proposals).
    pub added_accounts: BTreeSet<String>,
    /// Accounts of leaves removed by the committer's own Remove proposals
    /// (not the server's external proposals, which anyone may commit).
    pub removed_by_committer: BTreeSet<String>,
    /// Accounts with at least one leaf after the commit.
    pub accounts_after: BTreeSet<String>,
}

/// Check a commit against the timeline's policy before (`old`) and after
/// (`new`; the same as `old` when the commit has no group-context change).
///
/// - every account with a leaf after the commit is listed in `new`;
/// - an external commit changes no policy and its committer has access;
/// - the owner may change anything;
/// - a liaison may add and remove people of their own organisation as
///   members (with or without an end date) and nothing else of the policy;
/// - anyone else (member, reader) may commit the server's proposals, update
///   their own leaf, and add new devices of people already listed — a
///   member only; readers add nothing;
/// - anyone added from outside the owner's organisation needs `consent_seq`.
pub fn check_commit(old: &TimelinePolicy, new: &TimelinePolicy, effect: &CommitEffect, now_ms: u64) -> Result<(), PolicyError> {
    new.validate()?;
    for a in &effect.accounts_after {
        if new.member(a).is_none() {
            return Err(PolicyError::Unlisted(format!("account {a} has a device in the group but is not in the policy")));
        }
    }
    if effect.external {
        if old != new {
            return Err(PolicyError::NotAllowed("an external commit cannot change the policy".into()));
        }
        if !old.has_access(&effect.committer, now_ms) {
            return Err(PolicyError::NotAllowed(format!("account {} has no access to this timeline", effect.committer)));
        }
        return Ok(());
    }
    let role = old
        .role(&effect.committer)
        .ok_or_else(|| PolicyError::NotAllowed(format!("the committer {} is not in the policy", effect.committer)))?;
    // People who were not listed before (new to the timeline).
    let newly_listed: Vec<&MemberPolicy> = new.members.iter().filter(|m| old.member(&m.account_id).is_none()).collect();
    let dropped: Vec<&MemberPolicy> = old.members.iter().filter(|m| new.member(&m.account_id).is_none()).collect();
    let changed: Vec<(&MemberPolicy, &MemberPolicy)> = new
        .members
        .iter()
        .filter_map(|m| old.member(&m.account_id).filter(|o| *o != m).map(|o| (o, m)))
        .collect();
    let consent_needed = newly_listed.iter().any(|m| new.is_outsider(m));
    if consent_needed && new.consent_seq.is_none() {
        return Err(PolicyError::ConsentRequired("record the patient's consent before inviting anyone from another organisation".into()));
    }
    for a in &effect.added_accounts {
        if !new.has_access(a, now_ms) {
            return Err(PolicyError::NotAllowed(format!("account {a} is added but has no access in the policy")));
        }
    }
    match role {
        Role::Owner => Ok(()),
        Role::Liaison => {
            // (Professionals without an organisation — accounts the operator
            // made — are one "organisation", as in `is_outsider`; family
            // accounts are readers, never staff.)
            let own_org = old.member(&effect.committer).and_then(|m| m.organisation_id.clone());
            let of_own_org = |m: &MemberPolicy| m.organisation_id == own_org;
            for m in &newly_listed {
                if !(of_own_org(m) && m.role == Role::Member) {
                    return Err(PolicyError::NotAllowed("a liaison may add only staff of their own organisation, as members".into()));
                }
            }
            for m in &dropped {
                if !(of_own_org(m) && m.role == Role::Member) && m.account_id != effect.committer {
                    return Err(PolicyError::NotAllowed("a liaison may remove only staff of their own organisation".into()));
                }
            }
            for (o, n) in &changed {
                let only_end_date = MemberPolicy { until: n.until, ..(*o).clone() } == **n;
                if !(of_own_org(o) && o.role == Role::Member && only_end_date) {
                    return Err(PolicyError::NotAllowed("a liaison may change only the end date of their own organisation's staff".into()));
                }
            }
            let same_rest = TimelinePolicy { members: Vec::new(), ..old.clone() } == TimelinePolicy { members: Vec::new(), ..new.clone() };
            if !same_rest {
                return Err(PolicyError::NotAllowed("only the owner changes the call lists, the escalation time and the consent".into()));
            }
            for a in &effect.removed_by_committer {
                let staff = old.member(a).is_some_and(|m| of_own_org(m) && m.role == Role::Member);
                if !staff && *a != effect.committer {
                    return Err(PolicyError::NotAllowed(format!("a liaison may remove only staff of their own organisation, not {a}")));
                }
            }
            Ok(())
        }
        Role::Member | Role::Reader => {
            if old != new {
                return Err(PolicyError::NotAllowed(format!("a {} cannot change roles, members or call lists", role.as_str())));
            }
            if role == Role::Reader && !effect.added_accounts.is_empty() {
                return Err(PolicyError::NotAllowed("a reader cannot add devices".into()));
            }
            if let Some(a) = effect.removed_by_committer.iter().find(|a| **a != effect.committer) {
                return Err(PolicyError::NotAllowed(format!("a {} cannot remove others ({a})", role.as_str())));
            }
            Ok(())
        }
    }
}

/// The basic-credential identity of a device: `"{account_id}/{device_id}"`.
pub fn credential_identity(account_id: &str, device_id: &str) -> String {
    format!("{account_id}/{device_id}")
}

/// The `(account_id, device_id)` named by a credential identity: both
/// non-empty, no further `/`. (The server checks the pair against its
/// registry; this only splits it.)
pub fn parse_credential_identity(identity: &str) -> Option<(&str, &str)> {
    let (account, device) = identity.split_once('/')?;
    (!account.is_empty() && !device.is_empty() && !device.contains('/')).then_some((account, device))
}

/// Accounts by device, for building a [`CommitEffect`] from leaf identities.
pub fn accounts_of<'a>(identities: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    identities
        .into_iter()
        .filter_map(parse_credential_identity)
        .map(|(a, d)| (d.to_owned(), a.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "00000000-0000-4000-8000-000000000001";
    const NURSE: &str = "00000000-0000-4000-8000-000000000002";
    const DAUGHTER: &str = "00000000-0000-4000-8000-000000000003";
    const LIAISON: &str = "00000000-0000-4000-8000-000000000004";
    const WARD: &str = "00000000-0000-4000-8000-000000000005";
    const OTHER: &str = "00000000-0000-4000-8000-000000000006";
    const CLINIC: &str = "10000000-0000-4000-8000-000000000001";
    const HOSPITAL: &str = "10000000-0000-4000-8000-000000000002";

    fn person(a: &str, role: Role, org: Option<&str>) -> MemberPolicy {
        MemberPolicy { account_id: a.into(), role, organisation_id: org.map(Into::into), until: None, added_by: Some(DOC.into()) }
    }

    fn team() -> TimelinePolicy {
        let mut p = TimelinePolicy::new(DOC, Some(CLINIC));
        p.members.push(person(NURSE, Role::Member, Some(CLINIC)));
        p.members.push(person(DAUGHTER, Role::Reader, None));
        p.members.push(person(LIAISON, Role::Liaison, Some(HOSPITAL)));
        p.consent_seq = Some(3);
        p
    }

    fn effect(committer: &str, added: &[&str], removed: &[&str], after: &TimelinePolicy) -> CommitEffect {
        CommitEffect {
            committer: committer.into(),
            external: false,
            added_accounts: added.iter().map(|s| s.to_string()).collect(),
            removed_by_committer: removed.iter().map(|s| s.to_string()).collect(),
            accounts_after: after.members.iter().map(|m| m.account_id.clone()).collect(),
        }
    }

    #[test]
    fn golden_encoding() {
        let p = TimelinePolicy::new(DOC, Some(CLINIC));
        let json = format!(
            r#"{{"v":1,"members":[{{"account_id":"{DOC}","role":"owner","organisation_id":"{CLINIC}"}}],"first_call":["{DOC}"],"second_call":[],"escalate_after_secs":900}}"#
        );
        assert_eq!(String::from_utf8(p.encode()).unwrap(), json);
        assert_eq!(TimelinePolicy::decode(json.as_bytes()).unwrap(), p);
    }

    #[test]
    fn owner_adds_outsiders_only_after_consent() {
        let mut old = TimelinePolicy::new(DOC, Some(CLINIC));
        let mut new = old.clone();
        new.members.push(person(DAUGHTER, Role::Reader, None));
        let e = effect(DOC, &[DAUGHTER], &[], &new);
        assert!(matches!(check_commit(&old, &new, &e, 0), Err(PolicyError::ConsentRequired(_))));
        old.consent_seq = Some(2);
        new.consent_seq = Some(2);
        check_commit(&old, &new, &e, 0).unwrap();
        // A colleague of the same clinic needs no consent.
        let mut colleague = TimelinePolicy::new(DOC, Some(CLINIC));
        let before = colleague.clone();
        colleague.members.push(person(NURSE, Role::Member, Some(CLINIC)));
        check_commit(&before, &colleague, &effect(DOC, &[NURSE], &[], &colleague), 0).unwrap();
    }

    #[test]
    fn members_and_readers_change_nothing() {
        let old = team();
        let mut new = old.clone();
        new.members.push(person(OTHER, Role::Member, Some(CLINIC)));
        for who in [NURSE, DAUGHTER] {
            assert!(matches!(check_commit(&old, &new, &effect(who, &[OTHER], &[], &new), 0), Err(PolicyError::NotAllowed(_))));
        }
        // Nor remove others, nor promote themselves.
        assert!(check_commit(&old, &old, &effect(NURSE, &[], &[DAUGHTER], &old), 0).is_err());
        let mut promoted = old.clone();
        promoted.members.iter_mut().find(|m| m.account_id == NURSE).unwrap().role = Role::Owner;
        promoted.members.iter_mut().find(|m| m.account_id == DOC).unwrap().role = Role::Member;
        assert!(check_commit(&old, &promoted, &effect(NURSE, &[], &[], &promoted), 0).is_err());
        // But a member may add a new device of someone listed, and commit
        // the server's removals (not counted as the committer's).
        check_commit(&old, &old, &effect(NURSE, &[NURSE], &[], &old), 0).unwrap();
        check_commit(&old, &old, &effect(DAUGHTER, &[], &[], &old), 0).unwrap();
        assert!(check_commit(&old, &old, &effect(DAUGHTER, &[DAUGHTER], &[], &old), 0).is_err());
    }

    #[test]
    fn liaison_invites_and_removes_own_staff_only() {
        let old = team();
        let mut new = old.clone();
        let mut ward = person(WARD, Role::Member, Some(HOSPITAL));
        ward.until = Some(1_000);
        new.members.push(ward.clone());
        check_commit(&old, &new, &effect(LIAISON, &[WARD], &[], &new), 0).unwrap();
        // Not as liaison, not from another organisation.
        let mut wrong = old.clone();
        wrong.members.push(MemberPolicy { role: Role::Liaison, ..ward.clone() });
        assert!(check_commit(&old, &wrong, &effect(LIAISON, &[WARD], &[], &wrong), 0).is_err());
        let mut clinic = old.clone();
        clinic.members.push(person(OTHER, Role::Member, Some(CLINIC)));
        assert!(check_commit(&old, &clinic, &effect(LIAISON, &[OTHER], &[], &clinic), 0).is_err());
        // Removing the ward nurse (and her entry) is fine; the nurse of the clinic is not.
        let after_discharge = old.clone();
        check_commit(&new, &after_discharge, &effect(LIAISON, &[], &[WARD], &after_discharge), 0).unwrap();
        assert!(check_commit(&old, &old, &effect(LIAISON, &[], &[NURSE], &old), 0).is_err());
        // Nor the call lists.
        let mut calls = old.clone();
        calls.second_call.push(LIAISON.into());
        assert!(check_commit(&old, &calls, &effect(LIAISON, &[], &[], &calls), 0).is_err());
    }

    #[test]
    fn end_dates_and_external_commits() {
        let mut p = team();
        p.members.push(MemberPolicy { until: Some(500), ..person(WARD, Role::Member, Some(HOSPITAL)) });
        assert!(p.has_access(WARD, 499));
        assert!(!p.has_access(WARD, 500));
        assert_eq!(p.expired(600), vec![WARD]);
        let mut rejoin = effect(WARD, &[WARD], &[], &p);
        rejoin.external = true;
        check_commit(&p, &p, &rejoin, 100).unwrap();
        assert!(check_commit(&p, &p, &rejoin, 600).is_err());
        // Every device's account must be listed.
        let mut stray = effect(DOC, &[OTHER], &[], &p);
        stray.accounts_after.insert(OTHER.into());
        assert!(matches!(check_commit(&p, &p, &stray, 0), Err(PolicyError::Unlisted(_))));
    }

    #[test]
    fn validation() {
        let mut p = team();
        p.second_call.push(DAUGHTER.into());
        assert!(p.validate().is_err(), "a reader on a call list");
        let mut two = team();
        two.members[1].role = Role::Owner;
        assert!(two.validate().is_err());
        assert_eq!(parse_credential_identity(&credential_identity(DOC, NURSE)), Some((DOC, NURSE)));
        assert_eq!(parse_credential_identity("just-a-device"), None);
    }
}
