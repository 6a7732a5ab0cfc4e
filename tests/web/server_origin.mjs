// Opens a researcher's running server in headless Chromium (logging in at
// the hub through its OAuth), then, from JupyterLab's own page (where a
// repository's extensions and scripts run), tries what such code would: read
// hub pages and the hub's API with the researcher's cookies, and mint a hub
// token. Prints a JSON summary.
// Usage: node server_origin.mjs PLAYWRIGHT_DIR HUB_URL LAB_URL USER PASSWORD TOKEN_NOTE
import { launchChromium } from "./chromium.mjs";

const [playwrightDir, hubUrl, labUrl, user, password, note] = process.argv.slice(2);
const browser = await launchChromium(playwrightDir);
const summary = {};
const page = await browser.newPage();
try {
  page.setDefaultTimeout(240_000);
  // Why a fetch failed: the browser's own words (the same-origin policy).
  summary.console = [];
  page.on("console", (message) => summary.console.push(message.text()));
  await page.goto(labUrl);
  // The server sends the browser to the hub to log in, then back.
  await page.waitForSelector("input[name=username]");
  summary.loginUrl = page.url();
  await page.fill("input[name=username]", user);
  await page.fill("input[name=password]", password);
  await page.click("input[type=submit], button[type=submit]");
  await page.waitForSelector("#jp-main-dock-panel");
  summary.labUrl = page.url();
  summary.labOrigin = await page.evaluate(() => location.origin);
  // What a repository's JavaScript in JupyterLab would try.
  summary.reads = await page.evaluate(async ({ hub, user }) => {
    const results = {};
    for (const path of ["/hub/home", "/hub/token", "/hub/api/user", `/hub/api/users/${user}`]) {
      try {
        const response = await fetch(hub + path, { credentials: "include" });
        results[path] = { readable: true, status: response.status, text: (await response.text()).slice(0, 300) };
      } catch (error) {
        results[path] = { readable: false, error: String(error) };
      }
    }
    return results;
  }, { hub: hubUrl, user });
  summary.mint = await page.evaluate(async ({ hub, user, note }) => {
    let xsrf = "";
    try {
      const home = await (await fetch(`${hub}/hub/token`, { credentials: "include" })).text();
      xsrf = (home.match(/xsrf_token: "([^"]*)"/) || ["", ""])[1];
    } catch (error) {
      // Not readable: try without the page's XSRF token.
    }
    try {
      const response = await fetch(`${hub}/hub/api/users/${user}/tokens?_xsrf=${encodeURIComponent(xsrf)}`, {
        method: "POST",
        credentials: "include",
        headers: { "Content-Type": "application/json", "X-XSRFToken": xsrf },
        body: JSON.stringify({ note, expires_in: 600 }),
      });
      return { readable: true, status: response.status, text: (await response.text()).slice(0, 300) };
    } catch (error) {
      return { readable: false, error: String(error) };
    }
  }, { hub: hubUrl, user, note });
} catch (error) {
  // Where it stopped, for the test's message.
  summary.error = String(error);
  summary.url = page.url();
  summary.page = (await page.textContent("body").catch(() => "") || "").slice(0, 1000);
  process.exitCode = 1;
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
