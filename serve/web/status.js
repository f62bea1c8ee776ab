// The operator page: /api/v1/status as a page.

import { api } from "./api.js";

const $ = (id) => document.getElementById(id);

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v ?? "—";
    dl.append(dt, dd);
  }
}

const pct = (x) => `${(100 * x).toFixed(1)} %`;
const num = (x) => (x == null ? "—" : Number(x).toLocaleString("en"));

function model(m) {
  if (!m) return facts($("model"), [["version", "none: popularity only (train a model)"]]);
  if (m.error) return facts($("model"), [["error", m.error]]);
  facts($("model"), [
    ["version", m.version],
    ["rank", m.rank],
    ["items", `${num(m.items)} (${num(m.servable_items)} in the catalog)`],
    ["training pairs", num(m.data?.training_pairs)],
    ["iterations", m.iterations],
    ["seconds (prepare / train / evaluate)", m.seconds ? [m.seconds.prepare, m.seconds.train, m.seconds.evaluate].map((s) => s.toFixed(1)).join(" / ") : null],
  ]);
  const ev = m.evaluation;
  if (ev) {
    const rows = ["ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10"].map((k) => {
      const tr = document.createElement("tr");
      const ratio = ev.popularity[k] > 0 ? (ev.model[k] / ev.popularity[k]).toFixed(2) + "×" : "—";
      for (const v of [k.replace("_at_10", "@10").toUpperCase(), ev.model[k].toFixed(4), ev.popularity[k].toFixed(4), ratio]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.append(td);
      }
      return tr;
    });
    $("evaluation").tBodies[0].replaceChildren(...rows);
    $("evaluation").hidden = false;
  }
  $("loss").src = "/api/v1/models/current/loss.svg";
  $("loss-figure").hidden = false;
}

function catalog(c) {
  if (c.error) return facts($("catalog"), [["error", c.error]]);
  facts($("catalog"), [
    ["store", c.store],
    ["songs", num(c.songs)],
    ["users", `${num(c.users)} (${num(c.users_with_vector)} with a vector)`],
    ["lyrics coverage", pct(c.lyrics_coverage)],
    ["lyrics", Object.entries(c.lyrics).map(([k, v]) => `${k} ${num(v)}`).join(", ") + `, not looked up ${num(c.lyrics_pending)}`],
  ]);
}

const utc = (ms) => (ms == null ? "never" : new Date(ms).toISOString().replace("T", " ").slice(0, 19));

function jobs(j) {
  if (!j) return;
  if (j.error) {
    $("jobs-none").textContent = `Job records unreadable: ${j.error}`;
    return;
  }
  const rows = Object.entries(j).filter(([, r]) => r).map(([name, r]) => {
    const tr = document.createElement("tr");
    for (const v of [name, r.outcome, utc(r.last_start_ms), (r.duration_ms / 1000).toFixed(2), utc(r.last_success_ms), r.detail]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    if (r.outcome !== "ok") tr.className = "failed";
    return tr;
  });
  if (rows.length === 0) return;
  $("jobs").tBodies[0].replaceChildren(...rows);
  $("jobs").hidden = false;
  $("jobs-none").hidden = true;
}

api.status().then((s) => {
  model(s.model);
  catalog(s.catalog);
  jobs(s.jobs);
  document.body.dataset.loaded = "true";
}, (e) => {
  $("status-error").textContent = e.message;
});
