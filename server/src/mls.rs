//! Server-side MLS: parse what clients upload, validate commits against each
//! timeline's public group state (openmls `PublicGroup`), and check that every
//! credential belongs to the device that uses it. Only this module speaks
//! openmls; it never sees plaintext because the server holds no group secrets.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use tsunagu_protocol::ErrorCode;

use tsunagu_protocol::policy::{CommitEffect, PolicyError, TimelinePolicy, POLICY_EXTENSION_TYPE};

use crate::error::ApiError;

/// The timeline policy among a group context's extensions.
fn policy_in(extensions: &Extensions<GroupContext>) -> Result<Option<TimelinePolicy>, PolicyError> {
    extensions.unknown(POLICY_EXTENSION_TYPE).map(|u| TimelinePolicy::decode(&u.0)).transpose()
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidMls, msg)
}

fn mismatch(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::CredentialMismatch, msg)
}

fn parse_body(bytes: &[u8]) -> Result<MlsMessageBodyIn, ApiError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| invalid(format!("not an MLS message: {e}")))?;
    Ok(msg.extract())
}

/// The `(account_id, device_id)` named by a member's basic credential
/// (identity `"{account_id}/{device_id}"`, see `tsunagu_protocol::policy`).
pub fn account_and_device(credential: &Credential) -> Result<(String, String), ApiError> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| mismatch("credential is not a basic credential"))?;
    let text = std::str::from_utf8(basic.identity()).map_err(|_| mismatch("credential identity is not UTF-8"))?;
    let (account, device) = tsunagu_protocol::policy::parse_credential_identity(text)
        .ok_or_else(|| mismatch("credential identity must be \"{account_id}/{device_id}\""))?;
    Ok((account.to_owned(), device.to_owned()))
}

/// The device id named by a member's basic credential.
pub fn identity(credential: &Credential) -> Result<String, ApiError> {
    Ok(account_and_device(credential)?.1)
}

/// A leaf's claim: which account and device it names and with which signature key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafClaim {
    pub account_id: String,
    pub device_id: String,
    pub signature_key: Vec<u8>,
}

fn claim(credential: &Credential, signature_key: &[u8]) -> Result<LeafClaim, ApiError> {
    let (account_id, device_id) = account_and_device(credential)?;
    Ok(LeafClaim { account_id, device_id, signature_key: signature_key.to_vec() })
}

fn leaf_claim(leaf: &LeafNode) -> Result<LeafClaim, ApiError> {
    claim(leaf.credential(), leaf.signature_key().as_slice())
}

/// Validate a key package (signature, lifetime, version) and return the leaf
/// it claims; the caller checks the claim against the uploading device.
pub fn key_package_claim(bytes: &[u8]) -> Result<LeafClaim, ApiError> {
    let kp = KeyPackageIn::tls_deserialize_exact(bytes).map_err(|e| invalid(format!("not a key package: {e}")))?;
    let kp = kp.validate(&RustCrypto::default(), ProtocolVersion::Mls10).map_err(|e| invalid(format!("invalid key package: {e}")))?;
    leaf_claim(kp.leaf_node())
}

/// The epoch of an application message for `timeline_id`; refuses anything
/// that is not an encrypted application message of that group.
pub fn application_epoch(bytes: &[u8], timeline_id: &str) -> Result<u64, ApiError> {
    let MlsMessageBodyIn::PrivateMessage(pm) = parse_body(bytes)? else {
        return Err(invalid("an application message must be an MLS PrivateMessage"));
    };
    let pm = ProtocolMessage::from(pm);
    if pm.group_id().as_slice() != timeline_id.as_bytes() {
        return Err(invalid("the message belongs to another group"));
    }
    if pm.content_type() != ContentType::Application {
        return Err(invalid("a PrivateMessage sent with `send` must carry application content"));
    }
    Ok(pm.epoch().as_u64())
}

/// A commit parsed far enough to know its epoch, before any validation.
pub struct IncomingCommit {
    message: PublicMessageIn,
    pub epoch: u64,
}

pub fn parse_commit(bytes: &[u8], timeline_id: &str) -> Result<IncomingCommit, ApiError> {
    let MlsMessageBodyIn::PublicMessage(pm) = parse_body(bytes)? else {
        return Err(invalid("a commit must be an MLS PublicMessage"));
    };
    let protocol = ProtocolMessage::from(pm.clone());
    if protocol.group_id().as_slice() != timeline_id.as_bytes() {
        return Err(invalid("the commit belongs to another group"));
    }
    if protocol.content_type() != ContentType::Commit {
        return Err(invalid("the message is not a commit"));
    }
    Ok(IncomingCommit { epoch: protocol.epoch().as_u64(), message: pm })
}

/// Check a GroupInfo message for `timeline_id` at `epoch`; returns its bytes
/// unchanged so it can be stored for external joins.
pub fn check_group_info(bytes: &[u8], timeline_id: &str, epoch: u64) -> Result<(), ApiError> {
    let MlsMessageBodyIn::GroupInfo(gi) = parse_body(bytes)? else {
        return Err(invalid("group_info must be an MLS GroupInfo message"));
    };
    if gi.group_id().as_slice() != timeline_id.as_bytes() || gi.epoch().as_u64() != epoch {
        return Err(invalid(format!("group_info must be for this timeline at epoch {epoch}")));
    }
    if gi.extensions().ratchet_tree().is_none() {
        return Err(invalid("group_info must carry the ratchet tree extension"));
    }
    Ok(())
}

pub fn check_welcome(bytes: &[u8]) -> Result<(), ApiError> {
    match parse_body(bytes)? {
        MlsMessageBodyIn::Welcome(_) => Ok(()),
        _ => Err(invalid("welcome must be an MLS Welcome message")),
    }
}

/// A timeline's public group state, as stored in the database: the entries of
/// the openmls storage that `PublicGroup` writes, length-prefixed and sorted.
pub struct PublicState {
    storage: MemoryStorage,
    group: PublicGroup,
}

impl PublicState {
    /// Start tracking a new group from its epoch-0 GroupInfo. The caller checks
    /// the returned members (the creator only).
    pub fn create(timeline_id: &str, group_info: &[u8]) -> Result<(PublicState, Vec<LeafClaim>), ApiError> {
        let MlsMessageBodyIn::GroupInfo(gi) = parse_body(group_info)? else {
            return Err(invalid("group_info must be an MLS GroupInfo message"));
        };
        if gi.group_id().as_slice() != timeline_id.as_bytes() {
            return Err(invalid("the group id must be the timeline id"));
        }
        if gi.epoch().as_u64() != 0 {
            return Err(invalid("a new timeline starts at epoch 0"));
        }
        let tree = gi.extensions().ratchet_tree().ok_or_else(|| invalid("group_info must carry the ratchet tree extension"))?.ratchet_tree().clone();
        let storage = MemoryStorage::default();
        let (group, _) = PublicGroup::from_external(&RustCrypto::default(), &storage, tree, gi, ProposalStore::new())
            .map_err(|e| invalid(format!("group_info does not validate: {e}")))?;
        let state = PublicState { storage, group };
        let members = state.members()?;
        Ok((state, members))
    }

    pub fn load(timeline_id: &str, bytes: &[u8]) -> Result<PublicState, ApiError> {
        let storage = decode_storage(bytes).ok_or_else(|| corrupt("public state does not decode"))?;
        let group = PublicGroup::load(&storage, &GroupId::from_slice(timeline_id.as_bytes()))
            .map_err(|_| corrupt("public state does not load"))?
            .ok_or_else(|| corrupt("public state is missing"))?;
        Ok(PublicState { storage, group })
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_storage(&self.storage)
    }

    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The timeline policy in the group context (`Ok(None)` for a group
    /// made before policies).
    pub fn policy(&self) -> Result<Option<TimelinePolicy>, PolicyError> {
        policy_in(self.group.group_context().extensions())
    }

    /// Every leaf of the group: the devices that receive its messages.
    pub fn members(&self) -> Result<Vec<LeafClaim>, ApiError> {
        self.group
            .members()
            .map(|m| claim(&m.credential, &m.signature_key))
            .collect()
    }

    /// Validate a commit against the current state. The result names the
    /// sender and every new leaf; the caller checks them against registered
    /// devices before calling [`StagedChange::merge`].
    pub fn stage(self, commit: IncomingCommit) -> Result<StagedChange, ApiError> {
        let processed = self
            .group
            .process_message(&RustCrypto::default(), commit.message)
            .map_err(|e| invalid(format!("commit does not validate: {e}")))?;
        let external = match processed.sender() {
            Sender::Member(_) => false,
            Sender::NewMemberCommit => true,
            _ => return Err(invalid("commits must come from a member or be external commits")),
        };
        let (committer, sender) = account_and_device(processed.credential())?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(invalid("the message is not a commit"));
        };
        let mut new_leaves = Vec::new();
        for add in staged.add_proposals() {
            new_leaves.push(leaf_claim(add.add_proposal().key_package().leaf_node())?);
        }
        if let Some(leaf) = staged.update_path_leaf_node() {
            new_leaves.push(leaf_claim(leaf)?);
        }
        // What the commit does, in accounts, for the policy check.
        let leaves: Vec<(LeafNodeIndex, String)> =
            self.group.members().map(|m| Ok((m.index, account_and_device(&m.credential)?.0))).collect::<Result<_, ApiError>>()?;
        let removed: Vec<(LeafNodeIndex, bool)> =
            staged.remove_proposals().map(|r| (r.remove_proposal().removed(), matches!(r.sender(), Sender::Member(_)))).collect();
        let account_of = |leaf: LeafNodeIndex| leaves.iter().find(|(i, _)| *i == leaf).map(|(_, a)| a.clone());
        let mut added_accounts: BTreeSet<String> = BTreeSet::new();
        for add in staged.add_proposals() {
            added_accounts.insert(account_and_device(add.add_proposal().key_package().leaf_node().credential())?.0);
        }
        if external {
            added_accounts.insert(committer.clone());
        }
        let mut accounts_after: BTreeSet<String> =
            leaves.iter().filter(|(i, _)| !removed.iter().any(|(r, _)| r == i)).map(|(_, a)| a.clone()).collect();
        accounts_after.extend(added_accounts.iter().cloned());
        let effect = CommitEffect {
            committer,
            external,
            added_accounts,
            removed_by_committer: removed.iter().filter(|(_, own)| *own).filter_map(|(l, _)| account_of(*l)).collect(),
            accounts_after,
        };
        let new_policy = policy_in(staged.group_context().extensions());
        Ok(StagedChange { state: self, staged: *staged, sender, external, new_leaves, effect, new_policy })
    }
}

/// A validated commit, not yet merged.
pub struct StagedChange {
    state: PublicState,
    staged: StagedCommit,
    /// The device named by the committer's credential.
    pub sender: String,
    /// True for an external commit (a device joining or rejoining by itself).
    pub external: bool,
    /// Leaves the commit adds or updates: each must name a registered device
    /// with that signature key, and an update path leaf must be the sender's.
    pub new_leaves: Vec<LeafClaim>,
    /// What the commit does, in accounts (for `policy::check_commit`).
    pub effect: CommitEffect,
    /// The policy in the new group context (`None`: the group has none).
    pub new_policy: Result<Option<TimelinePolicy>, PolicyError>,
}

impl StagedChange {
    pub fn merge(self) -> Result<PublicState, ApiError> {
        let StagedChange { mut state, staged, .. } = self;
        state.group.merge_commit(&state.storage, staged).map_err(|e| invalid(format!("commit does not merge: {e}")))?;
        Ok(state)
    }
}

// ---- the server as external sender (revocation) ----------------------------------------

/// The server's MLS external sender: the key that signs Remove proposals for
/// revoked devices, and the credential every group names in its
/// `external_senders` extension (at index 0, alone).
pub struct ExternalSenderKey {
    pub identity: String,
    signer: SignatureKeyPair,
}

impl ExternalSenderKey {
    /// A new Ed25519 key pair.
    pub fn generate(identity: &str) -> Result<ExternalSenderKey, ApiError> {
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(|e| {
            tracing::error!(error = ?e, "cannot generate the external sender key");
            ApiError::new(ErrorCode::Internal, "cannot generate a key")
        })?;
        Ok(ExternalSenderKey { identity: identity.to_owned(), signer })
    }

    /// From the stored form ([`Self::key_pair_bytes`]).
    pub fn from_stored(identity: &str, key_pair: &[u8]) -> Result<ExternalSenderKey, ApiError> {
        let signer = SignatureKeyPair::tls_deserialize_exact(key_pair).map_err(|_| corrupt("the external sender key does not decode"))?;
        Ok(ExternalSenderKey { identity: identity.to_owned(), signer })
    }

    pub fn public_key(&self) -> &[u8] {
        self.signer.public()
    }

    /// The key pair, TLS-encoded, for storage (it holds the private key).
    pub fn key_pair_bytes(&self) -> Vec<u8> {
        self.signer.tls_serialize_detached().expect("a key pair serializes")
    }

    /// The extension entry naming this key.
    pub fn external_sender(&self) -> ExternalSender {
        ExternalSender::new(self.signer.to_public_vec().into(), BasicCredential::new(self.identity.as_bytes().to_vec()).into())
    }
}

/// The index of the server in every group's `external_senders` extension.
pub const SERVER_SENDER_INDEX: u32 = 0;

impl PublicState {
    /// The group's `external_senders` extension, TLS-encoded (`None` without
    /// one), to check that a commit leaves it unchanged.
    pub fn external_senders_encoded(&self) -> Option<Vec<u8>> {
        let senders = self.group.group_context().extensions().external_senders()?;
        senders.tls_serialize_detached().ok()
    }

    /// Whether the group names exactly the server as its external sender.
    pub fn names_external_sender(&self, key: &ExternalSenderKey) -> bool {
        self.group.group_context().extensions().external_senders().is_some_and(|s| s.as_slice() == [key.external_sender()])
    }

    /// Leaves that a queued proposal of the server already removes.
    fn proposed_removals(&self) -> Result<BTreeSet<LeafNodeIndex>, ApiError> {
        let queued = self.group.queued_proposals(&self.storage).map_err(|_| corrupt("queued proposals do not load"))?;
        Ok(queued
            .iter()
            .filter(|(_, q)| matches!(q.sender(), Sender::External(_)))
            .filter_map(|(_, q)| match q.proposal() {
                Proposal::Remove(r) => Some(r.removed()),
                _ => None,
            })
            .collect())
    }

    /// Devices of `devices` that are members and not yet covered by a queued
    /// Remove proposal of the server.
    pub fn unproposed_members(&self, devices: &BTreeSet<String>) -> Result<Vec<String>, ApiError> {
        let proposed = self.proposed_removals()?;
        let mut out = Vec::new();
        for m in self.group.members() {
            let id = identity(&m.credential)?;
            if devices.contains(&id) && !proposed.contains(&m.index) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Propose, as the server's external sender at the current epoch, the
    /// removal of every leaf of `devices` that no queued proposal removes yet,
    /// and queue each proposal in this state so that a member's commit can
    /// cover it by reference. Returns each device with its proposal (an MLS
    /// message holding a PublicMessage). Refused for a group that does not
    /// name the server as its external sender.
    pub fn propose_removals(&mut self, key: &ExternalSenderKey, devices: &BTreeSet<String>) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        let todo = self.unproposed_members(devices)?;
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        if !self.names_external_sender(key) {
            return Err(invalid("the group does not name the server as its external sender"));
        }
        let leaves: HashMap<String, LeafNodeIndex> =
            self.group.members().filter_map(|m| Some((identity(&m.credential).ok()?, m.index))).collect();
        let mut out = Vec::new();
        for device in todo {
            let leaf = leaves[&device];
            let group_id = self.group.group_id().clone();
            let epoch = self.group.group_context().epoch();
            let message = ExternalProposal::new_remove::<OpenMlsRustCrypto>(leaf, group_id, epoch, &key.signer, SenderExtensionIndex::new(SERVER_SENDER_INDEX))
                .map_err(|e| invalid(format!("cannot build the removal proposal: {e}")))?;
            let bytes = message.to_bytes().map_err(|e| invalid(format!("cannot encode the removal proposal: {e}")))?;
            // Process our own proposal like a member will: this checks it
            // against the group's extension and yields the queued form.
            let MlsMessageBodyIn::PublicMessage(pm) = parse_body(&bytes)? else {
                return Err(invalid("a proposal must be a PublicMessage"));
            };
            let processed = self.group.process_message(&RustCrypto::default(), pm).map_err(|e| invalid(format!("own proposal does not validate: {e}")))?;
            let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
                return Err(invalid("own proposal did not process as a proposal"));
            };
            self.group.add_proposal(&self.storage, *queued).map_err(|_| corrupt("proposal not stored"))?;
            out.push((device, bytes));
        }
        Ok(out)
    }
}

fn corrupt(msg: &str) -> ApiError {
    tracing::error!(msg, "stored public group state is unusable");
    ApiError::new(ErrorCode::Internal, "the timeline's stored state is unusable")
}

fn encode_storage(storage: &MemoryStorage) -> Vec<u8> {
    let values = storage.values.read().expect("storage lock");
    let mut entries: Vec<_> = values.iter().collect();
    entries.sort();
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (k, v) in entries {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode_storage(mut bytes: &[u8]) -> Option<MemoryStorage> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    fn take_u32(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let n = take_u32(&mut bytes)?;
    let mut values = HashMap::with_capacity(n);
    for _ in 0..n {
        let k = take_u32(&mut bytes).and_then(|len| take(&mut bytes, len))?.to_vec();
        let v = take_u32(&mut bytes).and_then(|len| take(&mut bytes, len))?.to_vec();
        values.insert(k, v);
    }
    bytes.is_empty().then(|| MemoryStorage { values: RwLock::new(values) })
}

/// Device ids of a set of leaves, deduplicated and sorted.
pub fn device_set(leaves: &[LeafClaim]) -> BTreeSet<String> {
    leaves.iter().map(|l| l.device_id.clone()).collect()
}
