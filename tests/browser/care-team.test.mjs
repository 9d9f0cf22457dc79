// The care team in a real browser: the first-run setup makes the clinic and
// its admin (a doctor) with a passkey; the admin invites a nurse; the doctor
// opens a patient's timeline, invites a family member by link and adds them,
// and posts; the family member (another browser context) reads it and has
// no way to post; reloads keep everything; Japanese and English both render.
// Screenshots of the main screens go to target/screenshots/.
import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import { SCREENSHOTS, accessibilityProblems, apiFrom, launchBrowser, personContext, screenshot, startServer } from "./harness.mjs";

let server;
let browser;
let doctor; // also the clinic's admin; Japanese browser, 10-inch tablet
let family; // English browser, phone
let nurse;
let timelineId;
let familyAccountId;

const TIMEOUT = 20_000;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  doctor = await personContext(browser, { locale: "ja-JP", viewport: { width: 1280, height: 800 } });
  family = await personContext(browser, { locale: "en-US", viewport: { width: 390, height: 844 } });
  nurse = await personContext(browser, { locale: "ja-JP", viewport: { width: 800, height: 1280 } });
});

// A failed offline test must not leave a person offline for the next ones.
afterEach(async () => {
  for (const p of [doctor, family, nurse]) await p?.context.setOffline(false);
});

after(async () => {
  for (const p of [doctor, family, nurse]) {
    if (p?.errors.length) console.error("page errors:", p.errors);
  }
  await browser?.close();
  await server?.stop();
});

/** Open the timeline with the engine's test handle (`window.__tsunaguEngine`)
 * turned on, online; `closeTestHooks(page)` turns it off again. */
async function openWithTestHooks(page, id) {
  await page.evaluate(() => localStorage.setItem("tsunagu.testHooks", "1"));
  await page.goto(`${server.url}/#/t/${encodeURIComponent(id)}`);
  await page.reload();
  await page.waitForFunction(() => window.__tsunaguEngine?.status() === "online", null, { timeout: TIMEOUT });
}

async function closeTestHooks(page) {
  await page.evaluate(() => localStorage.removeItem("tsunagu.testHooks"));
}

async function registerFromInvitation(person, url, { name, kana, profession }) {
  const { page } = person;
  await page.goto(url);
  await page.waitForSelector('[data-testid="invite-form"]', { timeout: TIMEOUT });
  await page.fill('input[name="display_name"]', name);
  if (kana) await page.fill('input[name="kana"]', kana);
  if (profession) await page.selectOption('select[name="profession"]', profession);
  if (person === family) {
    await screenshot(page, "09-invitation-family-phone");
    assert.deepEqual(await accessibilityProblems(page), []);
  }
  await page.click('[data-testid="invite-form"] button[type="submit"]');
  await page.waitForSelector('main[data-screen="timelines"]', { timeout: TIMEOUT });
}

test("first-run setup creates the clinic and its admin, who registers a passkey", async (t) => {
  const { page } = doctor;
  const t0 = Date.now();
  await page.goto(server.setupUrl);
  await page.waitForSelector('[data-testid="setup-form"]', { timeout: TIMEOUT });
  t.diagnostic(`figure: first visit to a usable setup screen (cold cache, localhost): ${Date.now() - t0} ms`);
  // A Japanese browser gets Japanese by default.
  assert.equal(await page.getAttribute("html", "lang"), "ja");
  assert.match(await page.textContent("h1"), /はじめての設定/);
  await page.fill('input[name="org_name"]', "つなぐ在宅クリニック");
  await page.selectOption('select[name="org_type"]', "clinic");
  await page.fill('input[name="area"]', "文京区");
  await page.check('input[name="home_visits"]');
  await page.fill('input[name="display_name"]', "山田 太郎");
  await page.fill('input[name="kana"]', "やまだ たろう");
  await page.selectOption('select[name="profession"]', "doctor");
  await page.fill('input[name="contact_hours"]', "ケアマネタイム 火曜 13:00〜14:00");
  await screenshot(page, "01-setup");
  assert.deepEqual(await accessibilityProblems(page), []);
  const t1 = Date.now();
  await page.click('[data-testid="setup-form"] button[type="submit"]');
  await page.waitForSelector('[data-testid="timeline-list"]', { timeout: TIMEOUT });
  t.diagnostic(`figure: setup submit to the timeline list (passkey, wasm load, device registration): ${Date.now() - t1} ms`);
  assert.equal((await doctor.credentials()).length, 1, "one passkey in the authenticator");
  assert.ok(await page.isVisible('[data-testid="photo-hint"]'), "a professional without a photo is asked for one");
  const me = await apiFrom(page, "GET", "/v1/me");
  assert.equal(me.status, 200);
  assert.equal(me.body.role, "admin");
  assert.equal(me.body.kind, "professional");
  assert.equal(me.body.display_name, "山田 太郎");
  const again = await apiFrom(page, "GET", "/v1/setup");
  assert.equal(again.body.needed, false, "the setup link is used up");
});

test("the admin invites a nurse by link and QR code; the nurse registers, logs out and logs in with her passkey", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/admin`);
  await page.waitForSelector('[data-testid="staff-invite-form"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="staff-invite-form"] input[name="display_name"]', "佐藤 花子");
  await page.click('[data-testid="staff-invite-form"] button[type="submit"]');
  await page.waitForSelector('[data-testid="invitation-url"]', { timeout: TIMEOUT });
  const url = await page.inputValue('[data-testid="invitation-url"]');
  assert.match(url, /#\/invite\//);
  assert.ok(await page.isVisible('img.qr'), "the invitation's QR code is shown");
  await screenshot(page, "02-admin-invitation");

  await registerFromInvitation(nurse, url, { name: "佐藤 花子", kana: "さとう はなこ", profession: "nurse" });
  const { page: np } = nurse;
  assert.equal((await apiFrom(np, "GET", "/v1/me")).body.profession, "nurse");

  // The admin's staff list now has the nurse.
  await page.reload();
  await page.waitForSelector('[data-testid="staff-list"] li', { timeout: TIMEOUT });
  assert.match(await page.textContent('[data-testid="staff-list"]'), /佐藤 花子/);

  // The browser registered itself as the nurse's device and keeps its state in IndexedDB.
  await np.waitForFunction(async () => (await indexedDB.databases()).some((d) => d.name === "tsunagu"), null, { timeout: TIMEOUT });
  // Logout wipes this browser's local data, then login with the passkey
  // saved in the authenticator.
  // (A timeline name this browser would keep beside the engine.)
  await np.evaluate(() => localStorage.setItem("tsunagu.timelineTitles", JSON.stringify({ x: "患者名" })));
  await np.click('button:has-text("ログアウト")');
  await np.waitForSelector('[data-testid="login-form"]', { timeout: TIMEOUT });
  assert.equal(await np.evaluate(async () => (await indexedDB.databases()).some((d) => d.name === "tsunagu")), false, "local data wiped");
  assert.deepEqual(await np.evaluate(() => Object.keys(localStorage).filter((k) => k !== "tsunagu.lang" && k !== "tsunagu.largeType")), [], "nothing personal left in localStorage");
  await screenshot(np, "03-login");
  assert.deepEqual(await accessibilityProblems(np), []);
  await np.click('[data-testid="login-form"] button[type="submit"]');
  await np.waitForSelector('main[data-screen="timelines"]', { timeout: TIMEOUT });
  assert.equal((await apiFrom(np, "GET", "/v1/me")).body.display_name, "佐藤 花子");
});

test("the directory finds the nurse by kana and by profession", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/directory`);
  await page.waitForSelector('form[role="search"]', { timeout: TIMEOUT });
  await page.fill('form[role="search"] input[name="q"]', "さとう");
  await page.click('form[role="search"] button[type="submit"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="directory-people"]')?.textContent?.includes("佐藤 花子"), null, { timeout: TIMEOUT });
  await page.fill('form[role="search"] input[name="q"]', "");
  await page.selectOption('form[role="search"] select[name="profession"]', "doctor");
  await page.click('form[role="search"] button[type="submit"]');
  await page.waitForFunction(
    () => {
      const t = document.querySelector('[data-testid="directory-people"]')?.textContent ?? "";
      return t.includes("山田 太郎") && !t.includes("佐藤 花子");
    },
    null,
    { timeout: TIMEOUT },
  );
  // Organisations by type and home visits.
  await page.selectOption('form[role="search"] select[name="profession"]', "");
  await page.selectOption('form[role="search"] select[name="org_type"]', "clinic");
  await page.check('form[role="search"] input[name="home_visits"]');
  await page.click('form[role="search"] button[type="submit"]');
  await page.locator('[data-testid="org-card"]', { hasText: "つなぐ在宅クリニック" }).waitFor({ timeout: TIMEOUT });
  await page.selectOption('form[role="search"] select[name="org_type"]', "pharmacy");
  await page.click('form[role="search"] button[type="submit"]');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="org-card"]').length === 0, null, { timeout: TIMEOUT });
  await page.selectOption('form[role="search"] select[name="org_type"]', "");
  await page.uncheck('form[role="search"] input[name="home_visits"]');
  await page.click('form[role="search"] button[type="submit"]');
  await page.locator('[data-testid="org-card"]').first().waitFor({ timeout: TIMEOUT });
  await screenshot(page, "04-directory");
});

// A 2x2 PNG (a face photo stand-in).
const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEElEQVR4nGNocFAAIgYIBQAaDgOBnA45xwAAAABJRU5ErkJggg==",
  "base64",
);

test("the doctor uploads a face photo, which the directory shows", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/me`);
  await page.waitForSelector('[data-testid="profile-form"]', { timeout: TIMEOUT });
  await page.setInputFiles('input[name="photo"]', { name: "face.png", mimeType: "image/png", buffer: PNG });
  await page.click('.photo-row button[type="submit"]');
  await page.waitForSelector(".photo-slot img.avatar", { timeout: TIMEOUT });
  assert.equal((await apiFrom(page, "GET", "/v1/me")).body.has_photo, true);
  await page.goto(`${server.url}/#/`);
  await page.waitForSelector('[data-testid="timeline-list"]', { timeout: TIMEOUT });
  assert.equal(await page.locator('[data-testid="photo-hint"]').count(), 0);
  await page.goto(`${server.url}/#/me`);
  await page.waitForSelector(".photo-slot img.avatar", { timeout: TIMEOUT });
  await screenshot(page, "05-profile");
  await page.goto(`${server.url}/#/directory`);
  const card = page.locator('[data-testid="person-card"]', { hasText: "山田 太郎" });
  await card.waitFor({ timeout: TIMEOUT });
  await card.locator("img.avatar").waitFor({ timeout: TIMEOUT });
  await page.waitForFunction(
    () => [...document.querySelectorAll('[data-testid="person-card"] img.avatar')].some((img) => img.complete && img.naturalWidth > 0),
    null,
    { timeout: TIMEOUT },
  );
});

test("device management: a one-time code for a command-line device, and a second passkey", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/devices`);
  await page.waitForSelector('[data-testid="device-list"]', { timeout: TIMEOUT });
  await page.click('button:has-text("コードを発行")');
  await page.waitForSelector('[data-testid="device-code"]', { timeout: TIMEOUT });
  assert.ok((await page.inputValue('[data-testid="device-code"]')).length >= 6);
  // A second passkey lives on another authenticator (a security key, say):
  // the server excludes the first one's credential.
  await doctor.addAuthenticator();
  await page.click('button:has-text("別のパスキーを追加")');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="passkey-list"] li').length === 2, null, { timeout: TIMEOUT });
  await screenshot(page, "06-devices");
});

test("the doctor opens a patient's timeline, records the consent, and invites a family member, who registers", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/new`);
  await page.waitForSelector('[data-testid="create-timeline-form"]', { timeout: TIMEOUT });
  // The patient (encrypted in the timeline; the server never sees it).
  await page.fill('input[name="patient_name"]', "田中 一郎");
  await page.fill('input[name="patient_kana"]', "たなか いちろう");
  await page.fill('input[name="patient_birth_date"]', "1941-03-02");
  await page.fill('[data-testid="create-timeline-form"] input[name="title"]', "田中 一郎 様");
  await screenshot(page, "07a-create-patient-timeline");
  await page.click('[data-testid="create-timeline-form"] button[type="submit"]');
  await page.waitForURL(/#\/t\/[^/]+\/members$/, { timeout: TIMEOUT });
  timelineId = decodeURIComponent(page.url().match(/#\/t\/([^/]+)\/members$/)[1]);
  await page.locator('[data-testid="patient-line"]', { hasText: "たなか いちろう" }).waitFor({ timeout: TIMEOUT });
  assert.match(await page.textContent('[data-testid="patient-line"]'), /1941-03-02/);
  await page.locator('[data-testid="member-me"] [data-role="owner"]').waitFor({ timeout: TIMEOUT });

  // No family invitation before the patient's consent is recorded.
  assert.equal(await page.locator('[data-testid="family-invite-form"]').count(), 0);
  assert.ok(await page.isVisible('[data-testid="family-needs-consent"]'));
  await page.fill('[data-testid="consent-form"] input[name="given_by"]', "田中 一郎（本人）");
  await page.selectOption('[data-testid="consent-form"] select[name="method"]', "written");
  await screenshot(page, "07b-consent-form");
  assert.deepEqual(await accessibilityProblems(page), []);
  await page.click('[data-testid="consent-form"] button[type="submit"]');
  await page.waitForSelector('[data-testid="consent-done"]', { timeout: TIMEOUT });
  await page.waitForSelector('[data-testid="family-invite-form"]', { timeout: TIMEOUT });
  // The consent is a record in the timeline.
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.locator('[data-testid="consent-record"]', { hasText: "田中 一郎（本人）" }).waitFor({ timeout: TIMEOUT });
  assert.match(await page.textContent('[data-testid="consent-record"]'), /書面/);
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}/members`);
  await page.waitForSelector('[data-testid="family-invite-form"]', { timeout: TIMEOUT });

  await page.fill('[data-testid="family-invite-form"] input[name="family_name"]', "Hanako Tanaka");
  await page.click('[data-testid="family-invite-form"] button[type="submit"]');
  await page.waitForSelector('[data-testid="invitation-url"]', { timeout: TIMEOUT });
  const url = await page.inputValue('[data-testid="invitation-url"]');
  await screenshot(page, "07-members-family-invitation");

  await registerFromInvitation(family, url, { name: "Hanako Tanaka" });
  const me = await apiFrom(family.page, "GET", "/v1/me");
  assert.equal(me.body.kind, "family");
  familyAccountId = me.body.account_id;
  // An English browser gets English by default.
  assert.equal(await family.page.getAttribute("html", "lang"), "en");
  assert.match(await family.page.textContent("main h1"), /Timelines/);
});

test("the doctor adds the family member and posts; the family member reads it and has no composer", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}/members`);
  await page.reload();
  const addable = page.locator('[data-testid="addable"] li', { hasText: "Hanako Tanaka" });
  await addable.waitFor({ timeout: TIMEOUT });
  await addable.locator('[data-testid="add-person"]').click();
  // A family member is a reader (the role lives in the MLS group context).
  await page.locator('[data-testid="member"]', { hasText: "Hanako Tanaka" }).locator('[data-role="reader"]').waitFor({ timeout: TIMEOUT });
  await screenshot(page, "07c-members-roles");

  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.waitForSelector('[data-testid="composer"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="composer-text"]', "本日訪問。体温 36.8℃、食欲あり。");
  await page.click('[data-testid="send"]');
  await page.waitForSelector('[data-testid="post"][data-state="sent"]', { timeout: TIMEOUT });

  const fp = family.page;
  await fp.goto(`${server.url}/#/`);
  const link = fp.locator('[data-testid="timeline-link"]');
  await link.first().waitFor({ timeout: TIMEOUT });
  // The post, and the consent record handed over with the history from
  // before she joined (imported a moment after the post arrives).
  await fp.locator('[data-testid="unread"]', { hasText: "2 unread" }).waitFor({ timeout: TIMEOUT });
  await fp.locator('[data-testid="nav-unread"]', { hasText: "2 unread" }).waitFor({ timeout: TIMEOUT });
  assert.match(await fp.title(), /^\(2\) Tsunagu/);
  await screenshot(fp, "10-timelines-family-phone");
  await link.first().click();
  await fp.waitForSelector('[data-testid="post"]', { timeout: TIMEOUT });
  assert.match(await fp.textContent('[data-testid="posts"]'), /体温 36\.8℃/);
  // Families are readers: no composer, no reply buttons, a read-only note.
  assert.equal(await fp.locator('[data-testid="composer"]').count(), 0);
  assert.equal(await fp.locator("textarea").count(), 0);
  assert.equal(await fp.locator(".reply-button").count(), 0);
  assert.ok(await fp.isVisible('[data-testid="read-only"]'));
  // Opening the timeline marks it read.
  await fp.goto(`${server.url}/#/`);
  await link.first().waitFor({ timeout: TIMEOUT });
  assert.equal(await fp.locator('[data-testid="unread"]').count(), 0);
  assert.ok(await fp.locator('[data-testid="nav-unread"]').isHidden());

  // The doctor sees the receipt: read by the daughter (既読 1/1), with her name and time.
  const mine = page.locator('[data-testid="post"]', { hasText: "体温 36.8℃" });
  await mine.locator('[data-testid="receipt-summary"]', { hasText: "既読 1/1" }).waitFor({ timeout: TIMEOUT });
  await mine.locator('[data-testid="receipt-summary"]').click();
  await mine.locator('[data-testid="receipt-read"]', { hasText: "Hanako Tanaka" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await mine.locator('[data-testid="receipt-delivered"]').count(), 0, "read, not merely delivered");
  await screenshot(page, "16-receipts-doctor");
});

test("a reply is threaded under its post, for the doctor and the family", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.locator('[data-testid="post"]', { hasText: "体温 36.8℃" }).locator(".reply-button").click();
  assert.ok(await page.isVisible(".reply-banner"));
  await page.fill('[data-testid="composer-text"]', "明日は薬剤師が訪問します。");
  await page.keyboard.press("Control+Enter");
  const reply = page.locator(".thread .replies [data-testid='post']", { hasText: "明日は薬剤師" });
  await reply.waitFor({ timeout: TIMEOUT });
  await page.locator(".thread .replies [data-testid='post'][data-state='sent']").waitFor({ timeout: TIMEOUT });
  await screenshot(page, "08-timeline-doctor");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  await page.screenshot({ path: `${SCREENSHOTS}/08-timeline-doctor-phone.png` });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(`${server.url}/#/`);
  await page.locator('[data-testid="timeline-link"]').first().waitFor({ timeout: TIMEOUT });
  await screenshot(page, "08-timelines-doctor");

  const fp = family.page;
  await fp.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await fp.locator(".thread .replies [data-testid='post']", { hasText: "明日は薬剤師" }).waitFor({ timeout: TIMEOUT });
  await screenshot(fp, "11-timeline-family-phone");
});

test("the doctor posts a photo; the family member opens it, decrypted in the browser", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.waitForSelector('[data-testid="composer"]', { timeout: TIMEOUT });
  await page.setInputFiles('[data-testid="attach-input"]', { name: "wound.png", mimeType: "image/png", buffer: PNG });
  // Received, not yet read: the daughter is not on the timeline.
  await family.page.goto(`${server.url}/#/devices`);
  await page.fill('[data-testid="composer-text"]', "褥瘡の写真です。");
  await page.click('[data-testid="send"]');
  const post = page.locator('[data-testid="post"][data-state="sent"]', { hasText: "褥瘡の写真" });
  await post.waitFor({ timeout: 40_000 });
  await post.locator('[data-testid="attachment"]', { hasText: "wound.png" }).waitFor({ timeout: TIMEOUT });

  // Delivered is not read: the daughter's phone has received the post (its
  // device acknowledged it) but she has not opened the timeline.
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    await page.reload();
    const p = page.locator('[data-testid="post"][data-state="sent"]', { hasText: "褥瘡の写真" });
    await p.locator('[data-testid="receipt-summary"]').waitFor({ timeout: TIMEOUT });
    await page.waitForTimeout(300);
    if ((await p.locator('[data-testid="receipt-delivered"]').count()) > 0) {
      assert.match(await p.locator('[data-testid="receipt-summary"]').textContent(), /既読 0\/1/);
      assert.match(await p.locator('[data-testid="receipt-delivered"]').textContent(), /Hanako Tanaka/);
      break;
    }
    assert.ok(Date.now() < deadline, "the daughter's device never acknowledged the photo post");
  }

  const fp = family.page;
  await fp.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  const theirs = fp.locator('[data-testid="post"]', { hasText: "褥瘡の写真" });
  await theirs.waitFor({ timeout: TIMEOUT });
  // Now read, on the doctor's screen too (pushed, no reload).
  await page.locator('[data-testid="post"]', { hasText: "褥瘡の写真" }).locator('[data-testid="receipt-summary"]', { hasText: "既読 1/1" }).waitFor({ timeout: TIMEOUT });
  // A small photo opens by itself once visible.
  await fp.waitForFunction(
    () => [...document.querySelectorAll('[data-testid="attachment-image"]')].some((img) => img.complete && img.naturalWidth === 2),
    null,
    { timeout: TIMEOUT },
  );
  await screenshot(fp, "11b-photo-family-phone");
});

test("a large photo gets a thumbnail made in the browser; the timeline shows it and a click opens the full photo", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.waitForSelector('[data-testid="composer"]', { timeout: TIMEOUT });
  // A 1600x1200 photo stand-in, drawn in the page.
  const b64 = await page.evaluate(() => {
    const c = document.createElement("canvas");
    c.width = 1600;
    c.height = 1200;
    const g = c.getContext("2d");
    for (let i = 0; i < 400; i++) {
      g.fillStyle = `hsl(${(i * 37) % 360} 70% ${30 + (i % 50)}%)`;
      g.fillRect((i * 53) % 1600, (i * 97) % 1200, 120, 90);
    }
    // Grain, like a camera's.
    const px = g.getImageData(0, 0, 1600, 1200);
    for (let i = 0; i < px.data.length; i += 4) px.data[i] = (px.data[i] + ((i * 2654435761) >>> 27)) & 255;
    g.putImageData(px, 0, 0);
    return c.toDataURL("image/png").split(",")[1];
  });
  const photo = Buffer.from(b64, "base64");
  assert.ok(photo.length > 20_000, `a photo-sized file (${photo.length} bytes)`);
  await page.setInputFiles('[data-testid="attach-input"]', { name: "heel.png", mimeType: "image/png", buffer: photo });
  await page.fill('[data-testid="composer-text"]', "かかとの発赤、経過観察。");
  await page.click('[data-testid="send"]');
  const post = page.locator('[data-testid="post"][data-state="sent"]', { hasText: "かかとの発赤" });
  await post.waitFor({ timeout: 40_000 });

  const fp = family.page;
  await fp.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  const theirs = fp.locator('[data-testid="post"]', { hasText: "かかとの発赤" });
  await theirs.waitFor({ timeout: TIMEOUT });
  // The thumbnail (a JPEG of at most 320 px, its own encrypted blob) shows
  // by itself once scrolled into view.
  await theirs.locator('[data-testid="attachment-thumb-button"]').waitFor({ timeout: TIMEOUT });
  // The list is re-rendered when read marks arrive, which can detach the
  // post in the middle of a scroll: every poll scrolls it into view again.
  await fp
    .waitForFunction(
      () => {
        const posts = [...document.querySelectorAll('[data-testid="post"]')].filter((p) => p.textContent.includes("かかとの発赤"));
        posts.at(-1)?.scrollIntoView({ block: "center" });
        return [...document.querySelectorAll('[data-testid="attachment-thumbnail"]')].some((img) => img.complete && img.naturalWidth === 320 && img.naturalHeight === 240);
      },
      null,
      { timeout: TIMEOUT },
    )
    .catch(async (e) => {
      const sizes = await fp.evaluate(() => [...document.querySelectorAll('[data-testid="attachment-thumbnail"]')].map((i) => `${i.naturalWidth}x${i.naturalHeight}`));
      throw new Error(`${e.message}\nthumbnails: ${sizes}\n${await theirs.innerHTML()}`);
    });
  await screenshot(fp, "11c-thumbnail-family-phone");
  await theirs.locator('[data-testid="attachment-thumb-button"]').click();
  await fp.waitForFunction(
    () => {
      const img = document.querySelector('[data-testid="attachment-full-image"]');
      return img && img.complete && img.naturalWidth === 1600;
    },
    null,
    { timeout: TIMEOUT },
  );
  await screenshot(fp, "11d-photo-full-family-phone");
  await fp.keyboard.press("Escape");
  await fp.waitForSelector('[data-testid="attachment-full"]', { state: "detached", timeout: TIMEOUT });
});

test("the timeline's name is encrypted in the timeline: the family sees it, and a rename reaches them", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}/members`);
  await page.waitForSelector('[data-testid="family-invite-form"]', { timeout: TIMEOUT });
  const fp = family.page;
  await fp.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await fp.locator('[data-testid="timeline-title"]', { hasText: "田中 一郎 様" }).waitFor({ timeout: TIMEOUT });
  await page.fill('[data-testid="rename-form"] input[name="rename"]', "田中 一郎 様（自宅）");
  await page.click('[data-testid="rename-form"] button[type="submit"]');
  await fp.locator('[data-testid="timeline-title"]', { hasText: "（自宅）" }).waitFor({ timeout: TIMEOUT });
});

test("a reader's post forced through by a modified client is refused by the server (forbidden)", async () => {
  const fp = family.page;
  // The browser tests play the modified client through the engine's test handle.
  await openWithTestHooks(fp, timelineId);
  // The engine itself refuses: readers read.
  const own = await fp.evaluate(
    (id) => window.__tsunaguEngine.post(id, "家族の投稿").then(() => "accepted", (e) => e.code),
    timelineId,
  );
  assert.equal(own, "policy_violation");
  // Past the engine's check, the server refuses.
  const forced = await fp.evaluate(
    (id) => window.__tsunaguEngine.forcePostUnchecked(id, "改造クライアントからの投稿").then((seq) => `accepted ${seq}`, (e) => `${e.code}: ${e.message}`),
    timelineId,
  );
  assert.match(forced, /^forbidden:/);
  await closeTestHooks(fp);
  // Nobody sees it.
  await doctor.page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await doctor.page.waitForSelector('[data-testid="post"]', { timeout: TIMEOUT });
  assert.doesNotMatch(await doctor.page.textContent('[data-testid="posts"]'), /改造クライアント|家族の投稿/);
  // And the directory stays closed to families.
  const r = await apiFrom(fp, "GET", "/v1/directory/people?q=");
  assert.equal(r.status, 403);
  assert.equal(r.body.code, "forbidden");
});

test("an admission is recorded in the timeline (seed 003) and the family sees it", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}/members`);
  await page.waitForSelector('[data-testid="event-form"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="event-form"] input[name="hospital"]', "文京中央病院");
  await page.click('[data-testid="event-admit"]');
  const fp = family.page;
  await fp.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await fp.locator('[data-testid="care-event"]', { hasText: "Admitted to 文京中央病院" }).waitFor({ timeout: TIMEOUT });
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.locator('[data-testid="care-event"]', { hasText: "文京中央病院 に入院" }).waitFor({ timeout: TIMEOUT });
});

test("a reload keeps everything: session, timeline, posts", async (t) => {
  for (const person of [doctor, family]) {
    const { page } = person;
    await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
    const t0 = Date.now();
    await page.reload();
    await page.waitForSelector('[data-testid="post"]', { timeout: TIMEOUT });
    t.diagnostic(`figure: reload to decrypted posts on screen (${person === doctor ? "tablet" : "phone"} viewport): ${Date.now() - t0} ms`);
    assert.match(await page.textContent('[data-testid="posts"]'), /体温 36\.8℃/);
  }
  assert.match(await doctor.page.textContent('[data-testid="timeline-title"]'), /田中 一郎 様/);
  // The patient, the consent record, the roles and the receipts come back too.
  const dp = doctor.page;
  assert.match(await dp.textContent('[data-testid="patient-line"]'), /たなか いちろう/);
  await dp.locator('[data-testid="consent-record"]').waitFor({ timeout: TIMEOUT });
  await dp.locator('[data-testid="post"]', { hasText: "体温 36.8℃" }).locator('[data-testid="receipt-summary"]', { hasText: "既読 1/1" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await family.page.locator('[data-testid="composer"]').count(), 0, "still a reader after a reload");
  assert.ok(await family.page.isVisible('[data-testid="read-only"]'));
});

test("a post read offline reaches the doctor's receipts when the connection returns", async () => {
  const { page } = doctor;
  const fp = family.page;
  await fp.goto(`${server.url}/#/`);
  await fp.waitForSelector('[data-testid="timeline-list"]', { timeout: TIMEOUT });
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.fill('[data-testid="composer-text"]', "明朝は8時に訪問します。");
  await page.click('[data-testid="send"]');
  const post = page.locator('[data-testid="post"][data-state="sent"]', { hasText: "明朝は8時" });
  await post.waitFor({ timeout: TIMEOUT });
  // Her phone has it (unread), then loses the network and she reads it.
  await fp.locator('[data-testid="unread"]').waitFor({ timeout: TIMEOUT });
  await family.context.setOffline(true);
  await fp.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state !== "online", null, { timeout: TIMEOUT });
  await fp.locator('[data-testid="timeline-link"]').first().click();
  await fp.locator('[data-testid="post"]', { hasText: "明朝は8時" }).waitFor({ timeout: TIMEOUT });
  assert.match(await post.locator('[data-testid="receipt-summary"]').textContent(), /既読 0\/1/);
  await family.context.setOffline(false);
  await post.locator('[data-testid="receipt-summary"]', { hasText: "既読 1/1" }).waitFor({ timeout: 40_000 });
});

test("Japanese and English both render, and the switch and large type are kept", async () => {
  const { page } = family;
  await page.goto(`${server.url}/#/`);
  await page.waitForSelector('main[data-screen="timelines"]', { timeout: TIMEOUT });
  await page.selectOption("#lang-select", "ja");
  await page.waitForFunction(() => document.documentElement.lang === "ja");
  assert.match(await page.textContent("main h1"), /タイムライン/);
  await page.click('button.toggle[aria-pressed]');
  assert.equal(await page.getAttribute("button.toggle", "aria-pressed"), "true");
  await page.reload();
  await page.waitForSelector('main[data-screen="timelines"]', { timeout: TIMEOUT });
  assert.equal(await page.getAttribute("html", "lang"), "ja");
  assert.ok(await page.evaluate(() => document.documentElement.classList.contains("large-type")));
  await screenshot(page, "12-family-ja-large-type");
  await page.selectOption("#lang-select", "en");
  assert.match(await page.textContent("main h1"), /Timelines/);

  // The doctor's screens in English too.
  const dp = doctor.page;
  await dp.selectOption("#lang-select", "en");
  await dp.goto(`${server.url}/#/devices`);
  await dp.waitForSelector('[data-testid="device-list"] li', { timeout: TIMEOUT });
  assert.match(await dp.textContent("main h1"), /Devices & passkeys/);
  await screenshot(dp, "13-devices-en");
  await dp.selectOption("#lang-select", "ja");
});

test("the main screens have no serious accessibility problems (axe-core, WCAG 2.1 AA)", async () => {
  const problems = [];
  const screens = [
    [doctor, "#/", "timeline-list"],
    [doctor, `#/t/${encodeURIComponent(timelineId)}`, "composer"],
    [doctor, `#/t/${encodeURIComponent(timelineId)}/members`, "family-invite-form"],
    [doctor, "#/directory", "directory-people"],
    [doctor, "#/me", "profile-form"],
    [doctor, "#/devices", "device-list"],
    [doctor, "#/admin", "staff-list"],
    [doctor, "#/new", "create-timeline-form"],
    [family, `#/t/${encodeURIComponent(timelineId)}`, "read-only"],
  ];
  for (const [person, hash, testid] of screens) {
    await person.page.goto(`${server.url}/${hash}`);
    await person.page.waitForSelector(`[data-testid="${testid}"]`, { timeout: TIMEOUT });
    for (const p of await accessibilityProblems(person.page)) problems.push(`${hash}: ${p}`);
  }
  assert.deepEqual(problems, []);
});

test("the status line is always visible and follows the connection", async () => {
  const { page, context } = doctor;
  await page.goto(`${server.url}/#/`);
  const status = page.locator('[data-testid="status"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state === "online", null, { timeout: TIMEOUT });
  await context.setOffline(true);
  await page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state === "offline", null, { timeout: TIMEOUT });
  assert.match(await status.textContent(), /オフライン/);
  await context.setOffline(false);
  await page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state === "online", null, { timeout: TIMEOUT });
});

test("a post written offline is shown as pending and sent when the connection returns", async () => {
  const { page, context } = doctor;
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.waitForSelector('[data-testid="composer"]', { timeout: TIMEOUT });
  // The inactive-member note is for removed devices only.
  assert.equal(await page.isVisible(".notice:has-text('メンバーではなくなりました')"), false);
  await context.setOffline(true);
  await page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state === "offline", null, { timeout: TIMEOUT });
  await page.fill('[data-testid="composer-text"]', "夜間の連絡先は訪問看護ステーションです。");
  await page.click('[data-testid="send"]');
  const pending = page.locator('[data-testid="post"][data-state="pending"]', { hasText: "夜間の連絡先" });
  await pending.waitFor({ timeout: TIMEOUT });
  await screenshot(page, "14-timeline-offline-pending");
  // Reloading while offline: the service worker has the app shell and the
  // engine has the timeline, so everything stays readable, the pending post too.
  await page.reload();
  await page.locator('[data-testid="post"]', { hasText: "体温 36.8℃" }).waitFor({ timeout: TIMEOUT });
  await page.locator('[data-testid="post"][data-state="pending"]', { hasText: "夜間の連絡先" }).waitFor({ timeout: TIMEOUT });
  await page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state === "offline", null, { timeout: TIMEOUT });
  await context.setOffline(false);
  await page.locator('[data-testid="post"][data-state="sent"]', { hasText: "夜間の連絡先" }).waitFor({ timeout: 40_000 });
  // The family member gets it too.
  const fp = family.page;
  await fp.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await fp.locator('[data-testid="post"]', { hasText: "夜間の連絡先" }).waitFor({ timeout: TIMEOUT });
});

test("the nurse revokes this browser's device: its local data is wiped and she must log in again", async () => {
  const { page } = nurse;
  await page.goto(`${server.url}/#/devices`);
  const mine = page.locator('[data-testid="device-list"] li', { hasText: "この端末" });
  await mine.waitFor({ timeout: TIMEOUT });
  page.once("dialog", (d) => d.accept());
  await mine.locator("button.danger").click();
  await page.waitForSelector('[data-testid="login-form"]', { timeout: 40_000 });
  await page.waitForFunction(async () => !(await indexedDB.databases()).some((d) => d.name === "tsunagu"), null, { timeout: TIMEOUT });
  const devices = await apiFrom(page, "GET", "/v1/devices");
  assert.ok(devices.body.every((d) => d.revoked_at), "every device of the nurse is revoked");
});

test("the keyboard alone logs in: skip link, then Tab to the passkey button and Enter", async () => {
  const { page } = nurse;
  await page.goto(`${server.url}/#/login`);
  await page.waitForSelector('[data-testid="login-form"]', { timeout: TIMEOUT });
  // The screen's heading has the focus after a route change; the skip link
  // is the first stop of the page.
  assert.equal(await page.evaluate(() => document.activeElement?.tagName), "H1");
  await page.focus(".skip-link");
  assert.ok(await page.isVisible(".skip-link"));
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "main");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), "パスキーでログイン");
  await page.keyboard.press("Enter");
  await page.waitForSelector('main[data-screen="timelines"]', { timeout: TIMEOUT });
  // A new device for this browser; the revoked one stays revoked.
  await page.waitForFunction(async () => {
    const r = await fetch("/v1/devices");
    return (await r.json()).some((d) => !d.revoked_at);
  }, null, { timeout: TIMEOUT });
});

test("the doctor adds the nurse to the timeline, then removes her: her copy becomes read-only history", async () => {
  const { page } = doctor;
  // The nurse's new device has connected (and published its key packages).
  await nurse.page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state === "online", null, { timeout: TIMEOUT });
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}/members`);
  await page.reload();
  const addable = page.locator('[data-testid="addable"] li', { hasText: "佐藤 花子" });
  await addable.waitFor({ timeout: TIMEOUT });
  await addable.locator('[data-testid="add-person"]').click();
  const member = page.locator('[data-testid="member"]', { hasText: "佐藤 花子" });
  await member.waitFor({ timeout: TIMEOUT }).catch(async (e) => {
    throw new Error(`${e.message}\nnotices: ${await page.locator(".notices").textContent()}`);
  });

  // The nurse's browser gets the timeline and what is posted after she joined.
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await page.waitForSelector('[data-testid="composer"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="composer-text"]', "看護師の佐藤さんが参加しました。");
  await page.click('[data-testid="send"]');
  const np = nurse.page;
  await np.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await np.locator('[data-testid="post"]', { hasText: "佐藤さんが参加" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await np.locator('[data-testid="composer"]').count(), 1, "a professional member can post");
  // The history from before she joined, handed over by the doctor's browser
  // (an encrypted archive blob whose key travels inside the group).
  const handed = np.locator('[data-testid="post"]', { hasText: "体温 36.8℃" });
  await handed.waitFor({ timeout: TIMEOUT });
  await handed.locator('[data-testid="handed-over"]').waitFor({ timeout: TIMEOUT });
  await screenshot(np, "17-handed-over-history-nurse");

  // An urgent post with a mention: the doctor (first call, the timeline's
  // owner) gets an alert banner and acknowledges it.
  // (The notice of the earlier revocation test is dismissed first.)
  for (const close of await np.locator(".notices .notice button").all()) await close.click();
  await np.fill('[data-testid="composer-text"]', "至急: 発熱 38.5℃、");
  await np.click('[data-testid="mention-button"]');
  await np.locator('[data-testid="mention-option"]', { hasText: "山田 太郎" }).click();
  assert.match(await np.inputValue('[data-testid="composer-text"]'), /@山田 太郎 $/);
  await np.type('[data-testid="composer-text"]', "往診をお願いします。");
  await np.check('[data-testid="urgent-toggle"]');
  await screenshot(np, "18-urgent-composer-nurse");
  await np.click('[data-testid="send"]');
  const urgentMine = np.locator('[data-testid="post"][data-urgent="true"][data-state="sent"]', { hasText: "発熱 38.5℃" });
  await urgentMine.waitFor({ timeout: TIMEOUT });

  await page.locator('[data-testid="urgent-alert"]').waitFor({ timeout: TIMEOUT });
  await page.evaluate(() => {
    location.hash = "#/";
  });
  await page.locator('[data-testid="urgent-count"]').waitFor({ timeout: TIMEOUT });
  await screenshot(page, "19-urgent-alert-doctor");
  await page.locator('[data-testid="urgent-alert"] a').click();
  const urgentTheirs = page.locator('[data-testid="post"][data-urgent="true"]', { hasText: "発熱 38.5℃" });
  await urgentTheirs.waitFor({ timeout: TIMEOUT });
  assert.match(await urgentTheirs.locator('[data-testid="post-mentions"]').textContent(), /@あなた|@山田 太郎/);
  assert.match(await urgentTheirs.getAttribute("class"), /mentions-me/);
  await screenshot(page, "20-urgent-post-doctor");
  await urgentTheirs.locator('[data-testid="ack-button"]').click();
  await urgentTheirs.locator('[data-testid="acked"]').waitFor({ timeout: TIMEOUT });
  await page.waitForSelector('[data-testid="urgent-alert"]', { state: "detached", timeout: TIMEOUT });
  // The nurse sees who acknowledged.
  await urgentMine.locator('[data-testid="urgent-acks"]', { hasText: "山田 太郎" }).waitFor({ timeout: TIMEOUT });

  // She edits her post and deletes another: both stay visible as changes.
  await np.fill('[data-testid="composer-text"]', "明日の訪問は10時です。");
  await np.click('[data-testid="send"]');
  const visit = np.locator('[data-testid="post"][data-state="sent"]', { hasText: "明日の訪問は10時" });
  await visit.waitFor({ timeout: TIMEOUT });
  await visit.locator('[data-testid="post-edit"]').click();
  await np.fill('[data-testid="edit-text"]', "明日の訪問は11時です。");
  // A post arriving while she edits re-renders the list: the editor and her
  // draft stay.
  await page.fill('[data-testid="composer-text"]', "了解しました。");
  await page.click('[data-testid="send"]');
  await np.locator('[data-testid="post"]', { hasText: "了解しました。" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await np.inputValue('[data-testid="edit-text"]'), "明日の訪問は11時です。");
  await np.click('[data-testid="edit-form"] button[type="submit"]');
  await np.locator('[data-testid="post"]', { hasText: "明日の訪問は11時" }).locator('[data-testid="post-edited"]').waitFor({ timeout: TIMEOUT });
  np.once("dialog", (d) => d.accept());
  await np.locator('[data-testid="post"]', { hasText: "佐藤さんが参加" }).waitFor({ timeout: TIMEOUT });
  await np.fill('[data-testid="composer-text"]', "（誤送信）");
  await np.click('[data-testid="send"]');
  const wrong = np.locator('[data-testid="post"][data-state="sent"]', { hasText: "（誤送信）" });
  await wrong.waitFor({ timeout: TIMEOUT });
  await wrong.locator('[data-testid="post-delete"]').click();
  await np.waitForSelector('[data-testid="post-deleted"]', { timeout: TIMEOUT });
  await page.locator('[data-testid="post"]', { hasText: "明日の訪問は11時" }).locator('[data-testid="post-edited"]').waitFor({ timeout: TIMEOUT });
  await page.waitForSelector('[data-testid="post-deleted"]', { timeout: TIMEOUT });
  assert.doesNotMatch(await page.textContent('[data-testid="posts"]'), /誤送信|10時/);
  await screenshot(page, "21-edited-deleted-doctor");

  // The owner makes her a reader: her composer goes at once.
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}/members`);
  await member.locator('[data-testid="member-role-select"]').selectOption("reader");
  await member.locator('[data-role="reader"]').waitFor({ timeout: TIMEOUT });
  await np.locator('[data-testid="composer"]').waitFor({ state: "hidden", timeout: TIMEOUT });

  page.once("dialog", (d) => d.accept());
  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}/members`);
  await member.locator('[data-testid="remove-person"]').click();
  await page.waitForFunction(() => ![...document.querySelectorAll('[data-testid="member"]')].some((li) => li.textContent.includes("佐藤 花子")), null, {
    timeout: TIMEOUT,
  });
  // Her device learns it left: history stays readable, the composer goes.
  await np.locator(".notice", { hasText: "メンバーではなくなりました" }).waitFor({ timeout: 40_000 });
  assert.ok(await np.locator('[data-testid="composer"]').isHidden());
  assert.ok(await np.locator('[data-testid="post"]', { hasText: "佐藤さんが参加" }).isVisible());
});

test("the admin creates a bot with an enrolment code, and removes the nurse, whose browser is signed out", async () => {
  const { page } = doctor;
  await page.goto(`${server.url}/#/admin`);
  await page.waitForSelector('[data-testid="bot-form"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="bot-form"] input[name="bot_name"]', "バイタル連携ボット");
  await page.click('[data-testid="bot-form"] button[type="submit"]');
  await page.waitForSelector('[data-testid="bot-form"] ~ div [data-testid="bot-code"]', { timeout: TIMEOUT });
  await page.locator('[data-testid="staff-row"]', { hasText: "バイタル連携ボット" }).waitFor({ timeout: TIMEOUT });

  const row = page.locator('[data-testid="staff-row"]', { hasText: "佐藤 花子" });
  page.once("dialog", (d) => d.accept());
  await row.locator("button.danger").click();
  await row.locator(".badge-muted").waitFor({ timeout: TIMEOUT });
  assert.equal(await row.locator("button.danger").count(), 0, "a removed person has no remove button");
  await screenshot(page, "15-admin-staff-removed");

  // The nurse's browser loses its session and shows the login.
  await nurse.page.waitForSelector('[data-testid="login-form"]', { timeout: 40_000 });
  assert.equal((await apiFrom(nurse.page, "GET", "/v1/me")).status, 401);
});

test("a long timeline builds its latest threads and shows earlier ones a page at a time", async () => {
  const dp = doctor.page;
  // The doctor's browser posts through the engine's test handle, as fast as it can.
  await openWithTestHooks(dp, timelineId);
  await dp.evaluate(async (id) => {
    for (let i = 1; i <= 210; i++) await window.__tsunaguEngine.post(id, `経過記録 No.${String(i).padStart(3, "0")}`);
  }, timelineId);
  await closeTestHooks(dp);

  const fp = family.page;
  await fp.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  await fp.locator('[data-testid="post"]', { hasText: "経過記録 No.210" }).waitFor({ timeout: 60_000 });
  const posts = fp.locator('[data-testid="posts"]');
  const more = fp.locator('[data-testid="show-earlier"]');
  await more.waitFor({ timeout: TIMEOUT });
  assert.ok((await fp.locator('[data-testid="posts"] > li.thread').count()) <= 200, "at most a page of threads is built");
  assert.doesNotMatch(await posts.textContent(), /No\.001/);
  await more.click();
  await fp.locator('[data-testid="post"]', { hasText: "経過記録 No.001" }).waitFor({ timeout: TIMEOUT });
  // Everything is there now, the first posts of the timeline too.
  assert.match(await posts.textContent(), /体温 36\.8℃/);
  assert.equal(await more.count(), 0, "nothing earlier is left");
});
