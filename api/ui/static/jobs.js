// The jobs page stays live: every few seconds it fetches the table body for the same filter and page.
"use strict";
(function () {
  const body = document.getElementById("job-rows");
  if (!body) return;
  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch(body.dataset.src, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (response.ok) body.innerHTML = await response.text();
    } catch (err) {
      // the server may be restarting; the next tick tries again
    }
  }
  setInterval(refresh, 2000);
})();
