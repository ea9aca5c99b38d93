/* The atlas page: draws the embedded Plotly figures, inflates the sample records (gzip + base64) with
   the browser's DecompressionStream, and wires the map's hover and click, and the sample table.
   window.atlas = {meta, records, shown} once ready; <body data-ready="1"> then (data-ready="error" on failure). */
(function () {
  "use strict";
  const meta = JSON.parse(document.getElementById("atlas-meta").textContent);
  const S = meta.summary;
  const PAGE = 50;
  const ORDER = [4, 3, 0, 1, 2];  // table order by status: kept this round, not kept, rejected, kept earlier, seed
  const fmt = (v, digits) => v === null || v === undefined ? "–" :
    (typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(digits ?? 3)) : String(v));
  const esc = (t) => String(t ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  const el = (id) => document.getElementById(id);
  const clip = (t, n) => !t ? "" : (t.length > n ? t.slice(0, n) + "…" : t);

  async function inflate(b64) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }

  function header() {
    el("title").textContent = `Prismatic atlas — round ${S.round}`;
    el("subtitle").textContent = `store ${meta.store} · map: ${S.projection.toUpperCase()} of the gradient features, ` +
      `fitted on the pool · clusters of ${meta.clustering_round}`;
    const gain = S.gain === null || S.gain === undefined ? "" :
      ` (${S.gain >= 0 ? "+" : ""}${fmt(S.gain)} vs chance ${S.control_gain >= 0 ? "+" : ""}${fmt(S.control_gain)})`;
    const cards = [
      ["pool", fmt(S.pool), `${fmt(S.seed)} seeds · ${fmt(S.kept_earlier)} kept earlier · ${fmt(S.kept_this_round)} this round`],
      ["candidates", fmt(S.kept_this_round + S.not_kept_this_round), `${fmt(S.kept_this_round)} kept · ${fmt(S.not_kept_this_round)} not kept`],
      ["rejected", fmt(S.rejected), "problems and requests dropped this round"],
      ["G-Vendi", fmt(S.gvendi), "of the pool" + gain],
      ["clusters", fmt(S.clusters), `sparse below m = ${fmt(S.sparse_threshold, 1)}`],
      ["map", fmt(S.points), S.sampled ? `of ${fmt(S.total_points)} points (sampled)` : "points: pool + candidates"],
    ];
    el("cards").innerHTML = cards.map(([k, v, s]) => `<div class="card" data-card="${k}"><span>${k}</span><b>${v}</b><span>${esc(s)}</span></div>`).join("");
    el("notes").innerHTML = meta.notes.map((n) => `<li>${esc(n)}</li>`).join("");
    const shapes = {circle: "●", diamond: "◆", square: "■", "triangle-up": "▲", cross: "✚", x: "✖", star: "★", hexagon: "⬢"};
    const tasks = Object.entries(meta.task_symbols).map(([task, symbol]) => `${shapes[symbol] || symbol} ${esc(task)}`).join(", ");
    el("map-help").innerHTML = meta.statuses.slice(0, 4).map((s, i) => `<span class="dot s${i}"></span>${esc(s)}`).join(" &nbsp; ") +
      ` &nbsp;·&nbsp; shapes: ${tasks} &nbsp;·&nbsp; large outlined points lie in sparse clusters (pool size below m = ${fmt(meta.threshold, 1)}). ` +
      "Drag to zoom, double-click to reset, click a legend entry to hide a group.";
    el("clusters-help").textContent = `The clustering ${S.round}'s candidates were judged against (${meta.clustering_round}), ` +
      `smallest first; the dashed line is the sparse threshold m (the median size). Green and red stack this round's ` +
      `kept and not-kept candidates on the cluster they fell into.`;
  }

  function plot(id) {
    const figure = meta.figures[id], node = el(id);
    if (!figure) { node.remove(); return; }
    Plotly.newPlot(node, figure.data, figure.layout, {responsive: true, displaylogo: false});
  }

  function row(r, i) {
    const st = r.status[i];
    return {i, id: r.id[i], status: st, round: r.round[i], task: r.task[i], prompt: r.prompt[i], response: r.response[i],
      answer: r.answer[i], votes: r.votes[i], majority: r.majority[i], cluster: r.cluster[i], size: r.size[i],
      sparse: r.sparse[i], gain: r.gain[i], gain_round: r.gain_round[i], reason: r.reason[i], detail: r.detail[i]};
  }

  function statusText(s) {
    return s.status === 4 ? `rejected: ${s.reason}` : meta.statuses[s.status];
  }

  function facts(s) {
    const parts = [`<span class="dot s${s.status}"></span><b>${esc(statusText(s))}</b>`, `round <b>${esc(s.round)}</b>`];
    if (s.task) parts.push(`task <b>${esc(s.task)}</b>`);
    if (s.votes !== null && s.votes !== undefined) parts.push(`votes <b>${s.majority} of ${s.votes}</b> agree`);
    if (s.cluster !== null && s.cluster !== undefined)
      parts.push(`cluster <b>${s.cluster}</b>, size <b>${s.size}</b> (${s.sparse ? "sparse: below" : "not sparse: at or above"} m = ${fmt(meta.threshold, 1)})`);
    if (s.gain !== null && s.gain !== undefined) parts.push(`selection gain <b>${fmt(s.gain, 4)}</b> nats (${esc(s.gain_round)})`);
    return `<div class="kv">${parts.join(" · ")}</div>`;
  }

  function sampleHtml(s, short) {
    const n = short ? [320, 220] : [Infinity, Infinity];
    let out = `<div><b>${esc(s.id)}</b></div>` + facts(s) + `<div class="kv">problem</div><div class="text">${esc(clip(s.prompt, n[0]))}</div>`;
    if (s.response) out += `<div class="kv">${short ? "solution (start)" : "solution"}</div><div class="text">${esc(clip(s.response, n[1]))}</div>`;
    if (s.answer !== null && s.answer !== undefined) out += `<div class="kv">final answer <b>${esc(s.answer)}</b></div>`;
    if (s.detail) out += `<div class="kv">detail</div><div class="text">${esc(s.detail)}</div>`;
    if (!short && meta.clipped_at && (!meta.clipped_only_earlier || s.status < 2))
      out += `<p class="muted">Texts of this sample are cut at ${fmt(meta.clipped_at)} characters in this file; the store holds them whole.</p>`;
    return out;
  }

  function showDetail(s) {
    el("detail-body").innerHTML = sampleHtml(s, false);
    el("detail").hidden = false;
  }

  function wireMap(records) {
    const map = el("map"), tip = el("tooltip");
    map.on("plotly_hover", (ev) => {
      const p = ev.points[0];
      const s = row(records, p.customdata);
      el("hovered").innerHTML = sampleHtml(s, true);
      tip.innerHTML = sampleHtml(s, true);
      tip.hidden = false;
      // beside the point, on the side of the window with more room
      const e = ev.event, w = tip.offsetWidth, h = tip.offsetHeight;
      const left = e.clientX > window.innerWidth / 2 ? e.clientX - w - 14 : e.clientX + 14;
      const top = e.clientY > window.innerHeight / 2 ? e.clientY - h - 14 : e.clientY + 14;
      tip.style.left = Math.max(8, Math.min(left, window.innerWidth - w - 8)) + "px";
      tip.style.top = Math.max(8, Math.min(top, window.innerHeight - h - 8)) + "px";
    });
    map.on("plotly_unhover", () => { tip.hidden = true; });
    map.on("plotly_click", (ev) => { tip.hidden = true; showDetail(row(records, ev.points[0].customdata)); });
    el("detail-close").onclick = () => { el("detail").hidden = true; };
    el("detail").onclick = (ev) => { if (ev.target === el("detail")) el("detail").hidden = true; };
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") el("detail").hidden = true; });
  }

  function roundsTable() {
    const gv = meta.figures.gvendi.data[0];
    const counts = meta.figures.counts.data;
    const rows = gv.x.map((r, i) => `<tr><td>${esc(r)}</td><td>${fmt(gv.y[i])}</td><td>${fmt(counts[0].y[i])}</td>` +
      `<td>${fmt(counts[1].y[i])}</td><td>${fmt(counts[2].y[i])}</td></tr>`);
    el("rounds-table").innerHTML = "<thead><tr><th>round</th><th>pool G-Vendi</th><th>kept</th><th>verified, not kept</th>" +
      "<th>rejected</th></tr></thead><tbody>" + rows.join("") + "</tbody>";
  }

  function examples() {
    const reasons = Object.keys(meta.rejection_counts);
    if (!reasons.length) { el("examples").innerHTML = `<p class="muted">No rejections in ${esc(S.round)}.</p>`; return; }
    el("examples").innerHTML = reasons.map((reason) => `<div class="reason">${esc(reason)} · ${fmt(meta.rejection_counts[reason])}</div>` +
      (meta.examples[reason] || []).map((x) => `<div class="example"><b>${esc(x.id)}</b><div class="text">${esc(x.text)}</div>` +
        (x.detail && x.detail !== x.text ? `<div class="kv">${esc(x.detail)}</div>` : "") + "</div>").join("")).join("");
  }

  function table(records) {
    const n = records.id.length;
    const haystack = new Array(n);
    for (let i = 0; i < n; i++)
      haystack[i] = [records.id[i], records.prompt[i], records.response[i], records.answer[i], records.reason[i]].join("\n").toLowerCase();
    const options = (id, values) => { el(id).insertAdjacentHTML("beforeend", values.map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join("")); };
    options("filter-round", [...new Set(records.round)].sort());
    options("filter-task", [...new Set(records.task.filter((t) => t))].sort());
    const statusValues = meta.statuses.slice(0, 4).concat(Object.keys(meta.rejection_counts).map((r) => "rejected: " + r));
    options("filter-status", statusValues);
    let matches = [], page = 0;
    const render = () => {
      const start = page * PAGE, rows = matches.slice(start, start + PAGE).map((i) => {
        const s = row(records, i);
        return `<tr data-i="${i}"><td>${esc(s.id)}</td><td>${esc(s.round)}</td><td>${esc(s.task ?? "")}</td>` +
          `<td><span class="dot s${s.status}"></span>${esc(statusText(s))}</td><td class="problem">${esc(clip(s.prompt, 180))}</td>` +
          `<td>${esc(s.answer ?? "")}</td><td>${s.votes === null || s.votes === undefined ? "" : `${s.majority}/${s.votes}`}</td>` +
          `<td>${s.cluster === null || s.cluster === undefined ? "" : `${s.cluster} (${s.size})`}</td><td>${s.gain === null || s.gain === undefined ? "" : fmt(s.gain, 4)}</td></tr>`;
      });
      document.querySelector("#samples tbody").innerHTML = rows.join("");
      el("table-count").textContent = `${matches.length.toLocaleString("en")} of ${n.toLocaleString("en")} rows`;
      const pages = Math.max(1, Math.ceil(matches.length / PAGE));
      el("page").textContent = `page ${page + 1} of ${pages}`;
      el("prev").disabled = page === 0;
      el("next").disabled = page + 1 >= pages;
    };
    const filter = () => {
      const q = el("search").value.trim().toLowerCase(), rd = el("filter-round").value, task = el("filter-task").value;
      const st = el("filter-status").value;
      const buckets = [[], [], [], [], []];  // this round's candidates and rejections first, then earlier rows
      for (let i = 0; i < n; i++) {
        if (rd && records.round[i] !== rd) continue;
        if (task && records.task[i] !== task) continue;
        if (st) {
          const s = records.status[i] === 4 ? "rejected: " + records.reason[i] : meta.statuses[records.status[i]];
          if (s !== st) continue;
        }
        if (q && !haystack[i].includes(q)) continue;
        buckets[ORDER[records.status[i]]].push(i);
      }
      matches = [].concat(...buckets);
      page = 0;
      render();
    };
    el("search").addEventListener("input", filter);
    ["filter-round", "filter-task", "filter-status"].forEach((id) => el(id).addEventListener("change", filter));
    el("prev").onclick = () => { page = Math.max(0, page - 1); render(); };
    el("next").onclick = () => { page += 1; render(); };
    document.querySelector("#samples tbody").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr");
      if (tr) showDetail(row(records, Number(tr.dataset.i)));
    });
    filter();
  }

  async function main() {
    header();
    ["map", "clusters", "gvendi", "gains", "counts", "tokens", "reasons"].forEach(plot);
    roundsTable();
    examples();
    const records = await inflate(document.getElementById("atlas-records").textContent.trim());
    const shown = el("map")._fullData.reduce((total, trace) => total + (trace._length || 0), 0);
    window.atlas = {meta, records, shown};
    wireMap(records);
    table(records);
    document.body.dataset.ready = "1";
  }

  main().catch((err) => { document.body.dataset.ready = "error"; console.error(err); });
})();
