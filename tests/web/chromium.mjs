// Headless Chromium (Debian's, driven by playwright-core), as every
// browser test starts it. HPCBINDER_TEST_HOST_RULES, when set, is passed
// as --host-resolver-rules: a test maps the dev cluster's published names
// (hub.test and its researchers' subdomains) to the hub host's address,
// as a site's DNS would.
import { createRequire } from "node:module";

export async function launchChromium(playwrightDir) {
  const { chromium } = createRequire(import.meta.url)(playwrightDir);
  const rules = process.env.HPCBINDER_TEST_HOST_RULES;
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ...(rules ? [`--host-resolver-rules=${rules}`] : []),
    ],
  });
}
