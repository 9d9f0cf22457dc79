// The application shell: who is logged in, the hash router, the page frame
// (header, navigation, language and text-size switches, connection status
// line, notices) and the screen in <main>.
import { api, ApiError, type Me } from "./api.ts";
import { connectionState, onConnection, startProbing, type ConnectionState } from "./connection.ts";
import { h, replace } from "./dom.ts";
import { LANGS, lang, setLang, t, type Lang } from "./i18n/index.ts";
import { PasskeyError } from "./webauthn.ts";

export interface Route {
  name: string;
  params: string[];
}

/** What a screen gets: the session and ways to change the app's state. */
export interface Ctx {
  me: Me | null;
  route: Route;
  navigate(path: string): void;
  setMe(me: Me | null): void;
  notify(message: string, kind?: "info" | "error"): void;
  /** Registers a function run when the screen is left (unsubscribe, timers). */
  onLeave(fn: () => void): void;
  /** Renders the current screen again (after the language changed, say). */
  rerender(): void;
}

export type Screen = (ctx: Ctx) => HTMLElement | Promise<HTMLElement>;

export interface ScreenDef {
  render: Screen;
  /** Reachable without a session (setup, invitation, login). */
  public?: boolean;
  /** Only for professionals (not family accounts). */
  professional?: boolean;
}

const LARGE_KEY = "tsunagu.largeType";
// The last known session's person, so that the cached timelines stay
// readable when the browser starts offline.
const ME_KEY = "tsunagu.me";

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) return { name: "timelines", params: [] };
  return { name: parts[0], params: parts.slice(1) };
}

/** A readable message for any error a screen meets. */
export function errorText(e: unknown): string {
  if (e instanceof PasskeyError) {
    if (e.reason === "unsupported") return t("error.webauthnUnsupported");
    if (e.reason === "cancelled") return t("error.webauthnCancelled");
    return t("common.error", { message: e.message });
  }
  if (e instanceof ApiError) {
    if (e.status === 0) return t("error.network");
    if (e.status === 403) return `${t("error.forbidden")} (${e.message})`;
    return t("common.error", { message: e.message || e.code });
  }
  return t("common.error", { message: String((e as Error)?.message ?? e) });
}

export class App {
  me: Me | null = null;
  private leaveFns: (() => void)[] = [];
  private main!: HTMLElement;
  private header!: HTMLElement;
  private statusEl!: HTMLElement;
  private notices!: HTMLElement;
  private alerts!: HTMLElement;
  private renderToken = 0;
  private unread = 0;
  /** Called when the session changes (login, logout), e.g. to start or stop the engine. */
  onSession: (me: Me | null) => void = () => {};
  /** Runs before an explicit logout (wipes this browser's local data). */
  beforeLogout: () => Promise<void> = async () => {};

  constructor(
    private root: HTMLElement,
    private screens: Record<string, ScreenDef>,
  ) {}

  async start(): Promise<void> {
    document.documentElement.lang = lang();
    if (localStorage.getItem(LARGE_KEY) === "1") document.documentElement.classList.add("large-type");
    this.frame();
    startProbing();
    onConnection((s) => this.renderStatus(s));
    this.renderStatus(connectionState());
    try {
      this.me = await api.me();
    } catch (e) {
      const offline = e instanceof ApiError && (e.status === 0 || e.status >= 500);
      const cached = offline ? localStorage.getItem(ME_KEY) : null;
      this.me = cached ? (JSON.parse(cached) as Me) : null;
      if (!cached) localStorage.removeItem(ME_KEY);
    }
    if (this.me) localStorage.setItem(ME_KEY, JSON.stringify(this.me));
    this.onSession(this.me);
    window.addEventListener("hashchange", () => void this.render());
    await this.render();
  }

  private frame(): void {
    const skip = h(
      "a",
      {
        class: "skip-link",
        href: "#main",
        onclick: (e: Event) => {
          e.preventDefault();
          this.main.focus();
        },
      },
      t("nav.skip"),
    );
    this.header = h("header", { class: "topbar" });
    this.statusEl = h("div", { class: "status-line", role: "status", "aria-live": "polite", "data-testid": "status" });
    this.notices = h("div", { class: "notices", "aria-live": "assertive" });
    this.alerts = h("div", { class: "alerts" });
    this.main = h("main", { id: "main", tabindex: "-1" });
    replace(this.root, skip, this.header, this.statusEl, this.alerts, this.notices, this.main);
  }

  private renderHeader(): void {
    const me = this.me;
    const current = parseRoute(location.hash).name;
    const link = (name: string, href: string, label: string) =>
      h("a", { href, class: "nav-link", "aria-current": current === name ? "page" : false }, label);
    const nav = me
      ? h(
          "nav",
          { "aria-label": t("nav.main"), class: "nav" },
          h(
            "a",
            { href: "#/", class: "nav-link", "aria-current": current === "timelines" || current === "t" ? "page" : false },
            t("nav.timelines"),
            h("span", { class: "nav-unread", "data-testid": "nav-unread", hidden: this.unread === 0 }, this.unread > 0 ? t("timelines.unread", { count: this.unread }) : ""),
          ),
          me.kind === "professional" ? link("directory", "#/directory", t("nav.directory")) : null,
          link("me", "#/me", t("nav.profile")),
          link("devices", "#/devices", t("nav.devices")),
          me.role === "admin" ? link("admin", "#/admin", t("nav.admin")) : null,
          h("button", { type: "button", class: "link-button", onclick: () => void this.logout() }, t("nav.logout")),
        )
      : null;
    const langSelect = h(
      "select",
      {
        id: "lang-select",
        "aria-label": t("settings.language"),
        onchange: (e: Event) => {
          setLang((e.target as HTMLSelectElement).value as Lang);
          void this.render();
        },
      },
      LANGS.map((l) => h("option", { value: l.code, selected: l.code === lang() }, l.label)),
    );
    const large = document.documentElement.classList.contains("large-type");
    const largeButton = h(
      "button",
      {
        type: "button",
        class: "toggle",
        "aria-pressed": large ? "true" : "false",
        onclick: () => {
          const on = document.documentElement.classList.toggle("large-type");
          localStorage.setItem(LARGE_KEY, on ? "1" : "0");
          largeButton.setAttribute("aria-pressed", on ? "true" : "false");
        },
      },
      h("span", { "aria-hidden": "true", class: "large-a" }, "A"),
      " ",
      t("settings.largeType"),
    );
    replace(
      this.header,
      h(
        "div",
        { class: "brand" },
        h("a", { href: "#/", class: "brand-name" }, t("app.name")),
        me ? h("span", { class: "who", "data-testid": "who" }, me.display_name) : null,
      ),
      nav,
      h("div", { class: "settings" }, langSelect, largeButton),
    );
  }

  private renderStatus(state: ConnectionState): void {
    this.statusEl.className = `status-line status-${state}`;
    this.statusEl.dataset.state = state;
    replace(
      this.statusEl,
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("span", { class: "visually-hidden" }, `${t("status.label")}: `),
      t(`status.${state}`),
    );
  }

  /** The total of unread posts, shown in the navigation and the tab title. */
  setUnread(count: number): void {
    this.unread = count;
    document.title = count > 0 ? `(${count}) ${t("app.name")}` : t("app.name");
    const badge = this.header.querySelector<HTMLElement>(".nav-unread");
    if (badge) {
      badge.hidden = count === 0;
      badge.textContent = count > 0 ? t("timelines.unread", { count }) : "";
    }
  }

  /**
   * A banner that stays until dismissed or `clearAlert(key)`: urgent posts
   * (an "urgent_alert" push). One per key.
   */
  alert(key: string, message: string, href: string): void {
    if (this.alerts.querySelector(`[data-alert-key="${CSS.escape(key)}"]`)) return;
    const el = h(
      "div",
      { class: "alert-banner", role: "alert", "data-alert-key": key, "data-testid": "urgent-alert" },
      h("span", { class: "grow" }, message),
      h("a", { href, class: "button", onclick: () => el.remove() }, t("urgent.open")),
      h("button", { type: "button", class: "link-button", onclick: () => el.remove(), "aria-label": t("common.close") }, "×"),
    );
    this.alerts.prepend(el);
  }

  clearAlert(prefix: string): void {
    for (const el of this.alerts.querySelectorAll<HTMLElement>("[data-alert-key]")) {
      if (el.dataset.alertKey?.startsWith(prefix)) el.remove();
    }
  }

  notify(message: string, kind: "info" | "error" = "info"): void {
    const el = h(
      "div",
      { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
      h("span", null, message),
      h("button", { type: "button", class: "link-button", onclick: () => el.remove(), "aria-label": t("common.close") }, "×"),
    );
    this.notices.appendChild(el);
    if (kind === "info") window.setTimeout(() => el.remove(), 6000);
  }

  navigate(path: string): void {
    if (location.hash === path) void this.render();
    else location.hash = path;
  }

  setMe(me: Me | null): void {
    if (me) localStorage.setItem(ME_KEY, JSON.stringify(me));
    else localStorage.removeItem(ME_KEY);
    const changed = (this.me?.account_id ?? null) !== (me?.account_id ?? null);
    this.me = me;
    if (changed) this.onSession(me);
    this.renderHeader();
  }

  async logout(): Promise<void> {
    await this.beforeLogout();
    localStorage.removeItem(ME_KEY);
    try {
      await api.logout();
    } catch {
      // Logging out locally matters more than the server's answer.
    }
    this.setMe(null);
    this.navigate("#/login");
  }

  async render(): Promise<void> {
    const token = ++this.renderToken;
    for (const fn of this.leaveFns.splice(0)) fn();
    const route = parseRoute(location.hash);
    const def = this.screens[route.name];
    this.renderHeader();
    this.renderStatus(connectionState());
    if (!def) {
      replace(this.main, h("h1", null, t("error.notFound")));
      return;
    }
    if (!def.public && !this.me) {
      this.navigate("#/login");
      return;
    }
    if (def.professional && this.me?.kind !== "professional") {
      replace(this.main, h("h1", { tabindex: "-1" }, t("error.forbidden")));
      return;
    }
    const leaveFns: (() => void)[] = [];
    const ctx: Ctx = {
      me: this.me,
      route,
      navigate: (p) => this.navigate(p),
      setMe: (me) => this.setMe(me),
      notify: (m, k) => this.notify(m, k),
      onLeave: (fn) => leaveFns.push(fn),
      rerender: () => void this.render(),
    };
    replace(this.main, h("p", { class: "loading" }, t("common.loading")));
    let view: HTMLElement;
    try {
      view = await def.render(ctx);
    } catch (e) {
      view = h("div", null, h("h1", null, t("error.notFound")), h("p", { role: "alert" }, errorText(e)));
    }
    if (token !== this.renderToken) {
      for (const fn of leaveFns) fn();
      return;
    }
    this.leaveFns = leaveFns;
    this.main.dataset.screen = route.name;
    replace(this.main, view);
    window.scrollTo(0, 0);
    const heading = this.main.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
    }
  }
}
