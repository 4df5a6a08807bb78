// The ops console in a real browser: Debian's headless Chromium, driven by
// playwright-core, every page checked by axe-core. Run by
// tests/tests/platform/console_browser.rs, which starts the apps, makes the
// admin (with a TOTP secret), a tenant and a job, and passes them here:
//
//   CONSOLE_URL, CONSOLE_IDLE_URL (a second gateway whose sessions idle out
//   after a second), CONSOLE_ADMIN, CONSOLE_PASSWORD,
//   CONSOLE_TOTP_SECRET_HEX, CONSOLE_JOB_ID, CONSOLE_QUEUE, CONSOLE_TENANT,
//   CONSOLE_BROWSER_TOOLS (the folder with node_modules), CHROMIUM,
//   CONSOLE_SCREENSHOTS (optional: a folder for one PNG per page).
//
// The tenant has a dead letter (event id e2e-bad, value NaN) to correct.
//
// Prints one "ok - ..." line per check; exits 1 at the first failure.

import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const tools = createRequire(`${env("CONSOLE_BROWSER_TOOLS")}/package.json`);
const { chromium } = tools("playwright-core");
const axeSource = readFileSync(tools.resolve("axe-core/axe.min.js"), "utf8");

const base = env("CONSOLE_URL");
const idleBase = env("CONSOLE_IDLE_URL");
const admin = env("CONSOLE_ADMIN");
const password = env("CONSOLE_PASSWORD");
const secret = Buffer.from(env("CONSOLE_TOTP_SECRET_HEX"), "hex");
const jobId = env("CONSOLE_JOB_ID");
const queue = env("CONSOLE_QUEUE");
const tenant = env("CONSOLE_TENANT");
const shots = process.env.CONSOLE_SCREENSHOTS;

/** RFC 6238: the six-digit code for now, or for the next step when now's
 * was used already (the console takes each step once; one step of drift is
 * allowed, so the next code works at once, as an authenticator's would). */
let lastStep = 0;
function totp() {
  const step = Math.max(Math.floor(Date.now() / 1000 / 30), lastStep + 1);
  lastStep = step;
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const digest = createHmac("sha1", secret).update(counter).digest();
  const offset = digest[19] & 0x0f;
  const binary = digest.readUInt32BE(offset) & 0x7fffffff;
  return String(binary % 1_000_000).padStart(6, "0");
}

function check(condition, what) {
  if (!condition) throw new Error(`FAILED: ${what}`);
  console.log(`ok - ${what}`);
}

const consoleErrors = [];

/** axe-core on the page as it stands (no serious or critical violation),
 * and a screenshot when asked. axe is evaluated through the DevTools
 * protocol, which the page's CSP does not govern; the page's own scripts
 * still are. */
async function inspect(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    globalThis.axe.run(document, { resultTypes: ["violations"] }),
  );
  const serious = result.violations.filter((v) => ["serious", "critical"].includes(v.impact));
  const detail = serious.map((v) => `${v.id} at ${v.nodes.map((n) => n.target.join(" ")).join("; ")}`);
  check(serious.length === 0, `axe finds no serious or critical violation on ${name}${detail.length ? `: ${detail.join(" | ")}` : ""}`);
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

async function sessionCookie(context, url) {
  const cookies = await context.cookies(url);
  return cookies.find((c) => c.name === "__Host-console");
}

async function logIn(page, url) {
  await page.goto(`${url}/console/login`);
  await page.getByLabel("Username").fill(admin);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${url}/console/second-factor`);
  await page.getByLabel("Code from your authenticator, or a recovery code").fill(totp());
  await page.getByRole("button", { name: "Continue" }).click();
  await page.waitForURL(`${url}/console`);
}

/** A page on another origin whose form posts to the console at once. */
function startForger() {
  return new Promise((resolve) => {
    const server = http.createServer((request, response) => {
      response.setHeader("content-type", "text/html");
      response.end(`<!doctype html><title>prize</title>
<form method="post" action="${base}/console/logout-everywhere"><input name="csrf" value="guessed"></form>
<script>document.forms[0].submit()</script>`);
    });
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(`${page.url()}: ${message.text()}`);
  });

  // Session fixation: a cookie planted before login is never the session.
  await context.addCookies([
    {
      name: "__Host-console",
      value: "planted-before-login",
      domain: new URL(base).hostname,
      path: "/",
      secure: true,
      httpOnly: true,
      sameSite: "Lax",
    },
  ]);
  await page.goto(`${base}/console`);
  check(page.url() === `${base}/console/login`, "a signed-out visit lands on the login page");
  await inspect(page, "login");
  await page.getByLabel("Username").fill(admin);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${base}/console/second-factor`);
  await inspect(page, "second-factor");
  await page.getByLabel("Code from your authenticator, or a recovery code").fill(totp());
  await page.getByRole("button", { name: "Continue" }).click();
  await page.waitForURL(`${base}/console`);
  const cookie = await sessionCookie(context, base);
  check(cookie && cookie.value !== "planted-before-login", "the session id changes at login");
  check(cookie.httpOnly && cookie.secure && cookie.sameSite === "Lax", "the cookie is HttpOnly, Secure and SameSite=Lax");

  // The overview.
  check(await page.getByRole("heading", { name: "Platform overview" }).isVisible(), "the overview shows");
  await inspect(page, "overview");

  // Jobs: filter, inspect, cancel and retry, pause the queue.
  await page.getByRole("link", { name: "Jobs", exact: true }).click();
  await page.waitForURL(`${base}/console/jobs`);
  await inspect(page, "jobs");
  await page.getByLabel("State").selectOption("available");
  await page.getByLabel("Queue", { exact: true }).fill(queue);
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL((url) => url.searchParams.get("queue") === queue && url.searchParams.get("state") === "available");
  check(await page.getByRole("link", { name: jobId, exact: true }).isVisible(), "the filtered list shows the job");
  check((await page.getByLabel("Queue", { exact: true }).inputValue()) === queue, "the filter is kept on the page");
  await page.getByRole("link", { name: jobId, exact: true }).click();
  await page.waitForURL(`${base}/console/jobs/${jobId}`);
  await inspect(page, "job");
  await page.getByRole("link", { name: "Cancel this job" }).click();
  await page.waitForURL(`${base}/console/jobs/${jobId}/cancel`);
  await inspect(page, "confirm");
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.waitForURL(`${base}/console/jobs/${jobId}?done=cancel`);
  check((await page.locator("dl.facts dd").first().textContent()) === "cancelled", "the cancelled job shows cancelled");
  await page.getByRole("link", { name: "Retry this job now" }).click();
  await page.getByRole("button", { name: "Retry now" }).click();
  await page.waitForURL(`${base}/console/jobs/${jobId}?done=retry`);
  check((await page.locator("dl.facts dd").first().textContent()) === "available", "the retried job is available again");
  await page.goto(`${base}/console/jobs`);
  await page.getByRole("link", { name: `Pause queue ${queue}` }).click();
  await page.getByRole("button", { name: "Pause" }).click();
  await page.waitForURL(`${base}/console/jobs`);
  check(await page.getByRole("link", { name: `Resume queue ${queue}` }).isVisible(), "the paused queue offers resume");

  // The pipeline and the anomalies.
  await page.getByRole("link", { name: "Pipeline", exact: true }).click();
  check(await page.getByRole("heading", { name: "Ingest pipeline" }).isVisible(), "the pipeline page shows");
  await inspect(page, "pipeline");

  // Dead letters: inspect one, correct it and resubmit it.
  await page.getByRole("link", { name: "Dead letters", exact: true }).click();
  await page.getByLabel("Tenant").selectOption(tenant);
  await page.getByRole("button", { name: "Show" }).click();
  await inspect(page, "dead-letters");
  await page.getByRole("row").filter({ hasText: "e2e-bad" }).getByRole("link").click();
  check(await page.getByRole("heading", { name: new RegExp(`^Dead letter \\d+ of ${tenant}$`) }).isVisible(), "a dead letter shows");
  check(await page.getByText("must be finite").isVisible(), "the letter says what is wrong");
  await inspect(page, "dead-letter");
  await page.getByLabel("Value", { exact: true }).fill("20.5");
  await page.getByRole("button", { name: "Resubmit corrected reading" }).click();
  await page.waitForURL((url) => url.pathname === "/console/dead-letters" && url.searchParams.get("done") === "resubmitted");
  check(await page.getByText("The reading was stored and its dead letter removed.").isVisible(), "the corrected reading is stored");
  check((await page.getByRole("row").filter({ hasText: "e2e-bad" }).count()) === 0, "its dead letter is gone");

  await page.getByRole("link", { name: "Anomalies", exact: true }).click();
  check(await page.getByRole("heading", { name: "Anomalous windows" }).isVisible(), "the anomalies page shows");
  check(await page.getByRole("img", { name: /^30 readings from 20 to 95/ }).isVisible(), "an anomalous window's chart is drawn");
  await inspect(page, "anomalies");

  // Tenants: create a key (shown once) and revoke it.
  await page.getByRole("link", { name: "Tenants", exact: true }).click();
  await inspect(page, "tenants");
  await page.getByRole("link", { name: tenant, exact: true }).click();
  await page.waitForURL(`${base}/console/tenants/${tenant}`);
  await inspect(page, "tenant");
  await page.getByLabel("Name (who uses it)").fill("browser test");
  await page.getByLabel("results:read").check();
  await page.getByRole("button", { name: "Create key" }).click();
  const key = await page.getByLabel("New key (shown once)").inputValue();
  check(key.startsWith(`plk.${tenant}.`), "a new key is shown once");
  const keyId = key.split(".")[2];
  await page.getByRole("link", { name: `Revoke key ${keyId}` }).click();
  await page.getByRole("button", { name: "Revoke" }).click();
  check(await page.getByText(`Key ${keyId} revoked.`).isVisible(), "the key is revoked");

  // Admin pages and the password page.
  for (const [link, name] of [["Operators", "operators"], ["Audit log", "audit"], ["Password", "password"]]) {
    await page.getByRole("link", { name: link, exact: true }).click();
    await inspect(page, name);
  }
  await page.getByRole("link", { name: "Audit log", exact: true }).click();
  for (const action of ["job.cancel", "job.retry", "queue.pause", "dead_letter.resubmit", "key.create", "key.revoke"]) {
    check(await page.getByRole("cell", { name: action, exact: true }).first().isVisible(), `the audit log records ${action}`);
  }

  // A forged form on another origin is refused, and the session survives.
  const forger = await startForger();
  const forged = await context.newPage();
  const refused = forged.waitForResponse((r) => r.url() === `${base}/console/logout-everywhere`);
  await forged.goto(`http://127.0.0.1:${forger.address().port}/`);
  const answer = await refused;
  check(answer.status() === 403, "a cross-site form post is refused with 403");
  check((await answer.text()).startsWith("cross-site request refused"), "the refusal says why");
  forger.close();
  await page.goto(`${base}/console`);
  check(page.url() === `${base}/console`, "the session survives the forgery");

  // Logging out.
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForURL(`${base}/console/login`);
  await page.goto(`${base}/console`);
  check(page.url() === `${base}/console/login`, "after logout the console asks to log in");

  // An idle session ends (the second gateway idles sessions out after 1 s).
  const idle = await browser.newContext();
  const idlePage = await idle.newPage();
  await logIn(idlePage, idleBase);
  await new Promise((resolve) => setTimeout(resolve, 2500));
  await idlePage.goto(`${idleBase}/console`);
  check(idlePage.url() === `${idleBase}/console/login`, "an idle session expires");

  check(consoleErrors.length === 0, `no console error or CSP violation in the browser${consoleErrors.length ? `: ${consoleErrors.join(" | ")}` : ""}`);
} finally {
  await browser.close();
}
