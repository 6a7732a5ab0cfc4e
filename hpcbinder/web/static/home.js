// BinderHub's link generator: the launch URL and badge snippets of the
// form's provider, repository, ref and path (the providers and their
// labels come from the page, as /api/repoproviders lists them); and Launch.
// Everything typed reaches the page as text (textContent), never as HTML.
(function () {
  "use strict";
  const field = function (id) { return document.getElementById(id); };
  const config = JSON.parse(field("home-config").textContent);
  const base = config.publicUrl.replace(/\/?$/, "/");
  const providers = {};
  config.providers.forEach(function (provider) { providers[provider.id] = provider; });
  const pathKinds = {
    file: { label: "File to open (in JupyterLab)", placeholder: "index.ipynb",
            urlpath: function (path) { return "/doc/tree/" + path.replace(/^\/+/, ""); } },
    url: { label: "URL to open", placeholder: "/lab", urlpath: function (path) { return path; } }
  };
  function provider() { return providers[field("provider").value]; }
  // Escaped whole: a name's spaces, quotes, brackets and parentheses cannot
  // end the link in Markdown or reStructuredText.
  function escapeAll(text) {
    return encodeURIComponent(text).replace(/[()'!*]/g, function (c) {
      return "%" + c.charCodeAt(0).toString(16).toUpperCase();
    });
  }
  function escapePath(text) { return text.split("/").map(escapeAll).join("/"); }
  function repository() {
    let text = field("repository").value.trim();
    const chosen = provider();
    if (chosen.detect && chosen.detect.regex) {
      const found = new RegExp(chosen.detect.regex).exec(text);
      text = found && found.groups && found.groups.repo ? found.groups.repo : "";
    }
    return chosen.repo.urlEncode ? escapeAll(text) : escapePath(text);
  }
  function launchUrl() {
    const chosen = provider();
    const repo = repository();
    if (!repo) { return ""; }
    const refEnabled = chosen.ref && chosen.ref.enabled;
    const ref = refEnabled ? (field("ref").value.trim() || chosen.ref.default || "HEAD") : "";
    let url = base + "v2/" + chosen.id + "/" + repo + "/" + escapeAll(ref);
    const params = new URLSearchParams();
    const path = field("path").value.trim();
    if (path) { params.set("urlpath", pathKinds[field("path-kind").value].urlpath(path)); }
    const profile = field("profile").value;
    if (profile && profile !== config.defaultProfile) { params.set("profile", profile); }
    const query = params.toString();
    return query ? url + "?" + query : url;
  }
  function describe() {
    const chosen = provider();
    const kind = pathKinds[field("path-kind").value];
    field("repository-label").textContent = chosen.repo.label;
    field("repository").placeholder = chosen.repo.placeholder || "";
    const refEnabled = Boolean(chosen.ref && chosen.ref.enabled);
    field("ref").disabled = !refEnabled;
    field("ref").placeholder = refEnabled ? (chosen.ref.default || "HEAD") : "";
    field("path-label").textContent = kind.label;
    field("path").placeholder = kind.placeholder;
  }
  function update() {
    describe();
    const url = launchUrl();
    const badge = base + "badge_logo.svg";
    field("share-hint").hidden = Boolean(url);
    field("launch-url").textContent = url;
    field("badge-markdown").textContent = url ? "[![Binder](" + badge + ")](" + url + ")" : "";
    field("badge-rst").textContent = url ? ".. image:: " + badge + "\n   :target: " + url : "";
  }
  document.querySelectorAll("#launch-form input, #launch-form select").forEach(function (input) {
    input.addEventListener("input", update);
    input.addEventListener("change", update);
  });
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(field(button.dataset.copy).textContent).then(function () {
        button.textContent = "Copied";
      });
    });
  });
  field("launch-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const url = launchUrl();
    if (url) { window.location.href = url; }
  });
  update();
})();
