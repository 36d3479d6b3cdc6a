/**
 * The server the stress and benchmark scripts drive, in a process of its own
 * so that its memory can be read apart from theirs. Prints one line,
 * `{"port":N}`, once listening; closes gracefully on SIGTERM.
 *
 *     npx tsx stress/server.ts [--max-connections N]
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { startServer } from "../rpc.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { "max-connections": { type: "string", default: "1000" } },
});
const server = await startServer({ port: 0, maxConnections: Number(values["max-connections"]) });
console.log(JSON.stringify({ port: server.port }));
process.once("SIGTERM", async () => {
  await server.close();
  process.exit(0);
});
