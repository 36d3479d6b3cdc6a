/**
 * The cluster, checked as a user would use it: start `deploy/cluster.ts`,
 * call through HAProxy and see the calls spread over the servers, restart
 * every server under load (SIGHUP) and count the calls lost, stop it
 * (SIGTERM) and check that nothing is left running. Exits 1 if a check fails.
 *
 *     npx tsx deploy/check.ts              # 2 servers; 50 clients, one call per connection
 *     npx tsx deploy/check.ts --measure    # also calls/s through HAProxy, with one server and with two
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:net";
import process from "node:process";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { resultOf, rpcCall } from "../rpc.ts";
import { bareClient, barePerCallClient, type Sample } from "../bench/loads.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { measure: { type: "boolean", default: false } },
});
const CLIENTS = 50;
const verdicts: Array<{ ok: boolean; text: string }> = [];
const check = (ok: boolean, text: string) => {
  verdicts.push({ ok, text });
  console.log(`${ok ? "PASS" : "FAIL"} ${text}`);
};

/** A port P such that P, P+1 and P+2 are free: HAProxy's and two servers'. */
async function freePorts(): Promise<number> {
  for (;;) {
    const base = 20_000 + Math.floor(Math.random() * 12_000); // below the ports the system hands to clients
    const free = await Promise.all([0, 1, 2].map((i) => isFree(base + i)));
    if (free.every(Boolean)) return base;
  }
}

function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer().once("error", () => resolve(false));
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
  });
}

/** A running cluster.ts: its process, every line it has printed, and a way to wait for one. */
interface Cluster {
  process: ChildProcess;
  lines: string[];
  waitFor(text: string, timeoutMs: number): Promise<void>;
}

async function startCluster(port: number, servers: number): Promise<Cluster> {
  const file = fileURLToPath(new URL("./cluster.ts", import.meta.url));
  const args = [file, "--port", String(port), "--servers", String(servers)];
  const child = spawn(process.execPath, [...process.execArgv, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on("line", (line) => lines.push(line));
  async function waitFor(text: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!lines.some((line) => line.includes(text))) {
      if (Date.now() > deadline || child.exitCode !== null) {
        throw new Error(`cluster.ts did not print "${text}" within ${timeoutMs} ms:\n${lines.join("\n")}`);
      }
      await delay(50);
    }
  }
  const cluster = { process: child, lines, waitFor };
  await waitFor("Try:", 20_000);
  return cluster;
}

/** The pids cluster.ts printed: HAProxy's and each server's. */
function pids(lines: string[]): number[] {
  return lines.flatMap((line) => [...line.matchAll(/pid (\d+)/g)].map((match) => Number(match[1])));
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false; // ESRCH: no such process
  }
}

/** CLIENTS callers, each making one call per connection until `stop` resolves; every reply is checked. */
async function load(port: number, stop: Promise<void>): Promise<{ answered: number; lost: string[] }> {
  let running = true;
  stop.then(() => (running = false));
  let answered = 0;
  const lost: string[] = [];
  await Promise.all(Array.from({ length: CLIENTS }, async (_, client) => {
    for (let i = 0; running; i++) {
      try {
        if (resultOf(await rpcCall("add", [client, i], { port })) !== client + i) throw new Error("wrong result");
        answered++;
      } catch (error) {
        lost.push(String(error instanceof Error ? error.message : error));
      }
    }
  }));
  return { answered, lost };
}

async function stopCluster(cluster: Cluster, port: number): Promise<void> {
  const started = [...new Set(pids(cluster.lines))];
  const exited = once(cluster.process, "exit");
  cluster.process.kill("SIGTERM");
  const [code] = await exited;
  check(code === 0, `SIGTERM stops the cluster (exit code ${code})`);
  const left = started.filter(isRunning);
  check(left.length === 0, `no process is left running (${started.length} started, ${left.length} left)`);
  check(await isFree(port), `port ${port} is free again`);
}

async function rate(port: number, run: (port: number, seconds: number) => Promise<Sample>): Promise<number> {
  await run(port, 0.5); // warm up
  const samples = [await run(port, 2), await run(port, 2), await run(port, 2)];
  const rates = samples.map((sample) => sample.calls / sample.seconds).sort((a, b) => a - b);
  return rates[1];
}

// ---------------------------------------------------------------------------

const port = await freePorts();
console.log(`check: cluster.ts on port ${port} with 2 servers, ${CLIENTS} clients making one call per connection`);
const cluster = await startCluster(port, 2);

const who = await Promise.all(Array.from({ length: 20 }, () => rpcCall("whoami", [], { port }).then(resultOf)));
const spread = new Map<unknown, number>();
for (const server of who) spread.set(server, (spread.get(server) ?? 0) + 1);
check(spread.size === 2, `20 calls through HAProxy spread over both servers (${[...spread.values()].join(" + ")})`);

let restarted: () => void = () => {};
const stop = new Promise<void>((resolve) => (restarted = resolve));
const started = performance.now();
const calls = load(port, stop);
await delay(1000);
cluster.process.kill("SIGHUP");
await cluster.waitFor("Rolling restart done.", 60_000);
await delay(1000);
restarted();
const { answered, lost } = await calls;
const seconds = (performance.now() - started) / 1000;
const restarts = cluster.lines.filter((line) => line.includes("restarted, pid")).length;
check(restarts === 2, `SIGHUP restarted both servers, one at a time (${restarts} restarted)`);
check(
  lost.length === 0,
  `0 calls lost during the rolling restart: ${lost.length} lost of ${answered + lost.length} in ${
    seconds.toFixed(1)
  } s` +
    (lost.length > 0 ? ` (first: ${lost[0]})` : ""),
);
await stopCluster(cluster, port);

if (values.measure) {
  console.log("\nThrough HAProxy, calls/s (median of 3 rounds of 2 s):");
  console.log("| servers | bare client pipelined | bare client, one connection per call x50 |");
  console.log("| ---: | ---: | ---: |");
  for (const servers of [1, 2]) {
    const measured = await startCluster(port, servers);
    const pipelined = await rate(port, bareClient);
    const perCall = await rate(port, barePerCallClient);
    console.log(`| ${servers} | ${Math.round(pipelined)} | ${Math.round(perCall)} |`);
    measured.process.kill("SIGTERM");
    await once(measured.process, "exit");
  }
}

const failed = verdicts.filter((verdict) => !verdict.ok).length;
console.log(`\ncluster checks: ${verdicts.length - failed} passed, ${failed} failed`);
process.exitCode = failed === 0 ? 0 : 1;
