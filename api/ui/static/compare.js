// The compare chart: one point per job of the checkpoint, true ratio against the chosen score; a click opens it.
"use strict";
(function () {
  const data = L2.json("compare-data");
  const chart = document.getElementById("chart-compare");
  if (!data || !chart || typeof Plotly === "undefined") return;
  const sqnr = (data.metric || "").includes("sqnr");
  // The server sends only jobs with a true ratio and the chosen score (`score`).
  const points = data.metric ? data.points.slice() : [];
  points.sort((a, b) => a.true_ratio - b.true_ratio);
  const y = points.map((p) => (sqnr ? p.score : 100 * p.score));
  const hover = points.map((p) => `${p.id.slice(0, 8)} · target ${p.target_ratio}× · ${JSON.stringify(p.options)}`);
  // The trade-off curve: the jobs no other job beats on both ratio and score (the Pareto front).
  const front = [];
  let best = -Infinity;
  for (let i = points.length - 1; i >= 0; i--) {
    if (y[i] > best) {
      best = y[i];
      front.unshift(i);
    }
  }
  const jobs = {
    x: points.map((p) => p.true_ratio),
    y: y,
    customdata: points.map((p) => p.id),
    text: hover,
    name: "jobs",
    mode: "markers",
    type: "scatter",
    marker: { size: 11, color: "#3b6fd8", opacity: 0.85 },
    hovertemplate: "%{text}<br>ratio %{x:.3f}×<br>score %{y:.3f}<extra></extra>",
  };
  const curve = {
    x: front.map((i) => points[i].true_ratio),
    y: front.map((i) => y[i]),
    customdata: front.map((i) => points[i].id),
    text: front.map((i) => hover[i]),
    name: "best trade-off",
    mode: "lines",
    type: "scatter",
    line: { color: "#e07b39", width: 2 },
    hoverinfo: "skip",
  };
  Plotly.newPlot(
    chart,
    [jobs, curve],
    {
      margin: { t: 20, r: 20, b: 50, l: 70 },
      xaxis: { title: { text: "true compression ratio (×)" } },
      yaxis: { title: { text: data.label + (sqnr ? "" : " (%)") } },
      hovermode: "closest",
      legend: { orientation: "h", y: 1.08 },
    },
    { displaylogo: false, responsive: true }
  );
  chart.on("plotly_click", (event) => {
    const id = event.points && event.points[0] && event.points[0].customdata;
    if (id) window.location.href = "/ui/jobs/" + id;
  });
})();
