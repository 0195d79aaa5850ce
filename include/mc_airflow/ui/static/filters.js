/* Report filters: the From/To fields only apply to "Chosen range". */
(function () {
  "use strict";
  var form = document.getElementById("report-filter");
  if (!form) return;
  var period = form.querySelector("#period");
  function sync() {
    var custom = period.value === "custom";
    form.querySelectorAll(".field.range input").forEach(function (input) {
      input.disabled = !custom;
      input.closest(".field").style.opacity = custom ? "1" : "0.5";
    });
  }
  period.addEventListener("change", sync);
  sync();
})();
