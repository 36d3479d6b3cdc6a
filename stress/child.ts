/**
 * Starts a script (by default `stress/server.ts`) on a chosen runtime in a
 * child process, and reads the child's memory from Linux's /proc.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The runtimes a server can run on. */
export type Runtime = "node" | "deno" | "bun";

/** A server in a child process. */
export interface ChildServer {
  port: number;
  pid: number;
  /** Resident memory now, in MB (read from /proc, so Linux only). */
  rssMb(): number;
  /** Sends a signal (SIGTERM: close gracefully), then waits for the process to exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** The binary for a runtime: CI's copy in .ci/node_modules if there, else the one on PATH. */
function binary(runtime: "deno" | "bun"): string {
  const local = fileURLToPath(new URL(`../.ci/node_modules/.bin/${runtime}`, import.meta.url));
  return existsSync(local) ? local : runtime;
}

const versions = process.versions as { deno?: string; bun?: string };

/** The runtime running this script, with its version, for the first line of output. */
export function thisRuntime(): string {
  if (versions.deno !== undefined) return `Deno ${versions.deno}`;
  if (versions.bun !== undefined) return `Bun ${versions.bun}`;
  return `Node ${process.version}`;
}

/** Node itself: this process when it is Node, else the `node` on PATH. */
const nodeBinary = versions.deno === undefined && versions.bun === undefined ? process.execPath : "node";

/** The command that runs a TypeScript file on `runtime`. */
export function command(runtime: Runtime, file: string): [string, string[]] {
  if (runtime === "deno") return [binary("deno"), ["run", "-A", file]];
  if (runtime === "bun") return [binary("bun"), [file]];
  return [nodeBinary, ["--import", "tsx", file]]; // Node 20 needs tsx to read TypeScript
}

/** The runtime's version number ("2.9.6"), or undefined when it cannot be started here. */
export function version(runtime: Runtime): string | undefined {
  const result = spawnSync(runtime === "node" ? nodeBinary : binary(runtime), ["--version"], { encoding: "utf8" });
  return result.status === 0 ? result.stdout.match(/\d+\.\d+\.\d+/)?.[0] : undefined;
}

const PAGE_BYTES = 4096;

/** Resident memory of a process in MB: the second field of /proc/PID/statm, in pages. */
export function rssMb(pid: number): number {
  const pages = Number(readFileSync(`/proc/${pid}/statm`, "utf8").split(" ")[1]);
  return (pages * PAGE_BYTES) / (1024 * 1024);
}

const CLOCK_TICKS_PER_SECOND = 100; // Linux's USER_HZ

/** CPU time a process has used, in seconds: utime + stime, fields 14 and 15 of /proc/PID/stat. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // the name, in parentheses, may hold spaces
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/** Starts `file` (default: stress/server.ts) and waits for its `{"port":N}` line. */
export async function startChild(runtime: Runtime, args: string[] = [], file?: string): Promise<ChildServer> {
  const script = file ?? fileURLToPath(new URL("./server.ts", import.meta.url));
  const [bin, baseArgs] = command(runtime, script);
  const child = spawn(bin, [...baseArgs, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const lines = createInterface({ input: child.stdout });
  const port = await new Promise<number>((resolve, reject) => {
    lines.once("line", (line) => resolve(JSON.parse(line).port));
    child.once("exit", (code) => reject(new Error(`${bin} ${script} exited with ${code} before listening`)));
  });
  const pid = child.pid ?? 0;
  return {
    port,
    pid,
    rssMb: () => rssMb(pid),
    async stop(signal = "SIGTERM") {
      child.kill(signal);
      await exited;
    },
  };
}
