/**
 * Benchmark: rpc.ts's server and clients beside a floor (a bare add server
 * with no checks, bench/floor.ts) and the Python lab's server, measured the
 * same way in one run, in alternating rounds. Prints a table of calls/s, p50
 * and p99 latency and the ratio to the floor, then the targets.
 *
 *     npm run bench               # 3 rounds of 2 s per row (about two minutes)
 *     npm run bench -- --small    # 1 round of 0.5 s: a smoke test, not a measurement
 *     npm run bench -- --runtime node --runtime bun   # only these servers
 *
 * Every server runs in a child process; this process is the load. On a
 * 2-core machine that is one core each, so the client side is as fast as we
 * can make it: the "bare client" writes many requests per write and counts
 * newlines.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import os from "node:os";
import { join } from "node:path";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import {
  bareClient,
  barePerCallClient,
  connectClient,
  PER_CALL_CONCURRENCY,
  perCallClient,
  type Sample,
} from "./loads.ts";
import { cpuSeconds, type Runtime, startChild, thisRuntime, version } from "../stress/child.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { small: { type: "boolean", default: false }, runtime: { type: "string", multiple: true } },
});
const ROUNDS = values.small ? 1 : 3;
const SECONDS = values.small ? 0.5 : 2;
/** A server to measure, started in a child process. */
interface Target {
  name: string;
  port: number;
  pid: number;
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------
// The servers
// ---------------------------------------------------------------------------

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));

async function ours(runtime: Runtime): Promise<Target> {
  const child = await startChild(runtime, ["--max-connections", "10000"]);
  return { name: `rpc.ts on ${runtime}`, ...child };
}

async function floor(runtime: Runtime): Promise<Target> {
  const child = await startChild(runtime, [], here("./floor.ts"));
  return { name: `floor on ${runtime}`, ...child };
}

async function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  return typeof address === "object" && address !== null ? address.port : 0;
}

/** The Python lab's server, unchanged but for its port, or undefined without python3 or ../shared. */
async function seed(): Promise<Target | undefined> {
  const source = here("../../shared/seed/rpc_server.py");
  if (!existsSync(source)) return undefined;
  const port = await freePort();
  const copy = join(mkdtempSync(join(os.tmpdir(), "rpc-bench-")), "rpc_server.py");
  writeFileSync(copy, readFileSync(source, "utf8").replaceAll("5000", String(port)));
  const child = spawn("python3", ["-u", copy], { stdio: ["ignore", "pipe", "inherit"] });
  const started = await Promise.race([
    once(createInterface({ input: child.stdout }), "line").then(() => true),
    once(child, "error").then(() => false),
  ]);
  if (!started) return undefined;
  return {
    name: "Python lab",
    port,
    pid: child.pid ?? 0,
    async stop() {
      child.kill();
      await once(child, "exit");
    },
  };
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

interface Row {
  name: string;
  load: (port: number, seconds: number) => Promise<Sample>;
  target: Target;
  floorRow?: string;
  samples: Sample[];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const rate = (row: Row) => median(row.samples.map((sample) => sample.calls / sample.seconds));
/** The share of one core the server used, median over rounds. */
const cpuShare = (row: Row) => median(row.samples.map((sample) => (sample.serverCpu ?? 0) / sample.seconds));
/** Server CPU per call in µs, median over rounds: what a call costs the server, whoever is the bottleneck. */
const cpuPerCall = (row: Row) => median(row.samples.map((sample) => (1e6 * (sample.serverCpu ?? 0)) / sample.calls));

const runtimes = (["node", "deno", "bun"] as const)
  .filter((runtime) => values.runtime === undefined || values.runtime.includes(runtime))
  .filter((runtime) => version(runtime) !== undefined);
console.log(
  `bench: ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? "unknown CPU"}; load from ${thisRuntime()}; ` +
    `servers on ${runtimes.map((runtime) => `${runtime} ${version(runtime)}`).join(", ")}; ` +
    `${ROUNDS} round(s) of ${SECONDS} s per row${values.small ? " (--small: a smoke test)" : ""}`,
);

const rows: Row[] = [];
const targets: Target[] = [];
const PER_CALL = `bare client, one connection per call x${PER_CALL_CONCURRENCY}`;
for (const runtime of runtimes) {
  const [server, bare] = [await ours(runtime), await floor(runtime)];
  targets.push(server, bare);
  const pipelinedFloor = `floor on ${runtime}, bare client pipelined`;
  const perCallFloor = `floor on ${runtime}, ${PER_CALL}`;
  rows.push(
    { name: pipelinedFloor, load: bareClient, target: bare, samples: [] },
    {
      name: `rpc.ts on ${runtime}, bare client pipelined`,
      load: bareClient,
      target: server,
      floorRow: pipelinedFloor,
      samples: [],
    },
    {
      name: `rpc.ts on ${runtime}, connect() pipelined`,
      load: connectClient,
      target: server,
      floorRow: pipelinedFloor,
      samples: [],
    },
    { name: perCallFloor, load: barePerCallClient, target: bare, samples: [] },
    {
      name: `rpc.ts on ${runtime}, ${PER_CALL}`,
      load: barePerCallClient,
      target: server,
      floorRow: perCallFloor,
      samples: [],
    },
    {
      name: `rpc.ts on ${runtime}, rpcCall x${PER_CALL_CONCURRENCY}`,
      load: perCallClient,
      target: server,
      floorRow: perCallFloor,
      samples: [],
    },
  );
}
const python = await seed();
if (python === undefined) console.log("(the Python lab's server is skipped: it needs python3 and ../shared/seed)");
else {
  targets.push(python);
  rows.push({
    name: `Python lab, ${PER_CALL}`,
    load: barePerCallClient,
    target: python,
    floorRow: `floor on node, ${PER_CALL}`,
    samples: [],
  });
}

/** Runs one row's load, and fails loudly rather than wait forever if it never ends. */
async function measure(row: Row, seconds: number): Promise<Sample> {
  process.stderr.write(`  ${row.name} (${seconds} s)\n`);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const watchdog = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${row.name}: still running ${seconds + 15} s after it began`)),
      (seconds + 15) * 1000,
    );
  });
  const cpuBefore = cpuSeconds(row.target.pid);
  try {
    const sample = await Promise.race([row.load(row.target.port, seconds), watchdog]);
    return { ...sample, serverCpu: cpuSeconds(row.target.pid) - cpuBefore };
  } finally {
    clearTimeout(timer);
  }
}

for (const row of rows) await measure(row, 0.3); // warm up every JIT involved
for (let round = 0; round < ROUNDS; round++) {
  for (const row of rows) row.samples.push(await measure(row, SECONDS));
}
for (const target of targets) await target.stop();

const byName = new Map(rows.map((row) => [row.name, row]));
console.log("\n| server and load | calls/s | p50 ms | p99 ms | x floor | server CPU | server µs/call | failed |");
console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const row of rows) {
  const latencies = row.samples.flatMap((sample) => sample.latencies);
  const floorRow = row.floorRow === undefined ? undefined : byName.get(row.floorRow);
  const ratio = floorRow === undefined ? "1.00" : (rate(row) / rate(floorRow)).toFixed(2);
  console.log(
    `| ${row.name} | ${Math.round(rate(row))} | ${percentile(latencies, 50).toFixed(2)} | ${
      percentile(latencies, 99).toFixed(2)
    } | ${ratio} | ` +
      `${(100 * cpuShare(row)).toFixed(0)}% | ${cpuPerCall(row).toFixed(2)} | ${
        row.samples.reduce((n, sample) => n + (sample.failed ?? 0), 0)
      } |`,
  );
}

/** The ratio of two rows' median calls/s. */
function ratio(name: string, to: string): number {
  const [a, b] = [byName.get(name), byName.get(to)];
  return a === undefined || b === undefined ? Number.NaN : rate(a) / rate(b);
}

const checks: Array<[string, number, number]> = [
  [
    "server, pipelined, x floor",
    ratio("rpc.ts on node, bare client pipelined", "floor on node, bare client pipelined"),
    0.85,
  ],
  ["server, one call per connection, x floor", ratio(`rpc.ts on node, ${PER_CALL}`, `floor on node, ${PER_CALL}`), 0.9],
  ["server, one call per connection, x Python lab", ratio(`rpc.ts on node, ${PER_CALL}`, `Python lab, ${PER_CALL}`), 5],
  [
    "connect() pipelined, x rpcCall",
    ratio("rpc.ts on node, connect() pipelined", `rpc.ts on node, rpcCall x${PER_CALL_CONCURRENCY}`),
    8,
  ],
  [
    "connect() pipelined, x bare client on the same server",
    ratio("rpc.ts on node, connect() pipelined", "rpc.ts on node, bare client pipelined"),
    0.8,
  ],
];
console.log("");
for (const [what, value, least] of checks) {
  const verdict = Number.isNaN(value) ? "SKIP" : value >= least ? "MET " : "MISS";
  console.log(`${verdict} ${what}: ${value.toFixed(2)} (target at least ${least})`);
}
