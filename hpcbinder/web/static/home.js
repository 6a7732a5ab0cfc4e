// Builds the launch URL and badge snippets from the form, and launches.
(function () {
  "use strict";
  const field = function (id) { return document.getElementById(id); };
  const base = new URL(".", document.baseURI.replace(/[?#].*$/, "")).href.replace(/\/?$/, "/");
  function repoPart() {
    const provider = field("provider").value;
    const repository = field("repository").value.trim();
    if (provider === "gh") { return repository.replace(/^https?:\/\/github\.com\//, "").replace(/\.git$/, ""); }
    return encodeURIComponent(repository.replace(/^https?:\/\/gitlab\.com\//, provider === "gl" ? "" : "$&"));
  }
  function launchUrl() {
    const ref = encodeURIComponent(field("ref").value.trim() || "HEAD");
    let url = base + "v2/" + field("provider").value + "/" + repoPart() + "/" + ref;
    const params = new URLSearchParams();
    if (field("path").value.trim()) { params.set(field("path-kind").value, field("path").value.trim()); }
    if (field("profile").value) { params.set("profile", field("profile").value); }
    const query = params.toString();
    return query ? url + "?" + query : url;
  }
  function update() {
    const url = launchUrl();
    const badge = base + "badge_logo.svg";
    field("launch-url").textContent = url;
    field("badge-markdown").textContent = "[![Binder](" + badge + ")](" + url + ")";
    field("badge-rst").textContent = ".. image:: " + badge + "\n   :target: " + url;
  }
  document.querySelectorAll("#launch-form input, #launch-form select").forEach(function (input) {
    input.addEventListener("input", update);
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
    window.location.href = launchUrl();
  });
  update();
})();
