// One graphile-worker process running a no-op task: the peer of the
// shipped `worker` binary in apps/worker/bench/side_by_side.py.
//
// Usage: node worker.mjs <connection string> <concurrent jobs> <local queue size> <complete batch delay ms>
// Prints "ready" once it is listening for jobs, then its progress; exits
// on SIGTERM/SIGINT.
import { run } from "graphile-worker";

const [connectionString, concurrency, localQueueSize, batchDelay] = process.argv.slice(2);

const runner = await run({
  connectionString,
  concurrency: Number(concurrency),
  // Every job needs a connection for its completion unless batched; the
  // documented sizing is concurrency + 2.
  maxPoolSize: Number(concurrency) + 2,
  pollInterval: 2000,
  noHandleSignals: false,
  logger: undefined,
  preset: {
    worker: {
      localQueue: { size: Number(localQueueSize) },
      completeJobBatchDelay: Number(batchDelay),
      failJobBatchDelay: Number(batchDelay),
    },
  },
  taskList: {
    noop: async () => {},
  },
});
// Progress for the driver: "<epoch ms> <jobs completed so far>" every 50 ms
// while it changes (cheaper than polling the job table, whose rows this
// engine deletes).
let completed = 0;
let reported = 0;
runner.events.on("job:complete", () => {
  completed += 1;
});
const progress = setInterval(() => {
  if (completed !== reported) {
    reported = completed;
    console.log(`${Date.now()} ${completed}`);
  }
}, 50);
console.log("ready");
await runner.promise;
clearInterval(progress);
console.log(`${Date.now()} ${completed}`);
