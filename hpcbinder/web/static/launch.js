// Follows the /build event stream: marks each phase, appends the log as
// text (never as HTML), and opens the server when it is ready.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("launch-config").textContent);
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const source = new EventSource(config.buildUrl);
  const cancel = document.getElementById("cancel-launch");
  const notify = document.getElementById("notify-ready");
  let notifyWhenReady = false;
  // Waiting in Slurm's queue may take long: the researcher can leave the tab
  // and be told, or give up and free the queued job.
  if ("Notification" in window && Notification.permission !== "denied") {
    notify.hidden = false;
    notify.onclick = function () {
      Notification.requestPermission().then(function (answer) {
        notifyWhenReady = answer === "granted";
        notify.textContent = notifyWhenReady ? "You will be notified" : "Notifications are off";
        notify.disabled = true;
      });
    };
  }
  cancel.onclick = function () {
    cancel.disabled = true;
    fetch(config.cancelUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-XSRFToken": config.xsrf },
    }).then(function (response) {
      source.close();
      mark("failed");
      status.textContent = response.ok ? "Cancelled: the queued job is gone." : "Could not cancel.";
      status.className = "failed";
      cancel.hidden = true;
    });
  };
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
      cancel.hidden = true;
      status.textContent = event.message.trim().split("\n")[0];
      status.className = "failed";
    } else if (event.phase === "ready") {
      source.close();
      cancel.hidden = true;
      if (notifyWhenReady) {
        new Notification("Your Binder is ready", { body: document.title });
      }
      status.textContent = "Ready: opening your server…";
      window.location.href = event.url;
    } else {
      cancel.hidden = event.phase !== "launching";
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
