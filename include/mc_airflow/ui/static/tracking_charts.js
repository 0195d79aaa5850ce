/* Tracking report charts (Chart.js, vendored): open and click rates, and the hits of people
 * and machines, per period; drawn from the JSON the page carries. */
(function () {
  "use strict";
  var holder = document.getElementById("report-data");
  if (!holder || !window.Chart) return;
  var report = JSON.parse(holder.textContent).report;
  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  function label(iso) {
    var text = iso.replace("T", " ").replace(":00:00Z", ":00").replace("Z", "");
    return report.filter.granularity === "day" ? text.slice(0, 10) : text.slice(5, 16);
  }
  var labels = report.buckets.map(function (b) { return label(b.start); });
  function pick(name) { return report.buckets.map(function (b) { return b[name]; }); }
  var common = {
    responsive: true, maintainAspectRatio: false, animation: false,
    plugins: { legend: { labels: { color: css("--fg") } } },
  };
  function axes(suffix) {
    return {
      x: { ticks: { color: css("--fg-muted") }, grid: { color: css("--border") } },
      y: { beginAtZero: true, ticks: { color: css("--fg-muted"), callback: function (v) { return v + suffix; } },
           grid: { color: css("--border") } },
    };
  }
  var rates = document.getElementById("chart-tracking-rates");
  if (rates) {
    new window.Chart(rates, {
      type: "line", options: Object.assign({ scales: axes(" %"), spanGaps: true }, common),
      data: { labels: labels, datasets: [
        { label: "Open rate", data: pick("openRate"), borderColor: css("--accent"), backgroundColor: css("--accent") },
        { label: "Click rate", data: pick("clickRate"), borderColor: css("--ok"), backgroundColor: css("--ok") },
      ] },
    });
  }
  var hits = document.getElementById("chart-tracking-hits");
  if (hits) {
    new window.Chart(hits, {
      type: "bar", options: Object.assign({ scales: axes("") }, common),
      data: { labels: labels, datasets: [
        { label: "Opens", data: pick("opens"), backgroundColor: css("--accent"), stack: "opens" },
        { label: "Automated opens", data: pick("automatedOpens"), backgroundColor: css("--none"), stack: "opens" },
        { label: "Clicks", data: pick("clicks"), backgroundColor: css("--ok"), stack: "clicks" },
        { label: "Automated clicks", data: pick("automatedClicks"), backgroundColor: css("--warning"), stack: "clicks" },
      ] },
    });
  }
})();
