//! OpenMLS glue: the provider whose storage we persist, the group
//! configuration Tsunagu uses, and parsing of MLS wire messages.

use std::collections::HashMap;

use openmls::messages::group_info::{GroupInfo, VerifiableGroupInfo};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;

use tsunagu_protocol::frames::ExternalSenderInfo;
use tsunagu_protocol::policy::{PolicyError, TimelinePolicy, POLICY_EXTENSION_TYPE};

use crate::error::mls;
use crate::ClientError;

/// The only ciphersuite Tsunagu uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Past epochs whose secrets are kept for late application messages.
pub const MAX_PAST_EPOCHS: usize = 16;
/// Exporter label used by `export_secret` (tests compare members with it).
pub const EXPORTER_LABEL: &str = "tsunagu test";

/// Crypto plus openmls's in-memory storage, and a copy of what was last
/// persisted so that a save writes only the entries that changed.
///
/// The MLS state of a device is small (a few KiB per group), so comparing
/// every entry with its persisted copy at each save costs microseconds and
/// keeps openmls's own storage code in charge of the format.
#[derive(Default)]
pub struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
    persisted: HashMap<Vec<u8>, Vec<u8>>,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }
    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }
    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}

impl Provider {
    /// A provider whose storage holds `values`, all of them persisted already.
    pub fn with_values(values: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let storage = MemoryStorage::default();
        *storage.values.write().expect("storage lock") = values.clone();
        Provider { crypto: RustCrypto::default(), storage, persisted: values }
    }

    /// Entries written (`Some`) or deleted (`None`) since the last call; they
    /// count as persisted from now on.
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let values = self.storage.values.read().expect("storage lock");
        let mut changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = values
            .iter()
            .filter(|(k, v)| self.persisted.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        changes.extend(self.persisted.keys().filter(|k| !values.contains_key(*k)).map(|k| (k.clone(), None)));
        for (k, v) in &changes {
            match v {
                Some(v) => self.persisted.insert(k.clone(), v.clone()),
                None => self.persisted.remove(k),
            };
        }
        changes
    }

    pub fn has_changes(&self) -> bool {
        let values = self.storage.values.read().expect("storage lock");
        values.len() != self.persisted.len() || values.iter().any(|(k, v)| self.persisted.get(k) != Some(v))
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({} MLS entries)", self.persisted.len())
    }
}

/// Configuration for groups joined by Welcome or external commit.
pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

/// Configuration for groups this device creates: the server (from the
/// `ready` frame) is the group's only external sender, so that it can
/// propose the removal of revoked devices. Without it (a server too old to
/// announce one) the group has no external sender, and a current server
/// refuses it.
///
/// `policy` (the timeline's roles) goes into the group context next to the
/// external senders, as the private extension `POLICY_EXTENSION_TYPE`,
/// with a `required_capabilities` extension naming that type; every leaf
/// announces it ([`leaf_capabilities`]), as openmls requires of every leaf
/// for every group-context extension.
pub fn create_config(server: Option<&ExternalSenderInfo>, policy: Option<&TimelinePolicy>) -> Result<MlsGroupCreateConfig, ClientError> {
    let mut builder = MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .capabilities(leaf_capabilities());
    let mut extensions = Vec::new();
    if let Some(server) = server {
        extensions.push(Extension::ExternalSenders(vec![external_sender(server)]));
    }
    if let Some(policy) = policy {
        // openmls accepts a later GroupContextExtensions proposal only for
        // extension types the group requires every member to support.
        let required = RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)], &[], &[]);
        extensions.push(Extension::RequiredCapabilities(required));
        extensions.push(policy_extension(policy));
    }
    if !extensions.is_empty() {
        builder = builder.with_group_context_extensions(Extensions::from_vec(extensions).map_err(mls("group context extensions"))?);
    }
    Ok(builder.build())
}

/// The capabilities of every leaf this client makes (key packages, the
/// creator's leaf, an external commit's leaf): the last-resort extension
/// and the timeline policy extension.
pub fn leaf_capabilities() -> Capabilities {
    Capabilities::builder().extensions(vec![ExtensionType::LastResort, ExtensionType::Unknown(POLICY_EXTENSION_TYPE)]).build()
}

/// The group-context extension carrying a timeline's policy.
pub fn policy_extension(policy: &TimelinePolicy) -> Extension {
    Extension::Unknown(POLICY_EXTENSION_TYPE, UnknownExtension(policy.encode()))
}

/// The policy in a group context's extensions: `None` for a timeline made
/// before policies existed, `Some(Err)` for a malformed one.
pub fn policy_of(extensions: &Extensions<GroupContext>) -> Option<Result<TimelinePolicy, PolicyError>> {
    extensions.unknown(POLICY_EXTENSION_TYPE).map(|u| TimelinePolicy::decode(&u.0))
}

/// `extensions` with the policy replaced by `policy` (for a
/// GroupContextExtensions proposal, which replaces them all).
pub fn with_policy(extensions: &Extensions<GroupContext>, policy: &TimelinePolicy) -> Result<Extensions<GroupContext>, ClientError> {
    let mut list: Vec<Extension> =
        extensions.iter().filter(|e| e.extension_type() != ExtensionType::Unknown(POLICY_EXTENSION_TYPE)).cloned().collect();
    list.push(policy_extension(policy));
    Extensions::from_vec(list).map_err(mls("group context extensions"))
}

/// The server's entry in a group's `external_senders` extension.
pub fn external_sender(server: &ExternalSenderInfo) -> ExternalSender {
    ExternalSender::new(server.signature_key.as_slice().to_vec().into(), BasicCredential::new(server.identity.as_bytes().to_vec()).into())
}

/// The server's index in every group's `external_senders` extension.
pub const SERVER_SENDER_INDEX: u32 = 0;

/// Why an incoming proposal is not stored, or `None` if it is a Remove
/// proposal signed by the server as external sender of `group` (openmls has
/// already checked the signature against the group's extension; this checks
/// that the extension's entry is the server the device talks to).
pub fn proposal_refusal(group: &MlsGroup, proposal: &QueuedProposal, server: Option<&ExternalSenderInfo>) -> Option<String> {
    let Sender::External(index) = proposal.sender() else {
        return Some(format!("proposal from {:?}, not from the server", proposal.sender()));
    };
    let Some(server) = server else {
        return Some("external proposal before the server announced its key".into());
    };
    let expected = external_sender(server);
    let named = group.extensions().external_senders().and_then(|s| s.first());
    if *index != SenderExtensionIndex::new(SERVER_SENDER_INDEX) || named != Some(&expected) {
        return Some("external proposal from a sender that is not the server".into());
    }
    match proposal.proposal() {
        Proposal::Remove(_) => None,
        other => Some(format!("external {:?} proposal; only removals are accepted", other.proposal_type())),
    }
}

/// The leaf a Remove proposal removes.
pub fn removed_leaf(proposal: &QueuedProposal) -> Option<LeafNodeIndex> {
    match proposal.proposal() {
        Proposal::Remove(r) => Some(r.removed()),
        _ => None,
    }
}

/// The device's credential: a basic credential naming its account and
/// device (`"{account_id}/{device_id}"`, see `tsunagu_protocol::policy`).
pub fn credential_with_key(account_id: &str, device_id: &str, signer: &SignatureKeyPair) -> CredentialWithKey {
    let identity = tsunagu_protocol::policy::credential_identity(account_id, device_id);
    CredentialWithKey { credential: BasicCredential::new(identity.into_bytes()).into(), signature_key: signer.public().into() }
}

/// A fresh Ed25519 signature key pair for a new device.
pub fn new_signer() -> Result<SignatureKeyPair, ClientError> {
    SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(mls("signature key"))
}

/// The `(account_id, device_id)` in a member credential.
pub fn credential_account_device(credential: &Credential) -> Option<(String, String)> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let text = std::str::from_utf8(basic.identity()).ok()?;
    let (account, device) = tsunagu_protocol::policy::parse_credential_identity(text)?;
    Some((account.to_owned(), device.to_owned()))
}

/// The device id in a member credential.
pub fn credential_device_id(credential: &Credential) -> Option<String> {
    credential_account_device(credential).map(|(_, d)| d)
}

/// The account id in a member credential.
pub fn credential_account_id(credential: &Credential) -> Option<String> {
    credential_account_device(credential).map(|(a, _)| a)
}

pub fn group_id(timeline_id: &str) -> GroupId {
    GroupId::from_slice(timeline_id.as_bytes())
}

pub fn to_bytes(m: &MlsMessageOut) -> Result<Vec<u8>, ClientError> {
    m.to_bytes().map_err(mls("serialize"))
}

pub fn parse_body(bytes: &[u8]) -> Result<MlsMessageBodyIn, ClientError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(mls("parse MLS message"))?;
    Ok(msg.extract())
}

pub fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, ClientError> {
    match parse_body(bytes)? {
        MlsMessageBodyIn::PublicMessage(m) => Ok(m.into()),
        MlsMessageBodyIn::PrivateMessage(m) => Ok(m.into()),
        _ => Err(ClientError::Mls("not a public or private message".into())),
    }
}

pub fn parse_welcome(bytes: &[u8]) -> Result<Welcome, ClientError> {
    match parse_body(bytes)? {
        MlsMessageBodyIn::Welcome(w) => Ok(w),
        _ => Err(ClientError::Mls("not a welcome".into())),
    }
}

pub fn parse_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, ClientError> {
    match parse_body(bytes)? {
        MlsMessageBodyIn::GroupInfo(g) => Ok(g),
        _ => Err(ClientError::Mls("not a group info".into())),
    }
}

/// A claimed key package: an MLSMessage holding a KeyPackage, or (leniently)
/// a bare TLS-serialized KeyPackage. The signature is verified.
pub fn parse_key_package(provider: &Provider, bytes: &[u8]) -> Result<KeyPackage, ClientError> {
    let kp_in = match MlsMessageIn::tls_deserialize_exact(bytes).map(|m| m.extract()) {
        Ok(MlsMessageBodyIn::KeyPackage(kp)) => kp,
        _ => KeyPackageIn::tls_deserialize_exact(bytes).map_err(mls("parse key package"))?,
    };
    kp_in.validate(provider.crypto(), ProtocolVersion::Mls10).map_err(mls("validate key package"))
}

/// Build and store (private parts in the provider's storage) a key package,
/// returned TLS-serialized (a bare `KeyPackage`, as the server expects).
pub fn new_key_package(
    provider: &Provider,
    signer: &SignatureKeyPair,
    cwk: CredentialWithKey,
    last_resort: bool,
) -> Result<Vec<u8>, ClientError> {
    // The last-resort extension must be announced in the leaf capabilities,
    // and so must the policy extension of the groups it may join; every
    // package carries the same capabilities.
    let mut builder = KeyPackage::builder().leaf_node_capabilities(leaf_capabilities());
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder.build(CIPHERSUITE, provider, signer, cwk).map_err(mls("key package"))?;
    tls_bytes(bundle.key_package())
}

pub fn group_info_bytes(gi: GroupInfo) -> Result<Vec<u8>, ClientError> {
    let out: MlsMessageOut = gi.into();
    to_bytes(&out)
}

pub fn signer_from_bytes(bytes: &[u8]) -> Result<SignatureKeyPair, ClientError> {
    SignatureKeyPair::tls_deserialize_exact(bytes).map_err(mls("signature key pair"))
}

pub fn tls_bytes<T: tls_codec::Serialize>(t: &T) -> Result<Vec<u8>, ClientError> {
    t.tls_serialize_detached().map_err(mls("serialize"))
}
