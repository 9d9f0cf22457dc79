// A tiny DOM builder: `h("button", { onclick }, "text")`. The app renders
// screens as plain elements; no virtual DOM, no framework runtime.

export type Child = Node | string | number | null | undefined | false | Child[];
export type Attrs = Record<string, unknown>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value as EventListener);
      } else if (key === "value" || key === "checked" || key === "selected") {
        (el as unknown as Record<string, unknown>)[key] = value;
      } else if (value === true) {
        el.setAttribute(key, "");
      } else {
        el.setAttribute(key, String(value));
      }
    }
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces all children of `parent`. */
export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

let idCounter = 0;
/** A unique element id, for label/aria pairings. */
export function uid(prefix = "f"): string {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** A labelled form field; `control` gets the id the label points to. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  const id = control.id || uid();
  control.id = id;
  let hintEl: HTMLElement | null = null;
  if (hint) {
    const hintId = `${id}-hint`;
    hintEl = h("span", { class: "hint", id: hintId }, hint);
    control.setAttribute("aria-describedby", hintId);
  }
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl);
}

/** An SVG document from the server (an invitation's QR code) shown as an image. */
export function svgImage(svg: string, alt: string): HTMLImageElement {
  const src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
  return h("img", { src, alt, class: "qr", width: 220, height: 220 });
}

export function formatTime(ms: number, lang: string): string {
  return new Date(ms).toLocaleString(lang === "ja" ? "ja-JP" : "en-GB", {
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
  });
}
