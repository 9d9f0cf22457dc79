// Entry point: the screens by route name, and the session's life cycle
// (open the engine after login, wipe it on logout or revocation).
import { App, type ScreenDef } from "./app.ts";
import { clearOpenedAttachments } from "./attachments.ts";
import { currentEngine, ensureEngine, hostEvents, onEngine, pauseEngine, wipeEngine } from "./engine-host.ts";
import { t, type MessageKey } from "./i18n/index.ts";
import { inviteScreen, loginScreen, setupScreen } from "./screens/auth.ts";
import { adminScreen, devicesScreen, directoryScreen, profileScreen } from "./screens/people.ts";
import { clearTitles, createTimelineScreen, timelineScreen, timelinesScreen, timelineTitle } from "./screens/timelines.ts";
import "./styles.css";

const screens: Record<string, ScreenDef> = {
  setup: { render: setupScreen, public: true },
  invite: { render: inviteScreen, public: true },
  login: { render: loginScreen, public: true },
  timelines: { render: timelinesScreen },
  new: { render: createTimelineScreen, professional: true },
  t: { render: timelineScreen },
  directory: { render: directoryScreen, professional: true },
  me: { render: profileScreen },
  devices: { render: devicesScreen },
  admin: { render: adminScreen, professional: true },
};

const root = document.getElementById("app")!;
const app = new App(root, screens);

app.onSession = (me) => {
  // Errors surface on the timeline screens, which wait for the engine.
  if (me) ensureEngine(me).catch(() => {});
  else pauseEngine();
};
app.beforeLogout = wipeEngine;
hostEvents.signedOut = () => {
  app.setMe(null);
  app.navigate("#/login");
};
hostEvents.localDataWiped = () => {
  clearTitles();
  clearOpenedAttachments();
};
hostEvents.wiped = (reason) => {
  if (reason === "revoked") {
    app.notify(t("devices.revoked"), "error");
    app.setMe(null);
    app.navigate("#/login");
  }
};

const shownWarnings = new Map<string, number>();
onEngine((e) => {
  // Background problems (a queued post the server refused, a message that
  // could not be processed) are shown, never swallowed.
  if (e.type === "warning") {
    const key = `engine.${e.code ?? ""}` as MessageKey;
    const text = t(key) !== key ? t(key) : t("common.error", { message: e.message });
    // A reconnecting engine may repeat itself: one notice a minute per text.
    const now = Date.now();
    if ((shownWarnings.get(text) ?? 0) > now - 60_000) return;
    shownWarnings.set(text, now);
    console.warn("engine:", e.code, e.message);
    app.notify(text, "error");
    return;
  }
  if (e.type === "restored") {
    const s = currentEngine()?.timelines().find((x) => x.timelineId === e.timelineId);
    app.notify(t("engine.restored", { title: timelineTitle(e.timelineId, s), resent: e.resent, kept: e.kept }), "error");
    return;
  }
  if (e.type === "urgent_alert") {
    const s = currentEngine()?.timelines().find((x) => x.timelineId === e.timelineId);
    const title = timelineTitle(e.timelineId, s);
    app.alert(`${e.timelineId}/${e.seq}`, t(e.level === "second_call" ? "urgent.alertSecond" : "urgent.alert", { title }), `#/t/${encodeURIComponent(e.timelineId)}`);
    return;
  }
  if (e.type !== "timelines" && e.type !== "posts") return;
  const engine = currentEngine();
  const list = engine ? engine.timelines() : [];
  app.setUnread(list.reduce((n, s) => n + s.unread, 0));
  // An urgent post acknowledged (here or on another device) needs no banner.
  for (const s of list) if (s.urgentOpen === 0) app.clearAlert(`${s.timelineId}/`);
});

void app.start();

// The app shell for offline use (see public/sw.js). Browsers allow service
// workers on https and on localhost only.
if ("serviceWorker" in navigator && window.isSecureContext) {
  window.addEventListener("load", () => {
    navigator.serviceWorker.register("/sw.js").catch(() => {});
  });
}
