//! People in tests: a software passkey that behaves like a discoverable
//! (resident-key) authenticator, and a "browser" — an HTTP client that keeps
//! the session cookie — that sets up, registers and logs in through the
//! server's people API.
//!
//! The passkey is webauthn-authenticator-rs's `SoftPasskey` (real P-256 keys,
//! real signatures, real clientDataJSON for the given origin). `SoftPasskey`
//! cannot store resident keys, so [`Passkey`] keeps what a resident-key
//! authenticator keeps: for each credential, the user handle it was created
//! for; it offers every credential when the server asks for a discoverable
//! one and returns the user handle with the assertion.

use std::collections::HashMap;

use serde_json::{json, Value};
use webauthn_authenticator_rs::error::WebauthnCError;
use webauthn_authenticator_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::{AuthenticatorBackend, WebauthnAuthenticator};
use webauthn_rs_proto::{
    AllowCredentials, PublicKeyCredential, PublicKeyCredentialCreationOptions, PublicKeyCredentialRequestOptions,
    RegisterPublicKeyCredential,
};

use super::TestServer;

/// A software passkey with resident-key behaviour (see the module docs).
pub struct Passkey {
    inner: SoftPasskey,
    /// credential id -> user handle.
    users: HashMap<Vec<u8>, Vec<u8>>,
}

impl Default for Passkey {
    fn default() -> Self {
        // `true`: the soft token claims user verification (a real passkey
        // asks for a PIN or biometrics); the server requires it.
        Passkey { inner: SoftPasskey::new(true), users: HashMap::new() }
    }
}

impl AuthenticatorBackend for Passkey {
    fn perform_register(
        &mut self,
        origin: Url,
        mut options: PublicKeyCredentialCreationOptions,
        timeout_ms: u32,
    ) -> Result<RegisterPublicKeyCredential, WebauthnCError> {
        let user = options.user.id.clone();
        // Residence is what this wrapper adds; the soft token refuses the flag.
        if let Some(sel) = options.authenticator_selection.as_mut() {
            sel.require_resident_key = false;
            sel.resident_key = None;
        }
        let credential = self.inner.perform_register(origin, options, timeout_ms)?;
        self.users.insert(credential.raw_id.to_vec(), user);
        Ok(credential)
    }

    fn perform_auth(
        &mut self,
        origin: Url,
        mut options: PublicKeyCredentialRequestOptions,
        timeout_ms: u32,
    ) -> Result<PublicKeyCredential, WebauthnCError> {
        if options.allow_credentials.is_empty() {
            options.allow_credentials =
                self.users.keys().map(|id| AllowCredentials { type_: "public-key".into(), id: id.clone(), transports: None }).collect();
        }
        let mut credential = self.inner.perform_auth(origin, options, timeout_ms)?;
        credential.response.user_handle = self.users.get(&credential.raw_id).cloned();
        Ok(credential)
    }
}

impl Passkey {
    /// Answer a server's creation options (`{publicKey: …}`) as a browser at `origin`.
    pub fn register(&mut self, origin: &str, options: &Value) -> Result<Value, WebauthnCError> {
        let ccr: CreationChallengeResponse = serde_json::from_value(options.clone()).expect("creation options parse");
        let cred = self.do_registration(Url::parse(origin).unwrap(), ccr)?;
        Ok(serde_json::to_value(cred).unwrap())
    }

    /// Answer a server's request options as a browser at `origin`.
    pub fn assert(&mut self, origin: &str, options: &Value) -> Result<Value, WebauthnCError> {
        let rcr: RequestChallengeResponse = serde_json::from_value(options.clone()).expect("request options parse");
        let cred = self.do_authentication(Url::parse(origin).unwrap(), rcr)?;
        Ok(serde_json::to_value(cred).unwrap())
    }
}

/// An HTTP answer: status, body as JSON (or `Value::String` if not JSON), headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub set_cookie: Vec<String>,
}

impl Answer {
    /// The `code` of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn ok(self) -> Value {
        assert!((200..300).contains(&self.status), "expected success, got {}: {}", self.status, self.body);
        self.body
    }

    #[track_caller]
    pub fn refused(self, status: u16, code: &str) -> Answer {
        assert_eq!((self.status, self.code()), (status, code), "unexpected answer: {}", self.body);
        assert!(!self.body["message"].as_str().unwrap_or("").is_empty(), "an error needs a message: {}", self.body);
        self
    }
}

/// A browser: keeps the `tsunagu_session` cookie like a browser would (the
/// server's `Secure` cookie is accepted for http://localhost, as browsers do)
/// and owns a passkey. `origin` is the page the passkey operations happen on.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    pub origin: String,
    pub cookie: Option<String>,
    pub passkey: Passkey,
}

impl Browser {
    pub fn new(server: &TestServer) -> Browser {
        Browser {
            http: reqwest::Client::new(),
            base: server.url().to_owned(),
            origin: server.public_url(),
            cookie: None,
            passkey: Passkey::default(),
        }
    }

    pub async fn request(&mut self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", format!("tsunagu_session={c}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        self.answer(resp).await
    }

    pub async fn put_bytes(&mut self, path: &str, content_type: &str, bytes: Vec<u8>) -> Answer {
        let mut req = self.http.put(format!("{}{path}", self.base)).header("Content-Type", content_type).body(bytes);
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", format!("tsunagu_session={c}"));
        }
        let resp = req.send().await.unwrap();
        self.answer(resp).await
    }

    /// GET returning raw bytes and the content type.
    pub async fn get_bytes(&mut self, path: &str) -> (u16, String, Vec<u8>) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", format!("tsunagu_session={c}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        (status, ct, resp.bytes().await.unwrap().to_vec())
    }

    async fn answer(&mut self, resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let set_cookie: Vec<String> =
            resp.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
        for c in &set_cookie {
            if let Some(rest) = c.strip_prefix("tsunagu_session=") {
                let value = rest.split(';').next().unwrap_or("").to_owned();
                self.cookie = if value.is_empty() || c.contains("Max-Age=0") { None } else { Some(value) };
            }
        }
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body, set_cookie }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.request("GET", path, None).await
    }

    pub async fn post(&mut self, path: &str, body: Value) -> Answer {
        self.request("POST", path, Some(body)).await
    }

    /// First-run setup with the link's token: creates the organisation and
    /// this browser's person as its admin (registers the passkey, logs in).
    pub async fn setup(&mut self, setup_token: &str, organisation: Value, person: Value) -> Value {
        let start = self.post("/v1/setup/start", json!({"setup_token": setup_token, "organisation": organisation, "person": person})).await.ok();
        let credential = self.passkey.register(&self.origin.clone(), &start["options"]).expect("passkey registration");
        self.post("/v1/setup/finish", json!({"ceremony_id": start["ceremony_id"], "credential": credential})).await.ok()
    }

    /// Register with an invitation token; returns the session answer.
    pub async fn accept_invitation(&mut self, token: &str, person: Value) -> Answer {
        let start = self.post(&format!("/v1/invitations/{token}/start"), json!({"person": person})).await;
        if start.status != 200 {
            return start;
        }
        let credential = self.passkey.register(&self.origin.clone(), &start.body["options"]).expect("passkey registration");
        self.post(&format!("/v1/invitations/{token}/finish"), json!({"ceremony_id": start.body["ceremony_id"], "credential": credential})).await
    }

    /// Log in with this browser's passkey (discoverable credential).
    pub async fn login(&mut self) -> Answer {
        let start = self.post("/v1/login/start", json!({})).await.ok();
        let credential = self.passkey.assert(&self.origin.clone(), &start["options"]).expect("passkey assertion");
        self.post("/v1/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": credential})).await
    }
}

/// `tsunagu setup link: URL/#/setup/TOKEN` -> TOKEN.
pub fn setup_token(link: &str) -> String {
    link.rsplit("/#/setup/").next().expect("a setup link").to_owned()
}

pub fn organisation(name: &str, kana: &str, org_type: &str, area: &str, home_visits: bool) -> Value {
    json!({"name": name, "kana": kana, "type": org_type, "area": area, "address": "", "phone": "03-0000-0000", "fax": "", "home_visits": home_visits})
}

pub fn person(name: &str, kana: &str, profession: Option<&str>, contact_hours: &str) -> Value {
    let mut p = json!({"display_name": name, "kana": kana, "contact_hours": contact_hours});
    if let Some(pr) = profession {
        p["profession"] = json!(pr);
    }
    p
}

/// A server after first-run setup: the admin's browser (logged in) and the
/// organisation id.
pub async fn set_up(server: &TestServer) -> (Browser, String) {
    let token = setup_token(&server.setup_link().await);
    let mut admin = Browser::new(server);
    let session = admin
        .setup(
            &token,
            organisation("大塚在宅クリニック", "おおつかざいたくくりにっく", "clinic", "大塚", true),
            person("佐藤 一郎", "さとう いちろう", Some("doctor"), "火曜 13:00-14:00 (ケアマネタイム)"),
        )
        .await;
    let org = session["me"]["organisation_id"].as_str().expect("organisation id").to_owned();
    (admin, org)
}

/// Invite and register a staff member of the admin's organisation.
pub async fn invite_staff(server: &TestServer, admin: &mut Browser, name: &str, kana: &str, profession: &str) -> (Browser, Value) {
    let inv = admin.post("/v1/invitations", json!({"kind": "staff", "display_name": name})).await.ok();
    let mut browser = Browser::new(server);
    let session = browser.accept_invitation(inv["token"].as_str().unwrap(), person(name, kana, Some(profession), "")).await.ok();
    (browser, session)
}
