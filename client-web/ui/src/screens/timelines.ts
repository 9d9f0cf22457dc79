// The timelines: the list with unread counts, creating one, one timeline
// with its posts, replies and composer, and its members page (add from the
// directory, invite a family member by link). Everything shown comes from
// the engine's local, decrypted state; nothing here reads the network
// except through the engine and the HTTP API.
import { api, type DirectoryPerson } from "../api.ts";
import { errorText, type Ctx } from "../app.ts";
import { field, formatTime, h, replace } from "../dom.ts";
import { EngineError, type CareEventInput, type ConsentInput, type Engine, type Patient, type PostView, type Role, type TimelineSummary } from "../engine/index.ts";
import { currentEngine, ensureEngine, onEngine } from "../engine-host.ts";
import { ACCEPT, attachmentList, checkFiles, formatSize, kindLabel } from "../attachments.ts";
import { input, onSubmit, select } from "../forms.ts";
import { lang, t, type MessageKey } from "../i18n/index.ts";
import { directorySearch, invitationView } from "./people.ts";

/** Threads built at a time in a timeline; "show earlier" adds as many. */
const THREAD_PAGE = 200;

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
        s.urgentOpen > 0 ? h("span", { class: "badge badge-urgent", "data-testid": "urgent-count" }, t("urgent.listBadge", { count: s.urgentOpen })) : null,
        s.unread > 0 ? h("span", { class: "badge badge-unread", "data-testid": "unread" }, t("timelines.unread", { count: s.unread })) : null,
        s.pending > 0 ? h("span", { class: "badge badge-pending" }, t("timeline.pendingCount", { count: s.pending })) : null,
      ),
    ),
  );
}

export async function createTimelineScreen(ctx: Ctx): Promise<HTMLElement> {
  const engine = await withEngine(ctx);
  if (engine instanceof HTMLElement) return engine;
  // The patient's name, reading and birth date are content of the timeline:
  // encrypted for its members, never seen by the server.
  const patientName = input("patient_name", { required: true, maxlength: 100, autocomplete: "off" });
  const kana = input("patient_kana", { maxlength: 100 });
  const birth = input("patient_birth_date", { type: "date" });
  const name = input("title", { maxlength: 100 });
  const form = h(
    "form",
    { class: "card narrow", "data-testid": "create-timeline-form" },
    h("h1", null, t("create.title")),
    h("p", { class: "hint" }, t("patient.hint")),
    field(t("patient.name"), patientName),
    field(t("patient.kana"), kana),
    field(t("patient.birthDate"), birth),
    field(t("create.name"), name, t("create.nameHint")),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("create.submit")), h("a", { href: "#/", class: "button" }, t("common.cancel"))),
  );
  onSubmit(form, async () => {
    try {
      await whenOnline(engine);
      const patient: Patient = { name: patientName.value.trim(), kana: kana.value.trim(), ...(birth.value ? { birth_date: birth.value } : {}) };
      const title = name.value.trim() || t("create.defaultTitle", { name: patient.name });
      const id = await engine.createTimeline(title, patient);
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
  // Who may post: every role but reader (families are readers); a timeline
  // opened before roles: professionals. Readers get no composer at all (the
  // server refuses their posts as well, and every client drops them).
  const role0 = summary()?.myRole ?? null;
  const mayPost = role0 ? role0 !== "reader" : professional;
  let replyTo: PostView | null = null;

  const postsEl = h("ol", { class: "posts", "data-testid": "posts", "aria-label": t("timeline.posts") });
  const header = h("div", { class: "title-row" });
  const renderHeader = () => {
    const s = summary();
    replace(
      header,
      h("div", null, h("h1", { "data-testid": "timeline-title" }, timelineTitle(id, s)), patientLine(s)),
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
    extras: (p) => [...postExtras(p), ...ownPostControls(p)],
  });
  // Editing and deleting one's own posts (the change stays visible). The
  // open editor and its draft survive the list's re-renders (a read mark
  // or a new post arriving while someone types).
  let editing: { seq: number; text: string; draft: string } | null = null;
  const openEditor = (article: Element | null, focus: boolean) => {
    const e = editing;
    const textEl = article?.querySelector(".post-text");
    if (!e || !article || !textEl) return;
    const seq = e.seq;
    const area = h("textarea", { name: "edit", rows: 3, "data-testid": "edit-text", "aria-label": t("post.edit") }, e.draft) as HTMLTextAreaElement;
    area.addEventListener("input", () => {
      if (editing?.seq === seq) editing.draft = area.value;
    });
    const close = () => {
      editing = null;
      renderPosts();
    };
    const form = h(
      "form",
      { class: "edit-form", "data-testid": "edit-form" },
      area,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("post.saveEdit")), h("button", { type: "button", onclick: close }, t("common.cancel"))),
    );
    onSubmit(form, async () => {
      const next = area.value.trim();
      if (!next || next === e.text) return close();
      try {
        await engine.editPost(id, seq, next);
      } catch (err) {
        throw new Error(engineErrorText(err));
      }
      close();
    });
    textEl.replaceWith(form);
    if (focus) {
      area.focus();
      area.setSelectionRange(area.value.length, area.value.length);
    }
  };
  const ownPostControls = (p: PostView): (HTMLElement | null)[] => {
    if (!p.own || p.seq === null || p.deletedAt !== null || p.record || p.state !== "sent" || summary()?.active === false) return [];
    const seq = p.seq;
    const edit = h("button", { type: "button", class: "link-button", "data-testid": "post-edit" }, t("post.edit"));
    edit.addEventListener("click", () => {
      editing = { seq, text: p.text, draft: p.text };
      openEditor(edit.closest("article"), true);
    });
    const del = h("button", { type: "button", class: "link-button danger-link", "data-testid": "post-delete" }, t("post.delete"));
    del.addEventListener("click", async () => {
      if (!confirm(t("post.confirmDelete"))) return;
      try {
        await engine.deletePost(id, seq);
      } catch (e) {
        ctx.notify(engineErrorText(e), "error");
      }
      renderPosts();
    });
    return [edit, del];
  };
  // Read receipts (既読 n/m, names and times on click) and urgent
  // acknowledgements (確認しました). Which receipts are open survives re-renders.
  const openReceipts = new Set<number>();
  const postExtras = (p: PostView): (HTMLElement | null)[] => {
    if (p.seq === null || p.state !== "sent" || p.record) return [];
    const seq = p.seq;
    const out: (HTMLElement | null)[] = [];
    if (p.urgent) {
      const acked = p.acks.length ? t("urgent.ackedBy", { names: p.acks.map((a) => a.name || t("timeline.unknownSender")).join(lang() === "ja" ? "、" : ", ") }) : t("urgent.waiting");
      out.push(h("span", { class: "hint urgent-acks", "data-testid": "urgent-acks" }, acked));
      if (!p.ackedByMe && summary()?.active !== false) {
        const b: HTMLButtonElement = h("button", { type: "button", class: "primary ack-button", "data-testid": "ack-button" }, t("urgent.ack"));
        b.addEventListener("click", async () => {
          b.disabled = true;
          try {
            await engine.acknowledge(id, seq);
            ctx.notify(t("urgent.acked"));
          } catch (e) {
            ctx.notify(engineErrorText(e), "error");
            b.disabled = false;
          }
          renderPosts();
        });
        out.push(b);
      } else if (!p.own) {
        out.push(h("span", { class: "badge", "data-testid": "acked" }, t("urgent.acked")));
      }
    }
    if (p.receiptTotal > 0) {
      const details = h(
        "details",
        { class: "receipts", "data-testid": "receipts", open: openReceipts.has(seq) },
        h("summary", { "data-testid": "receipt-summary" }, t("receipt.summary", { read: p.readBy.length, total: p.receiptTotal })),
        h(
          "div",
          { class: "receipts-detail" },
          h("strong", null, t("receipt.title")),
          h(
            "ul",
            null,
            p.readBy.map((r) => h("li", { "data-testid": "receipt-read" }, `${r.name || t("timeline.unknownSender")} — ${t("receipt.read")} ${formatTime(r.at, lang())}`)),
            p.deliveredTo.map((r) => h("li", { class: "hint", "data-testid": "receipt-delivered" }, `${r.name || t("timeline.unknownSender")} — ${t("receipt.delivered")}`)),
          ),
        ),
      ) as HTMLDetailsElement;
      details.addEventListener("toggle", () => (details.open ? openReceipts.add(seq) : openReceipts.delete(seq)));
      out.push(details);
    }
    return out;
  };
  let shownThreads = THREAD_PAGE;
  const renderPosts = () => {
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    const editorFocused = document.activeElement?.getAttribute("data-testid") === "edit-text";
    const posts = engine.posts(id);
    if (posts.length === 0) {
      replace(postsEl, h("li", { class: "empty" }, t("timeline.empty")));
      return;
    }
    const replies = new Map<number, PostView[]>();
    const top: PostView[] = [];
    const seqs = new Set(posts.map((p) => p.seq));
    for (const p of posts) {
      if (p.replyTo !== null && seqs.has(p.replyTo)) {
        const list = replies.get(p.replyTo) ?? [];
        list.push(p);
        replies.set(p.replyTo, list);
      } else {
        top.push(p);
      }
    }
    // Only the latest threads are built (a timeline with years of handed-over
    // history would otherwise rebuild thousands of posts at every read mark,
    // too slow for a cheap tablet); earlier ones come a page at a time.
    const visible = top.slice(Math.max(0, top.length - shownThreads));
    const earlier = top.length - visible.length;
    const showEarlier = earlier
      ? h(
          "li",
          { class: "earlier" },
          h(
            "button",
            {
              type: "button",
              "data-testid": "show-earlier",
              onclick: () => {
                shownThreads += THREAD_PAGE;
                renderPosts();
              },
            },
            t("timeline.showEarlier", { count: earlier }),
          ),
        )
      : null;
    replace(
      postsEl,
      showEarlier,
      visible.map((p) => {
        const thread = p.seq !== null ? (replies.get(p.seq) ?? []) : [];
        return h(
          "li",
          { class: "thread" },
          postView(pctx(mayPost && summary()?.active !== false ? startReply : null), p),
          thread.length
            ? h("ol", { class: "replies", "aria-label": t("timeline.replies", { count: thread.length }) }, thread.map((r) => h("li", null, postView(pctx(null), r))))
            : null,
        );
      }),
    );
    if (editing) openEditor(postsEl.querySelector(`[data-testid="post"][data-seq="${editing.seq}"]`), editorFocused);
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
  if (mayPost) {
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
  void engine.fetchReceipts(id).catch(() => {});
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
        // Removed, or made a reader: no composer any more.
        if (composer) composer.hidden = s?.active === false || s?.myRole === "reader";
      }
    }),
  );

  return h(
    "section",
    { class: "card timeline", "data-testid": "timeline" },
    header,
    inactiveNote,
    postsEl,
    mayPost ? composer : h("p", { class: "notice notice-info", "data-testid": "read-only" }, t("timeline.readOnly")),
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

/** "YYYY-MM-DD" (local) of a date input → end of that day, ms; null when empty. */
function endOfDay(value: string): number | null {
  if (!value) return null;
  const d = new Date(`${value}T23:59:59`);
  return Number.isNaN(d.getTime()) ? null : d.getTime();
}

/** "YYYY-MM-DDTHH:MM" of now, local, for a datetime-local input. */
function localNow(): string {
  const d = new Date();
  d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
  return d.toISOString().slice(0, 16);
}

function roleBadge(role: Role | null): HTMLElement | null {
  if (!role) return null;
  return h("span", { class: `badge badge-role role-${role}`, "data-testid": "member-role", "data-role": role }, t(`role.${role}` as MessageKey));
}

/** The patient's name, reading and birth date, under a timeline's title. */
function patientLine(s: TimelineSummary | undefined): HTMLElement | null {
  const p = s?.patient;
  if (!p) return null;
  const parts = [p.kana ? `${p.name}（${p.kana}）` : p.name];
  if (p.birth_date) parts.push(t("patient.born", { date: p.birth_date }));
  return h("p", { class: "patient-line", "data-testid": "patient-line" }, `${t("patient.title")}: ${parts.join(" ")}`);
}

/** The consent form: who gave it, how, when, for what (the owner, before inviting beyond the organisation). */
function consentForm(ctx: Ctx, engine: Engine, id: string, done: () => void): HTMLElement {
  const givenBy = input("given_by", { required: true, maxlength: 200 });
  const method = select("method", "consent.method", ["written", "verbal", "proxy"], { value: "written" }) as HTMLSelectElement;
  const when = input("obtained_at", { type: "datetime-local", required: true, value: localNow() });
  const scope = h("textarea", { name: "scope", rows: 2, required: true, maxlength: 500 }, t("consent.scopeDefault")) as HTMLTextAreaElement;
  const note = input("note", { maxlength: 500 });
  const form = h(
    "form",
    { "data-testid": "consent-form" },
    h("p", { class: "notice notice-info" }, t("consent.required")),
    h("p", { class: "hint" }, t("consent.obtainedByYou")),
    field(t("consent.givenBy"), givenBy),
    field(t("consent.method"), method),
    field(t("consent.when"), when),
    field(t("consent.scope"), scope),
    field(t("consent.note"), note),
    h("button", { type: "submit", class: "primary" }, t("consent.submit")),
  );
  onSubmit(form, async () => {
    const at = new Date(when.value).getTime();
    try {
      await whenOnline(engine);
      await engine.recordConsent(id, {
        givenBy: givenBy.value.trim(),
        method: method.value as ConsentInput["method"],
        obtainedAt: Number.isNaN(at) ? Date.now() : at,
        scope: scope.value.trim(),
        note: note.value.trim() || undefined,
      });
    } catch (e) {
      throw new Error(engineErrorText(e));
    }
    ctx.notify(t("consent.done"));
    done();
  });
  return form;
}

/** Admission and discharge (seed 003): the events anyone who posts may record; a liaison's discharge removes the ward staff. */
function eventsForm(ctx: Ctx, engine: Engine, id: string): HTMLElement {
  const hospital = input("hospital", { required: true, maxlength: 200 });
  const note = input("event_note", { maxlength: 500 });
  const form = h(
    "form",
    { "data-testid": "event-form" },
    field(t("event.hospital"), hospital),
    field(t("consent.note"), note),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", name: "kind", value: "admitted", "data-testid": "event-admit" }, t("event.admit")),
      h("button", { type: "submit", name: "kind", value: "discharged", "data-testid": "event-discharge" }, t("event.discharge")),
    ),
  );
  let kind: CareEventInput["kind"] = "admitted";
  form.addEventListener("click", (e) => {
    const b = (e.target as HTMLElement).closest("button[name=kind]") as HTMLButtonElement | null;
    if (b) kind = b.value as CareEventInput["kind"];
  });
  onSubmit(form, async () => {
    try {
      await whenOnline(engine);
      await engine.postEvent(id, { kind, hospital: hospital.value.trim(), at: Date.now(), note: note.value.trim() || undefined });
    } catch (e) {
      throw new Error(engineErrorText(e));
    }
    ctx.notify(t(kind === "admitted" ? "event.admitted" : "event.discharged", { hospital: hospital.value.trim() }));
  });
  return form;
}

async function membersScreen(ctx: Ctx, id: string): Promise<HTMLElement> {
  const engine = await withEngine(ctx);
  if (engine instanceof HTMLElement) return engine;
  if (!isProfessional(ctx)) return h("section", { class: "card" }, h("h1", null, t("error.forbidden")));
  const summary = () => engine.timelines().find((s) => s.timelineId === id);
  if (!summary()) return h("section", { class: "card" }, h("h1", null, t("timeline.notFound")));
  const myRole = () => summary()?.myRole ?? null;
  // Who may invite and remove: the owner, and a liaison (for their own
  // organisation's staff); a timeline opened before roles: every member.
  const mayInvite = () => myRole() === null || myRole() === "owner" || myRole() === "liaison";
  const consentNeeded = () => myRole() !== null && summary()?.consentSeq == null;

  const memberIds = () => new Set(engine.members(id).map((m) => m.accountId).concat(summary()?.memberAccountIds ?? []));
  const members = h("ul", { class: "list", "data-testid": "members" });
  const others = h("ul", { class: "list", "data-testid": "addable" });
  const filter = input("filter", { type: "search" });
  const accountsById = () => new Map(engine.accounts().map((a) => [a.accountId, a]));

  // The invitation's role and end date, for every "Add" button below.
  const roleSelect = select("role", "role", ["member", "liaison", "reader"], { value: "member" }) as HTMLSelectElement;
  roleSelect.setAttribute("data-testid", "invite-role");
  const until = input("until", { type: "date", "data-testid": "invite-until" });
  // The history the newcomer gets (seed 003: a ward nurse reads the past).
  const historySelect = select("history", "history", ["all", "since", "none"], { value: "all" }) as HTMLSelectElement;
  historySelect.setAttribute("data-testid", "invite-history");
  const historySince = input("history_since", { type: "date" });
  const sinceField = field(t("history.sinceDate"), historySince);
  sinceField.hidden = true;
  historySelect.addEventListener("change", () => (sinceField.hidden = historySelect.value !== "since"));
  const inviteOptions = h(
    "fieldset",
    { class: "invite-options", "data-testid": "invite-options" },
    h("legend", null, t("timeline.add")),
    field(t("role.label"), roleSelect),
    field(t("role.until"), until, t("role.untilHint")),
    field(t("history.label"), historySelect),
    sinceField,
  );

  const add = async (accountId: string, name: string, button: HTMLButtonElement) => {
    button.disabled = true;
    try {
      await whenOnline(engine);
      // A family account is always a reader.
      const role = (accountsById().get(accountId)?.kind === "family" ? "reader" : roleSelect.value) as Role;
      // A device registered a moment ago (the family member who just
      // scanned the QR code) publishes its key packages once connected:
      // retry for a little while before saying it is not ready.
      let seq = 0;
      for (let attempt = 0; ; attempt++) {
        try {
          seq = await engine.addMember(id, accountId, role, endOfDay(until.value));
          break;
        } catch (e) {
          if (!(e instanceof EngineError) || e.code !== "no_key_packages" || attempt >= 5) throw e;
          await new Promise((r) => window.setTimeout(r, 2000));
        }
      }
      ctx.notify(t("timeline.added", { name }));
      // (A directory result's button is not re-rendered with the lists.)
      button.remove();
      if (historySelect.value !== "none") {
        const since = historySelect.value === "since" && historySince.value ? new Date(`${historySince.value}T00:00:00`).getTime() : undefined;
        const count = await engine.handOverHistory(id, seq, [accountId], since);
        if (count > 0) ctx.notify(t("history.handedOver", { count }));
      }
      render();
    } catch (e) {
      ctx.notify(engineErrorText(e), "error");
      button.disabled = false;
    }
  };
  const addButton = (accountId: string, name: string): HTMLElement | null => {
    if (!mayInvite() || memberIds().has(accountId) || accountId === ctx.me?.account_id) return null;
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
  // The urgent call lists (seed 000: the nurse on duty first, then the
  // second call after the set time): the owner chooses.
  const callCard = h("section", { class: "card", "data-testid": "call-lists" });
  const renderCalls = () => {
    const s = summary();
    callCard.hidden = myRole() !== "owner";
    if (!s || callCard.hidden) return;
    const list = engine.members(id).filter((m) => m.role !== "reader");
    const first = new Set(s.firstCall);
    const second = new Set(s.secondCall);
    const minutes = input("escalate_minutes", { type: "number", min: 1, max: 1440, value: String(Math.max(1, Math.round(s.escalateAfterSecs / 60))) });
    const rows = list.map((m) =>
      h(
        "tr",
        null,
        h("th", { scope: "row" }, m.name || m.accountId),
        h("td", null, h("input", { type: "checkbox", name: `first-${m.accountId}`, "data-account": m.accountId, "data-call": "first", checked: first.has(m.accountId), "aria-label": `${t("calls.first")}: ${m.name}` })),
        h("td", null, h("input", { type: "checkbox", name: `second-${m.accountId}`, "data-account": m.accountId, "data-call": "second", checked: second.has(m.accountId), "aria-label": `${t("calls.second")}: ${m.name}` })),
      ),
    );
    const form = h(
      "form",
      { "data-testid": "call-form" },
      h("table", { class: "call-table" }, h("thead", null, h("tr", null, h("th", null, ""), h("th", { scope: "col" }, t("calls.first")), h("th", { scope: "col" }, t("calls.second")))), h("tbody", null, rows)),
      field(t("calls.after"), minutes),
      h("button", { type: "submit" }, t("common.save")),
    );
    onSubmit(form, async () => {
      const picked = (call: string) => [...form.querySelectorAll<HTMLInputElement>(`input[data-call="${call}"]`)].filter((c) => c.checked).map((c) => c.dataset.account!);
      try {
        await whenOnline(engine);
        await engine.setCallLists(id, picked("first"), picked("second"), Math.round(Number(minutes.value) * 60));
      } catch (e) {
        throw new Error(engineErrorText(e));
      }
      ctx.notify(t("common.saved"));
    });
    replace(callCard, h("h2", null, t("calls.title")), h("p", { class: "hint" }, t("calls.hint")), form);
  };
  const consentCard = h("section", { class: "card", "data-testid": "consent-card" });
  const familyCard = h("section", { class: "card" });
  // One form for the page's life: re-renders (member and account refreshes)
  // must not throw away what the doctor is typing.
  let theConsentForm: HTMLElement | null = null;
  const renderConsent = () => {
    consentCard.hidden = !(myRole() === "owner" || consentNeeded());
    if (!consentNeeded()) {
      theConsentForm = null;
      replace(consentCard, h("h2", null, t("consent.title")), h("p", { "data-testid": "consent-done" }, t("consent.done")));
    } else if (myRole() === "owner") {
      if (theConsentForm && consentCard.contains(theConsentForm)) return;
      theConsentForm = consentForm(ctx, engine, id, () => render());
      replace(consentCard, h("h2", null, t("consent.title")), theConsentForm);
    } else {
      replace(consentCard, h("h2", null, t("consent.title")), h("p", { class: "notice notice-info" }, t("consent.required")));
    }
  };
  const render = () => {
    const byId = accountsById();
    const list = engine.members(id);
    replace(
      members,
      list.map((m) => {
        const name = m.name || byId.get(m.accountId)?.name || m.accountId;
        const you = m.accountId === ctx.me?.account_id;
        const mayRemove = !you && m.role !== "owner" && mayInvite();
        const b: HTMLButtonElement | null = mayRemove
          ? h("button", { type: "button", class: "danger", "data-testid": "remove-person", onclick: () => void remove(m.accountId, name, b!) }, t("timeline.remove"))
          : null;
        // Changing a role (not the owner's; a family account stays a reader).
        const changeable = mayRemove && m.role !== null && byId.get(m.accountId)?.kind !== "family";
        const roleChange = changeable ? (select("member_role", "role", ["member", "liaison", "reader"], { value: m.role ?? "member" }) as HTMLSelectElement) : null;
        if (roleChange) {
          roleChange.setAttribute("aria-label", `${t("role.label")}: ${name}`);
          roleChange.setAttribute("data-testid", "member-role-select");
          roleChange.addEventListener("change", async () => {
            roleChange.disabled = true;
            try {
              await whenOnline(engine);
              await engine.setMemberRole(id, m.accountId, roleChange.value as Role, m.until);
              ctx.notify(t("common.saved"));
            } catch (e) {
              ctx.notify(engineErrorText(e), "error");
            }
            render();
          });
        }
        return h(
          "li",
          { class: "list-item", "data-testid": you ? "member-me" : "member" },
          h("span", { class: "grow" }, you ? `${name} (${t("timeline.you")})` : name, " ", roleBadge(m.role), m.until ? h("span", { class: "hint" }, ` ${t("role.untilShown", { date: new Date(m.until).toLocaleDateString(lang() === "ja" ? "ja-JP" : "en-GB") })}`) : null),
          roleChange,
          b,
        );
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
        ? addable.map((a) => h("li", { class: "list-item" }, h("span", { class: "grow" }, a.name || t("timeline.noName"), a.kind === "family" ? h("span", { class: "hint" }, ` (${t("role.reader")})`) : null), addButton(a.accountId, a.name)))
        : h("li", null, t("common.none")),
    );
    renderConsent();
    // Not while the owner is ticking boxes.
    if (!callCard.contains(document.activeElement)) renderCalls();
    // A family member is invited only once the patient's consent is recorded.
    // Family is the owner's to invite (a liaison invites her hospital's staff).
    familyCard.hidden = !mayInvite() || myRole() === "liaison";
    replace(
      familyCard,
      h("h2", null, t("family.title")),
      consentNeeded() ? h("p", { class: "notice notice-info", "data-testid": "family-needs-consent" }, t("consent.required")) : familyForm,
      familyOut,
    );
  };

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

  filter.addEventListener("input", render);
  render();
  // A family member invited a minute ago appears once they have registered:
  // ask the server again while this page is open.
  void engine.refreshAccounts().then(render, () => {});
  const timer = window.setInterval(() => void engine.refreshAccounts().then(render, () => {}), 10_000);
  ctx.onLeave(() => window.clearInterval(timer));
  ctx.onLeave(onEngine((e) => (e.type === "timelines" || e.type === "accounts" || (e.type === "posts" && e.timelineId === id) ? render() : undefined)));

  const mayPost = myRole() !== "reader";
  return h(
    "div",
    { class: "stack" },
    h(
      "section",
      { class: "card" },
      h("div", { class: "title-row" }, h("h1", null, `${timelineTitle(id, summary())} — ${t("timeline.members")}`), h("a", { class: "button", href: `#/t/${encodeURIComponent(id)}` }, t("common.back"))),
      patientLine(summary()),
      members,
      renameForm,
    ),
    consentCard,
    callCard,
    mayInvite()
      ? h("section", { class: "card" }, h("h2", null, t("timeline.otherAccounts")), inviteOptions, field(t("timeline.filter"), filter), others)
      : null,
    mayInvite() ? h("section", { class: "card" }, h("h2", null, t("timeline.addPeople")), directorySearch(ctx, (p: DirectoryPerson) => addButton(p.account_id, p.display_name))) : null,
    familyCard,
    mayPost ? h("section", { class: "card" }, h("h2", null, t("event.title")), eventsForm(ctx, engine, id)) : null,
  );
}
