// The engine: the browser's Tsunagu client. The screens (web-ui) use only
// what this file exports. Behind it, the Rust client core compiled to wasm
// (`client-web/src/wasm.rs`) does all MLS work; this TypeScript layer owns the
// IO the core does not do: the websocket (with reconnect), IndexedDB (every
// change the core makes is written in one IndexedDB transaction before any
// frame that depends on it is sent) and the HTTP calls of device
// registration.
//
// Life cycle, as the UI drives it:
//
//   const engine = await Engine.open();          // loads wasm + IndexedDB
//   if (!engine.device()) {
//     // ...passkey login or registration (UI, HTTP API), which sets the
//     // session cookie, then:
//     await engine.registerDevice("Tablet (Chrome)");
//   }
//   const off = engine.on((e) => render(e));     // events below
//   engine.connect();                            // online/connecting/offline
//   engine.timelines();                          // sync reads of local state
//   await engine.post(timelineId, "体温 37.2℃"); // queued, sent when online
//   await engine.wipe();                         // logout: deletes all local data
//
// Reads (`device`, `status`, `timelines`, `posts`, `accounts`) are
// synchronous views of the local state and never touch the network; they are
// cheap enough to call on every render. Writes are async and are serialized
// by the engine (one core operation at a time), so the UI may call them
// freely; each resolves when its result is durable locally (and, for those
// that need the server, accepted by it).
//
// Errors: every rejected promise carries an `EngineError` with a `code`
// (a server error code from PROTOCOL.md such as "not_member", or one of the
// engine's own: "offline", "not_registered", "locked", "unauthorized",
// "busy", "internal") and a message fit for a log; the UI maps codes to
// translated text.

export { Engine } from "./engine.ts";
export type { PostOptions } from "./engine.ts";

/** State of the connection to the server, for the status line. */
export type ConnectionStatus =
  /** Connected and caught up: posts go out at once. */
  | "online"
  /** Opening the websocket or catching up with what arrived meanwhile. */
  | "connecting"
  /** No connection (network down, server unreachable, not connected yet);
   *  the engine retries with backoff while `connect()` is in force. Posts
   *  are queued locally and sent when the connection returns. */
  | "offline";

/** This browser's device, once registered. */
export interface DeviceInfo {
  deviceId: string;
  accountId: string;
  /** The account's display name when the device was registered. */
  accountName: string;
  /** The origin the device belongs to (e.g. "https://care.example.jp"). */
  serverUrl: string;
}

/** An account the server knows (the people this device can add). */
export interface AccountView {
  accountId: string;
  /** Display name. */
  name: string;
  /** Its active devices. */
  deviceIds: string[];
  /** Its organisation (null for family accounts). */
  organisationId: string | null;
  /** "professional", "family" or "bot", when the server said. */
  kind: "professional" | "family" | "bot" | null;
}

/** A role in a timeline (protocol/src/policy.rs). */
export type Role = "owner" | "member" | "liaison" | "reader";

/** A member of a timeline, from its policy (MLS group context). */
export interface MemberView {
  accountId: string;
  name: string;
  /** null for a timeline opened before roles. */
  role: Role | null;
  organisationId: string | null;
  /** Access end, ms since the epoch (removed automatically then). */
  until: number | null;
  addedBy: string | null;
}

/** The patient a timeline is about (encrypted in the timeline). */
export interface Patient {
  name: string;
  kana: string;
  /** YYYY-MM-DD */
  birth_date?: string;
}

/** The consent form (the one who obtained it is this account). */
export interface ConsentInput {
  givenBy: string;
  method: "written" | "verbal" | "proxy";
  obtainedAt: number;
  scope: string;
  note?: string;
}

/** An admission or discharge (PROTOCOL.md `event`). */
export interface CareEventInput {
  kind: "admitted" | "discharged";
  hospital: string;
  at: number;
  organisation_id?: string;
  note?: string;
}

/** One row of the timeline list. */
export interface TimelineSummary {
  timelineId: string;
  /** The name a member gave the timeline (for now the patient's name),
   *  carried encrypted inside the timeline; null when none was set. */
  title: string | null;
  /** Whether this device is still a member (false after being removed: the
   *  timeline's history stays readable, posting is not possible). */
  active: boolean;
  /** Accounts that are members, as last reported by the server (empty until
   *  the first connection after joining). */
  memberAccountIds: string[];
  /** Posts by others above the read marker (see `markRead`). */
  unread: number;
  /** The highest seq this device has processed (0 for none). */
  lastSeq: number;
  /** The newest post (sent or pending), for a preview line. */
  lastPost: PostView | null;
  /** Posts waiting in the outbox for this timeline. */
  pending: number;
  /** This account's role (null for a timeline opened before roles). */
  myRole: Role | null;
  /** The patient (encrypted in the timeline), when set. */
  patient: Patient | null;
  /** The seq of the patient's consent record, null until recorded. */
  consentSeq: number | null;
  /** Urgent posts by others this account has not acknowledged. */
  urgentOpen: number;
  /** Accounts alerted at once for an urgent post (default: the owner). */
  firstCall: string[];
  /** Accounts alerted when nobody of the first call acknowledged in time. */
  secondCall: string[];
  escalateAfterSecs: number;
}

/** A post as the UI shows it. */
export interface PostView {
  timelineId: string;
  /** The server's sequence number; null while the post is pending (queued
   *  in the outbox, not yet accepted). */
  seq: number | null;
  /** Client-chosen id; set for this device's own posts (pending or sent). */
  msgId: string | null;
  senderDeviceId: string;
  /** The sender's account, when known (null for an unknown device). */
  senderAccountId: string | null;
  /** The sender's display name, "" when unknown. */
  senderName: string;
  /** Written by this account (any of its devices). */
  own: boolean;
  kind: "text" | "report";
  /** The text; "" for undecryptable or unsupported posts. */
  text: string;
  /** The seq of the post this one replies to. */
  replyTo: number | null;
  /** The author's clock, milliseconds since the Unix epoch. */
  sentAt: number;
  /**
   * - "sent": accepted by the server (has a seq);
   * - "pending": queued on this device, sent when online (no seq yet);
   * - "undecryptable": the MLS message could not be decrypted here;
   * - "unsupported": written by a newer client (show "update the app").
   */
  state: "sent" | "pending" | "undecryptable" | "unsupported";
  /** The post's attachments as the envelope carries them (PROTOCOL.md):
   *  show name, mime and size; open one with `Engine.openAttachment`. */
  attachments: AttachmentRef[];
  /** Accounts the author mentioned. */
  mentions: string[];
  /** Asks every member for an acknowledgement (確認しました). */
  urgent: boolean;
  /** When the author edited it (`text` is the edited text), else null. */
  editedAt: number | null;
  /** When the author deleted it (`text` is ""), else null. */
  deletedAt: number | null;
  /** The account whose client handed this post over to this device
   *  (history from before it joined), else null. */
  handedOverBy: string | null;
  /** A consent record or care event shown in the timeline, else null. */
  record: TimelineRecord | null;
  /** Who has read it (既読) and when; the author excluded. */
  readBy: Receipt[];
  /** Who has received it on a device but not read it yet. */
  deliveredTo: Receipt[];
  /** Members besides the author ("read by readBy.length of receiptTotal"). */
  receiptTotal: number;
  /** Urgent posts: who acknowledged (確認しました) and when. */
  acks: Receipt[];
  /** This account acknowledged it (or wrote it). */
  ackedByMe: boolean;
  /** When the second call was alerted (nobody of the first call in time). */
  escalatedAt: number | null;
}

/** One person in a post's receipts or acknowledgements. */
export interface Receipt {
  accountId: string;
  name: string;
  /** ms since the epoch (server time); 0 for "delivered". */
  at: number;
}

/** A record in the timeline (PROTOCOL.md envelopes `consent` and `event`). */
export type TimelineRecord =
  | {
      type: "consent";
      obtained_by: string;
      given_by: string;
      method: "written" | "verbal" | "proxy";
      obtained_at: number;
      scope: string;
      note?: string;
    }
  | { type: "event"; kind: "admitted" | "discharged"; hospital: string; organisation_id?: string; at: number; note?: string };

/** An attachment as the envelope carries it (PROTOCOL.md, "attachments"). */
export interface AttachmentRef {
  blob_id: string;
  alg: string;
  key: string;
  nonce: string;
  mime: string;
  name: string;
  size: number;
  sha256: string;
  thumbnail?: AttachmentRef;
}

/** What the engine tells the UI; re-read the views named by the event. */
export type EngineEvent =
  /** The connection status changed. */
  | { type: "status"; status: ConnectionStatus }
  /** The timeline list changed (a timeline joined or left, members,
   *  unread counts, last posts). */
  | { type: "timelines" }
  /** A timeline's posts changed (new, accepted, queued). */
  | { type: "posts"; timelineId: string }
  /** The accounts list was refreshed. */
  | { type: "accounts" }
  /** An urgent post needs this person ("second_call": nobody of the first
   *  call acknowledged it in time). */
  | { type: "urgent_alert"; timelineId: string; seq: number; level: "first_call" | "second_call" }
  /** The server was restored from a backup and lost the timeline's newest
   *  posts: `resent` of this device's are being sent again, `kept` of
   *  others' stay shown until their authors' devices send them again. */
  | { type: "restored"; timelineId: string; resent: number; kept: number }
  /** The session is no longer valid (HTTP 401): the UI shows the login.
   *  Local data is kept; the device is still registered. */
  | { type: "signed_out" }
  /** Local data was wiped: after `wipe()`, or because the server revoked
   *  this device. The engine is unusable; open a new one. */
  | { type: "wiped"; reason: "logout" | "revoked" }
  /** A background problem worth showing or logging (an outbox post that
   *  the server refused, a message that could not be processed). */
  | { type: "warning"; message: string; code?: string };

export type EngineListener = (event: EngineEvent) => void;

/** Options of `Engine.open`. */
export interface EngineOptions {
  /** Server origin; default `location.origin`. */
  serverUrl?: string;
  /** IndexedDB database name; default "tsunagu" (tests use their own). */
  dbName?: string;
}

/** The error every engine promise rejects with. */
export class EngineError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "EngineError";
    this.code = code;
  }
}

/**
 * The interface the `Engine` class implements (documented here; the class is
 * in engine.ts).
 *
 * static open(options?: EngineOptions): Promise<Engine>
 *   Loads the wasm module and this origin's IndexedDB state. Only one tab at
 *   a time may hold the engine (Web Locks); a second tab gets an
 *   EngineError "locked".
 *
 * device(): DeviceInfo | null
 *   null until `registerDevice` succeeded on this browser.
 *
 * registerDevice(name: string): Promise<DeviceInfo>
 *   After passkey login (the session cookie is set): makes a device key,
 *   saves it, `POST /v1/devices {name, signature_key}`, and saves the
 *   device. Rejects "unauthorized" without a session.
 *
 * connect(): void / disconnect(): void
 *   Opens `/v1/ws?device=<id>` (cookie auth) and keeps it open, reconnecting
 *   with backoff (1 s doubling to 30 s, at once when the browser comes back
 *   online). On each connection the engine catches up, uploads key packages
 *   and sends the outbox.
 *
 * status(): ConnectionStatus
 *
 * on(listener: EngineListener): () => void
 *   Subscribe to events; returns the unsubscribe function.
 *
 * timelines(): TimelineSummary[]
 *   Every timeline this device knows, the most recent activity first.
 *
 * posts(timelineId: string): PostView[]
 *   The timeline's posts in seq order, then its pending posts in queue order.
 *
 * accounts(): AccountView[]  /  refreshAccounts(): Promise<AccountView[]>
 *   The cached list of accounts (from the last connection) / ask the server.
 *
 * createTimeline(title?: string): Promise<string>
 *   Creates a timeline (an MLS group) with this device as its only member,
 *   named `title` for its members (an encrypted message in the timeline;
 *   the server never sees it); resolves with its id. Needs the connection
 *   (waits up to 15 s while connecting, then "offline").
 *
 * setTitle(timelineId, title): Promise<void>
 *   Renames the timeline for every member (the newest name wins). Adding a
 *   person sends the current name again, since newcomers cannot read what
 *   came before they joined.
 *
 * addPerson(timelineId, accountId): Promise<void>
 * removePerson(timelineId, accountId): Promise<void>
 *
 * members(timelineId): MemberView[]
 *   The members with their roles and end dates (from the timeline's policy).
 *
 * addMember(timelineId, accountId, role, until?) / setMemberRole(...)
 *   Adds a person with a role ("member", "liaison", "reader") and an access
 *   end; rejects "policy_violation" when this account's role does not allow
 *   it and "consent_required" before the patient's consent is recorded.
 *
 * recordConsent(timelineId, ConsentInput): Promise<void>
 *   The owner records the patient's consent (an encrypted record in the
 *   timeline; the policy then points at it).
 *
 * postEvent(timelineId, CareEventInput): Promise<void>
 *   Admission or discharge; a liaison's discharge also removes the ward
 *   staff of their organisation.
 *   Adds (or removes) every device of the account in one commit. Need the
 *   connection.
 *
 * post(timelineId, text, options?: PostOptions): Promise<PostView>
 *   Queues the post durably and resolves with its pending view at once; it
 *   is sent now if online, else when the connection returns ("posts" events
 *   follow as it is accepted). Options: replyTo (a seq), kind, mentions
 *   (member account ids; others are dropped), urgent.
 *
 * postWithAttachments(timelineId, text, files, options?: PostOptions & { onProgress })
 *   Seals each file (and, for a photo, a JPEG thumbnail of at most 320 px
 *   made on a canvas here, sealed as its own blob: `AttachmentRef.thumbnail`),
 *   uploads the ciphertexts with progress, then queues like `post`.
 *
 * markRead(timelineId: string, seq?: number): Promise<void>
 *   Moves the timeline's read marker (default: to its last post), which
 *   sets the unread count, and when online sends `read` to the server: the
 *   other members' receipts (既読) show this person.
 *
 * fetchReceipts(timelineId) / acknowledge(timelineId, seq)
 *   Receipts of the timeline's posts (PostView.readBy/deliveredTo, kept
 *   current by pushes) / 確認しました for an urgent post.
 *
 * wipe(): Promise<void>
 *   Logout or revocation: closes the connection, deletes the IndexedDB
 *   database and drops the in-memory state. Emits "wiped" (reason
 *   "logout"). The UI calls `POST /v1/logout` itself.
 */
export type EngineInterface = import("./engine.ts").Engine;
