/* Webhooks: enable / disable, send a test, replay (JSON POSTs, CSRF header). */
(function () {
  "use strict";
  var MC = window.MC;
  var api = MC.base + "/api/webhooks";

  function act(button, path, data, reload) {
    var result = button.closest("td").querySelector(".notice");
    button.disabled = true;
    MC.post(api + path, data).then(function (answer) {
      button.disabled = false;
      if (answer.ok) {
        MC.notice(result, "ok", answer.data.message);
        if (reload) window.setTimeout(function () { window.location.reload(); }, 600);
      } else {
        var errors = answer.data.errors ? Object.values(answer.data.errors).join("; ") : "";
        MC.notice(result, "error", (answer.data.detail || "Refused") + (errors ? ": " + errors : ""));
      }
    });
  }

  document.querySelectorAll("button[data-toggle]").forEach(function (button) {
    button.addEventListener("click", function () {
      act(button, "/enabled", { id: button.getAttribute("data-toggle"),
                                enabled: button.getAttribute("data-enabled") === "true" }, true);
    });
  });
  document.querySelectorAll("button[data-test]").forEach(function (button) {
    button.addEventListener("click", function () {
      act(button, "/test", { id: button.getAttribute("data-test") }, false);
    });
  });
  document.querySelectorAll("button[data-replay]").forEach(function (button) {
    button.addEventListener("click", function () {
      var id = button.getAttribute("data-replay");
      var hours = document.querySelector("input[data-hours='" + id + "']").value;
      act(button, "/replay", { id: id, hours: hours }, false);
    });
  });
})();
