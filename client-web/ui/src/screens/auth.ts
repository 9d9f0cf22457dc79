// Screens without a session: first-run setup, registration from an
// invitation link, and login with a passkey.
import { api, ApiError, type Session } from "../api.ts";
import type { Ctx } from "../app.ts";
import { formatTime, h } from "../dom.ts";
import { onSubmit, orgForm, personForm } from "../forms.ts";
import { lang, t } from "../i18n/index.ts";
import { createPasskey, getPasskey } from "../webauthn.ts";

function signedIn(ctx: Ctx, session: Session): void {
  ctx.setMe(session.me);
  ctx.navigate("#/");
}

export async function setupScreen(ctx: Ctx): Promise<HTMLElement> {
  const token = ctx.route.params[0] ?? "";
  const { needed } = await api.setupNeeded();
  if (!needed) {
    return h(
      "section",
      { class: "card narrow" },
      h("h1", null, t("setup.title")),
      h("p", null, t("setup.notNeeded")),
      h("p", null, h("a", { href: "#/login", class: "button" }, t("login.title"))),
    );
  }
  if (!token) {
    return h("section", { class: "card narrow" }, h("h1", null, t("setup.title")), h("p", null, t("setup.neededNoToken")));
  }
  const org = orgForm(t("setup.org"));
  const person = personForm({ legend: t("setup.person") });
  const form = h(
    "form",
    { class: "card narrow", "data-testid": "setup-form", novalidate: false },
    h("h1", null, t("setup.title")),
    h("p", null, t("setup.intro")),
    org.el,
    person.el,
    h("button", { type: "submit", class: "primary" }, t("setup.submit")),
  );
  onSubmit(form, async () => {
    const ceremony = await api.setupStart(token, org.value(), person.value());
    const credential = await createPasskey(ceremony.options);
    signedIn(ctx, await api.setupFinish(ceremony.ceremony_id, credential));
  });
  return form;
}

export async function inviteScreen(ctx: Ctx): Promise<HTMLElement> {
  const token = ctx.route.params[0] ?? "";
  let info;
  try {
    info = await api.invitation(token);
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 410 || e.status === 400)) {
      return h(
        "section",
        { class: "card narrow" },
        h("h1", null, t("invite.title")),
        h("p", { role: "alert", "data-testid": "invite-invalid" }, t("invite.invalid")),
        e.message ? h("p", { class: "hint" }, e.message) : null,
      );
    }
    throw e;
  }
  const family = info.kind === "family";
  // An organisation invitation: a hospital or pharmacy joining the network,
  // the invitee its first admin (e.g. the hospital's liaison).
  const newOrg = info.kind === "organisation" ? orgForm(t("setup.org")) : null;
  const person = personForm({ family, name: info.display_name ?? "", legend: t("person.displayName") });
  const form = h(
    "form",
    { class: "card narrow", "data-testid": "invite-form" },
    h("h1", null, t("invite.title")),
    h(
      "p",
      { class: "lead" },
      family
        ? t("invite.fromFamily", { inviter: info.invited_by })
        : newOrg
          ? t("invite.fromNetwork", { inviter: info.invited_by })
          : t("invite.fromStaff", { inviter: info.invited_by, org: info.organisation_name ?? "" }),
    ),
    family ? h("p", null, t("invite.familyNote")) : null,
    h("p", { class: "hint" }, t("invite.expires", { time: formatTime(info.expires_at, lang()) })),
    newOrg?.el ?? null,
    person.el,
    h("button", { type: "submit", class: "primary" }, t("invite.submit")),
  );
  onSubmit(form, async () => {
    const ceremony = await api.invitationStart(token, person.value(), newOrg?.value());
    const credential = await createPasskey(ceremony.options);
    signedIn(ctx, await api.invitationFinish(token, ceremony.ceremony_id, credential));
  });
  return form;
}

export async function loginScreen(ctx: Ctx): Promise<HTMLElement> {
  if (ctx.me) {
    ctx.navigate("#/");
    return h("p", null, t("common.loading"));
  }
  const form = h(
    "form",
    { class: "card narrow", "data-testid": "login-form" },
    h("h1", null, t("login.title")),
    h("p", null, t("login.intro")),
    h("button", { type: "submit", class: "primary" }, t("login.submit")),
    h("p", { class: "hint" }, t("login.noAccount")),
  );
  onSubmit(form, async () => {
    const ceremony = await api.loginStart();
    const credential = await getPasskey(ceremony.options);
    signedIn(ctx, await api.loginFinish(ceremony.ceremony_id, credential));
  });
  try {
    const { needed } = await api.setupNeeded();
    if (needed) form.insertBefore(h("p", { class: "notice notice-info" }, t("setup.neededNoToken")), form.children[2]);
  } catch {
    // The login form works the same without this hint.
  }
  return form;
}
