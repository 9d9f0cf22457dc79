// The web client's figures: the wasm bundle's size (raw and gzip) and the
// client core's MLS costs (create a timeline, add a person, encrypt and
// decrypt a post) in Debian's headless Chromium against the same code
// natively (client-web/src/bench.rs), as a table of ratios.
//
//   node ops/bench-web/bench.mjs [REPS]      (ops/bench-web/run.sh builds first)
//
// Needs client-web/ui/src/engine/pkg (client-web/build-web.sh), playwright-core
// from tests/browser/node_modules (npm ci there) and chromium (Debian package).
import { execFileSync } from "node:child_process";
import { createReadStream, existsSync, readFileSync, statSync } from "node:fs";
import http from "node:http";
import { dirname, extname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const PKG = join(ROOT, "client-web/ui/src/engine/pkg");
const REPS = Number(process.argv[2] ?? 20);

const wasmPath = join(PKG, "tsunagu_client_bg.wasm");
if (!existsSync(wasmPath)) throw new Error(`${wasmPath} missing: run client-web/build-web.sh`);
const wasm = readFileSync(wasmPath);
const gz = gzipSync(wasm, { level: 9 }).length;

const { chromium } = await import(pathToFileURL(join(ROOT, "tests/browser/node_modules/playwright-core/index.mjs")).href);

const PAGE = `<!doctype html><meta charset=utf-8><title>bench</title><script type=module>
import init, { bench_mls } from "/pkg/tsunagu_client.js";
const t0 = performance.now();
await init();
const initMs = performance.now() - t0;
bench_mls(2, () => performance.now()); // warm-up
const costs = JSON.parse(bench_mls(${REPS}, () => performance.now()));
window.__result = { initMs, costs };
</script>`;

const MIME = { ".js": "text/javascript", ".wasm": "application/wasm" };
const server = http.createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    return res.end(PAGE);
  }
  const file = join(PKG, path.replace(/^\/pkg\//, ""));
  if (!path.startsWith("/pkg/") || !file.startsWith(PKG) || !existsSync(file) || statSync(file).isDirectory()) {
    res.writeHead(404);
    return res.end();
  }
  res.writeHead(200, { "content-type": MIME[extname(file)] ?? "application/octet-stream" });
  createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const url = `http://localhost:${server.address().port}/`;

const executablePath = process.env.CHROMIUM ?? execFileSync("which", ["chromium"], { encoding: "utf8" }).trim();
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
let web;
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(url);
  await page.waitForFunction(() => window.__result, null, { timeout: 300_000 });
  web = await page.evaluate(() => window.__result);
} finally {
  await browser.close();
  server.close();
}

const nativeOut = execFileSync(
  "cargo",
  ["run", "--quiet", "--release", "-p", "tsunagu-client", "--example", "mls_costs", "--", String(REPS)],
  { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] },
);
const native = JSON.parse(nativeOut.trim().split("\n").pop());

const chromeVersion = execFileSync(executablePath, ["--version"], { encoding: "utf8" }).trim();
const kib = (n) => `${(n / 1024).toFixed(0)} KiB`;
console.log(`\nweb client figures (${chromeVersion}; ${REPS} timelines, ${REPS * 10} posts; mean per operation)\n`);
console.log(`wasm bundle (tsunagu_client_bg.wasm): ${wasm.length} bytes (${kib(wasm.length)}) raw, ${gz} bytes (${kib(gz)}) gzip -9`);
console.log(`wasm fetch + compile + instantiate in the page: ${web.initMs.toFixed(1)} ms\n`);
const rows = [
  ["create a timeline", "create_ms"],
  ["add a person (1 device)", "add_ms"],
  ["encrypt a post", "encrypt_ms"],
  ["decrypt a post", "decrypt_ms"],
];
const pad = (s, n) => String(s).padEnd(n);
const padl = (s, n) => String(s).padStart(n);
console.log(`| ${pad("operation", 24)} | ${padl("native ms", 10)} | ${padl("browser ms", 10)} | ${padl("browser/native", 14)} |`);
console.log(`|${"-".repeat(26)}|${"-".repeat(12)}|${"-".repeat(12)}|${"-".repeat(16)}|`);
for (const [name, key] of rows) {
  const n = native[key];
  const w = web.costs[key];
  console.log(`| ${pad(name, 24)} | ${padl(n.toFixed(3), 10)} | ${padl(w.toFixed(3), 10)} | ${padl((w / n).toFixed(2) + "×", 14)} |`);
}
