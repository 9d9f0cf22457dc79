// Screens about people: my profile, my devices and passkeys, the directory,
// and the organisation admin's pages (staff, invitations, audit log).
import { api, type DirectoryOrganisation, type DirectoryPerson, type InvitationSummary } from "../api.ts";
import { errorText, type Ctx } from "../app.ts";
import { field, formatTime, h, replace, svgImage } from "../dom.ts";
import { copyBox, input, onSubmit, ORG_TYPES, PROFESSIONS, select } from "../forms.ts";
import { lang, t, tEnum } from "../i18n/index.ts";
import { createPasskey } from "../webauthn.ts";

const MAX_PHOTO = 512 * 1024;

/** A face photo, or a placeholder with the person's initial. */
export function avatar(accountId: string, name: string, hasPhoto: boolean, version?: number): HTMLElement {
  if (hasPhoto) {
    return h("img", { class: "avatar", src: api.photoUrl(accountId, version), alt: name, width: 64, height: 64, loading: "lazy" });
  }
  return h("span", { class: "avatar avatar-empty", role: "img", "aria-label": `${name} (${t("directory.noPhoto")})` }, (name || "?").slice(0, 1));
}

export async function profileScreen(ctx: Ctx): Promise<HTMLElement> {
  const me = await api.me();
  ctx.setMe(me);
  let photoVersion = Date.now();
  const photoSlot = h("div", { class: "photo-slot" }, avatar(me.account_id, me.display_name, me.has_photo, photoVersion));
  const file = h("input", { type: "file", accept: "image/jpeg,image/png,image/webp", name: "photo" });
  const photoForm = h("form", { class: "inline-form" }, field(t("profile.photoUpload"), file), h("button", { type: "submit" }, t("common.save")));
  onSubmit(photoForm, async () => {
    const chosen = file.files?.[0];
    if (!chosen) return;
    if (chosen.size > MAX_PHOTO) throw new Error(t("profile.photoTooLarge"));
    await api.uploadPhoto(chosen);
    ctx.setMe({ ...(ctx.me ?? me), has_photo: true });
    photoVersion = Date.now();
    replace(photoSlot, avatar(me.account_id, me.display_name, true, photoVersion));
    ctx.notify(t("profile.photoUpdated"));
  });

  const name = input("display_name", { required: true, value: me.display_name });
  const kana = input("kana", { value: me.kana ?? "" });
  const professional = me.kind === "professional";
  const profession = professional ? select("profession", "profession", PROFESSIONS, { value: me.profession ?? "" }) : null;
  const hours = professional ? input("contact_hours", { value: me.contact_hours ?? "" }) : null;
  const form = h(
    "form",
    { "data-testid": "profile-form" },
    field(t("person.displayName"), name),
    field(t("person.kana"), kana),
    profession ? field(t("person.profession"), profession) : null,
    hours ? field(t("person.contactHours"), hours, t("person.contactHoursHint")) : null,
    h("button", { type: "submit", class: "primary" }, t("common.save")),
  );
  onSubmit(form, async () => {
    const fields: Record<string, string> = { display_name: name.value.trim(), kana: kana.value.trim() };
    if (profession) fields.profession = profession.value;
    if (hours) fields.contact_hours = hours.value.trim();
    const updated = await api.updateMe(fields);
    ctx.setMe(updated ?? (await api.me()));
    ctx.notify(t("common.saved"));
  });

  return h(
    "section",
    { class: "card" },
    h("h1", null, t("profile.title")),
    h(
      "dl",
      { class: "facts" },
      me.organisation_name ? [h("dt", null, t("person.organisation")), h("dd", null, me.organisation_name)] : null,
      h("dt", null, t("person.role")),
      h("dd", null, me.kind === "professional" ? tEnum("role", me.role) : tEnum("kind", me.kind)),
    ),
    professional ? h("div", { class: "photo-row" }, photoSlot, photoForm) : null,
    form,
  );
}

export async function devicesScreen(ctx: Ctx): Promise<HTMLElement> {
  const list = h("ul", { class: "list", "data-testid": "device-list" });
  const thisDevice = localStorage.getItem("tsunagu.deviceId");
  async function load(): Promise<void> {
    const devices = await api.devices();
    replace(
      list,
      devices.length === 0 ? h("li", null, t("common.none")) : null,
      devices.map((d) =>
        h(
          "li",
          { class: "list-item" },
          h(
            "div",
            { class: "grow" },
            h("strong", null, d.name),
            d.device_id === thisDevice ? h("span", { class: "badge" }, t("devices.thisDevice")) : null,
            d.revoked_at ? h("span", { class: "badge badge-muted" }, `${t("devices.revoked")} ${formatTime(d.revoked_at, lang())}`) : null,
            h(
              "div",
              { class: "hint" },
              `${t("devices.created")}: ${formatTime(d.created_at, lang())}`,
            ),
          ),
          d.revoked_at
            ? null
            : h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  onclick: async () => {
                    if (!confirm(t("devices.confirmRevoke", { name: d.name }))) return;
                    try {
                      await api.revokeDevice(d.device_id);
                      await load();
                    } catch (e) {
                      ctx.notify(errorText(e), "error");
                    }
                  },
                },
                t("devices.revoke"),
              ),
        ),
      ),
    );
  }
  await load();

  const codeOut = h("div", { "aria-live": "polite" });
  const codeForm = h("form", null, h("p", null, t("devices.codeIntro")), h("button", { type: "submit" }, t("devices.issueCode")), codeOut);
  onSubmit(codeForm, async () => {
    const c = await api.deviceCode();
    replace(codeOut, copyBox(t("devices.code"), c.code, "device-code"), h("p", { class: "hint" }, t("devices.codeShown", { code: c.code, time: formatTime(c.expires_at, lang()) })));
  });

  const passkeys = h("ul", { class: "list", "data-testid": "passkey-list" });
  async function loadPasskeys(): Promise<void> {
    try {
      const keys = await api.passkeys();
      replace(
        passkeys,
        keys.map((k, i) =>
          h(
            "li",
            { class: "list-item" },
            h("span", { class: "grow" }, `${t("devices.passkeys")} ${i + 1}`),
            h(
              "span",
              { class: "hint" },
              `${t("devices.created")}: ${formatTime(k.created_at, lang())}`,
              k.last_used_at ? ` · ${t("devices.lastUsed")}: ${formatTime(k.last_used_at, lang())}` : "",
            ),
          ),
        ),
      );
    } catch (e) {
      replace(passkeys, h("li", { role: "alert" }, errorText(e)));
    }
  }
  await loadPasskeys();
  const passkeyForm = h("form", null, h("button", { type: "submit" }, t("devices.addPasskey")));
  onSubmit(passkeyForm, async () => {
    const ceremony = await api.passkeyStart();
    const credential = await createPasskey(ceremony.options);
    await api.passkeyFinish(ceremony.ceremony_id, credential);
    ctx.notify(t("devices.passkeyAdded"));
    await loadPasskeys();
  });

  return h(
    "div",
    { class: "stack" },
    h("section", { class: "card" }, h("h1", null, t("devices.title")), h("h2", null, t("devices.list")), list),
    h("section", { class: "card" }, h("h2", null, t("devices.code")), codeForm),
    h("section", { class: "card" }, h("h2", null, t("devices.passkeys")), passkeys, passkeyForm),
  );
}

/** One person in a directory list, with an optional action button. */
export function personCard(p: DirectoryPerson, action?: HTMLElement): HTMLElement {
  return h(
    "li",
    { class: "person-card", "data-testid": "person-card" },
    avatar(p.account_id, p.display_name, !!p.photo_url),
    h(
      "div",
      { class: "grow" },
      h("div", { class: "person-name" }, h("strong", null, p.display_name), p.kana ? h("span", { class: "kana" }, ` (${p.kana})`) : null),
      h("div", null, [tEnum("profession", p.profession), p.organisation_name].filter(Boolean).join(" · ")),
      p.contact_hours ? h("div", { class: "hint" }, t("directory.contactHours", { hours: p.contact_hours })) : null,
    ),
    action ?? null,
  );
}

function orgCard(o: DirectoryOrganisation): HTMLElement {
  return h(
    "li",
    { class: "person-card", "data-testid": "org-card" },
    h(
      "div",
      { class: "grow" },
      h("strong", null, o.name),
      h("div", null, [tEnum("orgType", o.type), o.area, o.home_visits ? t("org.homeVisits") : null].filter(Boolean).join(" · ")),
      h("div", { class: "hint" }, [o.address, o.phone ? `${t("org.phone")} ${o.phone}` : null, o.fax ? `${t("org.fax")} ${o.fax}` : null].filter(Boolean).join(" · ")),
    ),
  );
}

/** The search form; `onPerson` adds an action to each person (e.g. "add to timeline"). */
export function directorySearch(ctx: Ctx, onPerson?: (p: DirectoryPerson) => HTMLElement | null): HTMLElement {
  const q = input("q", { type: "search", placeholder: t("directory.query") });
  const profession = select("profession", "profession", PROFESSIONS, { any: true });
  const orgType = select("org_type", "orgType", ORG_TYPES, { any: true });
  const area = input("area");
  const homeVisits = h("input", { type: "checkbox", name: "home_visits", id: "dir-home-visits" });
  const people = h("ul", { class: "cards", "data-testid": "directory-people", "aria-label": t("directory.people") });
  const orgs = h("ul", { class: "cards", "data-testid": "directory-orgs", "aria-label": t("directory.organisations") });
  const form = h(
    "form",
    { role: "search", class: "search-form" },
    field(t("directory.query"), q),
    field(t("person.profession"), profession),
    field(t("org.type"), orgType),
    field(t("org.area"), area),
    h("div", { class: "check" }, homeVisits, h("label", { for: "dir-home-visits" }, t("directory.homeVisitsOnly"))),
    h("button", { type: "submit", class: "primary" }, t("common.search")),
  );
  async function search(): Promise<void> {
    const params = { q: q.value.trim(), org_type: orgType.value, area: area.value.trim(), home_visits: homeVisits.checked || undefined };
    const [p, o] = await Promise.all([
      api.directoryPeople({ ...params, profession: profession.value }),
      onPerson ? Promise.resolve([] as DirectoryOrganisation[]) : api.directoryOrganisations(params),
    ]);
    const ps = p.filter((x) => x.account_id !== ctx.me?.account_id || !onPerson);
    const os = o;
    replace(people, ps.length ? ps.map((x) => personCard(x, onPerson?.(x) ?? undefined)) : h("li", null, t("directory.noResults")));
    replace(orgs, os.map(orgCard));
  }
  onSubmit(form, search);
  void search().catch((e) => ctx.notify(errorText(e), "error"));
  return h(
    "div",
    { class: "directory" },
    form,
    h("h2", null, t("directory.people")),
    people,
    onPerson ? null : [h("h2", null, t("directory.organisations")), orgs],
  );
}

export function directoryScreen(ctx: Ctx): HTMLElement {
  return h("section", { class: "card" }, h("h1", null, t("directory.title")), directorySearch(ctx));
}

/** An invitation link with its QR code, as the server made it. */
export function invitationView(inv: { url: string; qr_svg: string; expires_at: number }): HTMLElement {
  return h(
    "div",
    { class: "invitation", "data-testid": "invitation" },
    copyBox(t("invitation.link"), inv.url, "invitation-url"),
    h("figure", null, svgImage(inv.qr_svg, t("invitation.qr")), h("figcaption", { class: "hint" }, t("invite.expires", { time: formatTime(inv.expires_at, lang()) }))),
  );
}

export async function adminScreen(ctx: Ctx): Promise<HTMLElement> {
  const me = ctx.me!;
  if (me.role !== "admin" || !me.organisation_id) {
    return h("section", { class: "card" }, h("h1", null, t("admin.title")), h("p", null, t("admin.notAdmin")));
  }
  const orgId = me.organisation_id;
  const staffList = h("ul", { class: "cards", "data-testid": "staff-list" });
  const names = new Map<string, string>();
  async function loadStaff(): Promise<void> {
    const staff = await api.staff(orgId);
    for (const s of staff) names.set(s.account_id, s.display_name);
    replace(staffList, staff.map((s) => staffRow(s)));
  }
  function staffRow(s: DirectoryPerson): HTMLElement {
    const codeOut = h("div", { class: "grow-full", "aria-live": "polite" });
    // A bot's devices are enrolled with codes its admin issues.
    const botCode =
      s.kind === "bot" && !s.removed_at
        ? h(
            "button",
            {
              type: "button",
              onclick: async () => {
                try {
                  const c = await api.deviceCode(s.account_id);
                  replace(codeOut, copyBox(t("admin.botCode"), c.code, "bot-code"));
                } catch (e) {
                  ctx.notify(errorText(e), "error");
                }
              },
            },
            t("admin.newCodeFor"),
          )
        : null;
    const remove =
      s.account_id === me.account_id || s.removed_at
        ? null
        : h(
            "button",
            {
              type: "button",
              class: "danger",
              onclick: async () => {
                if (!confirm(t("admin.confirmRemove", { name: s.display_name }))) return;
                try {
                  await api.removeStaff(orgId, s.account_id);
                  ctx.notify(t("admin.removed", { name: s.display_name }));
                  await loadStaff();
                } catch (e) {
                  ctx.notify(errorText(e), "error");
                }
              },
            },
            t("admin.remove"),
          );
    return h(
      "li",
      { class: `person-card wrap${s.removed_at ? " removed" : ""}`, "data-testid": "staff-row" },
      avatar(s.account_id, s.display_name, !!s.photo_url),
      h(
        "div",
        { class: "grow" },
        h("strong", null, s.display_name),
        s.kana ? h("span", { class: "kana" }, ` (${s.kana})`) : null,
        s.kind === "bot" ? h("span", { class: "badge" }, t("kind.bot")) : null,
        s.removed_at ? h("span", { class: "badge badge-muted" }, t("admin.removedAt", { time: formatTime(s.removed_at, lang()) })) : null,
        h("div", null, [tEnum("profession", s.profession), tEnum("role", s.role)].filter(Boolean).join(" · ")),
      ),
      botCode,
      remove,
      codeOut,
    );
  }
  await loadStaff();

  const inviteName = input("display_name");
  const hours = input("expires_in_hours", { type: "number", min: 1, max: 720, value: "72" });
  const inviteOut = h("div", { "aria-live": "polite" });
  // Staff of this organisation, or the first admin of another one (a
  // hospital's liaison, a pharmacy) joining the network.
  const inviteKind = select("invite_kind", "invitation.kind", ["staff", "organisation"], { value: "staff" }) as HTMLSelectElement;
  const inviteForm = h(
    "form",
    { "data-testid": "staff-invite-form" },
    field(t("invitation.kindLabel"), inviteKind),
    field(t("admin.inviteName"), inviteName),
    field(t("admin.inviteExpires"), hours),
    h("button", { type: "submit", class: "primary" }, t("admin.createInvitation")),
  );
  const sent = h("ul", { class: "list", "data-testid": "invitation-list" });
  async function loadInvitations(): Promise<void> {
    const list = await api.invitations();
    replace(sent, list.length ? list.slice().reverse().map(invitationRow) : h("li", null, t("common.none")));
  }
  onSubmit(inviteForm, async () => {
    const inv = await api.createInvitation({
      kind: inviteKind.value as "staff" | "organisation",
      display_name: inviteName.value.trim() || undefined,
      expires_in_hours: Number(hours.value) || undefined,
    });
    replace(inviteOut, invitationView(inv));
    await loadInvitations();
  });
  await loadInvitations().catch((e) => replace(sent, h("li", { role: "alert" }, errorText(e))));

  const botName = input("bot_name", { required: true, maxlength: 100 });
  const botOut = h("div", { "aria-live": "polite" });
  const botForm = h(
    "form",
    { "data-testid": "bot-form" },
    h("p", null, t("admin.botIntro")),
    field(t("admin.botName"), botName),
    h("button", { type: "submit" }, t("admin.createBot")),
  );
  onSubmit(botForm, async () => {
    const c = await api.createBot(botName.value.trim());
    replace(botOut, copyBox(t("admin.botCode"), c.code, "bot-code"), h("p", { class: "hint" }, t("invite.expires", { time: formatTime(c.expires_at, lang()) })));
    botName.value = "";
    await loadStaff();
  });

  const auditBody = h("tbody");
  const who = (id: string | null) => (id && names.get(id)) || h("span", { class: "mono", title: id ?? "" }, short(id));
  async function loadAudit(): Promise<void> {
    const rows = await api.audit();
    replace(
      auditBody,
      rows
        .slice()
        .reverse()
        .map((r) =>
          h(
            "tr",
            null,
            h("td", null, formatTime(r.at, lang())),
            h("td", null, tEnum("auditAction", r.action)),
            h("td", { class: r.outcome === "ok" ? "" : "refused" }, tEnum("auditOutcome", r.outcome)),
            h("td", null, who(r.actor_account_id)),
            h("td", null, who(r.subject)),
            h("td", null, r.detail),
          ),
        ),
    );
  }
  await loadAudit().catch((e) => replace(auditBody, h("tr", null, h("td", { colspan: 6, role: "alert" }, errorText(e)))));

  return h(
    "div",
    { class: "stack" },
    h("section", { class: "card" }, h("h1", null, t("admin.title")), h("h2", null, t("admin.staff")), staffList),
    h("section", { class: "card" }, h("h2", null, t("admin.invitations")), inviteForm, inviteOut, h("h3", null, t("admin.sentInvitations")), sent),
    h("section", { class: "card" }, h("h2", null, t("admin.bots")), botForm, botOut),
    h(
      "section",
      { class: "card" },
      h("h2", null, t("admin.audit")),
      h("p", null, h("a", { class: "button", href: api.auditCsvUrl(), download: "tsunagu-audit.csv" }, t("admin.auditExport"))),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { "data-testid": "audit-table" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              ["auditTime", "auditAction", "auditOutcome", "auditActor", "auditSubject", "auditDetail"].map((k) =>
                h("th", { scope: "col" }, t(`admin.${k}` as "admin.auditTime")),
              ),
            ),
          ),
          auditBody,
        ),
      ),
    ),
  );
}

function invitationRow(i: InvitationSummary): HTMLElement {
  const state = i.used_at
    ? t("invitation.used", { time: formatTime(i.used_at, lang()) })
    : i.expires_at < Date.now()
      ? t("invitation.expired")
      : t("invitation.open", { time: formatTime(i.expires_at, lang()) });
  return h(
    "li",
    { class: "list-item" },
    h("span", { class: "grow" }, i.display_name || t("timeline.noName")),
    h("span", { class: "badge badge-muted" }, i.kind === "family" ? t("invitation.kindFamily") : i.kind === "organisation" ? t("invitation.kind.organisation") : t("invitation.kindStaff")),
    h("span", { class: "hint" }, state),
  );
}

function short(id: string | null | undefined): string {
  if (!id) return "";
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}
