//! Websocket frames and HTTP bodies. Every websocket frame is one JSON object
//! in a text message, tagged by `type`. Requests carry a client-chosen `rid`
//! that the server echoes in the one reply (or `error`) it sends for them.

use serde::{Deserialize, Serialize};

use crate::people::AccountKind;
use crate::Bytes;

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Start delivery: pending welcomes, then every timeline message after the
    /// device's cursors, then `caught_up`, then live messages.
    Subscribe { rid: u64 },
    /// Upload key packages (each claimed at most once) and optionally replace
    /// the last-resort key package (handed out when no other is left).
    PublishKeyPackages {
        rid: u64,
        key_packages: Vec<Bytes>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_resort: Option<Bytes>,
    },
    /// Claim one key package for every active device of an account.
    ClaimKeyPackages { rid: u64, account_id: String },
    /// How many unclaimed (not last-resort) key packages this device has left.
    KeyPackageCount { rid: u64 },
    ListAccounts { rid: u64 },
    ListTimelines { rid: u64 },
    /// Register a new timeline: `group_info` is an MLS GroupInfo message at
    /// epoch 0 with the ratchet tree extension, whose only member is the sender.
    CreateTimeline { rid: u64, timeline_id: String, group_info: Bytes },
    /// An MLS commit as a PublicMessage (or an external commit), with the
    /// Welcome for added devices and the GroupInfo of the new epoch.
    Commit {
        rid: u64,
        timeline_id: String,
        msg_id: String,
        commit: Bytes,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        welcome: Option<Bytes>,
        group_info: Bytes,
    },
    /// An MLS application message (PrivateMessage) at the current epoch.
    /// `urgent` marks a post that asks for acknowledgement: the server
    /// alerts the timeline's call lists (it never sees the content).
    Send {
        rid: u64,
        timeline_id: String,
        msg_id: String,
        message: Bytes,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        urgent: bool,
    },
    /// The device has processed everything up to `seq` in a timeline.
    Ack { timeline_id: String, seq: u64 },
    /// The device has processed a welcome; it is not sent again.
    AckWelcome { welcome_id: u64 },
    /// The GroupInfo of the current epoch, for a rejoin by external commit.
    GetGroupInfo { rid: u64, timeline_id: String },
    Ping { rid: u64 },
    /// Every device of this device's account, active and revoked.
    ListDevices { rid: u64 },
    /// Revoke a device of this device's account (it may be this one): it is
    /// disconnected at once, can no longer connect, and the server proposes
    /// its removal from every timeline it is in.
    RevokeDevice { rid: u64, device_id: String },
    /// The person has read the timeline up to `seq` (shown it on screen).
    /// Per person, across devices; the server keeps the highest and tells
    /// the timeline's members (`read_mark`). No reply.
    Read { timeline_id: String, seq: u64 },
    /// Who has read and received a timeline: answered by `receipts`.
    GetReceipts { rid: u64, timeline_id: String },
    /// Acknowledge (確認しました) the urgent post at `seq`: answered by
    /// `acknowledged`; every member is told (`urgent_ack`).
    Acknowledge { rid: u64, timeline_id: String, seq: u64 },
    /// The urgent posts of this device's timelines that are still open
    /// (not acknowledged by this person) or were posted in the last 7 days.
    ListUrgent { rid: u64 },
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on every connection.
    Ready {
        protocol: u32,
        account_id: String,
        device_id: String,
        /// The server's MLS external sender: every timeline's group must name
        /// it (alone) in its `external_senders` extension.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_sender: Option<ExternalSenderInfo>,
        /// The account's organisation (none for family accounts): a new
        /// timeline's policy names it for its owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        organisation_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account_kind: Option<AccountKind>,
    },
    /// A timeline message, delivered in `seq` order per timeline.
    Message(Delivered),
    /// An MLS Welcome for this device: it was added to `timeline_id` by the
    /// commit at `seq`; its messages start at `seq + 1`.
    Welcome { welcome_id: u64, timeline_id: String, seq: u64, welcome: Bytes },
    /// Everything stored before the subscription has been sent.
    CaughtUp { rid: u64 },
    /// The server was restored from a backup: the timeline's messages with
    /// `lost_after < seq <= lost_until` were stored after the backup and are
    /// gone, its next seq is after `lost_until`, and its epoch was `epoch`
    /// (commits past it were lost too). Sent in catch-up, before the
    /// timeline's messages, until the device acknowledges a seq past
    /// `lost_until`. The client sends its own lost posts again, and rejoins
    /// if its group is past `epoch`.
    Restored { timeline_id: String, lost_after: u64, lost_until: u64, epoch: u64 },
    /// A commit or application message is durably stored at `seq`.
    /// `duplicate` is true when `msg_id` was already stored (the retry of a
    /// message whose acknowledgement was lost); `seq` is then the original.
    Accepted { rid: u64, timeline_id: String, seq: u64, epoch: u64, duplicate: bool },
    Created { rid: u64, timeline_id: String, epoch: u64 },
    KeyPackagesStored { rid: u64, count: u64 },
    /// One key package per active device of the account, and what the
    /// adding client needs for the account's policy entry.
    KeyPackages {
        rid: u64,
        account_id: String,
        devices: Vec<DeviceKeyPackage>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        organisation_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account_kind: Option<AccountKind>,
    },
    KeyPackageCount { rid: u64, count: u64 },
    Accounts { rid: u64, accounts: Vec<AccountInfo> },
    Timelines { rid: u64, timelines: Vec<TimelineInfo> },
    GroupInfo { rid: u64, timeline_id: String, epoch: u64, group_info: Bytes },
    Pong { rid: u64 },
    Devices { rid: u64, devices: Vec<DeviceInfo> },
    DeviceRevoked { rid: u64, device_id: String },
    /// Reply to `get_receipts`: every mark of every person (a person's read
    /// position each time it advanced, so a client tells when each post was
    /// read) and how far each person's devices have received.
    Receipts { rid: u64, timeline_id: String, read: Vec<ReadMark>, delivered: Vec<DeliveredMark> },
    /// Pushed to a timeline's member devices when a person's read position advances.
    ReadMark(ReadMark),
    Acknowledged { rid: u64, timeline_id: String, seq: u64 },
    /// Pushed to a timeline's member devices when someone acknowledges an urgent post.
    UrgentAck { timeline_id: String, seq: u64, account_id: String, at: u64 },
    /// Pushed to the devices of a call list: an urgent post waits for them
    /// (`first_call` when it is stored, `second_call` when nobody of the
    /// first call acknowledged it in time).
    UrgentAlert(UrgentAlert),
    /// Reply to `list_urgent`.
    Urgent { rid: u64, items: Vec<UrgentState> },
    Error(ErrorFrame),
}

/// A person's read position in a timeline from `at` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    pub timeline_id: String,
    pub account_id: String,
    pub seq: u64,
    /// Milliseconds since the Unix epoch (server time).
    pub at: u64,
}

/// How far a person's devices have received a timeline (the highest
/// delivery cursor of any of their devices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredMark {
    pub account_id: String,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    FirstCall,
    SecondCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrgentAlert {
    pub timeline_id: String,
    pub seq: u64,
    pub level: AlertLevel,
    pub sender_account_id: String,
    pub created_at: u64,
}

/// An urgent post and who acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrgentState {
    pub timeline_id: String,
    pub seq: u64,
    pub sender_account_id: String,
    pub created_at: u64,
    /// When the second call is (or was) alerted without a first-call acknowledgement.
    pub escalate_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_at: Option<u64>,
    pub acks: Vec<UrgentAck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrgentAck {
    pub account_id: String,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    pub timeline_id: String,
    pub seq: u64,
    /// The epoch the message was sent in (for a commit: the epoch it ends).
    pub epoch: u64,
    pub kind: MessageKind,
    pub sender_device_id: String,
    pub msg_id: String,
    /// Server time of storage, milliseconds since the Unix epoch.
    pub stored_at: u64,
    pub data: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Commit,
    Application,
    /// An MLS proposal (PublicMessage) by the server as external sender:
    /// the removal of a revoked device, for a member to commit.
    Proposal,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Commit => "commit",
            MessageKind::Application => "application",
            MessageKind::Proposal => "proposal",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "commit" => Some(MessageKind::Commit),
            "application" => Some(MessageKind::Application),
            "proposal" => Some(MessageKind::Proposal),
            _ => None,
        }
    }
}

/// The `sender_device_id` of messages the server itself stores (proposals).
pub const SERVER_SENDER: &str = "server";

/// The server's MLS external sender (RFC 9420 §12.1.8.1): a basic credential
/// naming `identity` and an Ed25519 signature key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalSenderInfo {
    /// The basic credential's identity, UTF-8.
    pub identity: String,
    /// The Ed25519 public key (32 bytes).
    pub signature_key: Bytes,
}

/// A device of the account, as `list_devices` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: String,
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// True for the device that asked.
    #[serde(default)]
    pub current: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceKeyPackage {
    pub device_id: String,
    pub key_package: Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub account_id: String,
    pub name: String,
    /// The account's active devices.
    pub device_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AccountKind>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub timeline_id: String,
    pub epoch: u64,
    /// The highest sequence number stored in the timeline.
    pub head_seq: u64,
    /// The device's delivery cursor: everything up to it was acknowledged.
    pub cursor: u64,
    /// Accounts with at least one device in the group.
    pub member_account_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The request this answers, when the request could be read far enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<u64>,
    pub code: ErrorCode,
    /// A human-readable explanation; never contains message content.
    pub message: String,
    /// Present with `epoch_conflict` and `stale_epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
}

/// Every error the server reports, on the websocket and over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a frame of a known shape.
    MalformedFrame,
    /// A JSON object whose `type` the server does not know.
    UnknownType,
    /// The frame is larger than the server accepts.
    FrameTooLarge,
    /// Missing, unknown or revoked credentials.
    Unauthorized,
    /// The enrolment code is unknown, used or expired.
    InvalidCode,
    /// An id or argument does not satisfy the rules of PROTOCOL.md.
    InvalidArgument,
    UnknownTimeline,
    UnknownAccount,
    TimelineExists,
    /// The device is not a member of the timeline.
    NotMember,
    /// A commit for an epoch that already has one: catch up and redo it.
    EpochConflict,
    /// An application message for an epoch that is no longer current.
    StaleEpoch,
    /// The MLS message does not parse or does not validate.
    InvalidMls,
    /// A credential in a key package or leaf is not the uploading device's,
    /// or names a device that does not exist.
    CredentialMismatch,
    /// A device of the account has no key package left.
    NoKeyPackages,
    /// The message id was already used for a different timeline.
    MsgIdReused,
    /// Authenticated, but not allowed (e.g. a family account and the
    /// directory, a member and an admin-only action).
    Forbidden,
    /// No such resource (person, organisation, device, photo).
    NotFound,
    /// No invitation has this token.
    UnknownInvitation,
    /// The invitation's time ran out.
    InvitationExpired,
    /// The invitation was already used.
    InvitationUsed,
    /// The passkey's answer does not verify (wrong signature, other origin,
    /// no user verification, unknown or cloned credential).
    PasskeyRejected,
    /// The WebAuthn ceremony is unknown, already finished or expired: start again.
    UnknownCeremony,
    /// The first-run setup is done (or the setup link is wrong).
    SetupDone,
    /// The server could not do it; nothing was stored. Retry later.
    Internal,
    /// An attachment blob larger than the server accepts; nothing was stored.
    BlobTooLarge,
    /// The server's blob store is full; nothing was stored.
    StorageFull,
    /// A commit changes members or roles beyond the committer's rights, or
    /// leaves a device of an account the timeline policy does not list.
    PolicyViolation,
    /// Someone from another organisation is added before the timeline
    /// records the patient's consent.
    ConsentRequired,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidCode => "invalid_code",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::UnknownTimeline => "unknown_timeline",
            ErrorCode::UnknownAccount => "unknown_account",
            ErrorCode::TimelineExists => "timeline_exists",
            ErrorCode::NotMember => "not_member",
            ErrorCode::EpochConflict => "epoch_conflict",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::InvalidMls => "invalid_mls",
            ErrorCode::CredentialMismatch => "credential_mismatch",
            ErrorCode::NoKeyPackages => "no_key_packages",
            ErrorCode::MsgIdReused => "msg_id_reused",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownInvitation => "unknown_invitation",
            ErrorCode::InvitationExpired => "invitation_expired",
            ErrorCode::InvitationUsed => "invitation_used",
            ErrorCode::PasskeyRejected => "passkey_rejected",
            ErrorCode::UnknownCeremony => "unknown_ceremony",
            ErrorCode::SetupDone => "setup_done",
            ErrorCode::Internal => "internal",
            ErrorCode::BlobTooLarge => "blob_too_large",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::PolicyViolation => "policy_violation",
            ErrorCode::ConsentRequired => "consent_required",
        }
    }
}

/// `POST /v1/enrol` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolRequest {
    pub code: String,
    pub device_name: String,
    /// The device's MLS signature public key (Ed25519, 32 bytes).
    pub signature_key: Bytes,
}

/// `POST /v1/enrol` success body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub account_id: String,
    pub account_name: String,
    pub device_id: String,
    /// Bearer token for `GET /v1/ws`. Shown once; the server keeps its hash.
    pub device_token: String,
}

/// `POST /v1/blobs` success body: the blob's id (hex SHA-256 of the
/// ciphertext) and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    pub blob_id: String,
    pub size: u64,
}

/// Body of every HTTP error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpError {
    pub code: ErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests {
    //! Golden frames: an accidental change to the wire shape fails here.
    use super::*;

    fn golden_client(frame: ClientFrame, json: &str) {
        assert_eq!(serde_json::to_string(&frame).unwrap(), json);
        assert_eq!(serde_json::from_str::<ClientFrame>(json).unwrap(), frame);
    }

    fn golden_server(frame: ServerFrame, json: &str) {
        assert_eq!(serde_json::to_string(&frame).unwrap(), json);
        assert_eq!(serde_json::from_str::<ServerFrame>(json).unwrap(), frame);
    }

    #[test]
    fn client_frames() {
        golden_client(ClientFrame::Subscribe { rid: 1 }, r#"{"type":"subscribe","rid":1}"#);
        golden_client(
            ClientFrame::Send {
                rid: 2,
                timeline_id: "t".into(),
                msg_id: "m1".into(),
                message: Bytes(vec![1, 2, 3]),
                urgent: false,
            },
            r#"{"type":"send","rid":2,"timeline_id":"t","msg_id":"m1","message":"AQID"}"#,
        );
        golden_client(
            ClientFrame::Commit {
                rid: 3,
                timeline_id: "t".into(),
                msg_id: "c1".into(),
                commit: Bytes(vec![0]),
                welcome: None,
                group_info: Bytes(vec![255]),
            },
            r#"{"type":"commit","rid":3,"timeline_id":"t","msg_id":"c1","commit":"AA==","group_info":"/w=="}"#,
        );
        golden_client(
            ClientFrame::Ack { timeline_id: "t".into(), seq: 9 },
            r#"{"type":"ack","timeline_id":"t","seq":9}"#,
        );
        golden_client(
            ClientFrame::PublishKeyPackages { rid: 4, key_packages: vec![Bytes(vec![7])], last_resort: None },
            r#"{"type":"publish_key_packages","rid":4,"key_packages":["Bw=="]}"#,
        );
        golden_client(ClientFrame::AckWelcome { welcome_id: 5 }, r#"{"type":"ack_welcome","welcome_id":5}"#);
        golden_client(ClientFrame::ListDevices { rid: 6 }, r#"{"type":"list_devices","rid":6}"#);
        golden_client(
            ClientFrame::RevokeDevice { rid: 7, device_id: "d".into() },
            r#"{"type":"revoke_device","rid":7,"device_id":"d"}"#,
        );
    }

    #[test]
    fn restored_frame() {
        golden_server(
            ServerFrame::Restored { timeline_id: "t".into(), lost_after: 57, lost_until: 420_000_057, epoch: 3 },
            r#"{"type":"restored","timeline_id":"t","lost_after":57,"lost_until":420000057,"epoch":3}"#,
        );
    }

    #[test]
    fn revocation_frames() {
        golden_server(
            ServerFrame::Ready {
                protocol: 1,
                account_id: "a".into(),
                device_id: "d".into(),
                external_sender: Some(ExternalSenderInfo { identity: "tsunagu-server".into(), signature_key: Bytes(vec![1]) }),
                organisation_id: None,
                account_kind: None,
            },
            r#"{"type":"ready","protocol":1,"account_id":"a","device_id":"d","external_sender":{"identity":"tsunagu-server","signature_key":"AQ=="}}"#,
        );
        // An older server's ready frame still reads.
        let old: ServerFrame = serde_json::from_str(r#"{"type":"ready","protocol":1,"account_id":"a","device_id":"d"}"#).unwrap();
        assert!(matches!(old, ServerFrame::Ready { external_sender: None, .. }));
        golden_server(
            ServerFrame::Devices {
                rid: 2,
                devices: vec![DeviceInfo { device_id: "d".into(), name: "phone".into(), created_at: 5, revoked_at: Some(6), current: false }],
            },
            r#"{"type":"devices","rid":2,"devices":[{"device_id":"d","name":"phone","created_at":5,"revoked_at":6,"current":false}]}"#,
        );
        golden_server(ServerFrame::DeviceRevoked { rid: 3, device_id: "d".into() }, r#"{"type":"device_revoked","rid":3,"device_id":"d"}"#);
        assert_eq!(serde_json::to_value(MessageKind::Proposal).unwrap(), "proposal");
        assert_eq!(MessageKind::parse("proposal"), Some(MessageKind::Proposal));
    }

    #[test]
    fn server_frames() {
        golden_server(
            ServerFrame::Message(Delivered {
                timeline_id: "t".into(),
                seq: 12,
                epoch: 3,
                kind: MessageKind::Application,
                sender_device_id: "d".into(),
                msg_id: "m".into(),
                stored_at: 1000,
                data: Bytes(vec![1]),
            }),
            r#"{"type":"message","timeline_id":"t","seq":12,"epoch":3,"kind":"application","sender_device_id":"d","msg_id":"m","stored_at":1000,"data":"AQ=="}"#,
        );
        golden_server(
            ServerFrame::Accepted { rid: 2, timeline_id: "t".into(), seq: 12, epoch: 3, duplicate: false },
            r#"{"type":"accepted","rid":2,"timeline_id":"t","seq":12,"epoch":3,"duplicate":false}"#,
        );
        golden_server(
            ServerFrame::Error(ErrorFrame {
                rid: Some(3),
                code: ErrorCode::EpochConflict,
                message: "epoch 4 already has a commit".into(),
                current_epoch: Some(5),
            }),
            r#"{"type":"error","rid":3,"code":"epoch_conflict","message":"epoch 4 already has a commit","current_epoch":5}"#,
        );
        golden_server(
            ServerFrame::Welcome { welcome_id: 1, timeline_id: "t".into(), seq: 4, welcome: Bytes(vec![2]) },
            r#"{"type":"welcome","welcome_id":1,"timeline_id":"t","seq":4,"welcome":"Ag=="}"#,
        );
    }

    #[test]
    fn error_code_strings_match_serde() {
        for code in [
            ErrorCode::MalformedFrame,
            ErrorCode::StaleEpoch,
            ErrorCode::MsgIdReused,
            ErrorCode::Internal,
            ErrorCode::BlobTooLarge,
            ErrorCode::StorageFull,
            ErrorCode::PolicyViolation,
            ErrorCode::ConsentRequired,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn golden_blob_bodies() {
        let stored = BlobStored { blob_id: "ab".repeat(32), size: 1234 };
        let json = format!(r#"{{"blob_id":"{}","size":1234}}"#, "ab".repeat(32));
        assert_eq!(serde_json::to_string(&stored).unwrap(), json);
        assert_eq!(serde_json::from_str::<BlobStored>(&json).unwrap(), stored);
        let err = HttpError { code: ErrorCode::BlobTooLarge, message: "too large".into() };
        assert_eq!(serde_json::to_string(&err).unwrap(), r#"{"code":"blob_too_large","message":"too large"}"#);
        assert_eq!(serde_json::to_value(ErrorCode::StorageFull).unwrap(), "storage_full");
    }

    #[test]
    fn care_team_frames() {
        golden_client(
            ClientFrame::Send { rid: 1, timeline_id: "t".into(), msg_id: "m".into(), message: Bytes(vec![1]), urgent: true },
            r#"{"type":"send","rid":1,"timeline_id":"t","msg_id":"m","message":"AQ==","urgent":true}"#,
        );
        golden_client(ClientFrame::Read { timeline_id: "t".into(), seq: 4 }, r#"{"type":"read","timeline_id":"t","seq":4}"#);
        golden_client(ClientFrame::GetReceipts { rid: 2, timeline_id: "t".into() }, r#"{"type":"get_receipts","rid":2,"timeline_id":"t"}"#);
        golden_client(
            ClientFrame::Acknowledge { rid: 3, timeline_id: "t".into(), seq: 5 },
            r#"{"type":"acknowledge","rid":3,"timeline_id":"t","seq":5}"#,
        );
        golden_client(ClientFrame::ListUrgent { rid: 4 }, r#"{"type":"list_urgent","rid":4}"#);
        golden_server(
            ServerFrame::Receipts {
                rid: 2,
                timeline_id: "t".into(),
                read: vec![ReadMark { timeline_id: "t".into(), account_id: "a".into(), seq: 4, at: 10 }],
                delivered: vec![DeliveredMark { account_id: "a".into(), seq: 5 }],
            },
            r#"{"type":"receipts","rid":2,"timeline_id":"t","read":[{"timeline_id":"t","account_id":"a","seq":4,"at":10}],"delivered":[{"account_id":"a","seq":5}]}"#,
        );
        golden_server(
            ServerFrame::ReadMark(ReadMark { timeline_id: "t".into(), account_id: "a".into(), seq: 4, at: 10 }),
            r#"{"type":"read_mark","timeline_id":"t","account_id":"a","seq":4,"at":10}"#,
        );
        golden_server(
            ServerFrame::UrgentAlert(UrgentAlert { timeline_id: "t".into(), seq: 5, level: AlertLevel::SecondCall, sender_account_id: "a".into(), created_at: 1 }),
            r#"{"type":"urgent_alert","timeline_id":"t","seq":5,"level":"second_call","sender_account_id":"a","created_at":1}"#,
        );
        golden_server(
            ServerFrame::UrgentAck { timeline_id: "t".into(), seq: 5, account_id: "n".into(), at: 2 },
            r#"{"type":"urgent_ack","timeline_id":"t","seq":5,"account_id":"n","at":2}"#,
        );
        golden_server(
            ServerFrame::Urgent {
                rid: 6,
                items: vec![UrgentState {
                    timeline_id: "t".into(),
                    seq: 5,
                    sender_account_id: "a".into(),
                    created_at: 1,
                    escalate_at: 901,
                    escalated_at: None,
                    acks: vec![UrgentAck { account_id: "n".into(), at: 2 }],
                }],
            },
            r#"{"type":"urgent","rid":6,"items":[{"timeline_id":"t","seq":5,"sender_account_id":"a","created_at":1,"escalate_at":901,"acks":[{"account_id":"n","at":2}]}]}"#,
        );
        // A send without `urgent` (older clients) reads as not urgent.
        let old: ClientFrame = serde_json::from_str(r#"{"type":"send","rid":1,"timeline_id":"t","msg_id":"m","message":"AQ=="}"#).unwrap();
        assert!(matches!(old, ClientFrame::Send { urgent: false, .. }));
    }
}
