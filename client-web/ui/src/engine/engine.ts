// The Engine (documented in index.ts): the wasm client core plus the IO it
// does not do itself — IndexedDB (idb.ts), the websocket with reconnect, and
// the HTTP calls of device registration.
//
// Persistence: the core hands every change to `Host.persist`, which writes it
// in one IndexedDB transaction and resolves only when that transaction has
// completed; the core awaits it before it sends any frame (see
// client-web/src/web.rs). So a frame never leaves before the state it
// depends on is stored.
//
// Concurrency: the core runs one operation at a time. Every call into it goes
// through `enqueue`, a promise chain; the views read the core directly when
// it is idle and fall back to the copy taken after the last operation while
// one is running.
import init, { Facade, open_attachment, seal_attachment } from "./pkg/tsunagu_client.js";
import type {
  AccountView,
  CareEventInput,
  ConnectionStatus,
  ConsentInput,
  DeviceInfo,
  EngineEvent,
  EngineListener,
  EngineOptions,
  MemberView,
  Patient,
  PostView,
  Role,
  TimelineSummary,
} from "./index.ts";
import { EngineError } from "./index.ts";
import { deleteDatabase, Kv } from "./idb.ts";

/** Reconnect delays: 1 s doubling to 30 s (with jitter). */
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30_000;
/** A ping after this much quiet checks the connection is alive. */
const KEEPALIVE_MS = 25_000;
/** How long a call that needs the server waits for a connection in progress. */
const ONLINE_WAIT_MS = 15_000;

let wasmReady: Promise<unknown> | null = null;

/** Composer options of `post` and `postWithAttachments`. */
export interface PostOptions {
  replyTo?: number;
  kind?: "text" | "report";
  /** Accounts mentioned (members of the timeline; others are dropped). */
  mentions?: string[];
  /** Asks every member to acknowledge (確認しました). */
  urgent?: boolean;
}

/** Longest side of a thumbnail, in pixels. */
const THUMB_PX = 320;

/**
 * A small JPEG of a photo (longest side THUMB_PX), made on this device so the
 * timeline shows previews without downloading every full photo; null when
 * the browser cannot decode the image (e.g. HEIC) or it is already that small.
 */
async function makeThumbnail(file: Blob): Promise<Uint8Array | null> {
  try {
    const bitmap = await createImageBitmap(file);
    if (Math.max(bitmap.width, bitmap.height) <= THUMB_PX) {
      bitmap.close();
      return null; // already thumbnail-sized
    }
    const scale = THUMB_PX / Math.max(bitmap.width, bitmap.height);
    const w = Math.max(1, Math.round(bitmap.width * scale));
    const h = Math.max(1, Math.round(bitmap.height * scale));
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    if (!ctx) return null;
    ctx.fillStyle = "#fff"; // transparent PNGs get a white background in JPEG
    ctx.fillRect(0, 0, w, h);
    ctx.drawImage(bitmap, 0, 0, w, h);
    bitmap.close();
    const blob = await new Promise<Blob | null>((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.7));
    if (!blob) return null;
    return new Uint8Array(await blob.arrayBuffer());
  } catch {
    return null;
  }
}

function loadWasm(): Promise<unknown> {
  wasmReady ??= init();
  return wasmReady;
}

/** An EngineError from whatever a core call or fetch rejected with. */
function toEngineError(e: unknown): EngineError {
  if (e instanceof EngineError) return e;
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === "string" ? err.code : "internal";
  const message = typeof err?.message === "string" ? err.message : String(e);
  return new EngineError(code, message);
}

async function httpError(resp: Response): Promise<EngineError> {
  let code = resp.status === 401 ? "unauthorized" : "internal";
  let message = `HTTP ${resp.status}`;
  try {
    const body = (await resp.json()) as { code?: string; message?: string };
    if (body.code) code = body.code;
    if (body.message) message = body.message;
  } catch {
    // Not JSON: keep the status.
  }
  return new EngineError(code, message);
}

/** Holds the tab's Web Lock for the database until `release`. */
async function acquireLock(name: string): Promise<(() => void) | null> {
  const locks = (navigator as Navigator & { locks?: LockManager }).locks;
  if (!locks) return () => {};
  return new Promise((resolve) => {
    void locks.request(name, { ifAvailable: true }, (lock) => {
      if (!lock) {
        resolve(null);
        return undefined;
      }
      return new Promise<void>((release) => resolve(() => release()));
    });
  });
}

function wsUrl(serverUrl: string, deviceId: string): string {
  const u = new URL("/v1/ws", serverUrl);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.searchParams.set("device", deviceId);
  return u.toString();
}

export class Engine {
  private facade: Facade | null;
  private readonly kv: Kv;
  private readonly serverUrl: string;
  private readonly dbName: string;
  private releaseLock: (() => void) | null;
  private listeners = new Set<EngineListener>();
  private chain: Promise<unknown> = Promise.resolve();

  // Views as of the last idle moment.
  private cachedDevice: DeviceInfo | null = null;
  private cachedTimelines: TimelineSummary[] = [];
  private cachedPosts = new Map<string, PostView[]>();
  private cachedMembers = new Map<string, MemberView[]>();
  private importing = false;
  private cachedAccounts: AccountView[] = [];

  // Connection.
  private wanted = false;
  private ws: WebSocket | null = null;
  private currentStatus: ConnectionStatus = "offline";
  private backoffMs = BACKOFF_MIN_MS;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private keepaliveTimer: ReturnType<typeof setTimeout> | null = null;
  private drainQueued = false;
  private sendQueued = false;
  private readonly onOnline = () => {
    if (this.wanted && !this.ws) this.reconnectNow();
  };

  /** The browser lost the network: drop the socket at once, so a request in
   *  flight (receipts, the urgent list) fails now instead of holding the
   *  operation queue — and the posts queued behind it — for its timeout. */
  private readonly onOffline = () => {
    if (!this.wanted || !this.ws) return;
    if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
    this.keepaliveTimer = null;
    this.closeSocket();
    this.setStatus("offline");
    this.scheduleReconnect();
  };

  private constructor(facade: Facade, kv: Kv, serverUrl: string, dbName: string, releaseLock: () => void) {
    this.facade = facade;
    this.kv = kv;
    this.serverUrl = serverUrl;
    this.dbName = dbName;
    this.releaseLock = releaseLock;
    this.refreshCaches();
  }

  static async open(options: EngineOptions = {}): Promise<Engine> {
    const serverUrl = options.serverUrl ?? location.origin;
    const dbName = options.dbName ?? "tsunagu";
    const release = await acquireLock(`tsunagu-engine:${dbName}`);
    if (!release) {
      throw new EngineError("locked", "Tsunagu is open in another tab of this browser");
    }
    try {
      await loadWasm();
      const kv = await Kv.open(dbName);
      const { keys, values } = await kv.loadAll();
      const host = {
        persist: (putKeys: Uint8Array[], putValues: Uint8Array[], deleteKeys: Uint8Array[]) =>
          kv.commit(putKeys, putValues, deleteKeys),
        send: (text: string) => {
          // The engine owns `ws`; read it at call time.
          const ws = engine.ws;
          if (!ws || ws.readyState !== WebSocket.OPEN) throw new Error("not connected");
          ws.send(text);
        },
        sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
      };
      let facade: Facade;
      try {
        facade = Facade.load(host, keys, values);
      } catch (e) {
        kv.close();
        throw toEngineError(e);
      }
      const engine: Engine = new Engine(facade, kv, serverUrl, dbName, release);
      return engine;
    } catch (e) {
      release();
      throw toEngineError(e);
    }
  }

  // ----- events and the operation queue ---------------------------------------------------

  on(listener: EngineListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  private emit(event: EngineEvent): void {
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch (e) {
        console.error("engine listener failed", e);
      }
    }
  }

  private live(): Facade {
    if (!this.facade) throw new EngineError("wiped", "the engine's local data was wiped");
    return this.facade;
  }

  /** Runs `op` after every earlier operation; then reports the core's events. */
  private enqueue<T>(op: (f: Facade) => Promise<T>): Promise<T> {
    const run = this.chain.then(async () => {
      const f = this.live();
      try {
        return await op(f);
      } catch (e) {
        throw toEngineError(e);
      } finally {
        if (this.facade) this.afterOperation();
      }
    });
    this.chain = run.catch(() => undefined);
    return run;
  }

  private afterOperation(): void {
    const f = this.facade;
    if (!f || f.busy()) return;
    const events = JSON.parse(f.take_events() as string) as EngineEvent[];
    this.refreshCaches();
    for (const e of events) {
      if (e.type === "posts") this.cachedPosts.delete(e.timelineId);
      this.emit(e);
    }
  }

  private refreshCaches(): void {
    const f = this.facade;
    if (!f || f.busy()) return;
    this.cachedDevice = JSON.parse((f.device() as string | null) ?? "null") as DeviceInfo | null;
    this.cachedTimelines = JSON.parse(f.timelines() as string) as TimelineSummary[];
    this.cachedAccounts = JSON.parse(f.accounts() as string) as AccountView[];
  }

  // ----- views ----------------------------------------------------------------------

  device(): DeviceInfo | null {
    if (this.facade && !this.facade.busy()) this.refreshCaches();
    return this.cachedDevice;
  }

  status(): ConnectionStatus {
    return this.currentStatus;
  }

  timelines(): TimelineSummary[] {
    if (this.facade && !this.facade.busy()) {
      this.cachedTimelines = JSON.parse(this.facade.timelines() as string) as TimelineSummary[];
    }
    return this.cachedTimelines;
  }

  posts(timelineId: string): PostView[] {
    if (this.facade && !this.facade.busy()) {
      const posts = JSON.parse(this.facade.posts(timelineId) as string) as PostView[];
      this.cachedPosts.set(timelineId, posts);
      return posts;
    }
    return this.cachedPosts.get(timelineId) ?? [];
  }

  /** The timeline's members with roles and end dates (see index.ts). */
  members(timelineId: string): MemberView[] {
    if (this.facade && !this.facade.busy()) {
      const members = JSON.parse(this.facade.members(timelineId) as string) as MemberView[];
      this.cachedMembers.set(timelineId, members);
      return members;
    }
    return this.cachedMembers.get(timelineId) ?? [];
  }

  accounts(): AccountView[] {
    if (this.facade && !this.facade.busy()) {
      this.cachedAccounts = JSON.parse(this.facade.accounts() as string) as AccountView[];
    }
    return this.cachedAccounts;
  }

  // ----- registration ---------------------------------------------------------------

  async registerDevice(name: string): Promise<DeviceInfo> {
    return this.enqueue(async (f) => {
      if (this.device()) throw new EngineError("invalid", "this browser already has a device");
      const signatureKey = (await f.new_device_key()) as string;
      const resp = await fetch(new URL("/v1/devices", this.serverUrl), {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name, signature_key: signatureKey }),
      });
      if (!resp.ok) throw await httpError(resp);
      const reg = (await resp.json()) as { device_id: string; device_token: string; account_id: string };
      let accountName = "";
      const me = await fetch(new URL("/v1/me", this.serverUrl), { credentials: "same-origin" });
      if (me.ok) accountName = ((await me.json()) as { display_name?: string }).display_name ?? "";
      const device = JSON.parse(
        (await f.register(
          JSON.stringify({
            serverUrl: this.serverUrl,
            accountId: reg.account_id,
            accountName,
            deviceId: reg.device_id,
            deviceToken: reg.device_token,
          }),
        )) as string,
      ) as DeviceInfo;
      this.cachedDevice = device;
      return device;
    });
  }

  // ----- connection -----------------------------------------------------------------

  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    this.openSocket();
  }

  disconnect(): void {
    this.wanted = false;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    this.clearTimers();
    this.closeSocket();
    this.setStatus("offline");
  }

  private setStatus(s: ConnectionStatus): void {
    if (s === this.currentStatus) return;
    this.currentStatus = s;
    this.emit({ type: "status", status: s });
  }

  private clearTimers(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
    this.reconnectTimer = null;
    this.keepaliveTimer = null;
  }

  private closeSocket(): void {
    const ws = this.ws;
    this.ws = null;
    this.facade?.socket_closed();
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  }

  private reconnectNow(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.backoffMs = BACKOFF_MIN_MS;
    this.openSocket();
  }

  private scheduleReconnect(): void {
    if (!this.wanted || this.reconnectTimer) return;
    const delay = this.backoffMs * (0.75 + Math.random() * 0.5);
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.openSocket();
    }, delay);
  }

  private openSocket(): void {
    const device = this.device();
    if (!this.wanted || !device || this.ws || !this.facade) return;
    this.setStatus("connecting");
    let opened = false;
    const ws = new WebSocket(wsUrl(this.serverUrl, device.deviceId));
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      opened = true;
      this.facade?.socket_opened();
      this.enqueue((f) => f.connected()).then(
        () => {
          if (ws !== this.ws) return;
          this.backoffMs = BACKOFF_MIN_MS;
          this.setStatus("online");
          this.armKeepalive();
          if (this.facade && this.facade.queued_frames() > 0) this.scheduleDrain();
          void this.importHistory().catch(() => {});
          // The urgent posts waiting for this person (alerts missed offline).
          this.enqueue((f) => f.refresh_urgent()).catch(() => {});
          // What was read offline reaches the others' receipts now (the
          // core sends a position only when it moved).
          for (const t of this.timelines()) this.enqueue((f) => f.send_read(t.timelineId)).catch(() => {});
        },
        (e: EngineError) => {
          if (ws !== this.ws) return;
          this.emit({ type: "warning", message: `connecting failed: ${e.message}`, code: e.code });
          // Drop this socket; onclose schedules the next attempt.
          ws.close(4000);
        },
      );
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (ws !== this.ws || typeof ev.data !== "string") return;
      this.facade?.push_frame(ev.data);
      this.armKeepalive();
      this.scheduleDrain();
    };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.facade?.socket_closed();
      if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
      this.keepaliveTimer = null;
      this.setStatus(this.wanted ? "connecting" : "offline");
      if (!opened) {
        // The upgrade was refused or the server is unreachable: find out
        // which before trying again.
        void this.checkAccess().then((ok) => {
          if (ok) {
            this.setStatus("offline");
            this.scheduleReconnect();
          }
        });
      } else {
        this.setStatus("offline");
        this.scheduleReconnect();
      }
    };
  }

  /** After a refused connection: false when the session ended (signed_out)
   *  or the device was revoked (wiped); true to retry later. */
  private async checkAccess(): Promise<boolean> {
    let resp: Response;
    try {
      resp = await fetch(new URL("/v1/devices", this.serverUrl), { credentials: "same-origin" });
    } catch {
      return true; // unreachable: offline
    }
    if (resp.status === 401) {
      this.disconnect();
      this.emit({ type: "signed_out" });
      return false;
    }
    if (!resp.ok) return true;
    const device = this.device();
    try {
      const devices = (await resp.json()) as { device_id: string; revoked_at?: number | null }[];
      const mine = devices.find((d) => d.device_id === device?.deviceId);
      if (!mine || mine.revoked_at) {
        await this.destroy("revoked");
        return false;
      }
    } catch {
      return true;
    }
    return true;
  }

  private armKeepalive(): void {
    if (this.keepaliveTimer) clearTimeout(this.keepaliveTimer);
    this.keepaliveTimer = setTimeout(() => {
      this.keepaliveTimer = null;
      const ws = this.ws;
      if (!ws || this.currentStatus !== "online") return;
      this.enqueue((f) => f.ping()).then(
        () => this.armKeepalive(),
        () => {
          // Silent or broken: start over.
          if (ws === this.ws) ws.close(4001);
        },
      );
    }, KEEPALIVE_MS);
  }

  private scheduleDrain(): void {
    if (this.drainQueued) return;
    this.drainQueued = true;
    this.enqueue(async (f) => {
      this.drainQueued = false;
      if (f.queued_frames() > 0) await f.drain();
    }).then(() => void this.importHistory().catch(() => {})).catch((e: EngineError) => {
      if (e.code !== "offline") this.emit({ type: "warning", message: e.message, code: e.code });
    });
  }

  private scheduleSend(): void {
    if (this.sendQueued || this.currentStatus !== "online") return;
    this.sendQueued = true;
    this.enqueue(async (f) => {
      this.sendQueued = false;
      await f.send_outbox();
    }).catch((e: EngineError) => {
      if (e.code !== "offline") this.emit({ type: "warning", message: e.message, code: e.code });
    });
  }

  /** Resolves once online; while the engine is still connecting (just after
   *  opening, or reconnecting) it waits up to `ONLINE_WAIT_MS`. */
  private async requireOnline(): Promise<void> {
    if (this.currentStatus === "online") return;
    if (this.wanted && this.currentStatus === "connecting") {
      const online = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => {
          off();
          resolve(false);
        }, ONLINE_WAIT_MS);
        const off = this.on((e) => {
          if (e.type !== "status" || e.status === "connecting") return;
          clearTimeout(timer);
          off();
          resolve(e.status === "online");
        });
      });
      if (online) return;
    }
    throw new EngineError("offline", "this needs a connection to the server");
  }

  // ----- workflows ------------------------------------------------------------------

  async refreshAccounts(): Promise<AccountView[]> {
    await this.requireOnline();
    return this.enqueue(async (f) => JSON.parse((await f.refresh_accounts()) as string) as AccountView[]);
  }

  async createTimeline(title?: string, patient?: Patient): Promise<string> {
    await this.requireOnline();
    return this.enqueue(async (f) => (await f.create_timeline(title ?? undefined, patient ? JSON.stringify(patient) : undefined)) as string);
  }

  async editPost(timelineId: string, seq: number, text: string): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.edit_post(timelineId, seq, text));
  }

  async deletePost(timelineId: string, seq: number): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.delete_post(timelineId, seq));
  }

  /**
   * Hands the timeline's past over to the accounts the commit at
   * `addedAtSeq` added: one archive sealed with a fresh key (by the core),
   * uploaded as one blob, its key sent inside the group. `sinceMs`: only
   * what was stored since then. Resolves with the number of messages (0:
   * nothing to hand over).
   */
  async handOverHistory(timelineId: string, addedAtSeq: number, accounts: string[], sinceMs?: number): Promise<number> {
    await this.requireOnline();
    const prepared = await this.enqueue(
      async (f) => f.prepare_history(timelineId, addedAtSeq, JSON.stringify(accounts), sinceMs ?? undefined) as { ciphertext: Uint8Array; handover: string } | null,
    );
    if (!prepared) return 0;
    await this.uploadBlob(prepared.ciphertext, () => {});
    await this.enqueue((f) => f.announce_history(timelineId, prepared.handover));
    return (JSON.parse(prepared.handover) as { count: number }).count;
  }

  /** Fetches and imports the history handed over to this account (after
   *  each catch-up); a blob that is gone is dropped, a network failure
   *  keeps it for the next time. */
  private async importHistory(): Promise<void> {
    if (this.importing) return;
    this.importing = true;
    try {
      type Pending = { timelineId: string; handover: { archive: { blob_id: string } } };
      const pending = await this.enqueue(async (f) => JSON.parse(f.pending_handovers() as string) as Pending[]);
      for (const p of pending) {
        let bytes: Uint8Array | undefined;
        try {
          const resp = await fetch(new URL(`/v1/blobs/${encodeURIComponent(p.handover.archive.blob_id)}`, this.serverUrl), { credentials: "same-origin" });
          if (resp.status === 404) bytes = undefined;
          else if (!resp.ok) return;
          else bytes = new Uint8Array(await resp.arrayBuffer());
        } catch {
          return; // offline: next time
        }
        await this.enqueue((f) => f.import_history(p.timelineId, JSON.stringify(p.handover), bytes));
      }
    } finally {
      this.importing = false;
    }
  }

  async setTitle(timelineId: string, title: string): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.set_title(timelineId, title));
  }

  async addPerson(timelineId: string, accountId: string): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.add_person(timelineId, accountId));
  }

  /** Resolves with the adding commit's seq (for `handOverHistory`). */
  async addMember(timelineId: string, accountId: string, role: Role, until?: number | null): Promise<number> {
    await this.requireOnline();
    return this.enqueue(async (f) => (await f.add_member(timelineId, accountId, role, until ?? undefined)) as number);
  }

  async setMemberRole(timelineId: string, accountId: string, role: Role, until?: number | null): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.set_member_role(timelineId, accountId, role, until ?? undefined));
  }

  /** Who is alerted for urgent posts at once / after `escalateAfterSecs`. */
  async setCallLists(timelineId: string, firstCall: string[], secondCall: string[], escalateAfterSecs?: number): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.set_call_lists(timelineId, JSON.stringify(firstCall), JSON.stringify(secondCall), escalateAfterSecs ?? undefined));
  }

  async recordConsent(timelineId: string, consent: ConsentInput): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.record_consent(timelineId, JSON.stringify(consent)));
  }

  async postEvent(timelineId: string, event: CareEventInput): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.post_event(timelineId, JSON.stringify(event)));
  }

  async removePerson(timelineId: string, accountId: string): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.remove_person(timelineId, accountId));
  }

  async post(timelineId: string, text: string, options: PostOptions = {}): Promise<PostView> {
    return this.queueDraft(timelineId, text, options, []);
  }

  /** Queues a post with every composer option (see `PostOptions`). */
  private async queueDraft(timelineId: string, text: string, options: PostOptions, attachments: unknown[]): Promise<PostView> {
    const draft = JSON.stringify({
      text,
      replyTo: options.replyTo ?? null,
      kind: options.kind ?? "text",
      attachments,
      mentions: options.mentions ?? [],
      urgent: options.urgent ?? false,
    });
    const view = await this.enqueue(async (f) => JSON.parse((await f.queue_draft(timelineId, draft)) as string) as PostView);
    this.scheduleSend();
    return view;
  }

  // ----- attachments (added by web-ui for the photo/PDF composer) ------------------

  /**
   * Posts `text` with `files`: each file is sealed by the core (AES-256-GCM
   * with a fresh key; the key travels only inside the MLS-encrypted post),
   * its ciphertext uploaded to `POST /v1/blobs` with the session cookie, then
   * the post is queued with the references like `post`. Needs the network
   * for the uploads (rejects "offline" otherwise); `onProgress` reports the
   * bytes uploaded so far.
   */
  async postWithAttachments(
    timelineId: string,
    text: string,
    files: File[],
    options: PostOptions & { onProgress?: (sent: number, total: number) => void } = {},
  ): Promise<PostView> {
    this.live();
    // Each file, and a photo's thumbnail (a small JPEG made here, sealed as
    // its own blob with its own key), is sealed before anything is uploaded.
    const sealed: { ciphertext: Uint8Array; reference: string }[] = [];
    const references: Record<string, unknown>[] = [];
    const seal = (bytes: Uint8Array, mime: string, name: string) => {
      try {
        const s = seal_attachment(bytes, mime, name) as { ciphertext: Uint8Array; reference: string };
        sealed.push(s);
        return JSON.parse(s.reference) as Record<string, unknown>;
      } catch (e) {
        throw toEngineError(e);
      }
    };
    for (const file of files) {
      const bytes = new Uint8Array(await file.arrayBuffer());
      const reference = seal(bytes, file.type || "application/octet-stream", file.name);
      const thumb = file.type.startsWith("image/") ? await makeThumbnail(file) : null;
      if (thumb) reference.thumbnail = seal(thumb, "image/jpeg", `${file.name}.thumb.jpg`);
      references.push(reference);
    }
    const total = sealed.reduce((n, s) => n + s.ciphertext.byteLength, 0);
    let done = 0;
    for (const s of sealed) {
      await this.uploadBlob(s.ciphertext, (sent) => options.onProgress?.(done + sent, total));
      done += s.ciphertext.byteLength;
      options.onProgress?.(done, total);
    }
    return this.queueDraft(timelineId, text, options, references);
  }

  /** Downloads an attachment's blob and opens it (checks blob id, tag, size and hash); rejects "attachment_rejected" if it does not match. */
  async openAttachment(reference: { blob_id: string; mime: string }): Promise<Blob> {
    let resp: Response;
    try {
      resp = await fetch(new URL(`/v1/blobs/${encodeURIComponent(reference.blob_id)}`, this.serverUrl), { credentials: "same-origin" });
    } catch {
      throw new EngineError("offline", "cannot reach the server");
    }
    if (!resp.ok) throw await httpError(resp);
    const bytes = new Uint8Array(await resp.arrayBuffer());
    try {
      const plain = open_attachment(JSON.stringify(reference), bytes);
      return new Blob([plain as Uint8Array<ArrayBuffer>], { type: reference.mime });
    } catch (e) {
      throw toEngineError(e);
    }
  }

  /** `POST /v1/blobs` with upload progress (XMLHttpRequest: fetch reports none). */
  private uploadBlob(ciphertext: Uint8Array, onProgress: (sent: number) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", new URL("/v1/blobs", this.serverUrl).toString());
      xhr.withCredentials = true;
      xhr.setRequestHeader("content-type", "application/octet-stream");
      xhr.upload.onprogress = (e) => onProgress(e.loaded);
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) return resolve();
        let code = xhr.status === 401 ? "unauthorized" : "internal";
        let message = `HTTP ${xhr.status}`;
        try {
          const body = JSON.parse(xhr.responseText) as { code?: string; message?: string };
          if (body.code) code = body.code;
          if (body.message) message = body.message;
        } catch {
          // Not JSON: keep the status.
        }
        reject(new EngineError(code, message));
      };
      xhr.onerror = () => reject(new EngineError("offline", "cannot reach the server"));
      xhr.send(ciphertext as Uint8Array<ArrayBuffer>);
    });
  }

  /** Moves the read marker and, when online, tells the server (read receipts). */
  async markRead(timelineId: string, seq?: number): Promise<void> {
    await this.enqueue((f) => f.mark_read(timelineId, seq ?? undefined));
    if (this.currentStatus === "online") await this.enqueue((f) => f.send_read(timelineId));
  }

  /** Asks the server who has read and received the timeline's posts
   *  (`PostView.readBy` / `deliveredTo`; pushes keep them current). */
  async fetchReceipts(timelineId: string): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.fetch_receipts(timelineId));
  }

  /**
   * What a modified client does: encrypts and sends a post without the
   * core's role check (a reader's post). The UI never calls it; the browser
   * tests do, to show that the server refuses it ("forbidden").
   */
  async forcePostUnchecked(timelineId: string, text: string): Promise<number> {
    await this.requireOnline();
    return this.enqueue(async (f) => (await f.force_post_unchecked(timelineId, text)) as number);
  }

  /** Acknowledges (確認しました) an urgent post. */
  async acknowledge(timelineId: string, seq: number): Promise<void> {
    await this.requireOnline();
    await this.enqueue((f) => f.acknowledge(timelineId, seq));
  }

  // ----- wiping ---------------------------------------------------------------------

  async wipe(): Promise<void> {
    await this.destroy("logout");
  }

  private async destroy(reason: "logout" | "revoked"): Promise<void> {
    if (!this.facade) return;
    this.disconnect();
    // The closed socket makes a waiting operation fail at once.
    await Promise.race([this.chain, new Promise((r) => setTimeout(r, 5000))]);
    const f = this.facade;
    this.facade = null;
    f.free();
    this.kv.close();
    await deleteDatabase(this.dbName);
    this.cachedDevice = null;
    this.cachedTimelines = [];
    this.cachedPosts.clear();
    this.cachedMembers.clear();
    this.cachedAccounts = [];
    this.releaseLock?.();
    this.releaseLock = null;
    this.emit({ type: "wiped", reason });
  }
}
