// The timelines: the list with unread counts, creating one, one timeline
// with its posts, replies and composer, and its members page (add from the
// directory, invite a family member by link). Everything shown comes from
// the engine's local, decrypted state; nothing here reads the network
// except through the engine and the HTTP API.
import { api, type DirectoryPerson } from "../api.ts";
import { errorText, type Ctx } from "../app.ts";
import { field, formatTime, h, replace } from "../dom.ts";
import { EngineError, type Engine, type PostView, type TimelineSummary } from "../engine/index.ts";
import { currentEngine, ensureEngine, onEngine } from "../engine-host.ts";
import { ACCEPT, attachmentList, checkFiles, formatSize, kindLabel } from "../attachments.ts";
import { input, onSubmit } from "../forms.ts";
import { lang, t, type MessageKey } from "../i18n/index.ts";
import { directorySearch, invitationView } from "./people.ts";

// Timeline names (for now the patient's name) travel encrypted inside the
// timeline: the engine's `TimelineSummary.title`, set by
// `createTimeline(title)`. A copy is kept on the creator's device until the
// engine reports it (and for an engine that does not carry titles yet), and
// is dropped with every wipe.
const TITLES_KEY = "tsunagu.timelineTitles";

function titles(): Record<string, string> {
  try {
    return JSON.parse(localStorage.getItem(TITLES_KEY) ?? "{}") as Record<string, string>;
  } catch {
    return {};
  }
}

export function timelineTitle(id: string, summary?: TimelineSummary): string {
  const carried = (summary as { title?: string | null } | undefined)?.title;
  return carried || titles()[id] || t("timeline.untitled", { id: id.slice(0, 8) });
}

/** Patient names must not outlive the session on a shared tablet. */
export function clearTitles(): void {
  localStorage.removeItem(TITLES_KEY);
}

function setTitle(id: string, title: string): void {
  const all = titles();
  all[id] = title;
  localStorage.setItem(TITLES_KEY, JSON.stringify(all));
}

/** Engine errors in the person's language. */
export function engineErrorText(e: unknown): string {
  if (e instanceof EngineError) {
    const key = `engine.${e.code}` as MessageKey;
    const text = t(key);
    if (text !== key) return text;
    return t("common.error", { message: e.message });
  }
  return errorText(e);
}

/** Waits for the engine, or returns a screen explaining why there is none. */
async function withEngine(ctx: Ctx): Promise<Engine | HTMLElement> {
  const existing = currentEngine();
  if (existing) return existing;
  try {
    return await ensureEngine(ctx.me!);
  } catch (e) {
    return h(
      "section",
      { class: "card" },
      h("h1", null, t("timelines.title")),
      h("p", { role: "alert", "data-testid": "engine-error" }, t("timelines.engineMissing")),
      h("p", { class: "hint" }, engineErrorText(e)),
    );
  }
}

/**
 * Resolves once the engine is online, or after `ms` (the operation then
 * fails with the engine's own "offline" error). Creating a timeline or adding
 * a person right after login should wait for the connection being opened,
 * not fail.
 */
function whenOnline(engine: Engine, ms = 15_000): Promise<void> {
  if (engine.status() === "online") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      off();
      window.clearTimeout(timer);
      resolve();
    };
    const off = engine.on((e) => {
      if (e.type === "status" && e.status === "online") done();
    });
    const timer = window.setTimeout(done, ms);
  });
}

function isProfessional(ctx: Ctx): boolean {
  return ctx.me?.kind === "professional";
}

export async function timelinesScreen(ctx: Ctx): Promise<HTMLElement> {
  const engine = await withEngine(ctx);
  if (engine instanceof HTMLElement) return engine;
  const list = h("ul", { class: "timeline-list", "data-testid": "timeline-list" });
  // A home doctor may follow dozens of patients: filter by name or last post.
  const filter = input("timeline_filter", { type: "search" });
  const filterField = field(t("timelines.filter"), filter);
  const render = () => {
    const items = engine.timelines();
    filterField.hidden = items.length < 6;
    if (items.length === 0) {
      replace(list, h("li", { class: "empty" }, isProfessional(ctx) ? t("timelines.empty") : t("timelines.familyEmpty")));
      return;
    }
    const f = filter.value.trim().toLowerCase();
    const shown = f
      ? items.filter((s) => `${timelineTitle(s.timelineId, s)} ${s.lastPost?.text ?? ""} ${s.lastPost?.senderName ?? ""}`.toLowerCase().includes(f))
      : items;
    replace(list, shown.length ? shown.map(timelineRow) : h("li", { class: "empty" }, t("directory.noResults")));
  };
  filter.addEventListener("input", render);
  render();
  ctx.onLeave(onEngine((e) => (e.type === "timelines" || e.type === "posts" ? render() : undefined)));
  return h(
    "section",
    { class: "card" },
    h(
      "div",
      { class: "title-row" },
      h("h1", null, t("timelines.title")),
      isProfessional(ctx) ? h("a", { class: "button primary", href: "#/new", "data-testid": "new-timeline" }, t("timelines.create")) : null,
    ),
    // Seed 001: a face photo made people far more willing to reach out.
    isProfessional(ctx) && !ctx.me?.has_photo
      ? h("p", { class: "notice notice-info", "data-testid": "photo-hint" }, h("span", null, t("timelines.photoHint"), " ", h("a", { href: "#/me" }, t("timelines.photoHintLink"))))
      : null,
    filterField,
    list,
  );
}

function timelineRow(s: TimelineSummary): HTMLElement {
  const last = s.lastPost;
  const preview = last ? `${last.senderName || t("timeline.unknownSender")}: ${last.text}` : "";
  return h(
    "li",
    { class: `timeline-row${s.unread > 0 ? " has-unread" : ""}` },
    h(
      "a",
      { href: `#/t/${encodeURIComponent(s.timelineId)}`, class: "timeline-link", "data-testid": "timeline-link" },
      h(
        "span",
        { class: "timeline-main" },
        h("span", { class: "timeline-title" }, timelineTitle(s.timelineId, s)),
        preview ? h("span", { class: "timeline-preview" }, preview) : null,
      ),
      h(
        "span",
        { class: "timeline-meta" },
        last ? h("span", { class: "hint" }, formatTime(last.sentAt, lang())) : null,
        s.unread > 0 ? h("span", { class: "badge badge-unread", "data-testid": "unread" }, t("timelines.unread", { count: s.unread })) : null,
        s.pending > 0 ? h("span", { class: "badge badge-pending" }, t("timeline.pendingCount", { count: s.pending })) : null,
      ),
    ),
  );
}

export async function createTimelineScreen(ctx: Ctx): Promise<HTMLElement> {
  const engine = await withEngine(ctx);
  if (engine instanceof HTMLElement) return engine;
  const name = input("title", { required: true, maxlength: 100 });
  const form = h(
    "form",
    { class: "card narrow", "data-testid": "create-timeline-form" },
    h("h1", null, t("create.title")),
    field(t("create.name"), name, t("create.nameHint")),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("create.submit")), h("a", { href: "#/", class: "button" }, t("common.cancel"))),
  );
  onSubmit(form, async () => {
    try {
      await whenOnline(engine);
      const title = name.value.trim();
      // The engine takes the title once it carries titles (an extra argument
      // is ignored before that).
      const create = engine.createTimeline as (title?: string) => Promise<string>;
      const id = await create.call(engine, title);
      setTitle(id, title);
      ctx.navigate(`#/t/${encodeURIComponent(id)}/members`);
    } catch (e) {
      throw new Error(engineErrorText(e));
    }
  });
  return form;
}

export async function timelineScreen(ctx: Ctx): Promise<HTMLElement> {
  const id = ctx.route.params[0] ?? "";
  if (ctx.route.params[1] === "members") return membersScreen(ctx, id);
  const engine = await withEngine(ctx);
  if (engine instanceof HTMLElement) return engine;
  const summary = () => engine.timelines().find((s) => s.timelineId === id);
  if (!summary()) {
    // A timeline one was just added to appears when its welcome arrives.
    ctx.onLeave(onEngine((e) => (e.type === "timelines" && summary() ? ctx.rerender() : undefined)));
    return h("section", { class: "card" }, h("h1", null, t("timeline.notFound")), h("a", { href: "#/" }, t("common.back")));
  }
  const professional = isProfessional(ctx);
  let replyTo: PostView | null = null;

  const postsEl = h("ol", { class: "posts", "data-testid": "posts", "aria-label": t("timeline.posts") });
  const header = h("div", { class: "title-row" });
  const renderHeader = () => {
    const s = summary();
    replace(
      header,
      h("h1", { "data-testid": "timeline-title" }, timelineTitle(id, s)),
      h(
        "div",
        { class: "actions" },
        s ? h("span", { class: "hint" }, t("timeline.membersCount", { count: s.memberAccountIds.length })) : null,
        professional ? h("a", { class: "button", href: `#/t/${encodeURIComponent(id)}/members`, "data-testid": "members-link" }, t("timeline.members")) : null,
      ),
    );
  };

  const posts0 = engine.posts(id).length;
  const pctx = (onReply: PostCtx["onReply"]): PostCtx => ({
    engine,
    me: ctx.me?.account_id,
    names: new Map(engine.accounts().map((a) => [a.accountId, a.name])),
    onReply,
  });
  const renderPosts = () => {
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    const posts = engine.posts(id);
    if (posts.length === 0) {
      replace(postsEl, h("li", { class: "empty" }, t("timeline.empty")));
      return;
    }
    const replies = new Map<number, PostView[]>();
    const top: PostView[] = [];
    for (const p of posts) {
      if (p.replyTo !== null && posts.some((q) => q.seq === p.replyTo)) {
        const list = replies.get(p.replyTo) ?? [];
        list.push(p);
        replies.set(p.replyTo, list);
      } else {
        top.push(p);
      }
    }
    replace(
      postsEl,
      top.map((p) => {
        const thread = p.seq !== null ? (replies.get(p.seq) ?? []) : [];
        return h(
          "li",
          { class: "thread" },
          postView(pctx(professional && summary()?.active !== false ? startReply : null), p),
          thread.length
            ? h("ol", { class: "replies", "aria-label": t("timeline.replies", { count: thread.length }) }, thread.map((r) => h("li", null, postView(pctx(null), r))))
            : null,
        );
      }),
    );
    // Follow new posts when the reader is already at the bottom.
    if (nearBottom && postsEl.isConnected) postsEl.lastElementChild?.scrollIntoView({ block: "end" });
  };

  // The composer: professionals only. Families are readers and get no
  // composer at all (the server refuses their posts as well).
  let composer: HTMLElement | null = null;
  const replyBanner = h("div", { class: "reply-banner", hidden: true });
  const text = h("textarea", { name: "text", rows: 3, "data-testid": "composer-text" });
  let files: File[] = [];
  const fileList = h("ul", { class: "picked-files", "aria-live": "polite" });
  const progress = h("progress", { class: "upload-progress", max: 100, value: 0, hidden: true, "data-testid": "upload-progress" });
  // Urgent: asks every member for an acknowledgement (確認しました).
  const urgent = h("input", { type: "checkbox", name: "urgent", id: "post-urgent", "data-testid": "urgent-toggle" }) as HTMLInputElement;
  const urgentControl = h("label", { class: "urgent-toggle", for: "post-urgent" }, urgent, " ", t("urgent.toggle"));
  // Mentions: "@" (typed, or the button) opens a list of the timeline's
  // people; picking one writes "@name " and mentions their account.
  const mentioned = new Map<string, string>(); // account id -> name written
  const mentionList = h("ul", { class: "mention-list", role: "listbox", "aria-label": t("mention.pick"), "data-testid": "mention-list", hidden: true });
  const closeMentions = () => {
    mentionList.hidden = true;
  };
  const openMentions = (typedAt: boolean) => {
    const s = summary();
    const n = new Map(engine.accounts().map((a) => [a.accountId, a.name]));
    const people = (s?.memberAccountIds ?? []).filter((a) => a !== ctx.me?.account_id);
    replace(
      mentionList,
      people.length
        ? people.map((a) => {
            const name = n.get(a) || t("timeline.noName");
            return h(
              "li",
              null,
              h(
                "button",
                {
                  type: "button",
                  class: "link-button",
                  role: "option",
                  "data-testid": "mention-option",
                  onclick: () => {
                    const before = text.value.slice(0, text.selectionStart ?? text.value.length);
                    const after = text.value.slice(text.selectionEnd ?? text.value.length);
                    const head = typedAt && before.endsWith("@") ? before.slice(0, -1) : before;
                    text.value = `${head}@${name} ${after}`;
                    mentioned.set(a, name);
                    closeMentions();
                    text.focus();
                    const at = head.length + name.length + 2;
                    text.setSelectionRange(at, at);
                  },
                },
                `@${name}`,
              ),
            );
          })
        : h("li", { class: "hint" }, t("mention.none")),
    );
    mentionList.hidden = false;
    (mentionList.querySelector("button") as HTMLButtonElement | null)?.focus();
  };
  mentionList.addEventListener("keydown", (e) => {
    const buttons = [...mentionList.querySelectorAll("button")];
    const i = buttons.indexOf(document.activeElement as HTMLButtonElement);
    if (e.key === "Escape") {
      e.preventDefault();
      closeMentions();
      text.focus();
    } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      buttons[(i + (e.key === "ArrowDown" ? 1 : buttons.length - 1)) % buttons.length]?.focus();
    }
  });
  text.addEventListener("input", (e) => {
    const ie = e as InputEvent;
    if (ie.data === "@") openMentions(true);
  });
  const mentionButton = h(
    "button",
    { type: "button", "aria-haspopup": "listbox", "data-testid": "mention-button", onclick: () => (mentionList.hidden ? openMentions(false) : closeMentions()) },
    t("mention.button"),
  );
  const renderFiles = () => {
    replace(
      fileList,
      files.map((f, i) =>
        h(
          "li",
          { class: "picked-file" },
          `[${kindLabel(f.type)}] ${f.name} (${formatSize(f.size)})`,
          h(
            "button",
            {
              type: "button",
              class: "link-button",
              "aria-label": t("attach.remove", { name: f.name }),
              onclick: () => {
                files = files.filter((_, j) => j !== i);
                renderFiles();
              },
            },
            "×",
          ),
        ),
      ),
    );
  };
  const startReply = (p: PostView) => {
    replyTo = p;
    replyBanner.hidden = false;
    replace(
      replyBanner,
      h("span", null, t("timeline.replyingTo", { name: p.senderName || t("timeline.unknownSender") })),
      h("button", { type: "button", class: "link-button", onclick: () => cancelReply() }, t("timeline.cancelReply")),
    );
    text.focus();
  };
  const cancelReply = () => {
    replyTo = null;
    replyBanner.hidden = true;
    replace(replyBanner);
  };
  // Photos and PDFs: sealed and uploaded by the engine.
  const attachControl = (): HTMLElement => {
    const picker = h("input", { type: "file", accept: ACCEPT, multiple: true, class: "visually-hidden", id: "attach-files", "data-testid": "attach-input" });
    picker.addEventListener("change", () => {
      const picked = [...(picker.files ?? [])];
      picker.value = "";
      const problem = checkFiles(picked);
      if (problem) {
        ctx.notify(problem, "error");
        return;
      }
      files = files.concat(picked);
      renderFiles();
    });
    return h("span", { class: "grow" }, picker, h("label", { for: "attach-files", class: "button" }, t("attach.pick")));
  };
  if (professional) {
    const form = h(
      "form",
      { class: "composer", "data-testid": "composer" },
      h("h2", { class: "visually-hidden" }, t("timeline.composer")),
      replyBanner,
      field(t("timeline.composerLabel"), text, t("timeline.sendHint")),
      mentionList,
      fileList,
      progress,
      h(
        "div",
        { class: "composer-actions" },
        attachControl(),
        mentionButton,
        urgentControl,
        h("button", { type: "submit", class: "primary", "data-testid": "send" }, t("timeline.send")),
      ),
    );
    text.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    onSubmit(form, async () => {
      const body = text.value.trim();
      if (!body && files.length === 0) {
        text.focus();
        return;
      }
      // Only the people still named in the text are mentioned.
      const mentions = [...mentioned].filter(([, name]) => body.includes(`@${name}`)).map(([a]) => a);
      const reply = { ...(replyTo?.seq != null ? { replyTo: replyTo.seq } : {}), mentions, urgent: urgent.checked };
      try {
        if (files.length > 0) {
          progress.hidden = false;
          progress.value = 0;
          await engine.postWithAttachments(id, body, files, {
            ...reply,
            onProgress: (sent, total) => {
              progress.value = total > 0 ? Math.round((sent / total) * 100) : 0;
              progress.textContent = t("attach.progress", { percent: progress.value });
            },
          });
        } else {
          await engine.post(id, body, reply);
        }
      } catch (e) {
        throw new Error(engineErrorText(e));
      } finally {
        progress.hidden = true;
      }
      text.value = "";
      files = [];
      mentioned.clear();
      urgent.checked = false;
      renderFiles();
      cancelReply();
      renderPosts();
    });
    composer = form;
  }

  const inactiveNote = h("p", { class: "notice notice-info", hidden: summary()?.active !== false }, t("timeline.inactive"));
  const markRead = () => {
    const s = summary();
    if (s && s.unread > 0 && document.visibilityState === "visible") void engine.markRead(id).catch(() => {});
  };
  renderHeader();
  renderPosts();
  markRead();
  // The newest posts are at the bottom, next to the composer: start there.
  requestAnimationFrame(() => {
    const last = postsEl.lastElementChild;
    if (last && posts0 > 0) last.scrollIntoView({ block: "end" });
  });
  ctx.onLeave(
    onEngine((e) => {
      if (e.type === "posts" && e.timelineId === id) {
        renderPosts();
        markRead();
      }
      if (e.type === "timelines") {
        renderHeader();
        const s = summary();
        inactiveNote.hidden = s?.active !== false;
        if (composer) composer.hidden = s?.active === false;
      }
    }),
  );

  return h(
    "section",
    { class: "card timeline", "data-testid": "timeline" },
    header,
    inactiveNote,
    postsEl,
    professional ? composer : h("p", { class: "notice notice-info", "data-testid": "read-only" }, t("timeline.readOnly")),
  );
}

/** What a post's rendering needs besides the post. */
interface PostCtx {
  engine: Engine;
  me: string | undefined;
  names: Map<string, string>;
  onReply: ((p: PostView) => void) | null;
  /** Extra controls under a post (receipts, acknowledgement, edit). */
  extras?: (p: PostView) => (HTMLElement | null)[];
}

function personName(c: PostCtx, accountId: string): string {
  if (accountId === c.me) return t("timeline.you");
  return c.names.get(accountId) || t("timeline.unknownSender");
}

/** A consent record or care event, as a line in the timeline. */
function recordView(c: PostCtx, r: NonNullable<PostView["record"]>): HTMLElement {
  if (r.type === "consent") {
    return h(
      "div",
      { class: "record record-consent", "data-testid": "consent-record" },
      h("strong", null, t("consent.recorded")),
      h(
        "p",
        null,
        t("consent.summary", {
          givenBy: r.given_by,
          method: t(`consent.method.${r.method}` as MessageKey),
          obtainedBy: personName(c, r.obtained_by),
          date: formatTime(r.obtained_at, lang()),
        }),
      ),
      h("p", null, `${t("consent.scope")}: ${r.scope}`),
      r.note ? h("p", { class: "hint" }, r.note) : null,
    );
  }
  return h(
    "div",
    { class: `record record-event record-${r.kind}`, "data-testid": "care-event" },
    h("strong", null, t(r.kind === "admitted" ? "event.admitted" : "event.discharged", { hospital: r.hospital })),
    h("p", { class: "hint" }, formatTime(r.at, lang())),
    r.note ? h("p", null, r.note) : null,
  );
}

function postView(c: PostCtx, p: PostView): HTMLElement {
  const body =
    p.state === "undecryptable"
      ? h("p", { class: "post-text muted" }, t("timeline.undecryptable"))
      : p.state === "unsupported"
        ? h("p", { class: "post-text muted" }, t("timeline.unsupported"))
        : p.deletedAt !== null
          ? h("p", { class: "post-text muted", "data-testid": "post-deleted" }, t("post.deleted", { time: formatTime(p.deletedAt, lang()) }))
          : p.record
            ? recordView(c, p.record)
            : h("p", { class: "post-text" }, p.text);
  const mentionsMe = c.me !== undefined && p.mentions.includes(c.me);
  const classes = ["post", `post-${p.state}`, p.own ? "own" : "", p.urgent ? "post-urgent" : "", mentionsMe ? "mentions-me" : "", p.record ? "post-record" : ""];
  return h(
    "article",
    {
      class: classes.filter(Boolean).join(" "),
      "data-testid": "post",
      "data-state": p.state,
      "data-seq": p.seq ?? "",
      ...(p.urgent ? { "data-urgent": "true" } : {}),
    },
    h(
      "header",
      { class: "post-head" },
      h("strong", { class: "post-author" }, p.senderName || t("timeline.unknownSender")),
      p.urgent ? h("span", { class: "badge badge-urgent", "data-testid": "urgent-badge" }, t("urgent.badge")) : null,
      p.kind === "report" ? h("span", { class: "badge" }, t("timeline.report")) : null,
      h("time", { datetime: new Date(p.sentAt).toISOString(), class: "hint" }, formatTime(p.sentAt, lang())),
      p.editedAt !== null && p.deletedAt === null
        ? h("span", { class: "badge", title: formatTime(p.editedAt, lang()), "data-testid": "post-edited" }, t("post.edited"))
        : null,
      p.handedOverBy !== null
        ? h("span", { class: "badge badge-history", "data-testid": "handed-over", title: t("post.handedOverBy", { name: personName(c, p.handedOverBy) }) }, t("post.handedOver"))
        : null,
      p.state === "pending" ? h("span", { class: "badge badge-pending", "data-testid": "pending" }, t("timeline.pending")) : null,
    ),
    p.mentions.length && p.deletedAt === null
      ? h(
          "p",
          { class: "post-mentions", "data-testid": "post-mentions" },
          p.mentions.map((a) => h("span", { class: a === c.me ? "mention mention-me" : "mention" }, `@${personName(c, a)}`)),
        )
      : null,
    body,
    p.deletedAt === null ? attachmentList(c.engine, p) : null,
    h(
      "div",
      { class: "post-actions" },
      c.onReply && p.seq !== null && !p.record && p.deletedAt === null
        ? h("button", { type: "button", class: "link-button reply-button", onclick: () => c.onReply?.(p) }, t("timeline.reply"))
        : null,
      ...(c.extras ? c.extras(p) : []),
    ),
  );
}

async function membersScreen(ctx: Ctx, id: string): Promise<HTMLElement> {
  const engine = await withEngine(ctx);
  if (engine instanceof HTMLElement) return engine;
  if (!isProfessional(ctx)) return h("section", { class: "card" }, h("h1", null, t("error.forbidden")));
  const summary = () => engine.timelines().find((s) => s.timelineId === id);
  if (!summary()) return h("section", { class: "card" }, h("h1", null, t("timeline.notFound")));

  const memberIds = () => new Set(summary()?.memberAccountIds ?? []);
  const members = h("ul", { class: "list", "data-testid": "members" });
  const others = h("ul", { class: "list", "data-testid": "addable" });
  const filter = input("filter", { type: "search" });
  const names = () => new Map(engine.accounts().map((a) => [a.accountId, a.name]));

  const add = async (accountId: string, name: string, button: HTMLButtonElement) => {
    button.disabled = true;
    try {
      await whenOnline(engine);
      // A device registered a moment ago (the family member who just
      // scanned the QR code) publishes its key packages once connected:
      // retry for a little while before saying it is not ready.
      for (let attempt = 0; ; attempt++) {
        try {
          await engine.addPerson(id, accountId);
          break;
        } catch (e) {
          if (!(e instanceof EngineError) || e.code !== "no_key_packages" || attempt >= 5) throw e;
          await new Promise((r) => window.setTimeout(r, 2000));
        }
      }
      ctx.notify(t("timeline.added", { name }));
      render();
    } catch (e) {
      ctx.notify(engineErrorText(e), "error");
      button.disabled = false;
    }
  };
  const addButton = (accountId: string, name: string): HTMLElement | null => {
    if (memberIds().has(accountId) || accountId === ctx.me?.account_id) return null;
    const b: HTMLButtonElement = h("button", { type: "button", "data-testid": "add-person", onclick: () => void add(accountId, name, b) }, t("timeline.add"));
    return b;
  };
  const remove = async (accountId: string, name: string, button: HTMLButtonElement) => {
    if (!confirm(t("timeline.confirmRemove", { name }))) return;
    button.disabled = true;
    try {
      await whenOnline(engine);
      await engine.removePerson(id, accountId);
      ctx.notify(t("timeline.removed", { name }));
      render();
    } catch (e) {
      ctx.notify(engineErrorText(e), "error");
      button.disabled = false;
    }
  };
  const render = () => {
    const n = names();
    replace(
      members,
      [...memberIds()].map((a) => {
        const name = n.get(a) ?? a;
        if (a === ctx.me?.account_id) return h("li", { class: "list-item" }, `${name} (${t("timeline.you")})`);
        const b: HTMLButtonElement = h("button", { type: "button", class: "danger", "data-testid": "remove-person", onclick: () => void remove(a, name, b) }, t("timeline.remove"));
        return h("li", { class: "list-item", "data-testid": "member" }, h("span", { class: "grow" }, name), b);
      }),
    );
    const f = filter.value.trim().toLowerCase();
    const addable = engine
      .accounts()
      .filter((a) => !memberIds().has(a.accountId) && a.accountId !== ctx.me?.account_id && a.deviceIds.length > 0)
      .filter((a) => !f || a.name.toLowerCase().includes(f));
    replace(
      others,
      addable.length
        ? addable.map((a) => h("li", { class: "list-item" }, h("span", { class: "grow" }, a.name || t("timeline.noName")), addButton(a.accountId, a.name)))
        : h("li", null, t("common.none")),
    );
  };
  filter.addEventListener("input", render);
  render();
  // A family member invited a minute ago appears once they have registered:
  // ask the server again while this page is open.
  void engine.refreshAccounts().then(render, () => {});
  const timer = window.setInterval(() => void engine.refreshAccounts().then(render, () => {}), 10_000);
  ctx.onLeave(() => window.clearInterval(timer));
  ctx.onLeave(onEngine((e) => (e.type === "timelines" || e.type === "accounts" ? render() : undefined)));

  // Renaming, for every member (the name is encrypted in the timeline).
  const newName = input("rename", { required: true, maxlength: 100, value: timelineTitle(id, summary()) });
  const renameForm = h(
    "form",
    { class: "inline-form", "data-testid": "rename-form" },
    field(t("timeline.renameLabel"), newName, t("create.nameHint")),
    h("button", { type: "submit" }, t("timeline.rename")),
  );
  onSubmit(renameForm, async () => {
    try {
      await whenOnline(engine);
      await engine.setTitle(id, newName.value.trim());
    } catch (e) {
      throw new Error(engineErrorText(e));
    }
    setTitle(id, newName.value.trim());
    ctx.notify(t("timeline.renamed"));
  });

  const familyName = input("family_name");
  const familyOut = h("div", { "aria-live": "polite" });
  const familyForm = h(
    "form",
    { "data-testid": "family-invite-form" },
    field(t("family.name"), familyName),
    h("button", { type: "submit", class: "primary" }, t("family.create")),
  );
  onSubmit(familyForm, async () => {
    const inv = await api.createInvitation({ kind: "family", timeline_id: id, display_name: familyName.value.trim() || undefined });
    replace(familyOut, h("p", null, t("family.show")), invitationView(inv));
  });

  return h(
    "div",
    { class: "stack" },
    h(
      "section",
      { class: "card" },
      h("div", { class: "title-row" }, h("h1", null, `${timelineTitle(id, summary())} — ${t("timeline.members")}`), h("a", { class: "button", href: `#/t/${encodeURIComponent(id)}` }, t("common.back"))),
      members,
      renameForm,
    ),
    h("section", { class: "card" }, h("h2", null, t("timeline.otherAccounts")), field(t("timeline.filter"), filter), others),
    h("section", { class: "card" }, h("h2", null, t("timeline.addPeople")), directorySearch(ctx, (p: DirectoryPerson) => addButton(p.account_id, p.display_name))),
    h("section", { class: "card" }, h("h2", null, t("family.title")), familyForm, familyOut),
  );
}
