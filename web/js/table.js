// The top-functions table and the biggest-movers table of a comparison. `tableRows` (filter,
// search and sort) is pure and tested; `renderTop`/`renderMovers` fill the DOM.

import { fmtValue, fmtPct, fmtPoints } from "./format.js";

/**
 * Rows to show: `fns` ([{name, self, total, reason?}]) with percentages of `total`, kept when the
 * name contains `filter` (case-insensitive) and matches `matcher` (the search), sorted by
 * `sort` = {key: name|self|selfPct|total|totalPct, dir: asc|desc}.
 */
export function tableRows(fns, total, { filter = "", matcher = null, sort = { key: "self", dir: "desc" } } = {}) {
  const f = filter.toLowerCase();
  const rows = fns
    .filter((r) => (!f || r.name.toLowerCase().includes(f)) && (!matcher || matcher(r.name)))
    .map((r) => ({
      ...r,
      selfPct: total > 0 ? (100 * r.self) / total : 0,
      totalPct: total > 0 ? (100 * r.total) / total : 0,
    }));
  const sign = sort.dir === "asc" ? 1 : -1;
  const key = sort.key;
  rows.sort((a, b) => {
    const va = a[key], vb = b[key];
    const c = typeof va === "string" ? va.localeCompare(vb) : va - vb;
    return c !== 0 ? sign * c : a.name.localeCompare(b.name);
  });
  return rows;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.className = cls;
  td.textContent = text;
  tr.append(td);
  return td;
}

/** Fills the top table's body; `selected` is the name picked (exact search), if any. */
export function renderTop(tbody, rows, { unit, selected, empty, limit = 500 }) {
  tbody.replaceChildren();
  if (!rows.length) {
    const td = tbody.insertRow().insertCell();
    td.colSpan = 6;
    td.className = "empty";
    td.textContent = empty;
    return;
  }
  const maxSelfPct = Math.max(...rows.map((r) => r.selfPct), 1e-9);
  const frag = document.createDocumentFragment();
  for (const r of rows.slice(0, limit)) {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    tr.dataset.self = String(r.self);
    tr.dataset.total = String(r.total);
    tr.tabIndex = 0;
    tr.title = "Click: highlight in the flame graph · double-click: sandwich";
    const sel = r.name === selected;
    tr.classList.toggle("selected", sel);
    tr.setAttribute("aria-selected", String(sel));
    cell(tr, r.name, "name-col");
    cell(tr, fmtValue(r.self, unit), "num");
    const pct = cell(tr, fmtPct(r.selfPct), "num");
    cell(tr, fmtValue(r.total, unit), "num");
    cell(tr, fmtPct(r.totalPct), "num");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, Math.round((40 * r.selfPct) / maxSelfPct))}px`;
    pct.prepend(bar);
    const act = document.createElement("td");
    act.className = "act";
    const b = document.createElement("button");
    b.type = "button";
    b.className = "sandwich-btn";
    b.dataset.action = "sandwich";
    b.title = `Sandwich view of ${r.name}: its callers and callees`;
    b.textContent = "sandwich";
    act.append(b);
    tr.append(act);
    frag.append(tr);
  }
  tbody.append(frag);
}

/** Fills the movers table (diff mode). */
export function renderMovers(tbody, rows, { unit, palette }) {
  tbody.replaceChildren();
  if (!rows.length) {
    const td = tbody.insertRow().insertCell();
    td.colSpan = 4;
    td.className = "empty";
    td.textContent = "no change";
    return;
  }
  const frag = document.createDocumentFragment();
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    tr.dataset.change = r.change.toFixed(4);
    cell(tr, r.name, "name-col");
    cell(tr, fmtValue(r.leftSelf, unit), "num");
    cell(tr, fmtValue(r.rightSelf, unit), "num");
    const c = cell(tr, fmtPoints(r.change), "num change");
    c.classList.add(r.change > 0 ? `grew-${palette}` : r.change < 0 ? `shrank-${palette}` : "same");
    frag.append(tr);
  }
  tbody.append(frag);
}
