// Passkeys: turn webauthn-rs's JSON challenges (base64url strings) into the
// ArrayBuffers navigator.credentials wants, and the resulting credential back
// into the JSON webauthn-rs reads (RegisterPublicKeyCredential / PublicKeyCredential).

export function b64urlToBytes(value: string): Uint8Array<ArrayBuffer> {
  const b64 = value.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const bin = atob(padded);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function bytesToB64url(value: ArrayBuffer | ArrayBufferView): string {
  const bytes = value instanceof ArrayBuffer ? new Uint8Array(value) : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  let bin = "";
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

type Json = Record<string, unknown>;

function publicKeyOf(options: unknown): Json {
  const pk = (options as Json)?.publicKey;
  if (!pk || typeof pk !== "object") throw new Error("the server sent no publicKey options");
  return pk as Json;
}

function convertDescriptors(list: unknown): PublicKeyCredentialDescriptor[] | undefined {
  if (!Array.isArray(list)) return undefined;
  return list.map((d: Json) => ({
    type: "public-key",
    id: b64urlToBytes(String(d.id)),
    transports: d.transports as AuthenticatorTransport[] | undefined,
  }));
}

export function creationOptions(options: unknown): PublicKeyCredentialCreationOptions {
  const pk = publicKeyOf(options);
  const user = pk.user as Json;
  return {
    ...(pk as object),
    challenge: b64urlToBytes(String(pk.challenge)),
    user: { ...(user as object), id: b64urlToBytes(String(user.id)) } as unknown as PublicKeyCredentialUserEntity,
    excludeCredentials: convertDescriptors(pk.excludeCredentials),
  } as unknown as PublicKeyCredentialCreationOptions;
}

export function requestOptions(options: unknown): PublicKeyCredentialRequestOptions {
  const pk = publicKeyOf(options);
  return {
    ...(pk as object),
    challenge: b64urlToBytes(String(pk.challenge)),
    allowCredentials: convertDescriptors(pk.allowCredentials) ?? [],
  } as unknown as PublicKeyCredentialRequestOptions;
}

export class PasskeyError extends Error {
  constructor(
    readonly reason: "unsupported" | "cancelled" | "failed",
    message: string,
  ) {
    super(message);
  }
}

function ensureSupported(): void {
  if (!window.PublicKeyCredential || !navigator.credentials) {
    throw new PasskeyError("unsupported", "WebAuthn is not available");
  }
}

function wrap(e: unknown): PasskeyError {
  if (e instanceof PasskeyError) return e;
  const name = (e as { name?: string })?.name;
  if (name === "NotAllowedError" || name === "AbortError") return new PasskeyError("cancelled", String(e));
  return new PasskeyError("failed", String((e as Error)?.message ?? e));
}

/** Creates a passkey for the server's `CreationChallengeResponse`; returns `RegisterPublicKeyCredential` JSON. */
export async function createPasskey(options: unknown): Promise<Json> {
  ensureSupported();
  let cred: PublicKeyCredential;
  try {
    cred = (await navigator.credentials.create({ publicKey: creationOptions(options) })) as PublicKeyCredential;
  } catch (e) {
    throw wrap(e);
  }
  if (!cred) throw new PasskeyError("cancelled", "no credential");
  const response = cred.response as AuthenticatorAttestationResponse;
  return {
    id: cred.id,
    rawId: bytesToB64url(cred.rawId),
    type: cred.type,
    response: {
      attestationObject: bytesToB64url(response.attestationObject),
      clientDataJSON: bytesToB64url(response.clientDataJSON),
      transports: typeof response.getTransports === "function" ? response.getTransports() : undefined,
    },
    extensions: cred.getClientExtensionResults(),
  };
}

/** Signs the server's `RequestChallengeResponse` with a passkey; returns `PublicKeyCredential` JSON. */
export async function getPasskey(options: unknown): Promise<Json> {
  ensureSupported();
  let cred: PublicKeyCredential;
  try {
    cred = (await navigator.credentials.get({ publicKey: requestOptions(options) })) as PublicKeyCredential;
  } catch (e) {
    throw wrap(e);
  }
  if (!cred) throw new PasskeyError("cancelled", "no credential");
  const response = cred.response as AuthenticatorAssertionResponse;
  return {
    id: cred.id,
    rawId: bytesToB64url(cred.rawId),
    type: cred.type,
    response: {
      authenticatorData: bytesToB64url(response.authenticatorData),
      clientDataJSON: bytesToB64url(response.clientDataJSON),
      signature: bytesToB64url(response.signature),
      userHandle: response.userHandle ? bytesToB64url(response.userHandle) : null,
    },
    extensions: cred.getClientExtensionResults(),
  };
}
