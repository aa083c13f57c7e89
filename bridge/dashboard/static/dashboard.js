// Draws the dashboard's charts with Chart.js from the JSON the page embeds (the same numbers are in the
// page's tables). No inline script: the pages' Content-Security-Policy allows only these files.
(function () {
  "use strict";
  if (typeof Chart === "undefined") { return; }
  var colors = { total: "#2f5fd0", up: "#2e8b57", down: "#c2413b" };
  Chart.defaults.animation = false; // the numbers are there at once, and a screenshot shows them

  function data(id) {
    var element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }

  var minutes = data("minutes-data");
  if (minutes) {
    new Chart(document.getElementById("minutes-chart"), {
      type: "bar",
      data: {
        labels: minutes.map(function (m) { return m.minute; }),
        datasets: [{ label: "Delivered", data: minutes.map(function (m) { return m.delivered; }),
                     backgroundColor: colors.total }]
      },
      options: { maintainAspectRatio: false, plugins: { legend: { display: false } },
                 scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
    });
  }

  var steps = data("waterfall-data");
  if (steps) {
    // A waterfall: each bar floats from where the step starts to where it ends.
    new Chart(document.getElementById("waterfall-chart"), {
      type: "bar",
      data: {
        labels: steps.map(function (s) { return s.label; }),
        datasets: [{
          label: "Count",
          data: steps.map(function (s) { return [s.from, s.to]; }),
          backgroundColor: steps.map(function (s) { return colors[s.kind]; })
        }]
      },
      options: {
        maintainAspectRatio: false,
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: function (context) {
            var step = steps[context.dataIndex];
            var sign = step.kind === "total" ? "" : (step.delta > 0 ? "+" : "−");
            return sign + Math.abs(step.delta).toLocaleString("en-US") + " → " + step.to.toLocaleString("en-US");
          } } }
        },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } }
      }
    });
  }
}());
