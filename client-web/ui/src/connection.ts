// The connection status shown in the status line. Once a device runs, the
// engine's websocket decides; before that, a /healthz probe. Either way the
// browser's own "offline" wins: a websocket can look open for a while after
// the network is gone, and the person should know at once.

export type ConnectionState = "online" | "connecting" | "offline";

type Listener = (state: ConnectionState) => void;
const listeners = new Set<Listener>();
let engineDriven = false;
let engineState: ConnectionState = "connecting";
let probeState: ConnectionState = "connecting";
let shown: ConnectionState = navigator.onLine ? "connecting" : "offline";

export function connectionState(): ConnectionState {
  return shown;
}

export function onConnection(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function update(): void {
  const next: ConnectionState = !navigator.onLine ? "offline" : engineDriven ? engineState : probeState;
  if (next === shown) return;
  shown = next;
  for (const l of listeners) l(shown);
}

/** The engine reports its websocket's state; from then on it decides. */
export function setFromEngine(next: ConnectionState): void {
  engineDriven = true;
  engineState = next;
  update();
}

/** The engine stopped (logout, lost session): fall back to probing the server. */
export function releaseFromEngine(): void {
  engineDriven = false;
  void probe();
}

async function probe(): Promise<void> {
  if (engineDriven || !navigator.onLine) return update();
  try {
    const r = await fetch("/healthz", { cache: "no-store" });
    probeState = r.ok ? "online" : "offline";
  } catch {
    probeState = "offline";
  }
  update();
}

export function startProbing(): void {
  window.addEventListener("online", () => void probe());
  window.addEventListener("offline", update);
  void probe();
  window.setInterval(() => {
    if (!engineDriven && probeState !== "online") void probe();
  }, 5000);
}
