//! SQL of the people area: organisations, accounts' profiles, passkeys,
//! WebAuthn ceremonies, sessions, invitations, family links, photos, the
//! first-run setup token and the directory. Logic lives in `crate::people`.

use sqlx::any::AnyRow;
use sqlx::AnyPool;
use sqlx::Row;

use super::{Db, Result, Tx};

/// An organisation to insert.
#[derive(Debug, Clone)]
pub struct NewOrganisation {
    pub id: String,
    pub name: String,
    pub kana: String,
    pub org_type: String,
    pub area: String,
    pub address: String,
    pub phone: String,
    pub fax: String,
    pub home_visits: bool,
    pub search_text: String,
}

/// An account to insert (a person registering with a passkey, or a bot).
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: String,
    pub kind: String,
    pub organisation_id: Option<String>,
    pub role: String,
    pub name: String,
    pub kana: String,
    pub profession: Option<String>,
    pub contact_hours: String,
    pub search_text: String,
}

/// A passkey to insert: credential id (base64url) and webauthn-rs's `Passkey` as JSON.
#[derive(Debug, Clone)]
pub struct NewPasskey {
    pub id: String,
    pub passkey: String,
}

/// A session to insert.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub token_hash: String,
}

/// An account with its organisation, as the people API shows it.
#[derive(Debug, Clone)]
pub struct Profile {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub kana: String,
    pub profession: Option<String>,
    pub organisation_id: Option<String>,
    pub organisation_name: Option<String>,
    pub org_type: Option<String>,
    pub area: Option<String>,
    pub role: String,
    pub contact_hours: String,
    pub has_photo: bool,
    pub removed_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub account_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Invitation {
    pub id: String,
    pub kind: String,
    pub organisation_id: Option<String>,
    pub organisation_name: Option<String>,
    pub timeline_id: Option<String>,
    pub display_name: Option<String>,
    pub invited_by: String,
    pub inviter_name: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub used_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OrganisationRow {
    pub id: String,
    pub name: String,
    pub kana: String,
    pub org_type: String,
    pub area: String,
    pub address: String,
    pub phone: String,
    pub fax: String,
    pub home_visits: bool,
    pub staff_count: i64,
}

#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Directory filters; every present one must match.
#[derive(Debug, Clone, Default)]
pub struct DirectoryFilter {
    /// Already folded with `search_fold`.
    pub text: Option<String>,
    pub profession: Option<String>,
    pub org_type: Option<String>,
    /// Substring of the organisation's area.
    pub area: Option<String>,
    pub home_visits: Option<bool>,
    pub organisation_id: Option<String>,
    pub limit: i64,
}

/// A bound value of a query built from optional filters.
enum Arg {
    Text(String),
    Int(i64),
}

/// A SELECT grown by optional `AND` conditions, each with one bound value
/// (`$?` in a condition becomes its placeholder number).
struct Filtered {
    sql: String,
    args: Vec<Arg>,
}

impl Filtered {
    fn new(select: String) -> Self {
        Filtered { sql: select, args: Vec::new() }
    }

    fn push(&mut self, cond: &str, arg: Arg) {
        self.args.push(arg);
        self.sql.push_str(&cond.replace("$?", &format!("${}", self.args.len())));
    }

    fn and_if(&mut self, cond: &str, arg: Option<Arg>) {
        if let Some(arg) = arg {
            self.push(cond, arg);
        }
    }

    /// The organisation filters (the joined organisations are `o`).
    fn organisation_filters(&mut self, f: &DirectoryFilter) {
        self.and_if(" AND o.org_type = $?", f.org_type.clone().map(Arg::Text));
        self.and_if(" AND o.area LIKE $? ESCAPE '\\'", f.area.as_deref().map(|a| Arg::Text(like_pattern(a))));
        self.and_if(" AND o.home_visits = $?", f.home_visits.map(|h| Arg::Int(h as i64)));
    }

    /// Ends with `order` and the filter's limit, and runs it.
    async fn fetch_all(mut self, pool: &AnyPool, order: &str, limit: i64) -> Result<Vec<AnyRow>> {
        self.push(&format!(" ORDER BY {order} LIMIT $?"), Arg::Int(limit));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.sql));
        for a in self.args {
            query = match a {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
            };
        }
        Ok(query.fetch_all(pool).await?)
    }
}

/// `%text%` for LIKE with `\` as the escape character.
fn like_pattern(text: &str) -> String {
    let mut out = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

const PROFILE_COLUMNS: &str = "a.id, a.kind, a.name, a.kana, a.profession, a.organisation_id, o.name, o.org_type, o.area, a.role, \
     a.contact_hours, (SELECT COUNT(*) FROM photos p WHERE p.account_id = a.id), a.removed_at";

fn profile_from_row(r: &AnyRow) -> Result<Profile> {
    let photos: i64 = r.try_get(11)?;
    Ok(Profile {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        name: r.try_get(2)?,
        kana: r.try_get(3)?,
        profession: r.try_get(4)?,
        organisation_id: r.try_get(5)?,
        organisation_name: r.try_get(6)?,
        org_type: r.try_get(7)?,
        area: r.try_get(8)?,
        role: r.try_get(9)?,
        contact_hours: r.try_get(10)?,
        has_photo: photos > 0,
        removed_at: r.try_get(12)?,
    })
}

const INVITATION_COLUMNS: &str = "i.id, i.kind, i.organisation_id, o.name, i.timeline_id, i.display_name, i.invited_by, a.name, \
     i.created_at, i.expires_at, i.used_at, i.used_by";

fn invitation_from_row(r: &AnyRow) -> Result<Invitation> {
    Ok(Invitation {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        organisation_id: r.try_get(2)?,
        organisation_name: r.try_get(3)?,
        timeline_id: r.try_get(4)?,
        display_name: r.try_get(5)?,
        invited_by: r.try_get(6)?,
        inviter_name: r.try_get(7)?,
        created_at: r.try_get(8)?,
        expires_at: r.try_get(9)?,
        used_at: r.try_get(10)?,
        used_by: r.try_get(11)?,
    })
}

impl Db {
    // ---- first run -------------------------------------------------------------

    pub async fn organisation_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM organisations").fetch_one(&self.read).await?.try_get(0)?)
    }

    /// Replace any unused setup token by a new one (only its hash).
    pub async fn replace_setup_token(&self, token_hash: &str, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM setup_tokens WHERE used_at IS NULL").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO setup_tokens (token_hash, created_at) VALUES ($1, $2)")
            .bind(token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the setup token is unused and no organisation exists yet.
    pub async fn setup_token_usable(&self, token_hash: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM setup_tokens WHERE token_hash = $1 AND used_at IS NULL AND NOT EXISTS (SELECT 1 FROM organisations)",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.is_some())
    }

    /// The first run's finish, in one transaction: use the setup token, create
    /// the organisation, its admin, their passkey and a session. `false` (and
    /// nothing stored) if the token is used or an organisation exists.
    pub async fn finish_setup(
        &self,
        token_hash: &str,
        org: &NewOrganisation,
        admin: &NewAccount,
        passkey: &NewPasskey,
        session: &NewSession,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let used = sqlx::query("UPDATE setup_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL RETURNING token_hash")
            .bind(now)
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let orgs: i64 = sqlx::query("SELECT COUNT(*) FROM organisations").fetch_one(&mut *tx).await?.try_get(0)?;
        if used.is_none() || orgs > 0 {
            return Ok(false);
        }
        Self::insert_organisation(&mut tx, org, now).await?;
        Self::insert_person(&mut tx, admin, now).await?;
        Self::insert_passkey(&mut tx, &admin.id, passkey, now).await?;
        Self::insert_session(&mut tx, &admin.id, session, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_organisation(tx: &mut Tx, org: &NewOrganisation, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO organisations (id, name, kana, org_type, area, address, phone, fax, home_visits, search_text, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(&org.kana)
        .bind(&org.org_type)
        .bind(&org.area)
        .bind(&org.address)
        .bind(&org.phone)
        .bind(&org.fax)
        .bind(org.home_visits as i64)
        .bind(&org.search_text)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn insert_person(tx: &mut Tx, a: &NewAccount, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO accounts (id, name, created_at, kind, organisation_id, role, kana, profession, contact_hours, search_text) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&a.id)
        .bind(&a.name)
        .bind(now)
        .bind(&a.kind)
        .bind(&a.organisation_id)
        .bind(&a.role)
        .bind(&a.kana)
        .bind(&a.profession)
        .bind(&a.contact_hours)
        .bind(&a.search_text)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn insert_passkey(tx: &mut Tx, account_id: &str, p: &NewPasskey, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO passkeys (id, account_id, passkey, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&p.id)
            .bind(account_id)
            .bind(&p.passkey)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn insert_session(tx: &mut Tx, account_id: &str, s: &NewSession, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO sessions (token_hash, id, account_id, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $4)")
            .bind(&s.token_hash)
            .bind(&s.id)
            .bind(account_id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A bot account of an organisation (no passkey; its devices enrol with codes).
    pub async fn create_bot(&self, bot: &NewAccount, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        Self::insert_person(&mut tx, bot, now).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- profiles ------------------------------------------------------------------

    pub async fn profile(&self, account_id: &str) -> Result<Option<Profile>> {
        let sql = format!("SELECT {PROFILE_COLUMNS} FROM accounts a LEFT JOIN organisations o ON o.id = a.organisation_id WHERE a.id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account_id).fetch_optional(&self.read).await?;
        row.map(|r| profile_from_row(&r)).transpose()
    }

    pub async fn update_profile(
        &self,
        account_id: &str,
        name: &str,
        kana: &str,
        profession: Option<&str>,
        contact_hours: &str,
        search_text: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE accounts SET name = $1, kana = $2, profession = $3, contact_hours = $4, search_text = $5 WHERE id = $6")
            .bind(name)
            .bind(kana)
            .bind(profession)
            .bind(contact_hours)
            .bind(search_text)
            .bind(account_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn set_photo(&self, account_id: &str, mime: &str, data: &[u8], now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO photos (account_id, mime, data, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id) DO UPDATE SET mime = excluded.mime, data = excluded.data, updated_at = excluded.updated_at",
        )
        .bind(account_id)
        .bind(mime)
        .bind(data)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn photo(&self, account_id: &str) -> Result<Option<(String, Vec<u8>)>> {
        let row = sqlx::query("SELECT mime, data FROM photos WHERE account_id = $1").bind(account_id).fetch_optional(&self.read).await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Mark a person removed from their organisation and end their sessions.
    /// Returns their devices that are not revoked yet.
    pub async fn remove_person(&self, account_id: &str, now: i64) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE accounts SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL")
            .bind(now)
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE sessions SET ended_at = $1 WHERE account_id = $2 AND ended_at IS NULL")
            .bind(now)
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT id FROM devices WHERE account_id = $1 AND revoked_at IS NULL ORDER BY id")
            .bind(account_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    // ---- passkeys ------------------------------------------------------------------

    /// (account id, passkey JSON) of a credential id.
    pub async fn passkey(&self, credential_id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT account_id, passkey FROM passkeys WHERE id = $1").bind(credential_id).fetch_optional(&self.read).await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Every passkey of an account: (credential id, passkey JSON, created, last used).
    pub async fn account_passkeys(&self, account_id: &str) -> Result<Vec<(String, String, i64, Option<i64>)>> {
        let rows = sqlx::query("SELECT id, passkey, created_at, last_used_at FROM passkeys WHERE account_id = $1 ORDER BY created_at, id")
            .bind(account_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
    }

    pub async fn add_passkey(&self, account_id: &str, passkey: &NewPasskey, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        Self::insert_passkey(&mut tx, account_id, passkey, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// After a login: store the passkey's new counter and open a session.
    pub async fn login(&self, account_id: &str, credential_id: &str, passkey: &str, session: &NewSession, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE passkeys SET passkey = $1, last_used_at = $2 WHERE id = $3")
            .bind(passkey)
            .bind(now)
            .bind(credential_id)
            .execute(&mut *tx)
            .await?;
        Self::insert_session(&mut tx, account_id, session, now).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- ceremonies ------------------------------------------------------------------

    pub async fn create_ceremony(&self, id: &str, purpose: &str, state: &str, context: &str, expires_at: i64, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        // Abandoned ceremonies go when new ones come.
        sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at < $1").bind(now).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO webauthn_ceremonies (id, purpose, state, context, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(purpose)
            .bind(state)
            .bind(context)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Take (delete and return) a ceremony's (state, context), if it exists,
    /// has this purpose and has not expired. A ceremony finishes at most once.
    pub async fn take_ceremony(&self, id: &str, purpose: &str, now: i64) -> Result<Option<(String, String)>> {
        let row = sqlx::query("DELETE FROM webauthn_ceremonies WHERE id = $1 AND purpose = $2 RETURNING state, context, expires_at")
            .bind(id)
            .bind(purpose)
            .fetch_optional(&self.write)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let expires_at: i64 = r.try_get(2)?;
        if expires_at < now {
            return Ok(None);
        }
        Ok(Some((r.try_get(0)?, r.try_get(1)?)))
    }

    // ---- sessions ------------------------------------------------------------------

    pub async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>> {
        let row = sqlx::query("SELECT id, account_id, created_at, last_seen_at, ended_at FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| {
            Ok(SessionRow {
                id: r.try_get(0)?,
                account_id: r.try_get(1)?,
                created_at: r.try_get(2)?,
                last_seen_at: r.try_get(3)?,
                ended_at: r.try_get(4)?,
            })
        })
        .transpose()
    }

    pub async fn touch_session(&self, token_hash: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE token_hash = $2 AND last_seen_at < $1")
            .bind(now)
            .bind(token_hash)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Forget sessions that began before `before` (past their lifetime).
    pub async fn purge_sessions(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE created_at < $1").bind(before).execute(&self.write).await?;
        Ok(done.rows_affected())
    }

    pub async fn end_session(&self, token_hash: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET ended_at = $1 WHERE token_hash = $2 AND ended_at IS NULL")
            .bind(now)
            .bind(token_hash)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    // ---- invitations ------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub async fn create_invitation(
        &self,
        id: &str,
        token_hash: &str,
        kind: &str,
        organisation_id: Option<&str>,
        timeline_id: Option<&str>,
        display_name: Option<&str>,
        invited_by: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO invitations (id, token_hash, kind, organisation_id, timeline_id, display_name, invited_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(token_hash)
        .bind(kind)
        .bind(organisation_id)
        .bind(timeline_id)
        .bind(display_name)
        .bind(invited_by)
        .bind(now)
        .bind(expires_at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn invitation_by_token(&self, token_hash: &str) -> Result<Option<Invitation>> {
        let sql = format!(
            "SELECT {INVITATION_COLUMNS} FROM invitations i JOIN accounts a ON a.id = i.invited_by \
             LEFT JOIN organisations o ON o.id = i.organisation_id WHERE i.token_hash = $1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(token_hash).fetch_optional(&self.read).await?;
        row.map(|r| invitation_from_row(&r)).transpose()
    }

    pub async fn invitations_by(&self, account_id: &str) -> Result<Vec<Invitation>> {
        let sql = format!(
            "SELECT {INVITATION_COLUMNS} FROM invitations i JOIN accounts a ON a.id = i.invited_by \
             LEFT JOIN organisations o ON o.id = i.organisation_id WHERE i.invited_by = $1 ORDER BY i.created_at DESC, i.id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account_id).fetch_all(&self.read).await?;
        rows.iter().map(invitation_from_row).collect()
    }

    /// Use an invitation and create the invitee's organisation (for an
    /// organisation invitation), account, passkey, family link and session in
    /// one transaction. `false` (nothing stored) if the
    /// invitation was used meanwhile or has expired.
    pub async fn finish_invitation(
        &self,
        invitation_id: &str,
        account: &NewAccount,
        passkey: &NewPasskey,
        new_organisation: Option<&NewOrganisation>,
        family_link: Option<(&str, &str)>,
        session: &NewSession,
        now: i64,
    ) -> Result<bool> {
        // The account first: `used_by` refers to it.
        let mut tx = self.begin().await?;
        if let Some(org) = new_organisation {
            Self::insert_organisation(&mut tx, org, now).await?;
        }
        Self::insert_person(&mut tx, account, now).await?;
        let used = sqlx::query(
            "UPDATE invitations SET used_at = $1, used_by = $2 WHERE id = $3 AND used_at IS NULL AND expires_at > $1 RETURNING id",
        )
        .bind(now)
        .bind(&account.id)
        .bind(invitation_id)
        .fetch_optional(&mut *tx)
        .await?;
        if used.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        Self::insert_passkey(&mut tx, &account.id, passkey, now).await?;
        if let Some((timeline_id, invited_by)) = family_link {
            sqlx::query("INSERT INTO family_links (account_id, timeline_id, invited_by, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&account.id)
                .bind(timeline_id)
                .bind(invited_by)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        Self::insert_session(&mut tx, &account.id, session, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- devices ------------------------------------------------------------------

    /// Register a device for an account that is logged in (no enrolment code).
    pub async fn register_device(&self, device_id: &str, account_id: &str, name: &str, signature_key: &[u8], token_hash: &str, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO devices (id, account_id, name, signature_key, token_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(device_id)
            .bind(account_id)
            .bind(name)
            .bind(signature_key)
            .bind(token_hash)
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn account_devices(&self, account_id: &str) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query("SELECT id, name, created_at, revoked_at FROM devices WHERE account_id = $1 ORDER BY created_at, id")
            .bind(account_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(DeviceRow { id: r.try_get(0)?, name: r.try_get(1)?, created_at: r.try_get(2)?, revoked_at: r.try_get(3)? }))
            .collect()
    }

    // ---- visibility ------------------------------------------------------------------

    /// Timelines a family account was invited to.
    pub async fn family_timelines(&self, account_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT timeline_id FROM family_links WHERE account_id = $1 ORDER BY timeline_id")
            .bind(account_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// The accounts (with active devices) that `viewer` may see in
    /// `list_accounts`. Professionals and bots see every professional and bot
    /// not removed, plus the family accounts invited to a timeline they are
    /// in; a family account sees itself, the members of the timelines it was
    /// invited to and the other family accounts invited there.
    pub async fn accounts_visible_to(&self, viewer: &str) -> Result<Vec<(String, String, Vec<String>)>> {
        let sql = format!(
            "SELECT a.id, a.name, d.id FROM accounts a LEFT JOIN devices d ON d.account_id = a.id AND d.revoked_at IS NULL \
             WHERE {} ORDER BY a.name, a.id, d.id",
            self.visibility(viewer).await?
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(viewer).fetch_all(&self.read).await?;
        let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
        for r in rows {
            let (id, name, device): (String, String, Option<String>) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            match out.last_mut() {
                Some(last) if last.0 == id => last.2.extend(device),
                _ => out.push((id, name, device.into_iter().collect())),
            }
        }
        Ok(out)
    }

    /// Whether `viewer` may see (and so claim key packages of) `account_id`.
    pub async fn account_visible_to(&self, viewer: &str, account_id: &str) -> Result<bool> {
        let sql = format!("SELECT 1 FROM accounts a WHERE a.id = $2 AND {}", self.visibility(viewer).await?);
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(viewer).bind(account_id).fetch_optional(&self.read).await?.is_some())
    }

    /// The condition on `accounts a` of what viewer `$1` may see.
    async fn visibility(&self, viewer: &str) -> Result<&'static str> {
        let kind: Option<String> =
            sqlx::query("SELECT kind FROM accounts WHERE id = $1").bind(viewer).fetch_optional(&self.read).await?.map(|r| r.try_get(0)).transpose()?;
        Ok(if kind.as_deref() == Some("family") {
            "a.removed_at IS NULL AND (a.id = $1 \
               OR a.id IN (SELECT md.account_id FROM family_links fl JOIN memberships m ON m.timeline_id = fl.timeline_id AND m.left_seq IS NULL \
                           JOIN devices md ON md.id = m.device_id WHERE fl.account_id = $1) \
               OR a.id IN (SELECT f2.account_id FROM family_links fl JOIN family_links f2 ON f2.timeline_id = fl.timeline_id WHERE fl.account_id = $1))"
        } else {
            "a.removed_at IS NULL AND (a.kind <> 'family' \
               OR a.id IN (SELECT fl.account_id FROM family_links fl JOIN memberships m ON m.timeline_id = fl.timeline_id AND m.left_seq IS NULL \
                           JOIN devices md ON md.id = m.device_id WHERE md.account_id = $1))"
        })
    }

    // ---- directory ------------------------------------------------------------------

    /// Professionals (not removed) matching the filter, by kana then name.
    pub async fn search_people(&self, f: &DirectoryFilter) -> Result<Vec<Profile>> {
        let mut q = Filtered::new(format!(
            "SELECT {PROFILE_COLUMNS} FROM accounts a LEFT JOIN organisations o ON o.id = a.organisation_id \
             WHERE a.kind = 'professional' AND a.removed_at IS NULL"
        ));
        q.and_if(" AND a.search_text LIKE $? ESCAPE '\\'", f.text.as_deref().map(|t| Arg::Text(like_pattern(t))));
        q.and_if(" AND a.profession = $?", f.profession.clone().map(Arg::Text));
        q.organisation_filters(f);
        q.and_if(" AND a.organisation_id = $?", f.organisation_id.clone().map(Arg::Text));
        let rows = q.fetch_all(&self.read, "a.kana, a.name, a.id", f.limit).await?;
        rows.iter().map(profile_from_row).collect()
    }

    /// An organisation's people (admins see removed ones too).
    pub async fn staff(&self, organisation_id: &str) -> Result<Vec<Profile>> {
        let sql = format!(
            "SELECT {PROFILE_COLUMNS} FROM accounts a LEFT JOIN organisations o ON o.id = a.organisation_id \
             WHERE a.organisation_id = $1 ORDER BY a.removed_at IS NOT NULL, a.kana, a.name, a.id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(organisation_id).fetch_all(&self.read).await?;
        rows.iter().map(profile_from_row).collect()
    }

    pub async fn search_organisations(&self, f: &DirectoryFilter) -> Result<Vec<OrganisationRow>> {
        let mut q = Filtered::new(
            "SELECT o.id, o.name, o.kana, o.org_type, o.area, o.address, o.phone, o.fax, o.home_visits, \
             (SELECT COUNT(*) FROM accounts a WHERE a.organisation_id = o.id AND a.kind = 'professional' AND a.removed_at IS NULL) \
             FROM organisations o WHERE 1 = 1"
                .to_owned(),
        );
        q.and_if(" AND o.search_text LIKE $? ESCAPE '\\'", f.text.as_deref().map(|t| Arg::Text(like_pattern(t))));
        q.organisation_filters(f);
        let rows = q.fetch_all(&self.read, "o.kana, o.name, o.id", f.limit).await?;
        rows.iter()
            .map(|r| {
                let home: i64 = r.try_get(8)?;
                Ok(OrganisationRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    kana: r.try_get(2)?,
                    org_type: r.try_get(3)?,
                    area: r.try_get(4)?,
                    address: r.try_get(5)?,
                    phone: r.try_get(6)?,
                    fax: r.try_get(7)?,
                    home_visits: home != 0,
                    staff_count: r.try_get(9)?,
                })
            })
            .collect()
    }
}
