// A researcher logged in to the Binder service, in headless Chromium:
// 1. the home page's link generator, for every provider it lists (and text
//    that would be markup if it were not escaped);
// 2. a documentation page on a listed origin whose Thebe (from npm) starts a
//    server through the Binder service with the researcher's login and runs
//    a cell on it;
// 3. a page on an origin the site does not list, opening the same kind of
//    stream with the same login: it must start nothing and read nothing.
// Prints a JSON summary.
// Usage: node binder_from_docs.mjs PLAYWRIGHT_DIR BINDER_URL USER PASSWORD DOCS_URL OTHER_URL SCREENSHOT
import { launchChromium } from "./chromium.mjs";

const [playwrightDir, binderUrl, user, password, docsUrl, otherUrl, screenshot] =
  process.argv.slice(2);
const browser = await launchChromium(playwrightDir);
const summary = { console: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(240_000);
  page.on("console", (message) => summary.console.push(message.text().slice(0, 300)));
  page.on("dialog", (dialog) => { summary.dialog = dialog.message(); dialog.dismiss(); });

  // Log in: the service sends the browser to the hub and back home.
  await page.goto(`${binderUrl}/`);
  await page.waitForSelector("input[name=username]");
  await page.fill("input[name=username]", user);
  await page.fill("input[name=password]", password);
  await Promise.all([
    page.waitForURL((url) => url.href.startsWith(binderUrl), { timeout: 30_000 }),
    page.click("input[type=submit], button[type=submit]"),
  ]);
  await page.waitForSelector("#launch-form");

  // 1. The generator: each provider's example gives a link and badges.
  summary.generator = [];
  const providers = await page.$$eval("#provider option", (options) => options.map((o) => o.value));
  for (const provider of providers) {
    await page.selectOption("#provider", provider);
    const example = (await page.getAttribute("#repository", "placeholder")).replace(/^example: /, "");
    await page.fill("#repository", example);
    await page.fill("#path", "");
    summary.generator.push({
      provider,
      example,
      label: await page.textContent("#repository-label"),
      refDisabled: await page.isDisabled("#ref"),
      url: await page.textContent("#launch-url"),
      markdown: await page.textContent("#badge-markdown"),
      rst: await page.textContent("#badge-rst"),
    });
  }
  // A file to open, a ref with a slash, and text that is markup if unescaped.
  await page.selectOption("#provider", "gh");
  await page.fill("#repository", "https://github.com/org/repo");
  await page.fill("#ref", "feature/x");
  await page.fill("#path", "notebooks/a b.ipynb");
  summary.withPath = await page.textContent("#launch-url");
  const hostile = '"><img src=x onerror="window.injected=1">)](javascript:alert(1))';
  await page.fill("#repository", hostile);
  await page.fill("#path", hostile);
  summary.hostile = {
    url: await page.textContent("#launch-url"),
    markdown: await page.textContent("#badge-markdown"),
    images: await page.$$eval("#share img", (found) => found.length),
    injected: await page.evaluate(() => window.injected === 1),
  };

  // 2. Thebe on the documentation page (a listed origin).
  const started = Date.now();
  await page.goto(docsUrl);
  await page.waitForFunction(() => window.thebe && window.thebe.session, null, { timeout: 150_000 });
  summary.thebeOutput = await page.evaluate(async () => {
    await window.thebe.notebook.executeAll();
    await new Promise((resolve) => setTimeout(resolve, 500));
    return document.querySelector("[data-executable], .thebe-cell").parentElement.innerText;
  });
  summary.thebeSeconds = (Date.now() - started) / 1000;
  await page.screenshot({ path: screenshot });

  // 3. The same login from an origin the site does not list.
  await page.goto(otherUrl);
  summary.other = await page.evaluate(() => window.attempt);
} catch (error) {
  summary.error = String(error).slice(0, 2000);
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
