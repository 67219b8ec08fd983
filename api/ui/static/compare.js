// The compare chart: one point per job of the checkpoint, true ratio against the chosen score; a click opens it.
"use strict";
(function () {
  const data = L2.json("compare-data");
  const chart = document.getElementById("chart-compare");
  if (!data || !chart || typeof Plotly === "undefined") return;
  const sqnr = (data.metric || "").includes("sqnr");
  const points = data.points.filter((p) => p.true_ratio !== null && data.metric && data.metric in p.scores);
  points.sort((a, b) => a.true_ratio - b.true_ratio);
  const y = points.map((p) => (sqnr ? p.scores[data.metric] : 100 * p.scores[data.metric]));
  const trace = {
    x: points.map((p) => p.true_ratio),
    y: y,
    customdata: points.map((p) => p.id),
    text: points.map((p) => `${p.id.slice(0, 8)} · target ${p.target_ratio}× · ${JSON.stringify(p.options)}`),
    mode: "lines+markers",
    type: "scatter",
    marker: { size: 11, color: "#3b6fd8" },
    line: { color: "#9db5ea", dash: "dot" },
    hovertemplate: "%{text}<br>ratio %{x:.3f}×<br>score %{y:.3f}<extra></extra>",
  };
  Plotly.newPlot(
    chart,
    [trace],
    {
      margin: { t: 20, r: 20, b: 50, l: 70 },
      xaxis: { title: { text: "true compression ratio (×)" } },
      yaxis: { title: { text: data.label + (sqnr ? "" : " (%)") } },
      hovermode: "closest",
    },
    { displaylogo: false, responsive: true }
  );
  chart.on("plotly_click", (event) => {
    const id = event.points && event.points[0] && event.points[0].customdata;
    if (id) window.location.href = "/ui/jobs/" + id;
  });
})();
