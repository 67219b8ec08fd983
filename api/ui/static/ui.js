// Shared by every page: the CSRF token, selects that submit their form, and sortable tables.
"use strict";
const L2 = {
  csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  },
  json(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  },
  // Sort a table's body by the clicked column: numbers by data-value, text by content; a second click reverses.
  sortable(table) {
    table.querySelectorAll("th[data-sort]").forEach((th, column) => {
      th.addEventListener("click", () => {
        const ascending = th.dataset.dir !== "asc";
        table.querySelectorAll("th").forEach((other) => delete other.dataset.dir);
        th.dataset.dir = ascending ? "asc" : "desc";
        const numeric = th.dataset.sort === "num";
        const key = (row) => {
          const cell = row.children[column];
          return numeric ? parseFloat(cell.dataset.value ?? cell.textContent) : cell.textContent.trim();
        };
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort((a, b) => {
          const x = key(a), y = key(b);
          const order = numeric ? x - y : String(x).localeCompare(String(y));
          return ascending ? order : -order;
        });
        rows.forEach((row) => body.appendChild(row));
      });
    });
  },
};
document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
  select.addEventListener("change", () => select.form.submit());
});
document.querySelectorAll("table.sortable").forEach((table) => L2.sortable(table));
