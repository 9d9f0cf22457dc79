// The connection status shown in the status line: what the engine's
// websocket reports once a device runs, and the browser's own online/offline
// events (plus a /healthz probe) before that.

export type ConnectionState = "online" | "connecting" | "offline";

type Listener = (state: ConnectionState) => void;
const listeners = new Set<Listener>();
let state: ConnectionState = navigator.onLine ? "connecting" : "offline";
let engineDriven = false;

export function connectionState(): ConnectionState {
  return state;
}

export function onConnection(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function set(next: ConnectionState): void {
  if (next === state) return;
  state = next;
  for (const l of listeners) l(state);
}

/** The engine reports its websocket's state; from then on it alone decides. */
export function setFromEngine(next: ConnectionState): void {
  engineDriven = true;
  set(next);
}

/** The engine stopped (logout): fall back to probing the server. */
export function releaseFromEngine(): void {
  engineDriven = false;
  void probe();
}

async function probe(): Promise<void> {
  if (engineDriven) return;
  if (!navigator.onLine) {
    set("offline");
    return;
  }
  try {
    const r = await fetch("/healthz", { cache: "no-store" });
    if (!engineDriven) set(r.ok ? "online" : "offline");
  } catch {
    if (!engineDriven) set("offline");
  }
}

export function startProbing(): void {
  window.addEventListener("online", () => void probe());
  window.addEventListener("offline", () => {
    if (!engineDriven) set("offline");
  });
  void probe();
  window.setInterval(() => {
    if (!engineDriven && state !== "online") void probe();
  }, 5000);
}
