// Drives the Binder service's /build stream to the end with BinderHub's own
// published client (@jupyterhub/binderhub-client from npm), printing each
// event as one JSON line.
// Usage: node binderhub_client.mjs CLIENT_JS BUILD_ENDPOINT SPEC TOKEN
import { pathToFileURL } from "node:url";

const [clientJs, buildEndpoint, spec, token] = process.argv.slice(2);
// fetch-event-source, written for browsers, reaches for window and document
// when it closes; Node has neither.
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };
const { BinderRepository } = await import(pathToFileURL(clientJs).href);
const repository = new BinderRepository(spec, new URL(buildEndpoint), { apiToken: token });
const deadline = setTimeout(() => {
  console.error("no final event within 300 s");
  process.exit(3);
}, 300_000);
for await (const event of repository.fetch()) {
  console.log(JSON.stringify(event));
  if (event.phase === "ready" || event.phase === "failed") {
    break;
  }
}
repository.close();
clearTimeout(deadline);
