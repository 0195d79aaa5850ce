/* Bulk actions: the filter form -> dry run -> confirm with the count (JSON POSTs, CSRF
   header); the action runs as an mcBulkAction DAG run. */
(function () {
  "use strict";
  var MC = window.MC;
  var form = document.getElementById("bulk-form");
  if (!form) return;
  var result = document.getElementById("bulk-result");
  var preview = document.getElementById("bulk-preview");
  var confirm = document.getElementById("bulk-confirm");
  var counted = null;

  function request() {
    var body = { action: form.elements["action"].value, filter: {} };
    form.querySelectorAll("[name^='filter.']").forEach(function (input) {
      var value = input.value.trim();
      if (!value) return;
      var name = input.name.slice(7);
      if (name === "ids") value = value.split(/[\s,]+/).filter(Boolean);
      else if (name === "instance" && /^\d+$/.test(value)) value = parseInt(value, 10);
      body.filter[name] = value;
    });
    var expiration = form.elements["expiration"].value.trim();
    if (expiration) body.expiration = expiration;
    if (form.elements["confirmUnknown"].checked) body.confirmUnknown = true;
    var tolerance = form.elements["tolerance"].value.trim();
    if (tolerance) body.tolerance = /^\d+$/.test(tolerance) ? parseInt(tolerance, 10) : tolerance;
    return body;
  }

  function refused(answer) {
    var rest = MC.showErrors(form, answer.data.errors || {});
    MC.notice(result, "error", (answer.data.detail || "Refused") + (rest.length ? ": " + rest.join("; ") : ""));
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    row.appendChild(td);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    preview.hidden = true;
    result.hidden = true;
    var body = request();
    body.dryRun = true;
    MC.post(MC.base + "/api/actions", body).then(function (answer) {
      if (!answer.ok) { refused(answer); return; }
      MC.showErrors(form, {});
      counted = answer.data.count;
      document.getElementById("bulk-count").textContent = counted;
      document.getElementById("bulk-confirm-count").textContent = counted;
      var excluded = answer.data.excluded || {};
      var notes = [];
      if (excluded.unknownOutcome) notes.push(excluded.unknownOutcome + " with an unknown outcome left out (tick the box to retry them too)");
      if (excluded.pastExpiration) notes.push(excluded.pastExpiration + " past their expiration left out (give a new expiration)");
      document.getElementById("bulk-excluded").textContent = notes.join("; ");
      var tbody = document.querySelector("#bulk-sample tbody");
      tbody.textContent = "";
      (answer.data.sample || []).forEach(function (e) {
        var row = document.createElement("tr");
        [e.id, e.queue, e.type, e.status, e.channel, e.externalId, e.created, e.failureClass]
          .forEach(function (v) { cell(row, v); });
        tbody.appendChild(row);
      });
      confirm.disabled = counted === 0;
      preview.hidden = false;
    });
  });

  confirm.addEventListener("click", function () {
    var body = request();
    body.expectedCount = counted;
    confirm.disabled = true;
    MC.post(MC.base + "/api/actions", body).then(function (answer) {
      if (!answer.ok) { confirm.disabled = false; refused(answer); return; }
      preview.hidden = true;
      MC.notice(result, "ok", body.action + " of " + answer.data.count +
                " event(s) started: DAG run " + answer.data.runId + " of mcBulkAction");
      result.setAttribute("data-run-id", answer.data.runId);
    });
  });
})();
