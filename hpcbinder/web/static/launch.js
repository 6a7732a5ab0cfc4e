// Follows the /build event stream: marks each phase, appends the log as
// text (never as HTML), and opens the server when it is ready.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("launch-config").textContent);
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const source = new EventSource(config.buildUrl);
  function mark(phase) {
    document.querySelectorAll("#phases li").forEach(function (item) {
      item.classList.toggle("current", item.dataset.phase === phase);
    });
    document.body.dataset.phase = phase;
  }
  source.onmessage = function (message) {
    const event = JSON.parse(message.data);
    mark(event.phase);
    if (event.message) {
      log.textContent += event.message;
      log.scrollTop = log.scrollHeight;
    }
    if (event.phase === "failed") {
      source.close();
      status.textContent = event.message.trim().split("\n")[0];
      status.className = "failed";
    } else if (event.phase === "ready") {
      source.close();
      status.textContent = "Ready: opening your server…";
      window.location.href = event.url;
    } else {
      status.textContent = event.message.trim().split("\n").pop();
    }
  };
  source.onerror = function () {
    if (document.body.dataset.phase !== "ready" && document.body.dataset.phase !== "failed") {
      status.textContent = "Lost the connection to the build; reload to follow it again.";
      status.className = "failed";
      source.close();
    }
  };
})();
