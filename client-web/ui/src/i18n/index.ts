// Message lookup and the current language. Japanese is the default for a
// browser whose language starts with "ja"; the choice is kept in localStorage.
import { en } from "./en.ts";
import { ja, type MessageKey } from "./ja.ts";

export type Lang = "ja" | "en";
export type { MessageKey };

const catalogues: Record<Lang, Record<MessageKey, string>> = { ja, en };
const STORAGE_KEY = "tsunagu.lang";

function initialLang(): Lang {
  const saved = localStorage.getItem(STORAGE_KEY);
  if (saved === "ja" || saved === "en") return saved;
  return (navigator.language || "").toLowerCase().startsWith("ja") ? "ja" : "en";
}

let current: Lang = initialLang();

export function lang(): Lang {
  return current;
}

export function setLang(next: Lang): void {
  current = next;
  localStorage.setItem(STORAGE_KEY, next);
  document.documentElement.lang = next;
}

/** The message for `key` in the current language, `{param}`s filled in. */
export function t(key: MessageKey, params?: Record<string, string | number>): string {
  let text = catalogues[current][key] ?? key;
  if (params) {
    for (const [name, value] of Object.entries(params)) {
      text = text.split(`{${name}}`).join(String(value));
    }
  }
  return text;
}

/** A message for a value from the server (a profession, an org type), or the raw value. */
export function tEnum(prefix: string, value: string | null | undefined): string {
  if (!value) return "";
  const key = `${prefix}.${value}` as MessageKey;
  return key in catalogues[current] ? catalogues[current][key] : value;
}

export const LANGS: { code: Lang; label: string }[] = [
  { code: "ja", label: "日本語" },
  { code: "en", label: "English" },
];
