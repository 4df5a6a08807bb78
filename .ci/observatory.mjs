// MDN HTTP Observatory (npm @mdn/mdn-http-observatory, pinned by
// .ci/api-checks) against the gateway's TLS listener: every test run on the
// pages a client meets, each result asserted. The package's own CLI scans
// only the default ports and "/", so this calls its retriever and tests
// the way its scanner does, with our port and path.
//
// Usage: node observatory.mjs <package dir> <host> <https port> <path>...
// (NODE_EXTRA_CA_CERTS must name the CA that signed the gateway's cert).
import path from "node:path";
import { pathToFileURL } from "node:url";

const [packageDir, host, httpsPort, ...paths] = process.argv.slice(2);
const load = (file) => import(pathToFileURL(path.join(packageDir, file)).href);
const { retrieve } = await load("src/retriever/retriever.js");
const { ALL_TESTS } = await load("src/constants.js");
const { getGradeForScore, getScoreModifier } = await load("src/grader/grader.js");
const { MINIMUM_SCORE_FOR_EXTRA_CREDIT } = await load("src/grader/charts.js");

// What each test must say. Tests whose expectation is not a pass say why.
const EXPECTED = {
  "content-security-policy": ["csp-implemented-with-no-unsafe-default-src-none",
    // /docs/ (Swagger UI) sets inline styles, which its own CSP allows.
    "csp-implemented-with-unsafe-inline-in-style-src-only"],
  cookies: ["cookies-not-found"],
  "cross-origin-resource-sharing": ["cross-origin-resource-sharing-not-implemented"],
  // The API serves HTTPS only: no plaintext port to redirect from.
  redirection: ["redirection-not-needed-no-http"],
  // "private" is the result for no-referrer.
  "referrer-policy": ["referrer-policy-private"],
  "strict-transport-security": ["hsts-implemented-max-age-at-least-six-months"],
  // Our pages load only their own same-origin scripts.
  "subresource-integrity": ["sri-not-implemented-but-all-scripts-loaded-from-secure-origin",
    "sri-not-implemented-response-not-html"],
  "x-content-type-options": ["x-content-type-options-nosniff"],
  "x-frame-options": ["x-frame-options-implemented-via-csp"],
  "cross-origin-resource-policy": ["corp-implemented-with-same-origin"],
};

let failures = 0;
for (const page of paths) {
  const retrieved = await retrieve(host, { httpsPort, httpPort: "1", path: page });
  const status = retrieved.responses.auto?.status;
  if (!status) {
    console.error(`${page}: the gateway did not answer over HTTPS`);
    process.exit(1);
  }
  const outputs = ALL_TESTS.map((test) => test(retrieved));
  // The scanner's scoring: penalties always, bonuses only from an A up.
  const modifiers = outputs.map((o) => getScoreModifier(o.result));
  const uncurved = 100 + modifiers.filter((m) => m < 0).reduce((a, b) => a + b, 0);
  const score = uncurved >= MINIMUM_SCORE_FOR_EXTRA_CREDIT
    ? 100 + modifiers.reduce((a, b) => a + b, 0)
    : uncurved;
  const { grade } = getGradeForScore(score);
  console.log(`${page} (HTTP ${status}): score ${score}, grade ${grade}`);
  for (const output of outputs) {
    const name = output.constructor.name
      .replace(/Output$/, "")
      .replace(/([a-z])([A-Z])/g, "$1-$2")
      .toLowerCase();
    const key = Object.keys(EXPECTED).find((k) => k.replace(/-/g, "") === name.replace(/-/g, ""));
    const expected = key === undefined ? undefined : EXPECTED[key];
    let verdict;
    if (expected === null) {
      verdict = "excluded";
    } else if (expected === undefined) {
      verdict = "UNEXPECTED TEST";
      failures += 1;
    } else if (expected.includes(output.result)) {
      verdict = "ok";
    } else {
      verdict = `FAILED (expected ${expected.join(" or ")})`;
      failures += 1;
    }
    console.log(`  ${(key ?? name).padEnd(32)} ${output.result.padEnd(58)} ${verdict}`);
  }
}
if (failures > 0) {
  console.error(`${failures} Observatory test(s) did not give the expected result`);
  process.exit(1);
}
