// Bulk insert through graphile-worker's own API (WorkerUtils.addJobs), in
// batches, timed from the first call to the last answer.
//
// Usage: node add_jobs.mjs <connection string> <jobs> <batch>
// Prints "<jobs> <seconds>".
import { makeWorkerUtils } from "graphile-worker";

const [connectionString, total, batch] = process.argv.slice(2).map((v, i) => (i === 0 ? v : Number(v)));
const utils = await makeWorkerUtils({ connectionString });
const started = process.hrtime.bigint();
let added = 0;
while (added < total) {
  const n = Math.min(batch, total - added);
  const specs = Array.from({ length: n }, () => ({ identifier: "noop", payload: {} }));
  added += (await utils.addJobs(specs)).length;
}
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
await utils.release();
console.log(`${added} ${seconds}`);
