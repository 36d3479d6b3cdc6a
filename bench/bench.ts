/**
 * Benchmark: rpc.ts's server and clients beside a floor (a bare add server
 * with no checks, bench/floor.ts), jayson (a JSON-RPC library from npm, the
 * peer) and the Python lab's server, measured the same way in one run, in
 * alternating rounds, on every runtime installed. Prints the table and the
 * targets; a full run also writes bench/results.md (the table) and
 * bench/chart.svg (server CPU per call, by runtime).
 *
 *     npm run bench               # 3 rounds of 2 s per row (about three minutes)
 *     npm run bench -- --small    # 1 round of 0.5 s: a smoke test; writes no files
 *     npm run bench -- --runtime node --runtime bun   # only these servers
 *
 * Every server runs in a child process; this process is the load. On a
 * 2-core machine that is one core each, so the "server µs/call" column (the
 * CPU the server process used per call, read from /proc) is the fair
 * measure: it holds whichever side is the bottleneck.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import os from "node:os";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { cpuSeconds, type Runtime, startChild, thisRuntime, version } from "../stress/child.ts";
import {
  bareClient,
  barePerCallClient,
  connectClient,
  PER_CALL_CONCURRENCY,
  perCallClient,
  type Sample,
} from "./loads.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { small: { type: "boolean", default: false }, runtime: { type: "string", multiple: true } },
});
const ROUNDS = values.small ? 1 : 3;
const SECONDS = values.small ? 0.5 : 2;
const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));

/** A server to measure, started in a child process. */
interface Target {
  name: string;
  port: number;
  pid: number;
  stop(): Promise<void>;
}

async function child(name: string, runtime: Runtime, file?: string, args: string[] = []): Promise<Target> {
  return { name: `${name} on ${runtime}`, ...await startChild(runtime, args, file) };
}

/** A server in the Python lab's style (test/python/rpc_server.py: a thread per client), or undefined without python3. */
async function pythonLab(): Promise<Target | undefined> {
  const python = spawn("python3", ["-u", here("../test/python/rpc_server.py"), "0"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const line = await Promise.race([
    once(createInterface({ input: python.stdout }), "line").then(([text]) => String(text)),
    once(python, "error").then(() => undefined),
  ]);
  if (line === undefined) return undefined;
  return {
    name: "Python lab",
    port: Number(line.split(" ").at(-1)), // "listening on PORT"
    pid: python.pid ?? 0,
    async stop() {
      python.kill();
      await once(python, "exit");
    },
  };
}

// ---------------------------------------------------------------------------
// The rows: every server under every load that suits it
// ---------------------------------------------------------------------------

/** The two loads the chart compares: many calls on few connections, and one call per connection. */
type Kind = "pipelined" | "per connection";

interface Row {
  name: string;
  runtime?: Runtime;
  server: "floor" | "rpc.ts" | "jayson" | "Python lab";
  kind: Kind;
  /** Who makes the calls: a bare client (the same for every server), or rpc.ts's own clients. */
  client: "bare" | "connect()" | "rpcCall";
  load: (port: number, seconds: number) => Promise<Sample>;
  target: Target;
  samples: Sample[];
}

const runtimes = (["node", "deno", "bun"] as const)
  .filter((runtime) => values.runtime === undefined || values.runtime.includes(runtime))
  .filter((runtime) => version(runtime) !== undefined);
const header = `${os.cpus().length} cores, ${os.cpus()[0]?.model ?? "unknown CPU"}; load from ${thisRuntime()}; ` +
  `servers on ${runtimes.map((runtime) => `${runtime} ${version(runtime)}`).join(", ")}; ` +
  `${ROUNDS} round(s) of ${SECONDS} s per row, medians`;
console.log(`bench: ${header}${values.small ? " (--small: a smoke test)" : ""}`);

const PIPELINED = "bare client pipelined";
const PER_CALL = `bare client, one connection per call x${PER_CALL_CONCURRENCY}`;
const rows: Row[] = [];
const targets: Target[] = [];
for (const runtime of runtimes) {
  const floor = await child("floor", runtime, here("./floor.ts"));
  const ours = await child("rpc.ts", runtime, undefined, ["--max-connections", "10000"]);
  const jayson = await child("jayson", runtime, here("./jayson.ts"));
  targets.push(floor, ours, jayson);
  const bare = (server: Row["server"], target: Target, kind: Kind): Row => ({
    name: `${server} on ${runtime}, ${kind === "pipelined" ? PIPELINED : PER_CALL}`,
    runtime,
    server,
    kind,
    client: "bare",
    load: kind === "pipelined" ? bareClient : barePerCallClient,
    target,
    samples: [],
  });
  rows.push(
    bare("floor", floor, "pipelined"),
    bare("rpc.ts", ours, "pipelined"),
    bare("jayson", jayson, "pipelined"),
    {
      ...bare("rpc.ts", ours, "pipelined"),
      name: `rpc.ts on ${runtime}, connect() pipelined`,
      client: "connect()",
      load: connectClient,
    },
    bare("floor", floor, "per connection"),
    bare("rpc.ts", ours, "per connection"),
    bare("jayson", jayson, "per connection"),
    {
      ...bare("rpc.ts", ours, "per connection"),
      name: `rpc.ts on ${runtime}, rpcCall x${PER_CALL_CONCURRENCY}`,
      client: "rpcCall",
      load: perCallClient,
    },
  );
}
const python = await pythonLab();
if (python === undefined) console.log("(the Python lab's server is skipped: it needs python3)");
else {
  targets.push(python);
  rows.push({
    name: `Python lab, ${PER_CALL}`,
    server: "Python lab",
    kind: "per connection",
    client: "bare",
    load: barePerCallClient,
    target: python,
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

// ---------------------------------------------------------------------------
// Figures: the table, the targets, the chart
// ---------------------------------------------------------------------------

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
const find = (runtime: Runtime, server: Row["server"], kind: Kind) =>
  rows.find((row) => row.runtime === runtime && row.server === server && row.kind === kind && row.client === "bare");

const table = [
  "| server and load | calls/s | p50 ms | p99 ms | server CPU | server µs/call | floor µs/call ÷ this | failed |",
  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ...rows.map((row) => {
    const latencies = row.samples.flatMap((sample) => sample.latencies);
    const floor = row.runtime === undefined ? find("node", "floor", row.kind) : find(row.runtime, "floor", row.kind);
    const efficiency = floor === undefined ? "-" : (cpuPerCall(floor) / cpuPerCall(row)).toFixed(2);
    const failed = row.samples.reduce((n, sample) => n + (sample.failed ?? 0), 0);
    return `| ${row.name} | ${Math.round(rate(row))} | ${percentile(latencies, 50).toFixed(2)} | ` +
      `${percentile(latencies, 99).toFixed(2)} | ${(100 * cpuShare(row)).toFixed(0)}% | ${
        cpuPerCall(row).toFixed(2)
      } | ` +
      `${efficiency} | ${failed} |`;
  }),
];
console.log(`\n${table.join("\n")}\n`);

/** The issue's three targets, per runtime: [what, measured, at least]. */
const checks: Array<[string, number, number]> = runtimes.flatMap((runtime) => {
  const cpu = (server: Row["server"], kind: Kind) => cpuPerCall(find(runtime, server, kind)!);
  const connectRow = rows.find((row) => row.runtime === runtime && row.client === "connect()")!;
  return [
    [
      `${runtime}: pipelined, floor's CPU per call ÷ ours`,
      cpu("floor", "pipelined") / cpu("rpc.ts", "pipelined"),
      0.85,
    ],
    [
      `${runtime}: one connection per call, floor's CPU per call ÷ ours`,
      cpu("floor", "per connection") / cpu("rpc.ts", "per connection"),
      0.9,
    ],
    [
      `${runtime}: connect() pipelined ÷ bare client, calls/s`,
      rate(connectRow) / rate(find(runtime, "rpc.ts", "pipelined")!),
      0.9,
    ],
  ] satisfies Array<[string, number, number]>;
});
const verdicts = checks.map(([what, value, least]) =>
  `${value >= least ? "MET " : "MISS"} ${what}: ${value.toFixed(2)} (target at least ${least})`
);
console.log(verdicts.join("\n"));

/**
 * The chart: server CPU per call (µs, log scale: the servers differ by
 * tenfold) for each runtime, floor beside rpc.ts beside jayson, one panel
 * per load. Plain SVG, written by hand: no plotting library needed.
 */
function chart(): string {
  const servers = [["floor", "#9e9e9e"], ["rpc.ts", "#1565c0"], ["jayson", "#ef6c00"]] as const;
  const [width, height, top, bottom, left] = [900, 380, 60, 300, 60];
  const [low, high] = [0.1, 100]; // the axis, in µs
  const y = (us: number) => bottom - ((Math.log10(us) - Math.log10(low)) / Math.log10(high / low)) * (bottom - top);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${left}" y="24" font-size="16" font-weight="bold">Server CPU per call, µs (log scale; lower is better)</text>`,
  ];
  for (const us of [0.1, 1, 10, 100]) {
    parts.push(
      `<line x1="${left}" x2="${width - 20}" y1="${y(us)}" y2="${y(us)}" stroke="#e0e0e0"/>`,
      `<text x="${left - 8}" y="${y(us) + 4}" text-anchor="end">${us}</text>`,
    );
  }
  const kinds: Kind[] = ["pipelined", "per connection"];
  const panelWidth = (width - left - 20) / kinds.length;
  kinds.forEach((kind, k) => {
    const x0 = left + k * panelWidth;
    parts.push(
      `<text x="${x0 + panelWidth / 2}" y="${bottom + 50}" text-anchor="middle" font-weight="bold">` +
        `${kind === "pipelined" ? "many calls per connection" : "one call per connection"}</text>`,
    );
    const groupWidth = panelWidth / runtimes.length;
    runtimes.forEach((runtime, r) => {
      const gx = x0 + r * groupWidth;
      parts.push(`<text x="${gx + groupWidth / 2}" y="${bottom + 20}" text-anchor="middle">${runtime}</text>`);
      servers.forEach(([server, color], s) => {
        const row = find(runtime, server, kind);
        if (row === undefined) return;
        const us = cpuPerCall(row);
        const [bx, bw] = [gx + 15 + s * ((groupWidth - 30) / 3), (groupWidth - 30) / 3 - 4];
        parts.push(
          `<rect x="${bx}" y="${y(us)}" width="${bw}" height="${bottom - y(us)}" fill="${color}"/>`,
          `<text x="${bx + bw / 2}" y="${y(us) - 4}" text-anchor="middle" font-size="10">${us.toFixed(2)}</text>`,
        );
      });
    });
  });
  servers.forEach(([server, color], s) => {
    const lx = width - 300 + s * 95;
    parts.push(
      `<rect x="${lx}" y="36" width="12" height="12" fill="${color}"/>`,
      `<text x="${lx + 16}" y="46">${server}</text>`,
    );
  });
  parts.push(`<text x="${left}" y="${height - 8}" font-size="10" fill="#616161">${header}</text>`, "</svg>");
  return parts.join("\n") + "\n";
}

if (values.small) {
  console.log("\n(--small: no files written; a full run writes bench/results.md and bench/chart.svg)");
} else {
  const results = [
    `# Benchmark results`,
    "",
    `Written by \`npm run bench\`: ${header}.`,
    "",
    ...table,
    "",
    ...verdicts.map((line) => `- ${line}`),
    "",
  ];
  writeFileSync(here("./results.md"), results.join("\n"));
  writeFileSync(here("./chart.svg"), chart());
  console.log("\nWrote bench/results.md and bench/chart.svg");
}
