// The top-functions table and the biggest-movers table of a comparison. `tableRows` (filter,
// search and sort) and `visibleWindow` are pure and tested; `TopTable` (virtualized) and
// `renderMovers` fill the DOM.

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

/** Height of a top-table row in CSS px: fixed by style.css (`#top-table tbody tr[data-name]`). */
export const ROW_H = 28;
const OVERSCAN = 10;

/**
 * The slice of `n` rows of `rowH` px to put in the DOM when the scroller shows `viewH` px from
 * `scrollTop`, with `overscan` rows either side; `padTop`/`padBottom` stand in for the rest.
 */
export function visibleWindow(n, scrollTop, viewH, rowH = ROW_H, overscan = OVERSCAN) {
  // Fewer rows than before (a filter) and the scroller is past their end: show the last ones.
  scrollTop = Math.max(0, Math.min(scrollTop, n * rowH - viewH));
  const first = Math.max(0, Math.min(n, Math.floor(scrollTop / rowH) - overscan));
  const last = Math.min(n, Math.ceil((scrollTop + viewH) / rowH) + overscan);
  const end = Math.max(first, last);
  return { first, last: end, padTop: first * rowH, padBottom: (n - end) * rowH };
}

/**
 * The top table, virtualized: all rows are scrollable but only those in view (plus a margin) are
 * in the DOM, so a 500-row table costs the style and layout of ~40 rows. Stand-in rows (no
 * `data-name`) keep the scroll height.
 */
export class TopTable {
  constructor(tbody, scroller) {
    this.tbody = tbody;
    this.scroller = scroller;
    this.rows = [];
    this.opts = {};
    this.scrollTop = 0;
    this.viewH = 480; // the scroller's max-height in style.css until a scroll tells the real one
    this.drawn = null; // [first, last] in the DOM
    this.queued = false;
    scroller.addEventListener("scroll", () => {
      // Read here (layout is current at a scroll event), never while rendering.
      this.scrollTop = scroller.scrollTop;
      this.viewH = scroller.clientHeight || this.viewH;
      if (this.queued) return;
      this.queued = true;
      requestAnimationFrame(() => {
        this.queued = false;
        this.paint(false);
      });
    }, { passive: true });
  }

  /** New rows (`selected`: the name picked by an exact search, if any). */
  set(rows, { unit, selected, empty }) {
    this.rows = rows;
    this.opts = { unit, selected, empty, maxSelfPct: Math.max(1e-9, ...rows.map((r) => r.selfPct)) };
    this.paint(true);
  }

  paint(force) {
    const { tbody, rows } = this;
    if (!rows.length) {
      tbody.replaceChildren();
      const td = tbody.insertRow().insertCell();
      td.colSpan = 6;
      td.className = "empty";
      td.textContent = this.opts.empty ?? "";
      this.drawn = null;
      return;
    }
    const w = visibleWindow(rows.length, this.scrollTop, this.viewH);
    if (!force && this.drawn && this.drawn[0] === w.first && this.drawn[1] === w.last) return;
    this.drawn = [w.first, w.last];
    // Rows are recycled, not rebuilt: a reload or a scroll changes the text of the cells that
    // differ, so the browser restyles and lays out only those (rebuilding ~40 rows of a dozen
    // elements costs more than the whole flame-graph paint).
    let top = tbody.firstElementChild;
    if (!top?.classList.contains("spacer")) {
      tbody.replaceChildren();
      top = tbody.appendChild(spacer());
      tbody.appendChild(spacer());
    }
    const bottom = tbody.lastElementChild;
    setPad(top, w.padTop);
    setPad(bottom, w.padBottom);
    const want = w.last - w.first;
    let have = tbody.childElementCount - 2;
    while (have > want) {
      bottom.previousElementSibling.remove();
      have--;
    }
    const frag = document.createDocumentFragment();
    for (; have < want; have++) frag.append(newRow());
    tbody.insertBefore(frag, bottom);
    let tr = top.nextElementSibling;
    for (let i = w.first; i < w.last; i++, tr = tr.nextElementSibling) fillRow(tr, rows[i], this.opts);
  }
}

function spacer() {
  const tr = document.createElement("tr");
  tr.className = "spacer";
  tr.setAttribute("aria-hidden", "true");
  const td = document.createElement("td");
  td.colSpan = 6;
  tr.append(td);
  return tr;
}

function setPad(tr, h) {
  tr.hidden = h === 0;
  const v = `${h}px`;
  if (tr.firstChild.style.height !== v) tr.firstChild.style.height = v;
}

function newRow() {
  const tr = document.createElement("tr");
  tr.tabIndex = 0;
  for (const cls of ["name-col", "num", "num", "num", "num", "act"]) {
    const td = document.createElement("td");
    td.className = cls;
    tr.append(td);
  }
  const bar = document.createElement("span");
  bar.className = "bar";
  tr.cells[2].append(bar, document.createTextNode(""));
  const b = document.createElement("button");
  b.type = "button";
  b.className = "sandwich-btn";
  b.dataset.action = "sandwich";
  b.textContent = "sandwich";
  tr.cells[5].append(b);
  return tr;
}

const setText = (node, v) => {
  if (node.textContent !== v) node.textContent = v;
};

function fillRow(tr, r, { unit, selected, maxSelfPct }) {
  if (tr.dataset.name !== r.name) {
    tr.dataset.name = r.name;
    tr.title = `${r.name}\nClick: highlight in the flame graph · double-click: sandwich`;
    tr.cells[5].firstChild.title = `Sandwich view of ${r.name}: its callers and callees`;
  }
  tr.dataset.self = String(r.self);
  tr.dataset.total = String(r.total);
  const sel = r.name === selected;
  tr.classList.toggle("selected", sel);
  tr.setAttribute("aria-selected", String(sel));
  const c = tr.cells;
  setText(c[0], r.name);
  setText(c[1], fmtValue(r.self, unit));
  const bar = c[2].firstChild;
  // No sliver for a function without self time.
  const bw = `${r.selfPct > 0 ? Math.max(1, Math.round((40 * r.selfPct) / maxSelfPct)) : 0}px`;
  if (bar.style.width !== bw) bar.style.width = bw;
  setText(c[2].lastChild, fmtPct(r.selfPct));
  setText(c[3], fmtValue(r.total, unit));
  setText(c[4], fmtPct(r.totalPct));
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
