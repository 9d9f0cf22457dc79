// Holds the one Engine of this tab for the logged-in person: opens it after
// login, registers this browser as a device the first time, keeps it
// connected, and feeds its connection status to the status line. Logout and
// revocation wipe it.
import type { Me } from "./api.ts";
import { releaseFromEngine, setFromEngine } from "./connection.ts";
import { Engine, EngineError, type EngineEvent } from "./engine/index.ts";

type Listener = (event: EngineEvent) => void;

let engine: Engine | null = null;
let opening: Promise<Engine> | null = null;
let openError: unknown = null;
let accountId: string | null = null;
let offEngine: (() => void) | null = null;
const listeners = new Set<Listener>();

/** Hooks the shell sets: session lost (401) and local data wiped (revoked). */
export const hostEvents = {
  signedOut: () => {},
  wiped: (_reason: "logout" | "revoked") => {},
};

export function currentEngine(): Engine | null {
  return engine;
}

export function engineError(): unknown {
  return openError;
}

/** Subscribes to the engine's events (also across an engine re-open). */
export function onEngine(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function emit(event: EngineEvent): void {
  for (const l of listeners) l(event);
}

/** A readable name for this browser's device, e.g. "Chrome (Android)". */
export function deviceName(): string {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? "Edge" : /Firefox\//.test(ua) ? "Firefox" : /Chrom(e|ium)\//.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : "Browser";
  const os = /Android/.test(ua) ? "Android" : /iPad|iPhone/.test(ua) ? "iOS" : /Windows/.test(ua) ? "Windows" : /Mac OS/.test(ua) ? "macOS" : /Linux/.test(ua) ? "Linux" : "";
  return os ? `${browser} (${os})` : browser;
}

/** Opens (once) the engine for `me`, registering this browser as a device if needed. */
export function ensureEngine(me: Me): Promise<Engine> {
  if (engine && accountId === me.account_id) return Promise.resolve(engine);
  if (opening && accountId === me.account_id) return opening;
  accountId = me.account_id;
  openError = null;
  opening = (async () => {
    const e = await Engine.open();
    const existing = e.device();
    if (existing && existing.accountId !== me.account_id) {
      // Another person used this browser before without logging out: their
      // local data must not mix with this person's.
      await e.wipe();
      return ensureFresh();
    }
    if (!existing) await e.registerDevice(deviceName());
    attach(e);
    return e;
  })();
  opening.catch((err) => {
    openError = err;
    opening = null;
    emit({ type: "warning", message: String((err as Error)?.message ?? err), code: (err as EngineError)?.code });
  });
  return opening;
}

async function ensureFresh(): Promise<Engine> {
  const e = await Engine.open();
  if (!e.device()) await e.registerDevice(deviceName());
  attach(e);
  return e;
}

function attach(e: Engine): void {
  engine = e;
  const d = e.device();
  if (d) localStorage.setItem("tsunagu.deviceId", d.deviceId);
  offEngine?.();
  offEngine = e.on((event) => {
    if (event.type === "status") setFromEngine(event.status);
    if (event.type === "signed_out") hostEvents.signedOut();
    if (event.type === "wiped") {
      detach();
      hostEvents.wiped(event.reason);
    }
    emit(event);
  });
  setFromEngine(e.status());
  e.connect();
  emit({ type: "timelines" });
}

function detach(): void {
  offEngine?.();
  offEngine = null;
  engine = null;
  opening = null;
  accountId = null;
  localStorage.removeItem("tsunagu.deviceId");
  releaseFromEngine();
}

/** Logout: the engine deletes all local data of this browser. */
export async function wipeEngine(): Promise<void> {
  const e = engine ?? (opening ? await opening.catch(() => null) : null);
  detach();
  if (e) {
    try {
      await e.wipe();
    } catch {
      // Wiping is best effort when the engine never opened properly.
    }
  } else {
    try {
      const fresh = await Engine.open();
      await fresh.wipe();
    } catch {
      // Nothing to wipe.
    }
  }
}

/** The engine's view of posts and timelines is per device; forget it on session end. */
export function stopEngine(): void {
  engine?.disconnect();
  detach();
}
