/**
 * The network of `demo.ts watch` (watch/network.ts), without a browser: real
 * TCP from a client through the network to an rpc.ts server, with chance
 * replaced by a list of numbers, so that each test decides which message is
 * lost and how long each waits.
 */
import { afterEach, describe, expect, test } from "vitest";
import { setTimeout as delay } from "node:timers/promises";
import { connect, FUNCTIONS, resultOf, rpcCall, startServer } from "../rpc.ts";
import { Network, type NetworkEvent, type NetworkSettings } from "../watch/network.ts";

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const RELIABLE: NetworkSettings = { loss: 0, delayMs: [0, 0], hold: false };

/**
 * A server that counts its calls, and a network in front of it. `chances` are
 * the numbers the network draws, in order (for each message: one to decide if
 * it is lost, and, when it is not, one for its delay); after them, 0.5.
 */
async function setUp(settings: NetworkSettings, chances: number[] = []) {
  let ran = 0;
  const server = await startServer({
    port: 0,
    functions: {
      ...FUNCTIONS,
      counted: () => ++ran,
      sleep: async (ms) => {
        await delay(Number(ms));
        return ms;
      },
    },
  });
  const events: NetworkEvent[] = [];
  const network = new Network(settings, server.port, (event) => events.push(event), () => chances.shift() ?? 0.5);
  const port = await network.listen(0);
  cleanups.push(() => server.close(), () => network.close());
  /** The fates of the messages sent so far: "request add(1, 2) deliver", ... */
  const sends = () =>
    events.flatMap((event) => event.kind === "send" ? [`${event.direction} ${event.label} ${event.fate}`] : []);
  const outcome = (kind: "deliver" | "lose") => events.filter((event) => event.kind === kind).length;
  return { network, port, events, sends, outcome, ran: () => ran };
}

/** Waits until `check` holds, or fails after `ms`. */
async function until(check: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(5);
  }
}

describe("the network (watch/network.ts)", () => {
  test("with no loss, no delay and no hold, a call goes through, and each message is reported sent and delivered", async () => {
    const { port, sends, outcome, events } = await setUp(RELIABLE);
    expect(await rpcCall("add", [1, 2], { port })).toEqual({ jsonrpc: "2.0", result: 3, id: 1 });
    await until(() => events.some((event) => event.kind === "close"), "the connection to close");
    expect(sends()).toEqual(["request add(1, 2) deliver", "reply 3 deliver"]);
    expect(outcome("deliver")).toBe(2);
    expect(events[0]).toMatchObject({ kind: "open", connection: 1, address: expect.stringMatching(/^127\.0\.0\.1:/) });
  });

  test("loss 1: the request is lost for real, the procedure never runs, and the call gets no reply", async () => {
    const { port, sends, ran } = await setUp({ ...RELIABLE, loss: 1 });
    await expect(rpcCall("counted", [], { port, timeoutMs: 300 })).rejects.toThrow("no reply within 300 ms");
    expect(sends()).toEqual(["request counted() lose"]);
    expect(ran()).toBe(0);
  });

  test("a lost reply: the procedure ran, and the caller cannot tell", async () => {
    // The request: 0.9 is not under the loss of 0.5, so it is delivered (then 0.5 for its delay); the reply: 0.1 is lost.
    const { port, sends, ran } = await setUp({ ...RELIABLE, loss: 0.5 }, [0.9, 0.5, 0.1]);
    await expect(rpcCall("counted", [], { port, timeoutMs: 300 })).rejects.toThrow("no reply within 300 ms");
    expect(sends()).toEqual(["request counted() deliver", "reply 1 lose"]);
    expect(ran()).toBe(1);
  });

  test("delay: two overlapping calls' replies cross, and each still reaches its own call by id", async () => {
    // Requests: delivered at once (0.9, then a delay of 0). Replies: the first waits 300 ms, the second 0.
    const { port, events } = await setUp({ ...RELIABLE, delayMs: [0, 300] }, [0.9, 0, 0.9, 0, 0.9, 1, 0.9, 0]);
    const client = await connect({ port });
    cleanups.push(() => client.close());
    const [first, second] = await Promise.all([client.call("add", [1, 1]), client.call("add", [2, 2])]);
    expect([first.result, second.result]).toEqual([2, 4]);
    const delivered = events.flatMap((event) =>
      event.kind === "deliver" ? [events.find((sent) => sent.kind === "send" && sent.id === event.id)] : []
    );
    const replies = delivered.filter((sent) => sent?.kind === "send" && sent.direction === "reply");
    expect(replies.map((sent) => sent?.kind === "send" && sent.label)).toEqual(["4", "2"]); // the second came first
  });

  test("hold: a message waits until it is delivered, and drop() loses it for real", async () => {
    const { network, port, sends, outcome } = await setUp({ ...RELIABLE, hold: true });
    const call = rpcCall("add", [1, 2], { port, timeoutMs: 2000 });
    await until(() => network.heldIds().length === 1, "the request to be held");
    await delay(100);
    expect(outcome("deliver")).toBe(0); // nothing moves by itself
    expect(network.deliver(network.heldIds()[0])).toBe(true);
    await until(() => network.heldIds().length === 1, "the reply to be held");
    expect(network.deliver(network.heldIds()[0])).toBe(true);
    expect(await call).toMatchObject({ result: 3 });
    expect(sends()).toEqual(["request add(1, 2) hold", "reply 3 hold"]);

    const dropped = rpcCall("add", [3, 4], { port, timeoutMs: 300 });
    await until(() => network.heldIds().length === 1, "the next request to be held");
    const [id] = network.heldIds();
    expect(network.drop(id)).toBe(true);
    await expect(dropped).rejects.toThrow("no reply within 300 ms");
    expect(network.deliver(id)).toBe(false); // dropped is gone
    expect(outcome("lose")).toBe(1);
  });

  test("a request held while its client gives up still reaches the server; its reply has no one to read it", async () => {
    const { network, port, ran, events } = await setUp({ ...RELIABLE, hold: true });
    await expect(rpcCall("counted", [], { port, timeoutMs: 100 })).rejects.toThrow("no reply within 100 ms");
    await until(() => events.some((event) => event.kind === "close"), "the client to close");
    network.deliver(network.heldIds()[0]); // the request, after its caller has gone
    await until(() => network.heldIds().length === 1, "the reply to be held");
    expect(ran()).toBe(1); // the procedure ran all the same
    network.deliver(network.heldIds()[0]);
    expect(events.at(-1)).toMatchObject({ kind: "lose", why: "the other side has gone" });
  });

  test("configure(): new settings apply to the next message, and are reported", async () => {
    const { network, port, sends, events } = await setUp(RELIABLE);
    expect(await rpcCall("add", [1, 2], { port }).then(resultOf)).toBe(3);
    network.configure({ ...RELIABLE, loss: 1 });
    await expect(rpcCall("add", [1, 2], { port, timeoutMs: 200 })).rejects.toThrow();
    expect(sends()).toEqual(["request add(1, 2) deliver", "reply 3 deliver", "request add(1, 2) lose"]);
    expect(events).toContainEqual(expect.objectContaining({ kind: "settings", settings: { ...RELIABLE, loss: 1 } }));
  });

  test("a client in the Python lab's style (no newline, no id) is relayed, and its reply reaches it", async () => {
    const { port } = await setUp({ ...RELIABLE, delayMs: [50, 50] });
    const { createConnection } = await import("node:net");
    const socket = createConnection({ port, host: "127.0.0.1" });
    cleanups.push(() => socket.destroy());
    socket.write('{"method": "add", "params": [10, 20]}');
    const reply = await new Promise<string>((resolve) => socket.once("data", (chunk) => resolve(String(chunk))));
    expect(JSON.parse(reply)).toEqual({ result: 30, error: null, id: null });
  });

  test("close() ends every relayed connection and message on its way, and leaves nothing running", async () => {
    const { network, port } = await setUp({ ...RELIABLE, delayMs: [5000, 5000] });
    const call = expect(rpcCall("add", [1, 2], { port, timeoutMs: 2000 })).rejects.toThrow(); // handled from now on
    await delay(50);
    await network.close();
    await call;
  });
});
