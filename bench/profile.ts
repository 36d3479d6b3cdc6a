/**
 * Where a server's time goes: runs stress/server.ts (or bench/floor.ts) under
 * the runtime's own CPU profiler (`--cpu-prof` on Node, Deno and Bun) while
 * one of the benchmark's loads runs, and prints the functions that took the
 * most CPU, by self time, idle excluded.
 *
 *     npx tsx bench/profile.ts                                   # rpc.ts on Node, pipelined
 *     npx tsx bench/profile.ts --runtime deno --load per-call
 *     npx tsx bench/profile.ts --server floor                    # the floor, for comparison
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { command, type Runtime, version } from "../stress/child.ts";
import { bareClient, barePerCallClient } from "./loads.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    runtime: { type: "string", default: "node" },
    load: { type: "string", default: "pipelined" },
    server: { type: "string", default: "rpc.ts" },
    seconds: { type: "string", default: "4" },
    top: { type: "string", default: "15" },
  },
});
const runtime = values.runtime as Runtime;
const file = fileURLToPath(new URL(values.server === "floor" ? "./floor.ts" : "../stress/server.ts", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "rpc-profile-"));
const [bin, args] = command(runtime, file);
// The profiler's flags go before the script: `node --cpu-prof --import tsx file`, `deno run --cpu-prof -A file`...
const flags = ["--cpu-prof", `--cpu-prof-dir=${dir}`];
const argv = runtime === "deno" ? [args[0], ...flags, ...args.slice(1)] : [...flags, ...args];
const server = spawn(bin, argv, { stdio: ["ignore", "pipe", "inherit"] });
const [line] = await once(createInterface({ input: server.stdout! }), "line");
const port: number = JSON.parse(String(line)).port;

const load = values.load === "per-call" ? barePerCallClient : bareClient;
await load(port, 0.5); // warm up
const sample = await load(port, Number(values.seconds));
server.kill("SIGTERM"); // the servers exit cleanly on SIGTERM, and the profiler writes its file
await once(server, "exit");

/** A V8 CPU profile: a tree of nodes, and which node each sample landed in, with the time between samples. */
interface Profile {
  nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
  samples: number[];
  timeDeltas: number[];
}
const profileFile = readdirSync(dir).find((name) => name.endsWith(".cpuprofile"));
if (profileFile === undefined) throw new Error(`${runtime} wrote no profile in ${dir}`);
const profile: Profile = JSON.parse(readFileSync(join(dir, profileFile), "utf8"));
rmSync(dir, { recursive: true, force: true });

const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const self = new Map<string, number>();
profile.samples.forEach((id, i) => {
  const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
  if (functionName === "(idle)") return;
  const where = url === "" ? "native" : `${url.split("/").at(-1)}:${lineNumber + 1}`;
  const key = `${functionName || "(anonymous)"} (${where})`;
  self.set(key, (self.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0));
});
const total = [...self.values()].reduce((sum, time) => sum + time, 0);
console.log(
  `${values.server} on ${runtime} ${version(runtime)}, ${values.load} load: ` +
    `${Math.round(sample.calls / sample.seconds)} calls/s; CPU by function, self time, idle excluded:\n`,
);
console.log("| share | function |\n| ---: | --- |");
for (const [key, time] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))) {
  console.log(`| ${((100 * time) / total).toFixed(1)}% | ${key} |`);
}
