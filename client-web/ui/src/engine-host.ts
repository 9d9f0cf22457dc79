// Holds the one Engine of this tab: opens it after login, registers this
// browser as a device the first time, keeps it connected, and feeds its
// connection status to the status line. A lost session (idle timeout) only
// disconnects it and keeps the local data; logout and revocation wipe it.
import { api, type Me } from "./api.ts";
import { releaseFromEngine, setFromEngine } from "./connection.ts";
import { Engine, type EngineError, type EngineEvent } from "./engine/index.ts";

type Listener = (event: EngineEvent) => void;

let engine: Engine | null = null;
let opening: Promise<Engine> | null = null;
let openingFor: string | null = null;
let offEngine: (() => void) | null = null;
const listeners = new Set<Listener>();

/** Hooks the shell sets: the session was lost (HTTP 401), local data was wiped (revoked). */
export const hostEvents = {
  signedOut: () => {},
  wiped: (_reason: "logout" | "revoked") => {},
  /** Any wipe of this browser's data (logout, revocation, another person
   *  logging in): the UI drops what it keeps beside the engine. */
  localDataWiped: () => {},
};

export function currentEngine(): Engine | null {
  return engine && opening === null ? engine : null;
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

/** The engine for `me`, connected; registers this browser as a device when it has none. */
export function ensureEngine(me: Me): Promise<Engine> {
  if (opening && openingFor === me.account_id) return opening;
  const d = engine?.device();
  if (engine && d && d.accountId === me.account_id && !opening) {
    engine.connect();
    return Promise.resolve(engine);
  }
  openingFor = me.account_id;
  const attempt = (async () => {
    let e = engine ?? (await Engine.open());
    const existing = e.device();
    if (existing && existing.accountId !== me.account_id) {
      // Another person used this browser without logging out: their local
      // data must not mix with this person's.
      detach();
      await e.wipe();
      hostEvents.localDataWiped();
      e = await Engine.open();
    }
    attach(e);
    if (!e.device()) await e.registerDevice(deviceName());
    const device = e.device();
    if (device) localStorage.setItem("tsunagu.deviceId", device.deviceId);
    e.connect();
    return e;
  })();
  opening = attempt;
  attempt.then(
    () => {
      if (opening === attempt) opening = null;
      emit({ type: "timelines" });
    },
    (err: unknown) => {
      if (opening === attempt) opening = null;
      emit({ type: "warning", message: String((err as Error)?.message ?? err), code: (err as EngineError)?.code });
    },
  );
  return attempt;
}

function attach(e: Engine): void {
  if (engine === e && offEngine) return;
  offEngine?.();
  engine = e;
  // The browser tests play a modified client (Engine.forcePostUnchecked)
  // through this handle; nothing of the app uses it. Anyone with the
  // browser's developer tools has the same power over their own page.
  if (localStorage.getItem("tsunagu.testHooks") === "1") (window as unknown as { __tsunaguEngine?: Engine }).__tsunaguEngine = e;
  offEngine = e.on((event) => {
    if (event.type === "status") setFromEngine(event.status);
    if (event.type === "signed_out") hostEvents.signedOut();
    if (event.type === "wiped") {
      detach();
      hostEvents.localDataWiped();
      hostEvents.wiped(event.reason);
    }
    emit(event);
  });
  setFromEngine(e.status());
}

function detach(): void {
  offEngine?.();
  offEngine = null;
  engine = null;
  localStorage.removeItem("tsunagu.deviceId");
  releaseFromEngine();
}

/** Session lost: stop talking to the server, keep the local data for the next login. */
export function pauseEngine(): void {
  engine?.disconnect();
  releaseFromEngine();
}

/**
 * Logout: this browser's device is revoked on the server (its keys are about
 * to be deleted, so it could never read again; revoking takes it out of
 * every timeline instead of leaving a dead member), then the engine deletes
 * all local data. Offline, the revocation is skipped: the device stays
 * listed until it is revoked from the devices page of another one.
 */
export async function wipeEngine(): Promise<void> {
  const pending = opening;
  if (pending) await pending.catch(() => null);
  const e = engine;
  const deviceId = e?.device()?.deviceId;
  // Stop listening first: the server's answer to the revocation must not
  // look like a revocation from elsewhere.
  detach();
  e?.disconnect();
  if (deviceId) {
    try {
      await api.revokeDevice(deviceId);
    } catch {
      // Offline or already revoked: wiping the local data matters more.
    }
  }
  hostEvents.localDataWiped();
  if (!e) return;
  try {
    await e.wipe();
  } catch {
    // Best effort: an engine that never opened has nothing to wipe.
  }
}
