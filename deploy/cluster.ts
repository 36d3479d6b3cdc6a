/**
 * A cluster in one command: N rpc.ts servers (`demo.ts serve`, each on a port
 * of its own) behind HAProxy, which balances connections over them.
 *
 *     npm run cluster                               # HAProxy on 5000; servers on 5001, 5002
 *     npm run cluster -- --port 6000 --servers 3
 *
 * Ctrl+C (or SIGTERM) stops HAProxy and every server, leaving no process
 * behind. SIGHUP restarts the servers one at a time without losing a call:
 * drain the server in HAProxy, wait for its connections to finish, stop it,
 * start it again, wait until HAProxy sees it healthy, let traffic back in.
 * That is how a new version of a handler is deployed with no call dropped.
 *
 * Needs HAProxy (Debian/Ubuntu: `apt-get install haproxy`; macOS: `brew
 * install haproxy`). The balancing, the health checks and the retries are
 * HAProxy's, configured in deploy/haproxy.cfg; this file only starts things,
 * restarts them in order, and stops them.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { port: { type: "string", default: "5000" }, servers: { type: "string", default: "2" } },
});
const port = Number(values.port);
const count = Number(values.servers);
const BACKEND = "rpc_servers"; // the backend's name in haproxy.cfg
const DRAIN_LIMIT_MS = 10_000; // how long a draining server's connections may take to finish
const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));

if (spawnSync("haproxy", ["-v"]).error !== undefined) {
  console.error(
    "HAProxy is not installed. Debian or Ubuntu: `sudo apt-get install haproxy`; macOS: `brew install haproxy`.",
  );
  process.exit(1);
}

/** One rpc.ts server: its name in HAProxy, its port, and its process while it runs. */
interface Server {
  name: string;
  port: number;
  process?: ChildProcess;
}

const servers: Server[] = Array.from({ length: count }, (_, i) => ({ name: `s${i + 1}`, port: port + i + 1 }));
const dir = mkdtempSync(join(tmpdir(), "rpc-cluster-"));
const adminSocket = join(dir, "admin.sock");
let haproxy: ChildProcess | undefined;

/**
 * Prints a line from a server's terminal, prefixed with its name. Not the
 * health checks' connections: one every 500 ms per server, each ended by
 * HAProxy with a reset (ECONNRESET), would bury everything else. Nor the
 * server's "Ctrl+C stops": here Ctrl+C stops the whole cluster.
 */
function relay(server: Server, line: string): void {
  if (line.trim() === "" || /Client connected|more connections|ECONNRESET|Waiting for clients/.test(line)) return;
  console.log(`  [${server.name}] ${line.trim()}`);
}

/** Starts `demo.ts serve` for one server, on the runtime running this file, and waits until it listens. */
async function start(server: Server): Promise<void> {
  const args = [here("../demo.ts"), "serve", "--port", String(server.port)];
  // tsx's loader is in execArgv on Node 20; Deno needs `run` and the permissions in deno.json.
  const command = "Deno" in globalThis ? ["run", "-P", ...args] : [...process.execArgv, ...args];
  const child = spawn(process.execPath, command, { cwd: here(".."), stdio: ["ignore", "pipe", "inherit"] });
  server.process = child;
  const lines = createInterface({ input: child.stdout! });
  const listening = new Promise<void>((resolve, reject) => {
    lines.on("line", (line) => {
      relay(server, line);
      if (line.startsWith("RPC server on")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`${server.name} exited with ${code} before listening`)));
  });
  await listening;
}

/** Stops one server with SIGTERM (its close() answers what it accepted) and waits for it to exit. */
async function stop(server: Server): Promise<void> {
  const child = server.process;
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  await exited;
}

/** Sends one command to HAProxy's runtime API and returns its answer. */
async function admin(command: string): Promise<string> {
  const socket = createConnection(adminSocket);
  socket.setEncoding("utf8");
  socket.end(`${command}\n`);
  let answer = "";
  for await (const chunk of socket) answer += chunk;
  return answer;
}

/** What HAProxy knows of one server: its open connections (scur) and its status (UP, DOWN, DRAIN...). */
async function stat(server: Server): Promise<{ connections: number; status: string }> {
  const [header, ...rows] = (await admin("show stat")).trim().split("\n");
  const fields = header.replace(/^# /, "").split(",");
  const row = rows.map((line) => line.split(",")).find((cells) => cells[0] === BACKEND && cells[1] === server.name);
  const cell = (field: string) => row?.[fields.indexOf(field)] ?? "";
  return { connections: Number(cell("scur")), status: cell("status") };
}

/** Polls `check` every 100 ms until it is true; false if `timeoutMs` passes first. */
async function waitUntil(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return true;
    await delay(100);
  }
  return false;
}

/** Restarts the servers one at a time, so that the others carry the load meanwhile. */
async function rollingRestart(): Promise<void> {
  console.log("SIGHUP: restarting the servers one at a time.");
  for (const server of servers) {
    // Drain: HAProxy sends it no new connection; those it has go on.
    await admin(`set server ${BACKEND}/${server.name} state drain`);
    const drained = await waitUntil(async () => (await stat(server)).connections === 0, DRAIN_LIMIT_MS);
    await stop(server);
    await start(server);
    // Ready: HAProxy may send it connections again, once its health check passes.
    await admin(`set server ${BACKEND}/${server.name} state ready`);
    await waitUntil(async () => (await stat(server)).status === "UP", 10_000);
    const note = drained ? "" : ` (connections still open after ${DRAIN_LIMIT_MS / 1000} s were closed by its close())`;
    console.log(`  ${server.name} restarted, pid ${server.process?.pid}, and back in HAProxy${note}`);
  }
  console.log("Rolling restart done.");
}

let stopping = false;
/** Stops HAProxy first (no new connections), then every server; removes the temporary folder. */
async function shutdown(signal: string, exitCode = 0): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log(`\n${signal}: stopping HAProxy and the servers.`);
  if (haproxy !== undefined && haproxy.exitCode === null) {
    const exited = once(haproxy, "exit");
    haproxy.kill("SIGTERM");
    await exited;
  }
  await Promise.all(servers.map(stop));
  rmSync(dir, { recursive: true, force: true });
  console.log("Stopped; nothing is left running.");
  process.exit(exitCode);
}

process.once("SIGINT", () => shutdown("SIGINT"));
process.once("SIGTERM", () => shutdown("SIGTERM"));
let restarting: Promise<void> | undefined;
process.on("SIGHUP", () => {
  restarting ??= rollingRestart().finally(() => (restarting = undefined));
});

try {
  await Promise.all(servers.map(start));
  if (stopping) await new Promise(() => {}); // stopped while starting: shutdown() exits; start no HAProxy
  // haproxy.cfg ends with the backend: its server lines are appended here.
  const lines = servers.map((server) => `    server ${server.name} 127.0.0.1:${server.port}\n`);
  const config = join(dir, "haproxy.cfg");
  writeFileSync(config, readFileSync(here("haproxy.cfg"), "utf8") + lines.join(""));
  haproxy = spawn("haproxy", ["-f", config, "-db"], {
    env: { ...process.env, RPC_PORT: String(port), RPC_ADMIN_SOCKET: adminSocket },
    stdio: ["ignore", "inherit", "inherit"],
  });
  haproxy.once("exit", (code) => {
    if (!stopping) {
      console.error(`HAProxy exited (${code}); stopping the servers.`);
      shutdown("HAProxy gone", 1);
    }
  });
  const healthy = async () => (await Promise.all(servers.map(stat))).every((s) => s.status === "UP");
  if (!(await waitUntil(healthy, 10_000))) throw new Error("HAProxy did not see every server healthy within 10 s");
  console.log(`\nHAProxy on 127.0.0.1:${port} (pid ${haproxy.pid}), balancing connections over:`);
  for (const server of servers) console.log(`  ${server.name}  127.0.0.1:${server.port}  pid ${server.process?.pid}`);
  console.log(`Try: npx tsx demo.ts client --port ${port}`);
  console.log(`Ctrl+C stops everything; \`kill -HUP ${process.pid}\` restarts the servers one at a time.`);
} catch (error) {
  console.error(error instanceof Error ? error.message : error);
  await shutdown("error", 1);
}
