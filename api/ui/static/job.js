// One job: live progress and loss curves while it runs (polling), the per-layer charts once it has succeeded.
"use strict";
(function () {
  const job = L2.json("job-data");
  if (!job) return;
  const TERMINAL = ["succeeded", "failed", "canceled"];
  const plotConfig = { displaylogo: false, responsive: true };

  // -- loss curves: every point the worker recorded, then the new ones each poll brings --
  const losses = L2.json("loss-points") || [];
  const lastSeq = () => (losses.length ? losses[losses.length - 1].seq : 0);
  function drawLosses(points) {
    const chart = document.getElementById("chart-losses");
    if (!chart || typeof Plotly === "undefined") return;
    if (!points.length) {
      chart.textContent = TERMINAL.includes(job.state)
        ? "The optimizer reported no losses for this job."
        : "Waiting for the optimizer's first losses…";
      chart.classList.add("empty-chart");
      return;
    }
    chart.classList.remove("empty-chart");
    if (!chart.dataset.plotted) chart.textContent = "";
    const x = points.map((p) => p.t);
    const traces = [
      { x, y: points.map((p) => p.distortion), name: "distortion", type: "scatter", mode: "lines+markers", yaxis: "y" },
      { x, y: points.map((p) => p.rate_bits_per_weight), name: "rate (bits/weight)", type: "scatter", mode: "lines+markers", yaxis: "y2" },
      { x, y: points.map((p) => p.budget_bits_per_weight), name: "budget (bits/weight)", type: "scatter", mode: "lines", line: { dash: "dash" }, yaxis: "y2" },
    ];
    const layout = {
      margin: { t: 20, r: 20, b: 40, l: 70 },
      xaxis: { anchor: "y2" },
      yaxis: { title: { text: "distortion" }, domain: [0.55, 1] },
      yaxis2: { title: { text: "bits / weight" }, domain: [0, 0.45], anchor: "x" },
      legend: { orientation: "h" },
      height: 420,
    };
    Plotly.react(chart, traces, layout, plotConfig);
    chart.dataset.plotted = "1";
  }
  drawLosses(losses);

  // -- live state while the job is unfinished --
  function setText(id, text) {
    const node = document.getElementById(id);
    if (node) node.textContent = text;
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, Math.round(seconds));
    const m = Math.floor(s / 60), h = Math.floor(m / 60);
    if (h) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
    if (m) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
    return `${s} s`;
  }
  function showEvents(events) {
    const body = document.getElementById("events");
    if (!body) return;
    body.replaceChildren(
      ...events.map((e) => {
        const row = document.createElement("tr");
        const time = new Date(e.created_at).toISOString().slice(11, 19);
        [time, e.state, e.phase || "", e.message || ""].forEach((text, i) => {
          const cell = document.createElement("td");
          cell.textContent = text;
          if (i === 0) cell.className = "mono small";
          row.appendChild(cell);
        });
        return row;
      })
    );
  }
  async function poll() {
    if (document.hidden) return;
    let data;
    try {
      const response = await fetch(`/ui/api/jobs/${job.id}/live?after=${lastSeq()}`, { credentials: "same-origin" });
      if (!response.ok) return;
      data = await response.json();
    } catch (err) {
      return;
    }
    const now = data.job;
    const bar = document.querySelector("#progress-bar span");
    if (bar) bar.style.width = now.progress_percent + "%";
    setText("progress-text", now.progress_percent.toFixed(1) + " %");
    setText("phase", now.phase || "—");
    setText("eta", now.state === "running" ? duration(now.eta_seconds) : "—");
    setText("estimated-ratio", now.estimated_ratio ? now.estimated_ratio.toFixed(2) + "×" : "—");
    const badge = document.getElementById("job-state");
    if (badge) {
      badge.textContent = now.state;
      badge.className = "badge " + now.state;
    }
    showEvents(data.events);
    if (data.loss_points.length) {
      losses.push(...data.loss_points);
      drawLosses(losses);
    }
    if (TERMINAL.includes(now.state)) {
      clearInterval(timer);
      window.location.replace(`/ui/jobs/${job.id}`); // the finished page renders the results
    }
  }
  const timer = TERMINAL.includes(job.state) ? null : setInterval(poll, 1000);

  // -- the per-layer story --
  const layers = L2.json("layers-data") || [];
  const bits = document.getElementById("chart-bits");
  if (layers.length && bits && typeof Plotly !== "undefined") {
    const names = layers.map((l) => l.name);
    const hover = layers.map(
      (l) =>
        `${l.name} (${l.shape})<br>${l.transform}, ${l.levels} levels<br>` +
        `sparsity ${(100 * (l.sparsity || 0)).toFixed(1)} %<br>${l.bytes} bytes, ${(100 * (l.share || 0)).toFixed(2)} % of the file`
    );
    const kinds = [...new Set(layers.map((l) => l.transform))];
    const palette = ["#3b6fd8", "#e07b39", "#3ba272", "#9b59b6", "#c0392b"];
    const colors = layers.map((l) => palette[kinds.indexOf(l.transform) % palette.length]);
    const common = { margin: { t: 40, r: 20, b: 140, l: 70 }, xaxis: { tickangle: -40, automargin: true }, bargap: 0.25 };
    Plotly.newPlot(
      bits,
      [{ type: "bar", x: names, y: layers.map((l) => l.bits_per_weight), hovertext: hover, hoverinfo: "text", marker: { color: colors } }],
      { ...common, title: { text: "bits per weight (colour: transform " + kinds.join(", ") + ")" }, yaxis: { title: { text: "bits / weight" } } },
      plotConfig
    );
    Plotly.newPlot(
      document.getElementById("chart-share"),
      [
        { type: "bar", x: names, y: layers.map((l) => 100 * (l.share || 0)), name: "share of the file", hovertext: hover, hoverinfo: "text", marker: { color: "#3ba272" } },
        { type: "scatter", mode: "markers", x: names, y: layers.map((l) => 100 * (l.sparsity || 0)), name: "sparsity", yaxis: "y2", marker: { color: "#c0392b", symbol: "diamond", size: 9 } },
      ],
      {
        ...common,
        margin: { ...common.margin, r: 70 },
        title: { text: "share of the file and sparsity" },
        yaxis: { title: { text: "% of file bytes" } },
        yaxis2: { title: { text: "sparsity %" }, overlaying: "y", side: "right", range: [0, 100] },
        legend: { orientation: "h", y: 1.12 },
      },
      plotConfig
    );
  }
})();
