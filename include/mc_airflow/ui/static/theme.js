/* Follow Airflow's colour mode (loaded in <head>, before the page paints).
 *
 * Inside Airflow's UI the page is a same-origin iframe: Airflow puts the class "dark" or
 * "light" on its <html> element (next-themes), so we read it there and watch it change.
 * Opened on its own, the page uses Airflow's stored choice (localStorage "theme"), else
 * the system's prefers-color-scheme. */
(function () {
  "use strict";
  var media = window.matchMedia("(prefers-color-scheme: dark)");

  function parentRoot() {
    try {
      if (window.parent !== window && window.parent.document) {
        return window.parent.document.documentElement;
      }
    } catch (e) { /* another origin: not inside Airflow */ }
    return null;
  }

  function mode() {
    var root = parentRoot();
    if (root) {
      if (root.classList.contains("dark")) return "dark";
      if (root.classList.contains("light")) return "light";
    }
    try {
      var stored = window.localStorage.getItem("theme");
      if (stored === "dark" || stored === "light") return stored;
    } catch (e) { /* storage disabled */ }
    return media.matches ? "dark" : "light";
  }

  function apply() {
    var next = mode();
    var html = document.documentElement;
    if (html.getAttribute("data-theme") === next) return;
    html.setAttribute("data-theme", next);
    html.style.colorScheme = next;
    window.dispatchEvent(new CustomEvent("mc-theme", { detail: next }));
  }

  apply();
  var root = parentRoot();
  if (root && window.MutationObserver) {
    new MutationObserver(apply).observe(root, { attributes: true, attributeFilter: ["class"] });
  }
  if (media.addEventListener) media.addEventListener("change", apply);
  window.addEventListener("storage", apply);
})();
