/**
 * The page of `demo.ts watch`, in a real browser: Debian's Chromium, driven by
 * playwright-core (which downloads no browser). The test opens the page,
 * makes calls through the network, and checks what is drawn. Without
 * /usr/bin/chromium the suite says SKIPPED in its name.
 *
 *     SCREENSHOT=watch/screenshot.png npx vitest run test/page.test.ts   # also saves the README's picture
 */
import { existsSync } from "node:fs";
import process from "node:process";
import { setTimeout as delay } from "node:timers/promises";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { connect, rpcCall } from "../rpc.ts";
import { startWatch, type Watch } from "../watch/watch.ts";

const CHROMIUM = "/usr/bin/chromium";
const hasChromium = existsSync(CHROMIUM);

let browser: Browser;
let watch: Watch;
let page: Page;

/** Sets the network's settings as a person would: in the page's own fields. */
async function settings(values: { loss?: string; min?: string; max?: string; hold?: boolean }): Promise<void> {
  const fields: Array<[string, string | undefined]> = [["#loss", values.loss], ["#delay-min", values.min], [
    "#delay-max",
    values.max,
  ]];
  for (const [field, value] of fields) {
    if (value === undefined) continue;
    await page.fill(field, value);
    await page.dispatchEvent(field, "change");
  }
  if (values.hold !== undefined) await page.setChecked("#hold", values.hold);
  await page.locator("svg#diagram .mark", { hasText: "network:" }).last().waitFor(); // the network says it changed
}

/** The message arrows drawn for one label, such as "add(1, 2)". */
const arrows = (label: string) =>
  page.locator("svg#diagram g.message", { has: page.locator("text", { hasText: label }) });

describe.skipIf(!hasChromium)(
  `demo.ts watch in a browser (${hasChromium ? "Chromium" : `SKIPPED: needs ${CHROMIUM}`})`,
  () => {
    beforeAll(async () => {
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        // As root in a container, and with no network beyond this machine: no sandbox, no background traffic.
        args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
      });
    }, 30_000);
    afterAll(() => browser?.close());

    afterEach(async () => {
      await page?.close();
      await watch?.close();
    });

    async function open(): Promise<void> {
      watch = await startWatch({ port: 0, web: 0, loss: 0, delayMs: [0, 0], hold: false });
      page = await browser.newPage({ viewport: { width: 1300, height: 800 } });
      await page.goto(`http://127.0.0.1:${watch.webPort}/`);
      await page.locator("#where", { hasText: `127.0.0.1:${watch.port}` }).waitFor();
    }

    test("every call made through the network is drawn, request and reply, within a second", async () => {
      await open();
      const started = Date.now();
      expect(await rpcCall("add", [1, 2], { port: watch.port })).toMatchObject({ result: 3 });
      await arrows("add(1, 2)").and(page.locator(".request.delivered")).waitFor({ timeout: 1000 });
      await arrows("3").and(page.locator(".reply.delivered")).waitFor({ timeout: 1000 });
      expect(Date.now() - started).toBeLessThan(1000);
      expect(await arrows("add(1, 2)").locator("title").textContent()).toBe(
        '{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}',
      );
    });

    test("with loss 1, a call gets no reply, and the page shows its request lost", async () => {
      await open();
      await settings({ loss: "1" });
      await expect(rpcCall("multiply", [2, 3], { port: watch.port, timeoutMs: 500 })).rejects.toThrow("no reply");
      const lost = arrows("multiply(2, 3)").and(page.locator(".request.lost"));
      await lost.waitFor({ timeout: 1000 });
      expect(await lost.locator(".fate").textContent()).toBe("lost");
      expect(await lost.locator(".cross").textContent()).toBe("×");
    });

    test("with hold, a call waits until deliver is clicked on its request, then on its reply; a dropped reply is lost", async () => {
      await open();
      await settings({ hold: true });
      let answered = false;
      const call = rpcCall("add", [5, 6], { port: watch.port, timeoutMs: 5000 }).then((reply) => {
        answered = true;
        return reply;
      });
      const held = page.locator("#held li[data-id]");
      await held.filter({ hasText: "add(5, 6)" }).waitFor();
      await delay(200);
      expect(answered).toBe(false);
      await held.filter({ hasText: "add(5, 6)" }).locator("button", { hasText: "deliver" }).click();
      await held.filter({ hasText: "11" }).locator("button", { hasText: "deliver" }).click();
      expect(await call).toMatchObject({ result: 11 });
      await arrows("11").and(page.locator(".reply.delivered")).waitFor();

      // The reply lost: the server ran the call, the caller never hears.
      const lostReply = rpcCall("add", [7, 8], { port: watch.port, timeoutMs: 800 });
      await held.filter({ hasText: "add(7, 8)" }).locator("button", { hasText: "deliver" }).click();
      await held.filter({ hasText: "15" }).locator("button", { hasText: "drop" }).click();
      await expect(lostReply).rejects.toThrow("no reply");
      expect(await arrows("15").and(page.locator(".reply.lost")).locator(".fate").textContent()).toBe("lost (dropped)");
    });

    test("the scenario buttons make their calls through the network", async () => {
      await open();
      await page.click("text=the three lab calls");
      await page.locator("#notes li", { hasText: "lab:" }).waitFor();
      for (const label of ["add(10, 20)", "multiply(5, 6)", "divide(10, 5)", "error -32601"]) {
        expect(await arrows(label).count(), label).toBe(1);
      }
    });

    test.skipIf(process.env.SCREENSHOT === undefined)("a picture for the README (SCREENSHOT=path)", async () => {
      await open();
      await page.setViewportSize({ width: 1300, height: 1150 });
      await page.click("text=the three lab calls");
      await page.locator("#notes li", { hasText: "lab:" }).waitFor();
      await settings({ min: "100", max: "600" });
      const client = await connect({ port: watch.port });
      await Promise.all([client.call("add", [1, 2]), client.call("multiply", [3, 4])]); // replies may cross
      await client.close();
      await settings({ min: "0", max: "0", hold: true });
      const deposit = rpcCall("deposit", [10], { port: watch.port, timeoutMs: 2000 }).catch(() => {});
      await page.locator("#held li", { hasText: "deposit(10)" }).locator("button", { hasText: "deliver" }).click();
      await page.locator("#held li", { hasText: "110" }).locator("button", { hasText: "drop" }).click();
      const pending = rpcCall("add", [20, 22], { port: watch.port, timeoutMs: 2000 }).catch(() => {});
      await page.locator("#held li", { hasText: "add(20, 22)" }).waitFor();
      await page.$eval("#scroller", (scroller) => (scroller.scrollTop = 0));
      await page.screenshot({ path: process.env.SCREENSHOT! });
      await page.locator("#held li", { hasText: "add(20, 22)" }).locator("button", { hasText: "drop" }).click();
      await Promise.all([deposit, pending]);
    }, 20_000);
  },
);
