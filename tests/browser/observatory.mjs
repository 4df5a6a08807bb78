// The MDN HTTP Observatory's tests (npm @mdn/mdn-http-observatory, pinned
// in package-lock.json) on one page of a local server. Its CLI scans only
// a host's root on the default ports, so this calls its retriever with the
// page's path and ports and runs every test the CLI would. Run by
// tests/tests/platform/console_browser.rs with:
//
//   CONSOLE_BROWSER_TOOLS (the folder with node_modules), OBSERVATORY_HOST,
//   OBSERVATORY_PATH, OBSERVATORY_HTTPS_PORT, OBSERVATORY_HTTP_PORT, and
//   NODE_EXTRA_CA_CERTS (the CA of the server's certificate).
//
// Prints each test's name, result and pass as JSON lines; exits 1 if any
// test fails.

import { existsSync, writeFileSync } from "node:fs";
import path from "node:path";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const dir = path.join(env("CONSOLE_BROWSER_TOOLS"), "node_modules/@mdn/mdn-http-observatory");
// Offline: the package's install script would download the HSTS preload
// list and the TLD list; empty ones say "not preloaded", which no test
// here depends on.
for (const [file, empty] of [["conf/hsts-preload.json", "{}"], ["conf/tld-list.json", "[]"]]) {
  if (!existsSync(path.join(dir, file))) writeFileSync(path.join(dir, file), empty);
}
const { retrieve } = await import(path.join(dir, "src/retriever/retriever.js"));
const { ALL_TESTS } = await import(path.join(dir, "src/constants.js"));

const retrieved = await retrieve(env("OBSERVATORY_HOST"), {
  path: env("OBSERVATORY_PATH"),
  httpPort: Number(env("OBSERVATORY_HTTP_PORT")),
  httpsPort: Number(env("OBSERVATORY_HTTPS_PORT")),
});
if (!retrieved.responses.auto) throw new Error("the page did not answer");
let failed = 0;
for (const test of ALL_TESTS) {
  const outcome = test(retrieved);
  console.log(JSON.stringify({ result: outcome.result, pass: outcome.pass }));
  if (!outcome.pass) failed += 1;
}
if (failed > 0) {
  console.error(`${failed} observatory test(s) failed`);
  process.exit(1);
}
