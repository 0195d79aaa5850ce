/* Execution accounts: Test the connection, Create the archiving workflow, enable/disable. */
(function () {
  "use strict";
  var MC = window.MC;
  var api = MC.base + "/api/accounts";

  function formValues(form) {
    var data = {};
    form.querySelectorAll("input, select").forEach(function (input) {
      if (!input.name) return;
      if (input.type === "checkbox") data[input.name] = input.checked;
      else if (input.value.trim() !== "") data[input.name] = input.value.trim();
    });
    if (data.cellId !== undefined && /^\d+$/.test(data.cellId)) data.cellId = parseInt(data.cellId, 10);
    return data;
  }

  function busy(buttons, on) {
    buttons.forEach(function (button) { button.disabled = on; });
  }

  var form = document.getElementById("new-account");
  if (form) {
    var result = document.getElementById("new-account-result");
    var buttons = Array.prototype.slice.call(form.querySelectorAll("button"));
    form.addEventListener("submit", function (event) { event.preventDefault(); });

    form.querySelector('[data-action="test"]').addEventListener("click", function () {
      busy(buttons, true);
      MC.notice(result, "info", "Testing the connection ...");
      MC.post(api + "/test", formValues(form)).then(function (answer) {
        busy(buttons, false);
        var rest = MC.showErrors(form, answer.data.errors);
        if (answer.ok) MC.notice(result, "ok", answer.data.message);
        else MC.notice(result, "error", (answer.data.detail || "Refused") + (rest.length ? ": " + rest.join("; ") : ""));
      });
    });

    form.querySelector('[data-action="create"]').addEventListener("click", function () {
      busy(buttons, true);
      MC.notice(result, "info", "Testing the instance and creating the archiving workflow ...");
      MC.post(api, formValues(form)).then(function (answer) {
        var rest = MC.showErrors(form, answer.data.errors);
        if (!answer.ok) {
          busy(buttons, false);
          MC.notice(result, "error", (answer.data.detail || "Refused") + (rest.length ? ": " + rest.join("; ") : ""));
          return;
        }
        MC.notice(result, "ok", answer.data.message + ". Waiting for " + answer.data.dagId + " ...");
        if (answer.data.account.enabled) waitForDag(answer.data, result, buttons);
        else busy(buttons, false);
      });
    });
  }

  /* Poll until the scheduler knows the new DAG, then say when it appeared. */
  function waitForDag(created, result, buttons) {
    var started = Date.now();
    var name = created.account.name;
    function poll() {
      MC.getJSON(api + "/" + encodeURIComponent(name) + "/dag").then(function (answer) {
        var dag = answer.data.dag || {};
        var waited = Math.round((Date.now() - started) / 1000);
        if (dag.active) {
          busy(buttons, false);
          result.className = "notice ok";
          result.textContent = "";
          var seen = new Date().toISOString();
          var text = document.createTextNode(
            "The archiving workflow " + dag.dagId + " appeared in Airflow at " + MC.formatTime(seen) +
            " (" + waited + " s after registration), " + (dag.paused ? "paused" : "unpaused") + ". ");
          var link = document.createElement("a");
          link.href = "/dags/" + encodeURIComponent(dag.dagId);
          link.setAttribute("data-airflow", "");
          link.textContent = "Open " + dag.dagId;
          result.appendChild(text);
          result.appendChild(link);
          result.setAttribute("data-dag-ready", dag.dagId);
          return;
        }
        result.textContent = created.message + ". Waiting for the DAG processor to parse " +
          created.dagId + " (" + waited + " s) ...";
        window.setTimeout(poll, 2000);
      }).catch(function () { window.setTimeout(poll, 4000); });
    }
    poll();
  }

  MC.formatTime = function (iso) {
    if (!iso) return "?";
    return iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC");
  };

  document.querySelectorAll("[data-account-action]").forEach(function (button) {
    button.addEventListener("click", function () {
      var name = button.getAttribute("data-account");
      var action = button.getAttribute("data-account-action");
      var out = document.getElementById("account-result-" + name);
      button.disabled = true;
      var request = action === "test"
        ? MC.post(api + "/" + encodeURIComponent(name) + "/test", {})
        : MC.post(api + "/" + encodeURIComponent(name) + "/enabled", { enabled: action === "enable" });
      if (action === "test") MC.notice(out, "info", "Testing the connection ...");
      request.then(function (answer) {
        button.disabled = false;
        var ok = answer.ok && answer.data.ok !== false;
        MC.notice(out, ok ? "ok" : "error", answer.data.message || answer.data.detail || "Refused");
        if (ok && action !== "test") window.setTimeout(function () { window.location.reload(); }, 800);
      });
    });
  });
})();
