// The browser tests' harness: starts the REAL tsunagu-server binary on a
// fresh data directory and an ephemeral port, makes the built web UI
// reachable on the same origin, launches Debian's Chromium (never a
// downloaded browser) and gives each browser context a CDP virtual
// authenticator that stands in for the person's passkey.
//
// Environment:
//   TSUNAGU_SERVER_BIN   the server binary (default target/debug/tsunagu-server)
//   TSUNAGU_UI_DIST      the built UI (default client-web/ui/dist)
//   CHROMIUM             the browser (default: `which chromium`)
//   TEST_LOG=1           echo the server's output
import { spawn, execFileSync } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const SCREENSHOTS = join(ROOT, "target", "screenshots");

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
  "--disable-sync",
  "--disable-quic",
];

function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  try {
    return execFileSync("which", ["chromium"], { encoding: "utf8" }).trim();
  } catch {
    throw new Error("chromium not found: install Debian's chromium (apt-get install -y chromium)");
  }
}

/** Whether the server binary serves the built UI itself (it has a flag for it). */
function serverWebFlag(bin) {
  const help = execFileSync(bin, ["--help"], { encoding: "utf8" });
  const m = help.match(/--(web[-a-z]*)\s/);
  return m ? `--${m[1]}` : null;
}

/**
 * Starts tsunagu-server. Resolves when it printed both its listening address
 * and (on the empty database) its one-time setup link.
 */
export async function startServer() {
  const bin = process.env.TSUNAGU_SERVER_BIN ?? join(ROOT, "target", "debug", "tsunagu-server");
  if (!existsSync(bin)) throw new Error(`${bin} not found: run cargo build -p tsunagu-server first`);
  const dist = process.env.TSUNAGU_UI_DIST ?? join(ROOT, "client-web", "ui", "dist");
  if (!existsSync(join(dist, "index.html"))) throw new Error(`${dist}/index.html not found: run npm run build in client-web/ui`);
  const dataDir = mkdtempSync(join(tmpdir(), "tsunagu-browser-"));
  const webFlag = serverWebFlag(bin);

  // Without a web flag the UI is served by a small front in this process
  // that forwards the API to the server; the origin people see (and that
  // passkeys are bound to) is then the front's.
  let front = null;
  const args = ["--listen", "127.0.0.1:0", "--data-dir", dataDir];
  if (webFlag) {
    args.push(webFlag, dist);
  } else {
    front = await startFront(dist);
    args.push("--public-url", front.url);
  }

  const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env } });
  let log = "";
  let apiUrl = null;
  let setupUrl = null;
  const ready = new Promise((resolveReady, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in 30 s; log:\n${log}`)), 30_000);
    const onData = (chunk) => {
      const text = chunk.toString();
      log += text;
      if (process.env.TEST_LOG) process.stderr.write(text);
      apiUrl ??= text.match(/tsunagu listening on (http:\/\/\S+)/)?.[1] ?? null;
      setupUrl ??= text.match(/(https?:\/\/\S+\/#\/setup\/[A-Za-z0-9_-]+)/)?.[1] ?? null;
      if (apiUrl && setupUrl) {
        clearTimeout(timer);
        resolveReady();
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}) before it was ready; log:\n${log}`));
    });
  });
  await ready;
  let url;
  if (front) {
    front.setBackend(apiUrl);
    url = front.url;
  } else {
    url = new URL(setupUrl).origin;
  }
  return {
    url,
    setupUrl: new URL(new URL(setupUrl).hash, url + "/").toString(),
    log: () => log,
    async stop() {
      proc.kill("SIGTERM");
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once("exit", r)));
      front?.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".wasm": "application/wasm",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".json": "application/json",
};

/** Static files from `dist` plus a pass-through of /v1, /healthz to the server (websocket upgrades too). */
async function startFront(dist) {
  let backend = null;
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path.startsWith("/v1/") || path === "/healthz" || path === "/readyz") {
      const target = new URL(req.url, backend);
      const upstream = http.request(target, { method: req.method, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      });
      upstream.on("error", () => {
        res.writeHead(502);
        res.end();
      });
      req.pipe(upstream);
      return;
    }
    let file = normalize(join(dist, path === "/" ? "index.html" : path));
    if (!file.startsWith(dist) || !existsSync(file) || statSync(file).isDirectory()) file = join(dist, "index.html");
    res.writeHead(200, { "content-type": MIME[extname(file)] ?? "application/octet-stream" });
    createReadStream(file).pipe(res);
  });
  server.on("upgrade", (req, socket, head) => {
    const b = new URL(backend);
    const up = net.connect(Number(b.port), b.hostname, () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(raw + "\r\n");
      if (head?.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on("error", () => socket.destroy());
    socket.on("error", () => up.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  return {
    url: `http://localhost:${port}`,
    setBackend: (u) => (backend = u),
    close: () => server.close(),
  };
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS, headless: true });
}

/**
 * A browser context for one person: its own cookies and storage, its own
 * virtual passkey authenticator (CTAP2, internal, resident keys, user
 * verification), a locale and a viewport.
 */
export async function personContext(browser, { locale = "ja-JP", viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ locale, viewport, serviceWorkers: "allow" });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const add = async () =>
    (
      await cdp.send("WebAuthn.addVirtualAuthenticator", {
        options: {
          protocol: "ctap2",
          transport: "internal",
          hasResidentKey: true,
          hasUserVerification: true,
          isUserVerified: true,
          automaticPresenceSimulation: true,
        },
      })
    ).authenticatorId;
  let authenticatorId = await add();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  if (process.env.TEST_LOG) {
    page.on("console", (m) => process.stderr.write(`[${locale} console] ${m.type()}: ${m.text()}\n`));
  }
  return {
    context,
    page,
    errors,
    credentials: async () => (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials,
    /** Replaces the authenticator by a new, empty one (a second security key). */
    async addAuthenticator() {
      await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId });
      authenticatorId = await add();
    },
  };
}

const AXE_SOURCE = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "node_modules", "axe-core", "axe.min.js"), "utf8");

/**
 * Runs axe-core (WCAG 2.1 A/AA rules) on the page as it is and returns the
 * serious and critical violations as short strings. The script is evaluated
 * through the devtools protocol, so the page's CSP stays as it is.
 */
export async function accessibilityProblems(page) {
  await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 3) }));
  });
  return violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => `${v.id} (${v.impact}): ${v.nodes.join(", ")}`);
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/** The JSON of an API call made by the page itself (its cookie, its origin). */
export async function apiFrom(page, method, path, body) {
  return page.evaluate(
    async ([m, p, b]) => {
      const r = await fetch(p, {
        method: m,
        credentials: "same-origin",
        headers: b === undefined ? {} : { "content-type": "application/json" },
        body: b === undefined ? undefined : JSON.stringify(b),
      });
      const text = await r.text();
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {
        json = text;
      }
      return { status: r.status, body: json };
    },
    [method, path, body],
  );
}
