// The server's HTTP API (issue 3's contract, see PROTOCOL.md): typed calls
// over fetch. The browser is authenticated by the HttpOnly session cookie, so
// no token is ever handled here.

export type AccountKind = "professional" | "family" | "bot";
export type Role = "member" | "admin";

export interface Me {
  account_id: string;
  kind: AccountKind;
  display_name: string;
  kana: string;
  profession: string | null;
  organisation_id: string | null;
  organisation_name: string | null;
  role: Role;
  contact_hours: string;
  has_photo: boolean;
}

export interface OrgInput {
  name: string;
  kana?: string;
  type: string;
  area: string;
  address: string;
  phone: string;
  fax: string;
  home_visits: boolean;
}

export interface PersonInput {
  display_name: string;
  kana: string;
  profession?: string;
  contact_hours?: string;
}

export interface Ceremony {
  ceremony_id: string;
  options: unknown;
}

export interface Session {
  session_token: string;
  me: Me;
}

export interface InvitationInfo {
  kind: "staff" | "family" | "organisation";
  organisation_name: string | null;
  invited_by: string;
  display_name: string | null;
  expires_at: number;
}

export interface CreatedInvitation {
  invitation_id: string;
  token: string;
  url: string;
  expires_at: number;
  qr_svg: string;
}

export interface InvitationSummary {
  invitation_id: string;
  kind: "staff" | "family" | "organisation";
  display_name: string | null;
  timeline_id: string | null;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  used_by: string | null;
}

export interface DeviceSummary {
  device_id: string;
  name: string;
  created_at: number;
  revoked_at: number | null;
}

export interface PasskeySummary {
  passkey_id: string;
  created_at: number;
  last_used_at: number | null;
}

export interface DirectoryPerson {
  account_id: string;
  kind: AccountKind;
  display_name: string;
  kana: string;
  profession: string | null;
  organisation_id: string | null;
  organisation_name: string | null;
  org_type: string | null;
  area: string | null;
  role: Role;
  contact_hours: string;
  /** Set when the person has a face photo. */
  photo_url: string | null;
  /** In an organisation's staff list: when the person was removed. */
  removed_at?: number;
}

export interface DirectoryOrganisation {
  organisation_id: string;
  name: string;
  kana: string;
  type: string;
  area: string;
  address: string;
  phone: string;
  fax: string;
  home_visits: boolean;
  staff_count: number;
}

export interface AuditRow {
  seq: number;
  at: number;
  action: string;
  outcome: string;
  actor_account_id: string | null;
  actor_device_id: string | null;
  subject: string | null;
  detail: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", "network error");
  }
  return parse<T>(response);
}

async function parse<T>(response: Response): Promise<T> {
  const text = await response.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const err = (data ?? {}) as { code?: string; message?: string };
    throw new ApiError(response.status, err.code ?? `http_${response.status}`, err.message ?? response.statusText);
  }
  return data as T;
}

/** Builds a query string, leaving out empty values. */
function query(params: Record<string, string | boolean | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === "" || v === false) continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

export const api = {
  setupNeeded: () => request<{ needed: boolean }>("GET", "/v1/setup"),
  setupStart: (setup_token: string, organisation: OrgInput, person: PersonInput) =>
    request<Ceremony>("POST", "/v1/setup/start", { setup_token, organisation, person }),
  setupFinish: (ceremony_id: string, credential: unknown) =>
    request<Session>("POST", "/v1/setup/finish", { ceremony_id, credential }),

  invitations: () => request<InvitationSummary[]>("GET", "/v1/invitations"),
  invitation: (token: string) => request<InvitationInfo>("GET", `/v1/invitations/${encodeURIComponent(token)}`),
  /** `organisation`: required for an organisation invitation (the new organisation). */
  invitationStart: (token: string, person: PersonInput, organisation?: OrgInput) =>
    request<Ceremony>("POST", `/v1/invitations/${encodeURIComponent(token)}/start`, organisation ? { person, organisation } : { person }),
  invitationFinish: (token: string, ceremony_id: string, credential: unknown) =>
    request<Session>("POST", `/v1/invitations/${encodeURIComponent(token)}/finish`, { ceremony_id, credential }),
  createInvitation: (body: { kind: "staff" | "family" | "organisation"; display_name?: string; timeline_id?: string; expires_in_hours?: number }) =>
    request<CreatedInvitation>("POST", "/v1/invitations", body),

  loginStart: () => request<Ceremony>("POST", "/v1/login/start", {}),
  loginFinish: (ceremony_id: string, credential: unknown) =>
    request<Session>("POST", "/v1/login/finish", { ceremony_id, credential }),
  logout: () => request<unknown>("POST", "/v1/logout", {}),

  me: () => request<Me>("GET", "/v1/me"),
  updateMe: (fields: Partial<Pick<Me, "display_name" | "kana" | "profession" | "contact_hours">>) =>
    request<Me>("PATCH", "/v1/me", fields),
  async uploadPhoto(file: Blob): Promise<void> {
    let response: Response;
    try {
      response = await fetch("/v1/me/photo", {
        method: "PUT",
        credentials: "same-origin",
        headers: { "content-type": file.type || "application/octet-stream" },
        body: file,
      });
    } catch {
      throw new ApiError(0, "network", "network error");
    }
    await parse<unknown>(response);
  },
  photoUrl: (accountId: string, version?: number | string) =>
    `/v1/people/${encodeURIComponent(accountId)}/photo${version ? `?v=${version}` : ""}`,

  devices: () => request<DeviceSummary[]>("GET", "/v1/devices"),
  revokeDevice: (id: string) => request<unknown>("DELETE", `/v1/devices/${encodeURIComponent(id)}`),
  deviceCode: (account_id?: string) =>
    request<{ account_id: string; code: string; expires_at: number }>("POST", "/v1/devices/codes", account_id ? { account_id } : {}),
  passkeys: () => request<PasskeySummary[]>("GET", "/v1/passkeys"),
  passkeyStart: () => request<Ceremony>("POST", "/v1/passkeys/start", {}),
  passkeyFinish: (ceremony_id: string, credential: unknown) =>
    request<unknown>("POST", "/v1/passkeys/finish", { ceremony_id, credential }),

  directoryPeople: (p: { q?: string; profession?: string; org_type?: string; area?: string; home_visits?: boolean }) =>
    request<DirectoryPerson[]>("GET", `/v1/directory/people${query(p)}`),
  directoryOrganisations: (p: { q?: string; org_type?: string; area?: string; home_visits?: boolean }) =>
    request<DirectoryOrganisation[]>("GET", `/v1/directory/organisations${query(p)}`),

  staff: (orgId: string) =>
    request<DirectoryPerson[]>("GET", `/v1/organisations/${encodeURIComponent(orgId)}/staff`),
  removeStaff: (orgId: string, accountId: string) =>
    request<unknown>("DELETE", `/v1/organisations/${encodeURIComponent(orgId)}/staff/${encodeURIComponent(accountId)}`),
  createBot: (display_name: string) =>
    request<{ account_id: string; code: string; expires_at: number }>("POST", "/v1/bots", { display_name }),
  audit: () => request<AuditRow[]>("GET", "/v1/audit?format=json"),
  auditCsvUrl: () => "/v1/audit?format=csv",
};
