// leadscore's only script: it sends the pages' forms to the JSON API and shows the answers.
// Every value from the server is put on the page as text (textContent), never as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

async function api(method, url, body, type = "application/json") {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = type;
    init.body = type === "application/json" ? JSON.stringify(body) : body;
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { raw: text }; }
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.message) || `${response.status} ${response.statusText}`);
    error.details = (data && data.error && data.error.details) || [];
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(el, text, kind) {
  if (!el) return;
  el.textContent = text;
  el.classList.remove("error", "ok");
  if (kind) el.classList.add(kind);
}

// A long request's status line counts the seconds, so a wait is visibly a wait.
function ticking(el, text) {
  const start = Date.now();
  say(el, text);
  const timer = setInterval(() => say(el, `${text} ${Math.round((Date.now() - start) / 1000)} s`), 1000);
  return () => clearInterval(timer);
}

function problem(detail) {
  return detail.text || [detail.loc || detail.path, detail.message].filter(Boolean).join(": ");
}

// An error's message and the details it does not already say (they often repeat it).
function errorText(e) {
  const extra = (e.details || []).map(problem).filter((t) => t && !e.message.includes(t));
  return extra.length ? `${e.message}: ${extra.join("; ")}` : e.message;
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  const rounded = Math.round(value * 100) / 100 || 0; // no "-0"
  return Number.isInteger(rounded) ? rounded.toLocaleString("en") : rounded.toFixed(2);
}

function signed(value) {
  const text = fmt(value);
  return value > 0 && text !== "0" ? "+" + text : text;
}

function when(iso) {
  return iso ? iso.slice(0, 16).replace("T", " ") + " UTC" : "";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

// A select that opens what it names (the score sheet, the model) as soon as it changes.
for (const select of $$("select.autosubmit")) {
  select.addEventListener("change", () => select.form.submit());
}

// --- lead list: save the filter as a segment --------------------------------------------------
const segmentForm = $("#segment-form");
if (segmentForm) {
  segmentForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = segmentForm.elements.name.value.trim();
    const status = $("#segment-status");
    try {
      await api("PUT", `/api/v1/segments/${encodeURIComponent(name)}`, { query: segmentForm.dataset.query });
      window.location.href = `/?segment=${encodeURIComponent(name)}`;
    } catch (e) { say(status, e.message, "error"); }
  });
}

// --- lead page: sales' verdict ----------------------------------------------------------------
const dispositionForm = $("#disposition-form");
if (dispositionForm) {
  dispositionForm.elements.reason.addEventListener("keydown", (event) => {
    if (event.key === "Enter") event.preventDefault(); // a verdict is a button, not Enter
  });
  dispositionForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!event.submitter) return;
    const choice = event.submitter.value;
    const reason = dispositionForm.elements.reason.value.trim();
    const status = $("#disposition-status");
    const lead = encodeURIComponent(dispositionForm.dataset.lead);
    try {
      const body = { disposition: choice };
      if (reason) body.reason = reason;
      const answer = await api("POST", `/api/v1/leads/${lead}/disposition`, body);
      say(status, `Recorded: ${choice}${answer && answer.stage ? `, stage ${answer.stage}` : ""}.`, "ok");
      setTimeout(() => window.location.reload(), 600);
    } catch (e) { say(status, e.message, "error"); }
  });
}

// --- model editor -----------------------------------------------------------------------------
const yaml = $("#model-yaml");
if (yaml) {
  const gutter = $("#gutter");
  const problems = $("#problems");
  const checkStatus = $("#check-status");
  let badLines = new Set();
  let timer = null;
  let lastChecked = null;

  const drawGutter = () => {
    const lines = yaml.value.split("\n").length;
    gutter.textContent = "";
    for (let i = 1; i <= lines; i++) {
      const span = document.createElement("span");
      span.textContent = String(i);
      if (badLines.has(i)) span.className = "bad";
      gutter.appendChild(span);
      gutter.appendChild(document.createTextNode("\n"));
    }
    gutter.scrollTop = yaml.scrollTop;
  };
  const goToLine = (line) => {
    const lines = yaml.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    yaml.focus();
    yaml.setSelectionRange(start, start + (lines[line - 1] || "").length);
    yaml.scrollTop = Math.max(0, (line - 5) * 18);
  };
  const check = async () => {
    const text = yaml.value;
    if (text === lastChecked) return;
    lastChecked = text;
    try {
      const result = await api("POST", "/api/v1/models/check", text, "application/yaml");
      if (text !== yaml.value) return; // typed on meanwhile: the next check tells
      badLines = new Set((result.errors || []).map((e) => e.line).filter(Boolean));
      problems.textContent = "";
      for (const e of result.errors || []) {
        const li = document.createElement("li");
        li.textContent = problem(e);
        if (e.line) li.addEventListener("click", () => goToLine(e.line));
        problems.appendChild(li);
      }
      if (result.valid) say(checkStatus, `Valid: ${result.rules} rules in ${result.groups.length} groups.`, "ok");
      else say(checkStatus, `${result.errors.length} problem${result.errors.length === 1 ? "" : "s"}:`, "error");
    } catch (e) { say(checkStatus, e.message, "error"); }
    drawGutter();
  };
  yaml.addEventListener("input", () => { drawGutter(); clearTimeout(timer); timer = setTimeout(check, 250); });
  yaml.addEventListener("scroll", () => { gutter.scrollTop = yaml.scrollTop; });
  yaml.addEventListener("keydown", (event) => {
    if (event.key === "Escape") yaml.blur(); // then Tab leaves the editor
    else if (event.key === "Tab") { // indent with spaces, as YAML wants
      event.preventDefault();
      const at = yaml.selectionStart;
      yaml.setRangeText("  ", at, yaml.selectionEnd, "end");
      yaml.dispatchEvent(new Event("input"));
    }
  });
  drawGutter();
  check();

  const preview = async () => {
    const button = $("#preview-button");
    button.disabled = true;
    const stop = ticking($("#preview-hint"), "Scoring every stored lead…");
    try {
      const r = await api("POST", "/api/v1/models/preview", yaml.value, "application/yaml");
      $("#preview-result").hidden = false;
      const count = (n) => (n === null || n === undefined ? "–" : n.toLocaleString("en"));
      $("#pv-band-changes").textContent = count(r.band_changes);
      $("#pv-mql-after").textContent = count(r.mql_after);
      $("#pv-mql-before").textContent = count(r.mql_before);
      const against = r.compared_with ? `the active version ${r.compared_with.version}` : "no active version";
      say($("#pv-summary"), `${r.leads.toLocaleString("en")} leads scored as of ${when(r.as_of)}, compared with ${against}${r.grade_changes === null ? "" : `; ${count(r.grade_changes)} change grade`}.`);
      const moves = $("#pv-moves tbody");
      moves.textContent = "";
      for (const m of r.band_moves) {
        const row = document.createElement("tr");
        cell(row, m.from || "no score yet"); cell(row, m.to || "–"); cell(row, count(m.leads), "num");
        moves.appendChild(row);
      }
      const movers = $("#pv-movers tbody");
      movers.textContent = "";
      for (const m of r.movers) {
        const row = document.createElement("tr");
        const who = document.createElement("td");
        const link = document.createElement("a");
        link.href = `/leads/${encodeURIComponent(m.lead_id)}`;
        link.textContent = m.name || m.email || m.lead_id;
        who.appendChild(link);
        row.appendChild(who);
        cell(row, fmt(m.old_score), "num"); cell(row, fmt(m.new_score), "num");
        cell(row, signed(m.delta), "num");
        cell(row, m.old_band === m.new_band ? (m.new_band || "") : `${m.old_band || "–"} → ${m.new_band || "–"}`);
        movers.appendChild(row);
      }
      say($("#preview-hint"), "Scores every stored lead with the text in the editor and compares with their current scores. Nothing is saved.");
    } catch (e) {
      say($("#preview-hint"), errorText(e), "error");
    } finally { stop(); button.disabled = false; }
  };
  $("#preview-button").addEventListener("click", preview);

  const save = async () => {
    const saved = await api("POST", "/api/v1/models", yaml.value, "application/yaml");
    return saved;
  };
  $("#save-button").addEventListener("click", async () => {
    const status = $("#publish-status");
    try {
      const v = await save();
      say(status, `Saved as ${v.name} version ${v.version} (${v.status}).`, "ok");
    } catch (e) { say(status, errorText(e), "error"); }
  });
  $("#publish-button").addEventListener("click", async () => {
    const status = $("#publish-status");
    const button = $("#publish-button");
    if (!window.confirm("Publish this model? Every lead is rescored with it.")) return;
    button.disabled = true;
    const stop = ticking(status, "Publishing and rescoring every lead…");
    try {
      const v = await save();
      const r = await api("POST", `/api/v1/models/${encodeURIComponent(v.name)}/publish?version=${v.version}`);
      stop();
      say(status, `Published ${v.name} version ${r.published.version}: ${r.rescore.leads.toLocaleString("en")} leads rescored, ${r.rescore.changed.toLocaleString("en")} changed.`, "ok");
      setTimeout(() => { window.location.href = `/model?name=${encodeURIComponent(v.name)}`; }, 1500);
    } catch (e) {
      stop();
      say(status, errorText(e), "error");
    } finally { button.disabled = false; }
  });

  for (const button of $$(".diff-button")) {
    button.addEventListener("click", async () => {
      const out = $("#diff");
      try {
        const d = await api("GET", `/api/v1/models/${encodeURIComponent(yaml.dataset.name)}/diff?from=${button.dataset.from}&to=${button.dataset.to}`);
        out.hidden = false;
        out.textContent = "";
        const head = document.createElement("span");
        head.textContent = `v${d.from} → v${d.to}: ${d.added} line(s) added, ${d.removed} removed\n`;
        out.appendChild(head);
        for (const line of d.diff.split("\n")) {
          const span = document.createElement("span");
          span.textContent = line + "\n";
          if (line.startsWith("+") && !line.startsWith("+++")) span.className = "add";
          else if (line.startsWith("-") && !line.startsWith("---")) span.className = "del";
          out.appendChild(span);
        }
      } catch (e) { out.hidden = false; out.textContent = e.message; }
    });
  }

  const tryForm = $("#try-form");
  tryForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = $("#try-status");
    // an error leaves no earlier result on show, to be taken for this one
    const fail = (text) => { $("#try-result").hidden = true; say(status, text, "error"); };
    const lead = {};
    for (const line of tryForm.elements.fields.value.split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf(":");
      if (at <= 0) return fail(`"${line.trim()}": write a field as name: value`);
      lead[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    }
    const events = [];
    for (const line of tryForm.elements.events.value.split("\n")) {
      const parts = line.trim().split(/\s+/).filter(Boolean);
      if (!parts.length) continue;
      const days = Number(parts[1] || 0);
      if (!Number.isFinite(days) || days < 0) {
        return fail(`"${line.trim()}": the second word is the number of days ago (0 or more)`);
      }
      const e = { type: parts[0], days_ago: days, properties: {} };
      for (const p of parts.slice(2)) {
        const eq = p.indexOf("=");
        if (eq <= 0) return fail(`"${p}" in "${line.trim()}": write a property as name=value`);
        const k = p.slice(0, eq), v = p.slice(eq + 1);
        if (k === "item") e.item = v; else e.properties[k] = v;
      }
      events.push(e);
    }
    try {
      const r = await api("POST", "/api/v1/score", { yaml: yaml.value, lead, events });
      const result = r.result || r;
      const explanation = r.explanation || result;
      $("#try-result").hidden = false;
      $("#try-score").textContent = fmt(result.score);
      $("#try-summary").textContent = `grade ${result.grade || "–"}, band ${result.band || "–"}${result.mql ? ", MQL" : ""}${result.priority ? `, priority ${result.priority}` : ""} (fit ${fmt(result.fit)}, engagement ${fmt(result.engagement)})`;
      const body = $("#try-rules tbody");
      body.textContent = "";
      for (const rule of explanation.rules || []) {
        if (!rule.matched && !rule.points) continue;
        const row = document.createElement("tr");
        cell(row, rule.rule_id); cell(row, signed(rule.points), "num");
        body.appendChild(row);
      }
      say(status, "");
    } catch (e) {
      fail(errorText(e));
    }
  });
}

// --- triggers ---------------------------------------------------------------------------------
for (const box of $$(".trigger-toggle")) {
  box.addEventListener("change", async () => {
    try { await api("PATCH", `/api/v1/triggers/${encodeURIComponent(box.dataset.id)}`, { enabled: box.checked }); }
    catch (e) { box.checked = !box.checked; window.alert(e.message); }
  });
}
for (const button of $$(".test-button")) {
  button.addEventListener("click", async () => {
    const status = $(`[data-test-status="${CSS.escape(button.dataset.id)}"]`);
    button.disabled = true;
    say(status, "Sending…");
    try {
      const r = await api("POST", `/api/v1/triggers/${encodeURIComponent(button.dataset.id)}/test`);
      const lines = r.items.map((a) => `${a.url}: ${a.status_code ? `answered ${a.status_code}` : a.error} in ${a.duration_ms} ms`);
      const good = r.items.every((a) => a.status_code && a.status_code < 300);
      say(status, lines.join("; "), good ? "ok" : "error");
    } catch (e) { say(status, e.message, "error"); }
    finally { button.disabled = false; }
  });
}
for (const button of $$(".redeliver-button")) {
  button.addEventListener("click", async () => {
    try { await api("POST", `/api/v1/deliveries/${button.dataset.id}/redeliver`); window.location.reload(); }
    catch (e) { window.alert(e.message); }
  });
}
const triggersForm = $("#triggers-form");
if (triggersForm) {
  triggersForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!window.confirm("Replace every trigger with the ones in this file?")) return;
    const list = $("#triggers-problems");
    list.textContent = "";
    try {
      const r = await api("PUT", "/api/v1/triggers", triggersForm.elements.yaml.value, "application/yaml");
      say($("#triggers-status"), `Saved ${r.items.length} trigger(s).`, "ok");
      setTimeout(() => window.location.reload(), 800);
    } catch (e) {
      say($("#triggers-status"), e.message, "error");
      for (const d of e.details || []) { const li = document.createElement("li"); li.textContent = problem(d); list.appendChild(li); }
    }
  });
}

// --- API keys ---------------------------------------------------------------------------------
const keyForm = $("#key-form");
if (keyForm) {
  keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const scopes = $$("input[name=scopes]:checked", keyForm).map((b) => b.value);
    try {
      const r = await api("POST", "/api/v1/keys", { name: keyForm.elements.name.value.trim(), scopes });
      $("#new-key").hidden = false;
      $("#new-key-text").textContent = r.key;
      const table = $("#keys tbody") || $("#keys");
      const empty = $("#keys .empty");
      if (empty) empty.parentElement.remove();
      const row = document.createElement("tr");
      const who = cell(row, "");
      const name = document.createElement("b");
      name.textContent = r.name;
      who.appendChild(name);
      cell(row, r.scopes.join(", ")); cell(row, when(r.created_at)); cell(row, "never");
      const last = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button"; button.className = "revoke-button"; button.textContent = "Revoke";
      button.dataset.id = r.id; button.dataset.name = r.name;
      wireRevoke(button);
      last.appendChild(button);
      row.appendChild(last);
      table.appendChild(row);
      keyForm.reset();
      say($("#key-status"), `Created ${r.name || keyForm.elements.name.value}.`, "ok");
    } catch (e) { say($("#key-status"), errorText(e), "error"); }
  });
}
function wireRevoke(button) {
  button.addEventListener("click", async () => {
    if (!window.confirm(`Revoke the key ${button.dataset.name}? Senders using it stop working (other servers of this store within 30 seconds).`)) return;
    try { await api("DELETE", `/api/v1/keys/${encodeURIComponent(button.dataset.id)}`); window.location.reload(); }
    catch (e) { window.alert(e.message); }
  });
}
$$(".revoke-button").forEach(wireRevoke);

// --- validation: import outcomes from a CSV file ---------------------------------------------
const outcomesForm = $("#outcomes-form");
if (outcomesForm) {
  outcomesForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = $("#outcomes-status");
    const file = outcomesForm.elements.file.files[0];
    if (!file) { say(status, "Choose a CSV file first.", "error"); return; }
    const button = outcomesForm.querySelector("button");
    button.disabled = true;
    const stop = ticking(status, `Importing ${file.name}…`);
    try {
      const r = await api("POST", `/api/v1/outcomes?filename=${encodeURIComponent(file.name)}`, file, "text/csv");
      stop();
      const unknown = r.outcomes_for_unknown_leads
        ? ` ${r.outcomes_for_unknown_leads.toLocaleString("en")} name a lead the store does not hold (kept; check the lead ids).`
        : "";
      const named = (r.warnings || []).filter((w) => w.startsWith("outcomes named otherwise")).map((w) => ` Note: ${w}.`).join("");
      say(status, `Imported ${file.name}: ${r.added.toLocaleString("en")} new outcome${r.added === 1 ? "" : "s"}, ${r.repeated.toLocaleString("en")} already stored.${unknown}${named} Run the report again to include them.`, "ok");
    } catch (e) {
      stop();
      say(status, errorText(e), "error");
    } finally { button.disabled = false; }
  });
}

// --- model editor: backtest the draft next to the active version ------------------------------
const backtestForm = $("#backtest-form");
if (backtestForm) {
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);
  const count = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en"));
  const head = (table, names) => {
    const thead = $("thead", table);
    thead.textContent = "";
    const row = document.createElement("tr");
    for (const name of names) {
      const th = document.createElement("th");
      th.textContent = name;
      row.appendChild(th);
    }
    thead.appendChild(row);
  };
  backtestForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#backtest-button");
    const hint = $("#backtest-hint");
    const params = new URLSearchParams();
    for (const name of ["from", "every", "horizon"]) {
      const value = backtestForm.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    button.disabled = true;
    const stop = ticking(hint, "Replaying the stored history at every cut-off…");
    try {
      const r = await api("POST", `/api/v1/models/backtest?${params}`, $("#model-yaml").value, "application/yaml");
      stop();
      $("#backtest-result").hidden = false;
      const models = r.models;
      head($("#bt-summary"), ["", ...models.map((m) => m.label)]);
      const body = $("#bt-summary tbody");
      body.textContent = "";
      const speed = (m) => (m.speed.median_days === null ? "–" : `${fmt(m.speed.median_days)} days`);
      const rows = [
        ["MQL threshold", (m) => fmt(m.mql_threshold)],
        ["MQL at the first cut-off", (m) => count(m.mql_at_start)],
        ["new MQLs", (m) => count(m.new_mqls)],
        ["new MQLs a week", (m) => fmt(m.mqls_per_week)],
        ["converted within the horizon", (m) => count(m.converted)],
        ["MQL-to-conversion rate", (m) => pct(m.rate)],
        ["conversions between the cut-offs", (m) => count(m.conversions)],
        ["missed (never MQL first)", (m) => `${count(m.missed)} (${pct(m.missed_share)})`],
        ["first touch to MQL, median", speed],
      ];
      for (const [label, value] of rows) {
        const row = document.createElement("tr");
        cell(row, label);
        for (const m of models) cell(row, value(m));
        body.appendChild(row);
      }
      const names = ["cut-off"];
      for (const m of models) names.push(`${m.label}: new MQLs`, "converted", "missed");
      head($("#bt-periods"), names);
      const periods = $("#bt-periods tbody");
      periods.textContent = "";
      models[0].periods.forEach((p, i) => {
        const row = document.createElement("tr");
        cell(row, p.cutoff.slice(0, 10) + (p.horizon_complete ? "" : " *"));
        for (const m of models) {
          const q = m.periods[i];
          cell(row, count(q.new_mqls)); cell(row, count(q.converted)); cell(row, count(q.missed));
        }
        periods.appendChild(row);
      });
      const notes = $("#bt-notes");
      notes.textContent = "";
      const all = [...r.notes];
      if (models[0].periods.some((p) => !p.horizon_complete)) all.push("* the horizon of this cut-off runs past the last stored outcome");
      for (const note of all) {
        const li = document.createElement("li");
        li.textContent = note;
        notes.appendChild(li);
      }
      say(hint, `${r.cutoffs} cut-offs from ${r.from.slice(0, 10)} to ${r.to.slice(0, 10)}, ${r.leads.toLocaleString("en")} leads; a conversion is ${r.conversion.outcomes.join(" or ")} within ${fmt(r.conversion.horizon_days)} days of becoming MQL. Nothing was saved.`);
    } catch (e) {
      stop();
      say(hint, errorText(e), "error");
    } finally { button.disabled = false; }
  });
}

// --- validation: the report takes seconds on a large store; say so while the next page loads --
const validationForm = $("#validation-form");
if (validationForm) {
  validationForm.addEventListener("submit", () => {
    validationForm.querySelector("button[type=submit]").disabled = true;
    ticking($("#validation-status"), "Scoring every stored lead and comparing with the outcomes…");
  });
}
