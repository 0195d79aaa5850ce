/* Report charts (Chart.js, vendored): drawn from the JSON the page carries, coloured by
 * the warning / alert thresholds, redrawn when Airflow's colour mode changes. */
(function () {
  "use strict";
  var holder = document.getElementById("report-data");
  if (!holder || !window.Chart) return;
  var data = JSON.parse(holder.textContent);
  var report = data.report;
  var charts = [];

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  function palette() {
    return {
      fg: css("--fg"), muted: css("--fg-muted"), grid: css("--border"), accent: css("--accent"),
      ok: css("--ok"), warning: css("--warning"), alert: css("--alert"), none: css("--none"),
      causes: {
        not_taken_into_account: "#a855f7", expired: css("--warning"),
        failed: css("--alert"), ignored: css("--none"),
      },
    };
  }

  function label(iso) {
    var text = iso.replace("T", " ").replace(":00:00Z", ":00").replace("Z", "");
    return report.filter.granularity === "day" ? text.slice(0, 10) : text.slice(5, 16);
  }
  var labels = report.buckets.map(function (b) { return label(b.start); });

  function level(value, warning, alert) {
    if (value === null || value === undefined) return "none";
    return value >= alert ? "alert" : value >= warning ? "warning" : "ok";
  }

  /* Dashed warning / alert lines; the alert line only once values reach the warning, so
   * the figures are not squashed at the bottom of a scale made for the alert. */
  function thresholdLines(limit, scale, colors, values) {
    if (!limit) return [];
    var top = Math.max.apply(null, (values || []).filter(function (v) { return v !== null; }).concat([0]));
    var lines = [
      { type: "line", label: "warning", data: labels.map(function () { return limit.warning * scale; }),
        borderColor: colors.warning, borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0, fill: false },
    ];
    if (top >= limit.warning * scale) {
      lines.push({ type: "line", label: "alert", data: labels.map(function () { return limit.alert * scale; }),
        borderColor: colors.alert, borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0, fill: false });
    }
    return lines;
  }

  /* A line of one indicator, each point in its threshold colour. */
  function indicatorChart(id, key, limit, scale, unit, colors) {
    var values = report.buckets.map(function (b) { return b[key] === null ? null : b[key] * scale; });
    var pointColors = values.map(function (v) {
      return colors[level(v, limit.warning * scale, limit.alert * scale)];
    });
    return make(id, {
      type: "line",
      data: { labels: labels, datasets: [{
        label: limit.label + " (" + unit + ")", data: values, borderColor: colors.accent,
        pointBackgroundColor: pointColors, pointBorderColor: pointColors, pointRadius: 3,
        spanGaps: true, fill: false,
      }].concat(thresholdLines(limit, scale, colors, values)) },
      options: { scales: { y: { beginAtZero: true, title: { display: true, text: unit } } } },
    }, colors);
  }

  function make(id, config, colors) {
    var canvas = document.getElementById(id);
    if (!canvas) return null;
    config.options = config.options || {};
    config.options.responsive = true;
    config.options.maintainAspectRatio = false;
    config.options.animation = false;
    config.options.plugins = Object.assign({ legend: { labels: { color: colors.fg } } },
                                           config.options.plugins || {});
    var scales = config.options.scales || {};
    ["x", "y"].forEach(function (axis) {
      scales[axis] = Object.assign({}, scales[axis] || {});
      scales[axis].ticks = Object.assign({ color: colors.muted }, scales[axis].ticks || {});
      scales[axis].grid = Object.assign({ color: colors.grid }, scales[axis].grid || {});
      if (scales[axis].title) scales[axis].title.color = colors.muted;
    });
    config.options.scales = scales;
    var chart = new window.Chart(canvas, config);
    charts.push(chart);
    return chart;
  }

  function serviceLevel(colors) {
    make("chart-volume", {
      type: "bar",
      data: { labels: labels, datasets: [
        { label: "Incoming events", data: report.buckets.map(function (b) { return b.incoming; }),
          backgroundColor: colors.accent },
        { label: "Sent messages", data: report.buckets.map(function (b) { return b.sent; }),
          backgroundColor: colors.ok },
      ] },
    }, colors);

    var causes = report.errorCauses;
    var errors = make("chart-errors", {
      type: "bar",
      data: { labels: labels, datasets: causes.map(function (c) {
        return { label: c.label, cause: c.cause, backgroundColor: colors.causes[c.cause],
                 data: report.buckets.map(function (b) { return b.errors[c.cause]; }) };
      }) },
      options: {
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
        onHover: function (event, elements) {
          event.native.target.style.cursor = elements.length ? "pointer" : "default";
        },
        onClick: function (event, elements) {
          if (!elements.length) return;
          var element = elements[0];
          var cause = errors.data.datasets[element.datasetIndex].cause;
          var bucket = report.buckets[element.index];
          var next = report.buckets[element.index + 1];
          var end = next ? next.start : report.filter.end;
          var params = new URLSearchParams(data.query);
          params.set("period", "custom");
          params.set("start", bucket.start.replace("Z", ""));
          params.set("end", end.replace("Z", ""));
          params.set("cause", cause);
          window.location.href = data.errorsUrl + "?" + params.toString();
        },
      },
    }, colors);

    indicatorChart("chart-error-rate", "errorRate", report.indicators.errorRate, 100, "%", colors);
    indicatorChart("chart-sending", "avgSendingMs", report.indicators.avgSendingMs, 1, "ms", colors);
  }

  function processingTime(colors) {
    var t = data.thresholds;
    indicatorChart("chart-queue", "avgQueueMs", t.avgQueueMs, 1, "ms", colors);
    indicatorChart("chart-sending", "avgSendingMs", t.avgSendingMs, 1, "ms", colors);
    indicatorChart("chart-total", "avgTotalMs", t.avgTotalMs, 1, "ms", colors);
    var limit = t.queueSize;
    var max = report.buckets.map(function (b) { return b.queuedMax; });
    make("chart-queued", {
      type: "line",
      data: { labels: labels, datasets: [
        { label: "max", data: max, borderColor: colors.alert, spanGaps: true,
          pointBackgroundColor: max.map(function (v) { return colors[level(v, limit.warning, limit.alert)]; }) },
        { label: "avg", data: report.buckets.map(function (b) { return b.queuedAvg; }),
          borderColor: colors.accent, spanGaps: true },
        { label: "min", data: report.buckets.map(function (b) { return b.queuedMin; }),
          borderColor: colors.ok, spanGaps: true },
      ].concat(thresholdLines(limit, 1, colors, max)) },
      options: { scales: { y: { beginAtZero: true, title: { display: true, text: "events" } } } },
    }, colors);
  }

  function draw() {
    charts.forEach(function (chart) { chart.destroy(); });
    charts = [];
    var colors = palette();
    if (data.kind === "service-level") serviceLevel(colors);
    else if (data.kind === "processing-time") processingTime(colors);
    document.body.setAttribute("data-charts", String(charts.length));
  }

  draw();
  window.addEventListener("mc-theme", draw);
})();
