// Follows the /build event stream: marks each phase, appends the log as
// text (never as HTML), and opens the server when it is ready.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("launch-config").textContent);
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  // The stream is read with fetch, not an EventSource: only fetch can send
  // the XSRF token the hub's login wants from a script, in a header. In the
  // URL it would land in access logs, the history and Referer headers.
  const stream = new AbortController();
  const source = {
    close: function () {
      stream.abort();
    },
  };
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
  // Only an answer that a server was stopped ends the page's launch: else
  // the launch goes on and the page keeps following it.
  cancel.onclick = function () {
    cancel.disabled = true;
    fetch(config.cancelUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-XSRFToken": config.xsrf },
    })
      .then(function (response) {
        return response.ok ? response.json() : Promise.reject(new Error("HTTP " + response.status));
      })
      .then(function (answer) {
        if (!answer.cancelled) {
          throw new Error("no server was started yet");
        }
        source.close();
        stopClock();
        mark("cancelled");
        status.textContent = "Cancelled: the server and its queued job are gone.";
        status.className = "";
        cancel.hidden = true;
      })
      .catch(function (error) {
        cancel.disabled = false;
        status.textContent = "Could not cancel (" + error.message + "); the launch goes on.";
      });
  };
  // Slurm's queue may stay silent for long: the page counts the time since
  // the launch began on its own, set by the "(N s)" the service ends each
  // launching event with (so a reloaded page counts from the launch too).
  const WAITED = / \((\d+) s\)$/;
  const waited = document.getElementById("waited");
  const elapsed = document.getElementById("elapsed");
  let launchStarted = null;
  let ticker = null;
  function duration(seconds) {
    if (seconds < 60) {
      return seconds + " s";
    }
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) {
      return minutes + " min " + String(seconds % 60).padStart(2, "0") + " s";
    }
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " min";
  }
  function tick() {
    elapsed.textContent = duration(Math.max(0, Math.floor((Date.now() - launchStarted) / 1000)));
  }
  // A launching event's line without its time, which the clock shows instead.
  function launchLine(line) {
    const found = WAITED.exec(line);
    if (launchStarted === null || found) {
      launchStarted = Date.now() - (found ? Number(found[1]) * 1000 : 0);
    }
    if (ticker === null) {
      waited.hidden = false;
      ticker = setInterval(tick, 1000);
    }
    tick();
    return found ? line.slice(0, found.index) : line;
  }
  function stopClock() {
    clearInterval(ticker);
    ticker = null;
  }
  function mark(phase) {
    document.querySelectorAll("#phases li").forEach(function (item) {
      item.classList.toggle("current", item.dataset.phase === phase);
    });
    document.body.dataset.phase = phase;
  }
  function onEvent(data) {
    const event = JSON.parse(data);
    mark(event.phase);
    if (event.message) {
      log.textContent += event.message;
      log.scrollTop = log.scrollHeight;
    }
    if (event.phase === "failed") {
      source.close();
      stopClock();
      cancel.hidden = true;
      status.textContent = event.message.trim().split("\n")[0];
      status.className = "failed";
    } else if (event.phase === "ready") {
      source.close();
      stopClock();
      cancel.hidden = true;
      if (notifyWhenReady) {
        new Notification("Your Binder is ready", { body: document.title });
      }
      status.textContent = "Ready: opening your server…";
      window.location.href = event.url;
    } else {
      const line = event.message.trim().split("\n").pop();
      cancel.hidden = event.phase !== "launching";
      status.textContent = event.phase === "launching" ? launchLine(line) : line;
    }
  }
  function lost() {
    const phase = document.body.dataset.phase;
    if (phase !== "ready" && phase !== "failed" && phase !== "cancelled") {
      stopClock();
      status.textContent = "Lost the connection to the build; reload to follow it again.";
      status.className = "failed";
      source.close();
    }
  }
  // Server-Sent Events: records end with a blank line; a record's data
  // lines are its message; comment lines (keepalives) start with a colon.
  function records(text) {
    const parts = text.split("\n\n");
    parts.slice(0, -1).forEach(function (record) {
      const data = record
        .split("\n")
        .filter(function (line) {
          return line.startsWith("data:");
        })
        .map(function (line) {
          return line.slice(5).replace(/^ /, "");
        });
      if (data.length) {
        onEvent(data.join("\n"));
      }
    });
    return parts[parts.length - 1];
  }
  fetch(config.buildUrl, {
    credentials: "same-origin",
    headers: { Accept: "text/event-stream", "X-XSRFToken": config.xsrf },
    signal: stream.signal,
  })
    .then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let pending = "";
      function next() {
        return reader.read().then(function (chunk) {
          if (chunk.done) {
            lost();
            return undefined;
          }
          pending = records(pending + chunk.value);
          return next();
        });
      }
      return next();
    })
    .catch(function (error) {
      if (error.name !== "AbortError") {
        lost();
      }
    });
})();
