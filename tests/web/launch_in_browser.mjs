// Opens a Binder link in headless Chromium (Debian's, driven by
// playwright-core), logs in at the hub, follows the launch page's progress,
// waits for JupyterLab with the file open and runs its first cell; saves a
// screenshot and prints a JSON summary.
// Usage: node launch_in_browser.mjs PLAYWRIGHT_DIR LINK USER PASSWORD FILE SCREENSHOT
import { launchChromium } from "./chromium.mjs";

const [playwrightDir, link, user, password, file, screenshot] = process.argv.slice(2);
const browser = await launchChromium(playwrightDir);
// phaseStarts: seconds from the click until the page first showed each
// phase, then until it left for the server ("server") and JupyterLab
// showed the notebook ("notebook shown").
const summary = { phases: [], phaseStarts: {}, failed: null, requestedUrls: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  // Every URL the browser asks for, to check that no token rides in one.
  context.on("request", (request) => summary.requestedUrls.push(request.url()));
  const page = await context.newPage();
  page.setDefaultTimeout(240_000);
  await page.goto(link);
  // The service sends us to the hub to log in, then back to the launch page.
  await page.waitForSelector("input[name=username]");
  await page.fill("input[name=username]", user);
  await page.fill("input[name=password]", password);
  await Promise.all([
    page.waitForURL(/\/v2\//, { timeout: 30_000 }),
    page.click("input[type=submit], button[type=submit]"),
  ]);
  // A repository the site does not vouch for: the first launch asks. Before
  // agreeing, a /build link opened with the same login must not start it.
  if (await page.$("#confirm-launch")) {
    summary.confirmPageTitle = await page.title();
    const probe = await context.newPage();
    const response = await probe.goto(link.replace("/v2/", "/build/"));
    summary.unconfirmedBuild = await response.text();
    await probe.close();
    await page.click("#confirm-launch");
    await page.waitForSelector("#phases");
  }
  summary.launchPageTitle = await page.title();
  summary.launchXsrf = await page.evaluate(
    () => JSON.parse(document.getElementById("launch-config").textContent).xsrf,
  );
  const clicked = Date.now();  // logged in, on the launch page: the click
  // Record each phase the page shows until it leaves for the server.
  const seen = new Set();
  while (!page.url().includes("/user/")) {
    const phase = await page.evaluate(() => document.body && document.body.dataset.phase).catch(() => null);
    if (phase && !seen.has(phase)) {
      seen.add(phase);
      summary.phases.push(phase);
      summary.phaseStarts[phase] = (Date.now() - clicked) / 1000;
    }
    if (phase === "failed") {
      summary.failed = await page.textContent("#status");
      break;
    }
    await page.waitForTimeout(50);
  }
  if (!summary.failed) {
    summary.phaseStarts.server = (Date.now() - clicked) / 1000;
    await page.waitForSelector(`.lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel:text-is("${file}")`);
    await page.waitForSelector(".jp-Notebook .jp-Cell .cm-line");
    summary.firstCell = await page.textContent(".jp-Notebook .jp-Cell .cm-content");
    summary.seconds = (Date.now() - clicked) / 1000;
    summary.phaseStarts["notebook shown"] = summary.seconds;
    summary.url = page.url();
    summary.currentTab = await page.textContent(".lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel");
    // The notebook runs: its first cell, in the server's kernel, once the
    // notebook's toolbar says the kernel is idle. JupyterLab may still drop
    // a run while its kernel connection settles (the prompt stays "[ ]"),
    // so a run without output is asked again, in place (Ctrl+Enter), a few
    // times; the output's element comes before its text is rendered into it.
    const idle = '.jp-Notebook-ExecutionIndicator[data-status="idle"]';
    await page.waitForSelector(idle, { timeout: 60_000 }).catch(() => null);
    const output = ".jp-Notebook .jp-Cell .jp-OutputArea-output";
    const hasText = (selector) => (document.querySelector(selector)?.textContent ?? "").trim() !== "";
    summary.runs = 0;
    let shown = false;
    while (!shown && summary.runs < 6) {
      summary.runs += 1;
      await page.click(".jp-Notebook .jp-Cell .cm-content");
      await page.keyboard.press("Control+Enter");
      shown = await page.waitForFunction(hasText, output, { timeout: 20_000 }).then(
        () => true,
        () => false,
      );
    }
    if (shown) {
      summary.firstOutput = await page.textContent(output);
    } else {
      summary.firstOutput = null;
      summary.kernelStatus = await page.textContent(".jp-StatusBar-Widget, #jp-main-statusbar").catch(() => null);
      summary.dialog = await page.textContent(".jp-Dialog").catch(() => null);
    }
  }
  await page.screenshot({ path: screenshot });
  summary.cookieValues = (await context.cookies()).map((cookie) => cookie.value);
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
