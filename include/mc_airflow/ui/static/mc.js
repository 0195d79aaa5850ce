/* Message Center pages: shared behaviour (no framework, no build step). */
(function () {
  "use strict";
  var MC = (window.MC = window.MC || {});
  MC.base = document.body.getAttribute("data-base") || "";

  /* A change is a JSON POST with the header the server's CSRF guard asks for. */
  MC.post = function (url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Requested-With": "XMLHttpRequest" },
      body: JSON.stringify(body || {}),
    }).then(function (response) {
      return response.text().then(function (text) {
        var data = {};
        try { data = text ? JSON.parse(text) : {}; } catch (e) { data = { detail: text }; }
        if (response.status === 401) {
          data.detail = "Your Airflow session has ended: reload the page to log in again.";
        }
        return { status: response.status, ok: response.ok, data: data };
      });
    });
  };

  MC.getJSON = function (url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().then(function (data) { return { status: response.status, data: data }; });
      });
  };

  /* Links to Airflow's own pages: navigate Airflow's UI (the parent window), not the frame.
   * Airflow's router listens to popstate; outside Airflow the link works as usual. */
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[data-airflow]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    try {
      var top = window.top;
      if (top === window || top.location.origin !== window.location.origin) return;
      event.preventDefault();
      top.history.pushState({}, "", link.getAttribute("href"));
      top.dispatchEvent(new PopStateEvent("popstate", { state: {} }));
    } catch (e) { /* fall back to the plain link */ }
  });

  /* <main data-refresh="15">: reload the page's content in place every N seconds. */
  var main = document.getElementById("mc-main");
  var every = main && parseInt(main.getAttribute("data-refresh") || "0", 10);
  if (every > 0) {
    window.setInterval(function () {
      if (document.hidden) return;
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("mc-main");
          if (fresh) main.innerHTML = fresh.innerHTML;
        })
        .catch(function () { /* keep the last figures */ });
    }, every * 1000);
  }

  /* Show the field errors of a 422 next to their inputs. */
  MC.showErrors = function (form, errors) {
    form.querySelectorAll(".field").forEach(function (field) {
      field.classList.remove("invalid");
      var slot = field.querySelector(".error");
      if (slot) slot.textContent = "";
    });
    var rest = [];
    Object.keys(errors || {}).forEach(function (name) {
      var input = form.querySelector('[name="' + name + '"]');
      var field = input && input.closest(".field");
      var slot = field && field.querySelector(".error");
      if (slot) {
        field.classList.add("invalid");
        slot.textContent = errors[name];
      } else {
        rest.push(errors[name]);
      }
    });
    return rest;
  };

  MC.notice = function (element, kind, text) {
    element.className = "notice " + kind;
    element.textContent = text;
    element.hidden = false;
  };

  /* Every script of the page has run: tests (and people's scripts) wait for this. */
  window.addEventListener("load", function () {
    document.documentElement.setAttribute("data-mc-ready", "");
  });
})();
