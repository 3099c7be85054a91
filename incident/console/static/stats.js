// The stats page's charts, drawn by Chart.js from the figures the page carries.
var data = JSON.parse(document.getElementById("stats-data").textContent);
var colours = {SEV1: "#b42318", SEV2: "#dc6803", SEV3: "#ca8a04", SEV4: "#475467"};
new Chart(document.getElementById("chart-per-day"), {type: "bar", options: {maintainAspectRatio: false, scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true, ticks: {precision: 0}}}},
  data: {labels: data.days, datasets: data.severities.map(function (s) { return {label: s, data: data.per_day[s], backgroundColor: colours[s]}; })}});
[["acknowledge", "Time to acknowledge"], ["resolve", "Time to resolve"]].forEach(function (chart) {
  new Chart(document.getElementById("chart-" + chart[0]), {type: "bar", options: {maintainAspectRatio: false, plugins: {title: {display: true, text: chart[1] + " (minutes)"}}, scales: {y: {beginAtZero: true}}},
    data: {labels: data.severities, datasets: [{label: "median", data: data[chart[0]].median, backgroundColor: "#1d4ed8"}, {label: "p90", data: data[chart[0]].p90, backgroundColor: "#93c5fd"}]}});
});
