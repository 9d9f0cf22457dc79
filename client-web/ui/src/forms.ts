// Form pieces shared by several screens: the person and organisation fields,
// the lists of professions and organisation types, and a submit helper that
// disables the button and shows errors next to the form.
import type { OrgInput, PersonInput } from "./api.ts";
import { errorText } from "./app.ts";
import { field, h, replace } from "./dom.ts";
import { t, tEnum } from "./i18n/index.ts";

export const PROFESSIONS = [
  "doctor",
  "nurse",
  "pharmacist",
  "pt",
  "ot",
  "st",
  "dentist",
  "dental_hygienist",
  "dietitian",
  "care_manager",
  "msw",
  "care_worker",
  "clerk",
] as const;

export const ORG_TYPES = [
  "clinic",
  "hospital",
  "visiting_nurse_station",
  "pharmacy",
  "care_management_agency",
  "community_general_support_centre",
  "dental_clinic",
  "other",
] as const;

export function input(name: string, attrs: Record<string, unknown> = {}): HTMLInputElement {
  return h("input", { name, type: "text", autocomplete: "off", ...attrs });
}

export function select(name: string, prefix: string, values: readonly string[], opts: { any?: boolean; value?: string } = {}) {
  return h(
    "select",
    { name },
    opts.any ? h("option", { value: "" }, t("common.any")) : null,
    values.map((v) => h("option", { value: v, selected: v === opts.value }, tEnum(prefix, v))),
  );
}

export interface PersonForm {
  el: HTMLElement;
  value(): PersonInput;
}

/** Name, kana and (for staff) profession and contact hours. */
export function personForm(opts: { family?: boolean; name?: string; legend: string }): PersonForm {
  const name = input("display_name", { required: true, autocomplete: "name", value: opts.name ?? "" });
  const kana = input("kana", { autocomplete: "off" });
  const profession = opts.family ? null : select("profession", "profession", PROFESSIONS);
  const hours = opts.family ? null : input("contact_hours");
  if (profession) profession.required = true;
  const el = h(
    "fieldset",
    null,
    h("legend", null, opts.legend),
    field(`${t("person.displayName")} (${t("common.required")})`, name),
    field(t("person.kana"), kana),
    profession ? field(t("person.profession"), profession) : null,
    hours ? field(t("person.contactHours"), hours, t("person.contactHoursHint")) : null,
  );
  return {
    el,
    value: () => {
      const p: PersonInput = { display_name: name.value.trim(), kana: kana.value.trim() };
      if (profession) p.profession = profession.value;
      if (hours && hours.value.trim()) p.contact_hours = hours.value.trim();
      return p;
    },
  };
}

export interface OrgForm {
  el: HTMLElement;
  value(): OrgInput;
}

export function orgForm(legend: string): OrgForm {
  const name = input("org_name", { required: true, autocomplete: "organization" });
  const type = select("org_type", "orgType", ORG_TYPES);
  const area = input("area");
  const address = input("address", { autocomplete: "street-address" });
  const phone = input("phone", { type: "tel", autocomplete: "tel" });
  const fax = input("fax", { type: "tel" });
  const homeVisits = h("input", { type: "checkbox", name: "home_visits" });
  const el = h(
    "fieldset",
    null,
    h("legend", null, legend),
    field(`${t("org.name")} (${t("common.required")})`, name),
    field(t("org.type"), type),
    field(t("org.area"), area),
    field(t("org.address"), address),
    h("div", { class: "row" }, field(t("org.phone"), phone), field(t("org.fax"), fax)),
    h("div", { class: "check" }, homeVisits, h("label", { for: (homeVisits.id = "home-visits") }, t("org.homeVisits"))),
  );
  return {
    el,
    value: () => ({
      name: name.value.trim(),
      type: type.value,
      area: area.value.trim(),
      address: address.value.trim(),
      phone: phone.value.trim(),
      fax: fax.value.trim(),
      home_visits: homeVisits.checked,
    }),
  };
}

/**
 * Wires a form's submit: runs `action` with the button disabled and shows
 * any error in an alert under the form. Nothing typed is lost on failure.
 */
export function onSubmit(form: HTMLFormElement, action: () => Promise<void>): HTMLElement {
  const errorBox = h("div", { class: "form-error", role: "alert" });
  form.appendChild(errorBox);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!form.reportValidity()) return;
    const buttons = form.querySelectorAll<HTMLButtonElement>("button[type=submit]");
    buttons.forEach((b) => (b.disabled = true));
    form.setAttribute("aria-busy", "true");
    replace(errorBox);
    try {
      await action();
    } catch (err) {
      replace(errorBox, errorText(err));
    } finally {
      buttons.forEach((b) => (b.disabled = false));
      form.removeAttribute("aria-busy");
    }
  });
  return errorBox;
}

/** A read-only text box with a copy button (invitation links, codes). */
export function copyBox(label: string, value: string, testid?: string): HTMLElement {
  const box = h("input", { type: "text", readonly: true, value, class: "copy-value", "data-testid": testid });
  const status = h("span", { class: "hint", "aria-live": "polite" });
  const button = h(
    "button",
    {
      type: "button",
      onclick: async () => {
        box.select();
        try {
          await navigator.clipboard.writeText(value);
          status.textContent = t("common.copied");
        } catch {
          document.execCommand?.("copy");
        }
      },
    },
    t("common.copy"),
  );
  return h("div", { class: "copy-box" }, field(label, box), button, status);
}
