// The web engine in a real browser against the real server: every frame the
// page sends over the websocket leaves only after the IndexedDB transaction
// holding what it depends on has completed (a `send` after its outbox entry,
// an `ack` after the timeline's processed seq), the state survives a reload,
// and logging out deletes the IndexedDB database.
//
// The page is instrumented before its scripts run: readwrite IndexedDB
// transactions are logged when they complete (with the keys they put), and
// WebSocket.send is logged when called; the test then checks the order.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchBrowser, personContext, startServer } from "./harness.mjs";

const TIMEOUT = 20_000;
let server;
let browser;
let doctor;

function instrument() {
  const log = [];
  window.__engineLog = log;
  const text = new TextDecoder();
  const bytes = (k) => (k instanceof ArrayBuffer ? new Uint8Array(k) : new Uint8Array(k.buffer, k.byteOffset, k.byteLength));
  const originalTransaction = IDBDatabase.prototype.transaction;
  IDBDatabase.prototype.transaction = function (stores, mode, options) {
    const tx = originalTransaction.call(this, stores, mode, options);
    if (mode === "readwrite") {
      const puts = [];
      const originalObjectStore = tx.objectStore.bind(tx);
      tx.objectStore = (name) => {
        const store = originalObjectStore(name);
        const put = store.put.bind(store);
        store.put = (value, key) => {
          const k = text.decode(bytes(key));
          puts.push([k, k.endsWith("/meta") ? text.decode(bytes(value)) : null]);
          return put(value, key);
        };
        return store;
      };
      // Registered before the engine's own oncomplete, so it is logged first.
      tx.addEventListener("complete", () => log.push({ t: "commit", puts }));
    }
    return tx;
  };
  const originalSend = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    log.push({ t: "send", frame: String(data) });
    return originalSend.call(this, data);
  };
}

/**
 * Checks the log; returns how many sends and acks were checked.
 * - a `send` leaves after a commit that stored MLS state (its ratchet step);
 * - a post's `send` leaves after its outbox entry was committed: a `send`
 *   without one (a timeline's name, which is not queued) is a violation if
 *   an outbox entry for it is committed later;
 * - an `ack` leaves after the timeline's processed seq reached it.
 */
function checkOrder(log) {
  const outbox = new Set();
  const sentWithoutOutbox = new Set();
  const processed = new Map();
  let mlsStored = false;
  let sends = 0;
  let acks = 0;
  for (const e of log) {
    if (e.t === "commit") {
      for (const [k, v] of e.puts) {
        if (k.startsWith("mls/")) mlsStored = true;
        if (k.startsWith("outbox/")) {
          const id = k.slice("outbox/".length);
          assert.ok(!sentWithoutOutbox.has(id), `send ${id} left before its outbox entry was committed`);
          outbox.add(id);
        }
        if (k.startsWith("tl/") && k.endsWith("/meta")) {
          const tid = k.slice(3, -5);
          processed.set(tid, Math.max(processed.get(tid) ?? 0, JSON.parse(v).processed_seq));
        }
      }
      continue;
    }
    const f = JSON.parse(e.frame);
    if (f.type === "send") {
      sends++;
      assert.ok(mlsStored, `send ${f.msg_id} left before its ratchet state was committed`);
      mlsStored = false;
      if (!outbox.has(f.msg_id)) sentWithoutOutbox.add(f.msg_id);
    }
    if (f.type === "ack") {
      acks++;
      assert.ok(
        (processed.get(f.timeline_id) ?? 0) >= f.seq,
        `ack ${f.timeline_id} #${f.seq} left before processed_seq ${f.seq} was committed`,
      );
    }
  }
  return { sends, acks };
}

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  doctor = await personContext(browser, { locale: "en-US" });
  await doctor.context.addInitScript(instrument);
});

after(async () => {
  if (doctor?.errors.length) console.error("page errors:", doctor.errors);
  await browser?.close();
  await server?.stop();
});

test("every websocket frame leaves after the IndexedDB commit it depends on; reload keeps the posts", async () => {
  const { page } = doctor;
  await page.goto(server.setupUrl);
  await page.waitForSelector('[data-testid="setup-form"]', { timeout: TIMEOUT });
  await page.fill('input[name="org_name"]', "Engine Test Clinic");
  await page.selectOption('select[name="org_type"]', "clinic");
  await page.fill('input[name="area"]', "Bunkyo");
  await page.fill('input[name="display_name"]', "Dr. Engine");
  await page.fill('input[name="kana"]', "えんじん");
  await page.selectOption('select[name="profession"]', "doctor");
  await page.click('[data-testid="setup-form"] button[type="submit"]');
  await page.waitForSelector('main[data-screen="timelines"]', { timeout: TIMEOUT });

  await page.goto(`${server.url}/#/new`);
  await page.waitForSelector('[data-testid="create-timeline-form"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="create-timeline-form"] input[name="patient_name"]', "Patient A");
  await page.click('[data-testid="create-timeline-form"] button[type="submit"]');
  await page.waitForURL(/#\/t\/[^/]+\/members$/, { timeout: TIMEOUT });
  const timelineId = decodeURIComponent(page.url().match(/#\/t\/([^/]+)\/members$/)[1]);

  await page.goto(`${server.url}/#/t/${encodeURIComponent(timelineId)}`);
  const texts = ["first visit", "second visit", "third visit"];
  for (const [i, text] of texts.entries()) {
    await page.waitForSelector('[data-testid="composer"]', { timeout: TIMEOUT });
    await page.fill('[data-testid="composer-text"]', text);
    await page.click('[data-testid="send"]');
    await page.locator('[data-testid="post"][data-state="sent"]').nth(i).waitFor({ timeout: TIMEOUT });
  }
  // Let the own posts' echoes arrive and be acknowledged.
  await page.waitForFunction(() => window.__engineLog.some((e) => e.t === "send" && e.frame.includes('"type":"ack"')), null, {
    timeout: TIMEOUT,
  });
  const { sends, acks } = checkOrder(await page.evaluate(() => window.__engineLog));
  assert.ok(sends >= texts.length, `checked ${sends} sends`);
  assert.ok(acks >= 1, `checked ${acks} acks`);

  // Reload: the posts come from IndexedDB, decrypted, in order.
  await page.reload();
  await page.locator('[data-testid="post"][data-state="sent"]').nth(texts.length - 1).waitFor({ timeout: TIMEOUT });
  const shown = await page.locator('[data-testid="post"]').allTextContents();
  for (const text of texts) assert.ok(shown.some((s) => s.includes(text)), `"${text}" after reload`);
  const after = checkOrder(await page.evaluate(() => window.__engineLog));
  assert.ok(after.sends + after.acks >= 0);
});

test("logging out deletes this browser's IndexedDB database", async () => {
  const { page } = doctor;
  const before = await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
  assert.ok(before.includes("tsunagu"), `databases before logout: ${before}`);
  await page.click('button:has-text("Log out")');
  await page.waitForFunction(
    async () => !(await indexedDB.databases()).some((d) => d.name === "tsunagu"),
    null,
    { timeout: TIMEOUT, polling: 100 },
  );
});
