/* Quarantine: release an address, quarantine one by hand (JSON POSTs, CSRF header). */
(function () {
  "use strict";
  var MC = window.MC;
  var api = MC.base + "/api/quarantine";
  var instance = document.getElementById("q-instance");
  var current = instance ? instance.value : null;

  document.querySelectorAll("button[data-release]").forEach(function (button) {
    button.addEventListener("click", function () {
      var result = button.parentNode.querySelector(".notice");
      button.disabled = true;
      MC.post(api + "/release", {
        instance: current, channel: button.getAttribute("data-channel"),
        address: button.getAttribute("data-release"),
      }).then(function (answer) {
        if (answer.ok) {
          MC.notice(result, "ok", answer.data.message);
          button.remove();
        } else {
          button.disabled = false;
          MC.notice(result, "error", answer.data.detail || "Refused");
        }
      });
    });
  });

  var chosen = document.getElementById("s-instance");
  document.querySelectorAll("button[data-lift]").forEach(function (button) {
    button.addEventListener("click", function () {
      var result = button.parentNode.querySelector(".notice");
      button.disabled = true;
      MC.post(MC.base + "/api/suppressions/remove", {
        instance: chosen ? chosen.value : null, id: button.getAttribute("data-lift"),
      }).then(function (answer) {
        if (answer.ok) {
          MC.notice(result, "ok", answer.data.message);
          button.remove();
        } else {
          button.disabled = false;
          MC.notice(result, "error", answer.data.detail || "Refused");
        }
      });
    });
  });

  var form = document.getElementById("new-quarantine");
  if (!form) return;
  var result = document.getElementById("new-quarantine-result");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = { instance: form.getAttribute("data-instance") };
    form.querySelectorAll("input, select").forEach(function (input) {
      if (input.name) data[input.name] = input.value.trim();
    });
    var button = form.querySelector("button");
    button.disabled = true;
    MC.post(api, data).then(function (answer) {
      button.disabled = false;
      var rest = MC.showErrors(form, answer.data.errors);
      if (answer.ok) {
        MC.notice(result, "ok", answer.data.message + ". Reloading ...");
        window.setTimeout(function () { window.location.reload(); }, 600);
      } else {
        MC.notice(result, "error", (answer.data.detail || "Refused") + (rest.length ? ": " + rest.join("; ") : ""));
      }
    });
  });
})();
