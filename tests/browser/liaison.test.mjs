// The hospital liaison flow of seed 003 in a real browser: the home doctor
// opens a patient's timeline with the consent record and invites the
// hospital (an organisation invitation; its liaison becomes its first admin)
// and the liaison into the timeline; an admission is recorded; the liaison
// invites a ward nurse of her hospital with an access end date; the nurse
// reads the history handed over to her and posts; at discharge the liaison's
// browser removes the ward staff and the liaison stays.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { accessibilityProblems, launchBrowser, personContext, screenshot, startServer } from "./harness.mjs";

const TIMEOUT = 20_000;
let server;
let browser;
let doctor; // the home clinic's admin
let liaison; // the hospital's liaison (連携担当者), its first admin
let ward; // a ward nurse of the hospital, on a tablet
let timelineId;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  doctor = await personContext(browser, { locale: "ja-JP" });
  liaison = await personContext(browser, { locale: "ja-JP", viewport: { width: 1024, height: 768 } });
  ward = await personContext(browser, { locale: "en-GB", viewport: { width: 800, height: 1280 } });
});

after(async () => {
  for (const p of [doctor, liaison, ward]) {
    if (p?.errors.length) console.error("page errors:", p.errors);
  }
  await browser?.close();
  await server?.stop();
});

const timelineUrl = (suffix = "") => `${server.url}/#/t/${encodeURIComponent(timelineId)}${suffix}`;

async function invitationLink(page, kind, name) {
  await page.goto(`${server.url}/#/admin`);
  await page.waitForSelector('[data-testid="staff-invite-form"]', { timeout: TIMEOUT });
  await page.selectOption('[data-testid="staff-invite-form"] select[name="invite_kind"]', kind);
  await page.fill('[data-testid="staff-invite-form"] input[name="display_name"]', name);
  await page.click('[data-testid="staff-invite-form"] button[type="submit"]');
  await page.waitForSelector('[data-testid="invitation-url"]', { timeout: TIMEOUT });
  return page.inputValue('[data-testid="invitation-url"]');
}

/** Adds `name` from the members page with `role` and an optional end date. */
async function addMember(page, name, role, until) {
  await page.goto(timelineUrl("/members"));
  await page.reload();
  await page.selectOption('[data-testid="invite-role"]', role);
  if (until) await page.fill('[data-testid="invite-until"]', until);
  const row = page.locator('[data-testid="addable"] li', { hasText: name });
  await row.waitFor({ timeout: TIMEOUT });
  await row.locator('[data-testid="add-person"]').click();
  await page
    .locator('[data-testid="member"]', { hasText: name })
    .locator(`[data-role="${role}"]`)
    .waitFor({ timeout: 40_000 })
    .catch(async (e) => {
      throw new Error(`${e.message}\nnotices: ${await page.locator(".notices").textContent()}`);
    });
}

test("the home doctor sets up the clinic and opens a patient's timeline with the consent", async () => {
  const { page } = doctor;
  await page.goto(server.setupUrl);
  await page.waitForSelector('[data-testid="setup-form"]', { timeout: TIMEOUT });
  await page.fill('input[name="org_name"]', "つなぐ在宅クリニック");
  await page.selectOption('select[name="org_type"]', "clinic");
  await page.fill('input[name="area"]', "文京区");
  await page.fill('input[name="display_name"]', "山田 太郎");
  await page.fill('input[name="kana"]', "やまだ たろう");
  await page.selectOption('select[name="profession"]', "doctor");
  await page.click('[data-testid="setup-form"] button[type="submit"]');
  await page.waitForSelector('[data-testid="timeline-list"]', { timeout: TIMEOUT });

  await page.goto(`${server.url}/#/new`);
  await page.waitForSelector('[data-testid="create-timeline-form"]', { timeout: TIMEOUT });
  await page.fill('input[name="patient_name"]', "田中 一郎");
  await page.fill('input[name="patient_kana"]', "たなか いちろう");
  await page.click('[data-testid="create-timeline-form"] button[type="submit"]');
  await page.waitForURL(/#\/t\/[^/]+\/members$/, { timeout: TIMEOUT });
  timelineId = decodeURIComponent(page.url().match(/#\/t\/([^/]+)\/members$/)[1]);
  await page.fill('[data-testid="consent-form"] input[name="given_by"]', "田中 花子（長女・代理人）");
  await page.selectOption('[data-testid="consent-form"] select[name="method"]', "proxy");
  await page.click('[data-testid="consent-form"] button[type="submit"]');
  await page.waitForSelector('[data-testid="consent-done"]', { timeout: TIMEOUT }).catch(async (e) => {
    throw new Error(`${e.message}\n${await page.locator('[data-testid="consent-card"]').textContent()}\nnotices: ${await page.locator(".notices").textContent()}`);
  });

  await page.goto(timelineUrl());
  for (const text of ["本日訪問。血圧 132/80。", "褥瘡は改善傾向。", "来週から訪問看護を週2回に増やします。"]) {
    await page.fill('[data-testid="composer-text"]', text);
    await page.click('[data-testid="send"]');
    await page.locator('[data-testid="post"][data-state="sent"]', { hasText: text }).waitFor({ timeout: TIMEOUT });
  }
});

test("the hospital joins the network by invitation; its liaison invites a ward nurse to the hospital", async () => {
  const url = await invitationLink(doctor.page, "organisation", "鈴木 一子");
  const lp = liaison.page;
  await lp.goto(url);
  await lp.waitForSelector('[data-testid="invite-form"]', { timeout: TIMEOUT });
  await lp.fill('input[name="org_name"]', "文京中央病院");
  await lp.selectOption('select[name="org_type"]', "hospital");
  await lp.fill('input[name="area"]', "文京区");
  await lp.fill('input[name="kana"]', "すずき いちこ");
  await lp.selectOption('select[name="profession"]', "msw");
  await screenshot(lp, "30-organisation-invitation");
  assert.deepEqual(await accessibilityProblems(lp), []);
  await lp.click('[data-testid="invite-form"] button[type="submit"]');
  await lp.waitForSelector('main[data-screen="timelines"]', { timeout: TIMEOUT });

  const staffUrl = await invitationLink(lp, "staff", "Misaki Takahashi");
  const wp = ward.page;
  await wp.goto(staffUrl);
  await wp.waitForSelector('[data-testid="invite-form"]', { timeout: TIMEOUT });
  await wp.selectOption('select[name="profession"]', "nurse");
  await wp.click('[data-testid="invite-form"] button[type="submit"]');
  await wp.waitForSelector('main[data-screen="timelines"]', { timeout: TIMEOUT });
});

test("the doctor invites the liaison in advance; an admission is recorded", async () => {
  await liaison.page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state === "online", null, { timeout: TIMEOUT });
  await addMember(doctor.page, "鈴木 一子", "liaison");
  const { page } = doctor;
  await page.fill('[data-testid="event-form"] input[name="hospital"]', "文京中央病院");
  await page.click('[data-testid="event-admit"]');
  const lp = liaison.page;
  await lp.goto(timelineUrl());
  await lp.locator('[data-testid="care-event"]', { hasText: "文京中央病院 に入院" }).waitFor({ timeout: TIMEOUT });
  // The history from before she joined was handed over to her.
  await lp.locator('[data-testid="post"]', { hasText: "褥瘡は改善傾向" }).locator('[data-testid="handed-over"]').waitFor({ timeout: TIMEOUT });
});

test("the liaison invites the ward nurse with an end date; the nurse reads the handed-over history and posts", async () => {
  await ward.page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.dataset.state === "online", null, { timeout: TIMEOUT });
  const until = new Date(Date.now() + 7 * 86_400_000).toISOString().slice(0, 10);
  await addMember(liaison.page, "Misaki Takahashi", "member", until);
  const lp = liaison.page;
  const row = lp.locator('[data-testid="member"]', { hasText: "Misaki Takahashi" });
  assert.match(await row.textContent(), /まで/, "the end date is shown");
  await lp.locator('[data-testid="member-me"] [data-role="liaison"]').waitFor({ timeout: TIMEOUT });
  await screenshot(lp, "31-liaison-members");

  const wp = ward.page;
  await wp.goto(timelineUrl());
  const history = wp.locator('[data-testid="post"]', { hasText: "血圧 132/80" });
  await history.waitFor({ timeout: TIMEOUT });
  await history.locator('[data-testid="handed-over"]').waitFor({ timeout: TIMEOUT });
  await wp.locator('[data-testid="care-event"]', { hasText: "Admitted to 文京中央病院" }).waitFor({ timeout: TIMEOUT });
  await wp.fill('[data-testid="composer-text"]', "病棟より: 入院時の状態は安定しています。");
  await wp.click('[data-testid="send"]');
  await wp.locator('[data-testid="post"][data-state="sent"]', { hasText: "病棟より" }).waitFor({ timeout: TIMEOUT });
  await screenshot(wp, "32-ward-nurse-history");
  await doctor.page.goto(timelineUrl());
  await doctor.page.locator('[data-testid="post"]', { hasText: "病棟より" }).waitFor({ timeout: TIMEOUT });
});

test("at discharge the liaison's browser removes the ward staff; the liaison stays", async () => {
  const lp = liaison.page;
  await lp.goto(timelineUrl("/members"));
  await lp.waitForSelector('[data-testid="event-form"]', { timeout: TIMEOUT });
  await lp.fill('[data-testid="event-form"] input[name="hospital"]', "文京中央病院");
  await lp.click('[data-testid="event-discharge"]');
  await lp.waitForFunction(() => ![...document.querySelectorAll('[data-testid="member"]')].some((li) => li.textContent.includes("Misaki Takahashi")), null, {
    timeout: TIMEOUT,
  });
  await lp.locator('[data-testid="member-me"] [data-role="liaison"]').waitFor({ timeout: TIMEOUT });
  // The nurse's copy becomes read-only history.
  const wp = ward.page;
  await wp.locator('[data-testid="composer"]').waitFor({ state: "hidden", timeout: 40_000 });
  assert.ok(await wp.locator('[data-testid="post"]', { hasText: "病棟より" }).isVisible());
  // The doctor sees the discharge and the ward nurse gone.
  const { page } = doctor;
  await page.goto(timelineUrl());
  await page.locator('[data-testid="care-event"]', { hasText: "文京中央病院 を退院" }).waitFor({ timeout: TIMEOUT });
  await page.goto(timelineUrl("/members"));
  await page.locator('[data-testid="member"]', { hasText: "鈴木 一子" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await page.locator('[data-testid="member"]', { hasText: "Misaki Takahashi" }).count(), 0);
  await screenshot(page, "33-after-discharge-doctor");
});
