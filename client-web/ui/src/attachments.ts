// Photos and PDFs in posts: what the composer lets a person pick, and how a
// post's attachments are shown and opened. The encryption, the upload and the
// decryption are the engine's (`Engine.postWithAttachments`,
// `Engine.openAttachment`); the server only ever stores ciphertext.
import type { AttachmentRef, Engine, PostView } from "./engine/index.ts";
import { h } from "./dom.ts";
import { t } from "./i18n/index.ts";

/** The server's default limit for one blob (TSUNAGU_MAX_BLOB_BYTES). */
export const MAX_FILE_BYTES = 25 * 1024 * 1024;
export const ACCEPT = "image/jpeg,image/png,image/webp,image/heic,application/pdf";

/** "Photo", "PDF" or "File": text, not emoji (cheap tablets may lack an emoji font). */
export function kindLabel(mime: string): string {
  if (mime.startsWith("image/")) return t("attach.photo");
  if (mime === "application/pdf") return "PDF";
  return t("attach.file");
}

export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** Checks picked files before anything is encrypted; returns an error text or null. */
export function checkFiles(files: File[]): string | null {
  for (const f of files) {
    if (!ACCEPT.split(",").includes(f.type)) return t("attach.wrongType", { name: f.name });
    if (f.size > MAX_FILE_BYTES) return t("attach.tooLarge", { name: f.name, max: formatSize(MAX_FILE_BYTES) });
  }
  return null;
}

/** Photos up to this size open by themselves when scrolled into view. */
const AUTO_OPEN_BYTES = 1536 * 1024;

// Decrypted files of this session, by blob id, as object URLs: a timeline
// re-renders on every new post and must not download and decrypt again.
const opened = new Map<string, string>();

/** Drops the decrypted files (logout, revocation): nothing outlives the session. */
export function clearOpenedAttachments(): void {
  for (const url of opened.values()) URL.revokeObjectURL(url);
  opened.clear();
}

let observer: IntersectionObserver | null = null;
function whenVisible(el: Element, fn: () => void): void {
  if (typeof IntersectionObserver === "undefined") return fn();
  observer ??= new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      observer?.unobserve(e.target);
      (e.target as HTMLElement & { __open?: () => void }).__open?.();
    }
  });
  (el as HTMLElement & { __open?: () => void }).__open = fn;
  observer.observe(el);
}

/** Decrypts (once per session) and returns an object URL for an attachment. */
async function openUrl(engine: Engine, a: AttachmentRef): Promise<string> {
  const cached = opened.get(a.blob_id);
  if (cached) return cached;
  const url = URL.createObjectURL(await engine.openAttachment(a));
  opened.set(a.blob_id, url);
  return url;
}

/** The full file in a modal dialog (photos) or a new tab (PDFs); Escape closes it. */
async function showFull(engine: Engine, a: AttachmentRef, status: HTMLElement): Promise<void> {
  const label = `[${kindLabel(a.mime)}] ${a.name} (${formatSize(a.size)})`;
  status.textContent = opened.has(a.blob_id) ? "" : t("common.loading");
  let url: string;
  try {
    url = await openUrl(engine, a);
  } catch {
    status.textContent = t("attach.damaged");
    return;
  }
  status.textContent = "";
  if (!a.mime.startsWith("image/")) {
    window.open(url, "_blank", "noopener");
    return;
  }
  const close = h("button", { type: "button", class: "dialog-close", "data-testid": "attachment-close" }, t("common.close"));
  const dialog = h(
    "dialog",
    { class: "attachment-dialog", "aria-label": a.name, "data-testid": "attachment-full" },
    h("img", { src: url, alt: a.name, class: "attachment-full-image", "data-testid": "attachment-full-image" }),
    h("p", { class: "hint" }, label, " ", h("a", { href: url, download: a.name }, t("attach.download"))),
    close,
  ) as HTMLDialogElement;
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
}

/**
 * A post's attachments. A photo with a thumbnail (made by the author's
 * client) shows the thumbnail as soon as it is visible and opens the full
 * photo on a click; a photo without one shows itself when small (others on a
 * click), so a slow link is not spent on every big photo of a long timeline;
 * PDFs are a link that opens the decrypted file.
 */
export function attachmentList(engine: Engine, p: PostView): HTMLElement | null {
  const list = p.attachments;
  if (list.length === 0) return null;
  return h(
    "ul",
    { class: "attachments", "aria-label": t("attach.list") },
    list.map((a) => {
      const image = a.mime.startsWith("image/");
      const label = `[${kindLabel(a.mime)}] ${a.name} (${formatSize(a.size)})`;
      const item = h("li", { class: "attachment", "data-testid": "attachment" });
      const thumb = a.thumbnail;
      if (thumb && thumb.mime.startsWith("image/")) {
        const status = h("span", { class: "hint", "aria-live": "polite" });
        const button = h(
          "button",
          { type: "button", class: "attachment-thumb", "data-testid": "attachment-thumb-button" },
          h("span", { class: "thumb-placeholder" }, t("attach.openFull", { name: a.name })),
        );
        button.addEventListener("click", () => void showFull(engine, a, status));
        const load = async () => {
          try {
            const url = await openUrl(engine, thumb);
            // The image's alt text is the button's name (no separate label).
            button.replaceChildren(h("img", { src: url, alt: t("attach.openFull", { name: a.name }), class: "attachment-thumbnail", "data-testid": "attachment-thumbnail" }));
          } catch {
            status.textContent = t("attach.damaged");
          }
        };
        item.append(button, h("span", { class: "hint" }, label), status);
        if (opened.has(thumb.blob_id)) void load();
        else whenVisible(item, () => void load());
        return item;
      }
      const show = (url: string) => {
        if (image) {
          item.replaceChildren(h("img", { src: url, alt: a.name, class: "attachment-image", "data-testid": "attachment-image" }), h("span", { class: "hint" }, label));
        } else {
          item.replaceChildren(h("a", { href: url, download: a.name, target: "_blank", rel: "noopener" }, label));
        }
      };
      const cached = opened.get(a.blob_id);
      if (cached) {
        show(cached);
        return item;
      }
      const button = h("button", { type: "button", class: "attachment-open" }, label);
      const open = async () => {
        if (button.disabled) return;
        button.disabled = true;
        button.textContent = `${label} — ${t("common.loading")}`;
        try {
          show(await openUrl(engine, a));
        } catch {
          button.disabled = false;
          button.textContent = `${label} — ${t("attach.damaged")}`;
        }
      };
      button.addEventListener("click", () => void open());
      item.append(button);
      if (image && a.size <= AUTO_OPEN_BYTES) whenVisible(item, () => void open());
      return item;
    }),
  );
}
