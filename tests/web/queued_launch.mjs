// Two Binder launches in headless Chromium (Debian's, driven by
// playwright-core) while the cluster is full, as a researcher sees them:
//   1. a launch that waits in Slurm's queue, cancelled with the page's
//      "Cancel this launch" button;
//   2. a launch that waits (screenshot), then, once the test frees the node,
//      opens JupyterLab.
// Talks to the test in lines: prints one JSON object per step on stdout and,
// after "cancelled", waits for a line on stdin (the test has checked Slurm)
// before the second launch. Every wait is bounded.
// Usage: node queued_launch.mjs PLAYWRIGHT_DIR USER PASSWORD CANCEL_LINK QUEUE_LINK SCREENSHOT
import { launchChromium } from "./chromium.mjs";
import { createInterface } from "node:readline";

const [playwrightDir, user, password, cancelLink, queueLink, screenshot] = process.argv.slice(2);
const WAITING = /Waiting in partition /;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function report(step, details) {
  console.log(JSON.stringify({ step, ...details }));
}

// What the page shows of a launch: its phase, status line, elapsed time,
// controls and the log.
async function shown(page) {
  return page.evaluate(() => ({
    phase: document.body.dataset.phase || null,
    status: document.getElementById("status").textContent,
    elapsed: document.getElementById("elapsed") ? document.getElementById("elapsed").textContent : null,
    cancelVisible: !document.getElementById("cancel-launch").hidden,
    log: document.getElementById("log").textContent,
  }));
}

// Until the page's status says the job waits in the queue (or the launch ended).
async function untilQueued(page) {
  await page.waitForFunction(
    (pattern) => new RegExp(pattern).test(document.getElementById("status").textContent)
      || ["failed", "ready"].includes(document.body.dataset.phase),
    WAITING.source,
    { timeout: 120_000, polling: 100 },
  );
  const now = await shown(page);
  if (now.phase !== "launching") {
    throw new Error(`the launch did not queue: ${now.phase}: ${now.status}`);
  }
  return now;
}

const browser = await launchChromium(playwrightDir);
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  // The /build stream's events exactly as the page receives them.
  let events = [];
  await page.exposeFunction("reportBuildEvent", (data) => events.push(JSON.parse(data)));
  // The page reads the stream with fetch: a copy of its body is read here.
  await page.addInitScript(() => {
    const original = window.fetch;
    window.fetch = async (...args) => {
      const response = await original(...args);
      if (!String(args[0]).includes("/build/") || !response.body) {
        return response;
      }
      const [forPage, forTest] = response.body.tee();
      (async () => {
        const reader = forTest.pipeThrough(new TextDecoderStream()).getReader();
        let pending = "";
        for (;;) {
          const { done, value } = await reader.read().catch(() => ({ done: true }));
          if (done) {
            return;
          }
          const records = (pending + value).split("\n\n");
          pending = records.pop();
          for (const record of records) {
            const data = record.split("\n").filter((line) => line.startsWith("data:"));
            if (data.length) {
              window.reportBuildEvent(data.map((line) => line.slice(5).trim()).join("\n"));
            }
          }
        }
      })();
      return new Response(forPage, {
        status: response.status,
        statusText: response.statusText,
        headers: response.headers,
      });
    };
  });

  // 1. Log in at the hub on the way, wait in the queue, cancel from the page.
  await page.goto(cancelLink);
  await page.waitForSelector("input[name=username]");
  await page.fill("input[name=username]", user);
  await page.fill("input[name=password]", password);
  await Promise.all([
    page.waitForURL(/\/v2\//, { timeout: 30_000 }),
    page.click("input[type=submit], button[type=submit]"),
  ]);
  report("queued", await untilQueued(page));
  await page.click("#cancel-launch");
  // Until the service answered the button (the page then stops following).
  await page.waitForFunction(
    () => document.body.dataset.phase === "cancelled"
      || document.getElementById("status").textContent.startsWith("Could not cancel"),
    null,
    { timeout: 60_000, polling: 100 },
  );
  report("cancelled", { ...(await shown(page)), events });
  await lines.next();

  // 2. Wait in the queue (screenshot), then on to JupyterLab once the node is free.
  events = [];
  await page.goto(queueLink);
  const queued = await untilQueued(page);
  // Seconds go by on the page while nothing new comes from the queue.
  await page.waitForTimeout(2_500);
  const later = await shown(page);
  await page.screenshot({ path: screenshot, fullPage: true });
  report("queued", { ...queued, later, events: [...events] });
  await page.waitForURL(/\/user\/[^/]+\/[^/]+\/lab/, { timeout: 240_000 });
  await page.waitForSelector("#jp-main-dock-panel", { timeout: 120_000 });
  report("lab", { url: page.url(), title: await page.title(), events });
} catch (error) {
  report("error", { message: String(error) });
  process.exitCode = 1;
} finally {
  await browser.close();
  process.stdin.destroy();
}
