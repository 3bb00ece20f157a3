// reinflow logview: a small single-page app over the JSON API of reinflow/logview/app.py.
// Model output is data, never markup: every text goes into the page through text nodes
// (el() below), never innerHTML.
"use strict";

const POLL_MS = 3000;
const SERIES = [
  ["reward_mean", "reward (mean)", "#2563eb"],
  ["success_rate", "success rate", "#16a34a"],
  ["format_error_rate", "format-error rate", "#dc2626"],
  ["pass_at_1", "held-out pass@1", "#9333ea"],
];
const COLUMNS = [
  ["task_id", "task"], ["group_index", "#"], ["reward", "reward"], ["advantage", "advantage"],
  ["is_success", "success"], ["num_turns", "turns"], ["num_tool_calls", "tool calls"],
  ["format_errors", "malformed calls"], ["answered_before_tool_result", "answered before result"],
  ["generated_tokens", "length (tokens)"], ["finish_reason", "finish"],
  ["judge_error", "judge error"], ["status", "status"],
];
const FILTERS = [
  ["all", "all episodes"], ["failed", "failed only"], ["succeeded", "succeeded only"],
  ["format_errors", "malformed tool calls"], ["tool_calls", "with tool calls"], ["no_tool_calls", "without tool calls"],
  ["answered_before_result", "answered before a tool result"],
  ["judge_errors", "judge errors only"], ["rollout_errors", "rollout errors only"],
];

let overview = null;
let overviewText = "";

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

function pct(value) {
  return value === null || value === undefined ? "–" : (100 * value).toFixed(1) + "%";
}

// ------------------------------------------------------------------ routes

function runHash(runId) { return "#/run/" + encodeURIComponent(runId); }
function setHash(runId, key, query) {
  const params = new URLSearchParams(query || {}).toString();
  return runHash(runId) + "/set/" + encodeURIComponent(key) + (params ? "?" + params : "");
}
function episodeHash(runId, key, id) { return runHash(runId) + "/set/" + encodeURIComponent(key) + "/episode/" + encodeURIComponent(id); }
function compareHash(runId, a, b, task) {
  return runHash(runId) + "/compare/" + encodeURIComponent(a) + "/" + encodeURIComponent(b) +
    (task ? "?" + new URLSearchParams({ task }).toString() : "");
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || "") };
}

async function api(path, params) {
  const response = await fetch(path + "?" + new URLSearchParams(params || {}).toString());
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function route() {
  const { parts, query } = parseHash();
  renderNav();
  try {
    if (parts[0] !== "run" || !parts[1]) return renderHome();
    const runId = parts[1];
    if (parts[2] === "set" && parts[4] === "episode") return await renderEpisode(runId, parts[3], parts[5]);
    if (parts[2] === "set") return await renderSet(runId, parts[3], query);
    if (parts[2] === "compare") return await renderCompare(runId, parts[3], parts[4], query.get("task"));
    return renderRun(runId);
  } catch (error) {
    show(el("p", { class: "problem" }, "Error: " + error.message));
  }
}

// ------------------------------------------------------------------ runs (polled)

async function poll() {
  try {
    const response = await fetch("/api/runs");
    const text = await response.text();
    document.getElementById("live").textContent = "updated " + new Date().toLocaleTimeString();
    if (text === overviewText) return;
    const first = overview === null;
    overviewText = text;
    overview = JSON.parse(text);
    document.getElementById("runs-dir").textContent = overview.runs_dir;
    const { parts } = parseHash();
    if (first || parts[0] !== "run" || parts.length === 2) route(); else renderNav();
  } catch (error) {
    document.getElementById("live").textContent = "server not answering (" + error.message + ")";
  }
}

function findRun(runId) {
  const run = overview && overview.runs.find((candidate) => candidate.id === runId);
  if (!run) throw new Error("no run " + runId + " (yet)");
  return run;
}

function renderNav() {
  const nav = document.getElementById("runs");
  if (!overview) return;
  const current = parseHash().parts[1];
  const items = [];
  let experiment = null;
  for (const run of overview.runs) {
    if (run.experiment !== experiment) {
      experiment = run.experiment;
      items.push(el("h3", {}, experiment));
    }
    items.push(el("a", { href: runHash(run.id), "data-run": run.id, class: run.id === current ? "current" : null },
      run.name, el("span", { class: "status" }, run.status || "")));
  }
  if (!items.length) items.push(el("p", { class: "hint" }, "No runs yet under " + overview.runs_dir + "."));
  nav.replaceChildren(...items);
}

function renderHome() {
  show(el("h2", {}, "Runs"),
    el("p", { class: "hint" }, overview && overview.runs.length
      ? "Pick a run on the left: its reward curve, iterations, episodes and token-level samples."
      : "No runs yet. Start one with `reinflow train --conf CONFIG`; it appears here as soon as it begins."));
}

function renderRun(runId) {
  const run = findRun(runId);
  const train = run.sets.filter((s) => s.kind === "train");
  const evals = run.sets.filter((s) => s.kind === "eval");
  show(
    el("div", { class: "crumbs" }, el("a", { href: "#/" }, "runs"), " / " + run.experiment),
    el("h2", {}, run.name),
    el("dl", { class: "facts" },
      el("dt", {}, "status"), el("dd", {}, run.status || "unknown"),
      el("dt", {}, "model"), el("dd", {}, run.model || "unknown"),
      run.problem ? [el("dt", {}, "note"), el("dd", { class: "problem" }, run.problem)] : null),
    el("section", {}, el("h3", {}, "Reward curve"), chart(run.curve)),
    el("section", {}, el("h3", {}, "Iterations"), setsTable(run, train, "No iteration finished its rollout yet.")),
    evals.length ? el("section", {}, el("h3", {}, "Evaluations (the same held-out tasks each time)"), setsTable(run, evals, "")) : null,
    run.sets.length >= 1 ? compareForm(run) : null,
  );
}

function setsTable(run, sets, empty) {
  if (!sets.length) return el("p", { class: "hint" }, empty);
  return el("table", { class: "grid sets" },
    el("thead", {}, el("tr", {}, ["set", "episodes", "reward (mean)", "success", "format errors", "judged"].map((h) => el("th", {}, h)))),
    el("tbody", {}, sets.map((s) => el("tr", {},
      el("td", {}, el("a", { href: setHash(run.id, s.key), "data-set": s.key }, s.label)),
      el("td", { class: "num" }, fmt(s.stats.episodes)),
      el("td", { class: "num" }, fmt(s.stats.reward_mean)),
      el("td", { class: "num" }, pct(s.stats.success_rate)),
      el("td", { class: "num" }, pct(s.stats.format_error_rate)),
      el("td", {}, s.judged ? "yes" : "not yet")))));
}

function compareForm(run) {
  const options = (selected) => run.sets.map((s) => el("option", { value: s.key, selected: s.key === selected ? "selected" : null }, s.label));
  const greedy = run.sets.filter((s) => s.key.endsWith("_greedy"));
  const pool = greedy.length >= 2 ? greedy : run.sets;
  const a = el("select", { id: "compare-a" }, options(pool[0].key));
  const b = el("select", { id: "compare-b" }, options(pool[pool.length - 1].key));
  return el("section", {}, el("h3", {}, "Side by side"),
    el("div", { class: "toolbar" }, a, " vs ", b,
      el("button", { id: "compare-go", onclick: () => { location.hash = compareHash(run.id, a.value, b.value); } }, "compare a task")));
}

// ------------------------------------------------------------------ chart (inline SVG)

function chart(points) {
  if (!points.length) return el("p", { class: "hint" }, "No judged iteration yet: the curve appears after the first one.");
  const W = 680, H = 270, left = 44, right = 16, top = 12, bottom = 40;
  const values = points.flatMap((p) => SERIES.map(([key]) => p[key])).filter((v) => v !== null && v !== undefined);
  const low = Math.min(0, ...values), high = Math.max(1, ...values);
  const first = points[0].iteration, last = Math.max(points[points.length - 1].iteration, first + 1);
  const x = (i) => left + ((i - first) / (last - first)) * (W - left - right);
  const y = (v) => top + (1 - (v - low) / (high - low)) * (H - top - bottom);
  const grid = [];
  for (let k = 0; k <= 4; k++) {
    const v = low + (k / 4) * (high - low);
    grid.push(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), stroke: "#e4e4e7" }),
      svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#52525b" }, v.toFixed(2)));
  }
  for (const p of points) {
    grid.push(svg("text", { x: x(p.iteration), y: H - 24, "text-anchor": "middle", "font-size": 11, fill: "#52525b" }, p.iteration));
  }
  const lines = [];
  for (const [key, label, color] of SERIES) {
    const pts = points.filter((p) => p[key] !== null && p[key] !== undefined);
    if (!pts.length) continue;
    lines.push(svg("polyline", { points: pts.map((p) => x(p.iteration) + "," + y(p[key])).join(" "), fill: "none", stroke: color, "stroke-width": 2, "data-series": key }));
    for (const p of pts) {
      lines.push(svg("circle", { cx: x(p.iteration), cy: y(p[key]), r: 3.5, fill: color, "data-series": key },
        svg("title", {}, label + " at iteration " + p.iteration + ": " + p[key].toFixed(3))));
    }
  }
  const legend = el("div", { class: "legend" }, SERIES.filter(([key]) => points.some((p) => p[key] !== null)).map(([, label, color]) => {
    const item = el("span", {}, label);
    item.style.setProperty("--swatch", color);
    return item;
  }));
  return el("div", { class: "chart" },
    svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "reward curve", id: "reward-curve" }, grid, lines,
      svg("text", { x: (left + W - right) / 2, y: H - 6, "text-anchor": "middle", "font-size": 11, fill: "#52525b" }, "iteration")),
    legend);
}

// ------------------------------------------------------------------ one episode set: the table

async function renderSet(runId, key, query) {
  const params = { run: runId, set: key, show: query.get("show") || "all", sort: query.get("sort") || "", desc: query.get("desc") || "0", task: query.get("task") || "" };
  const data = await api("/api/episodes", params);
  const state = { show: params.show, sort: params.sort, desc: params.desc, task: params.task };
  const go = (change) => { location.hash = setHash(runId, key, Object.fromEntries(Object.entries({ ...state, ...change }).filter(([, v]) => v && v !== "all" && v !== "0"))); };
  const filter = el("select", { id: "filter", onchange: (event) => go({ show: event.target.value }) },
    FILTERS.map(([name, label]) => el("option", { value: name, selected: name === params.show ? "selected" : null }, `${label} (${data.counts[name]})`)));
  const task = el("input", { id: "task-filter", type: "search", placeholder: "task id contains…", value: params.task,
    onchange: (event) => go({ task: event.target.value }) });
  const header = el("tr", {}, COLUMNS.map(([name, label]) => el("th", {
    "data-sort": name,
    class: name === params.sort ? (params.desc === "1" ? "sorted desc" : "sorted") : null,
    onclick: () => go({ sort: name, desc: name === params.sort && params.desc !== "1" ? "1" : "0" }),
  }, label)));
  const rows = data.rows.map((row) => el("tr", { class: row.is_success === true ? "ok" : row.is_success === false ? "bad" : null, "data-episode": row.episode_id },
    el("td", {}, el("a", { href: episodeHash(runId, key, row.episode_id) }, row.task_id)),
    el("td", { class: "num" }, fmt(row.group_index)),
    el("td", { class: "num" }, fmt(row.reward)),
    el("td", { class: "num" }, fmt(row.advantage)),
    el("td", { class: "success" }, fmt(row.is_success)),
    el("td", { class: "num" }, fmt(row.num_turns)),
    el("td", { class: "num" }, fmt(row.num_tool_calls)),
    el("td", { class: "num" }, fmt(row.format_errors)),
    el("td", {}, fmt(row.answered_before_tool_result)),
    el("td", { class: "num" }, fmt(row.generated_tokens)),
    el("td", {}, fmt(row.finish_reason)),
    el("td", { class: "wrap" }, row.judge_error || ""),
    el("td", { class: "wrap" }, row.status + (row.error ? ": " + row.error : ""))));
  show(
    el("div", { class: "crumbs" }, el("a", { href: "#/" }, "runs"), " / ", el("a", { href: runHash(runId) }, runId)),
    el("h2", {}, data.set.label, data.set.judged ? "" : " (rollout only: the judge has not finished)"),
    el("div", { class: "toolbar" }, filter, task, el("span", { class: "hint", id: "shown-count" }, `${data.rows.length} of ${data.counts.all} episodes`)),
    el("table", { class: "grid episodes" }, el("thead", {}, header), el("tbody", {}, rows)));
}

// ------------------------------------------------------------------ one episode

async function renderEpisode(runId, key, id) {
  const data = await api("/api/episode", { run: runId, set: key, id });
  const e = data.episode;
  show(
    el("div", { class: "crumbs" }, el("a", { href: "#/" }, "runs"), " / ", el("a", { href: runHash(runId) }, runId), " / ",
      el("a", { href: setHash(runId, key) }, data.set.label)),
    el("h2", {}, e.episode_id),
    el("dl", { class: "facts" },
      [["question", data.question], ["reference answer", data.reference_answer], ["final answer", data.final_answer],
       ["reward", fmt(e.reward)], ["advantage", fmt(e.advantage)], ["success", fmt(e.is_success)],
       ["status", e.status + (e.error ? ": " + e.error : "")], ["judge error", e.judge_error],
       ["turns / tool calls", `${e.num_turns} / ${e.num_tool_calls}`], ["malformed tool calls", fmt(e.format_errors)],
       ["answered before a tool result", fmt(e.answered_before_tool_result)],
       ["finish reason", e.finish_reason]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "–" : v)])),
    el("section", { id: "conversation" }, el("h3", {}, "Conversation"), conversation(data.conversation)),
    el("section", { id: "samples" }, el("h3", {}, "Training samples (token view)"), tokenLegend(),
      data.token_problem ? el("p", { class: "problem" }, data.token_problem) : null,
      data.samples.length ? data.samples.map((sample, k) => tokenView(sample, k, e)) : el("p", { class: "hint" }, "This episode has no training sample.")));
}

function conversation(conv) {
  const items = conv.problems.map((problem) => el("p", { class: "problem" }, problem));
  for (const message of conv.messages) {
    const calls = (message.tool_calls || []).map((call) => el("div", { class: "toolcall" },
      el("div", { class: "role" }, "tool call: " + call.name),
      el("pre", { class: call.is_code ? "code" : null }, call.code)));
    const label = message.kind === "tool" ? "tool output" : message.role;
    items.push(el("div", { class: "msg " + message.kind, "data-role": message.role },
      el("div", { class: "role" }, label, message.finish_reason ? " · finish: " + message.finish_reason : ""),
      el("pre", { class: "content" }, message.content), calls));
  }
  if (!conv.tool_calls_inline && conv.turns.some((turn) => turn.tool_calls.length)) {
    items.push(el("h4", {}, "Tool calls by LLM call"));
    for (const turn of conv.turns) {
      for (const call of turn.tool_calls) {
        items.push(el("div", { class: "toolcall" }, el("div", { class: "role" }, `call ${turn.index}: ${call.name}`), el("pre", { class: "code" }, call.code)));
      }
    }
  }
  items.push(el("table", { class: "grid turns" },
    el("thead", {}, el("tr", {}, ["LLM call", "prompt tokens", "output tokens", "finish", "format errors", "extends previous"].map((h) => el("th", {}, h)))),
    el("tbody", {}, conv.turns.map((turn) => el("tr", {},
      el("td", {}, fmt(turn.index)), el("td", { class: "num" }, fmt(turn.prompt_tokens)), el("td", { class: "num" }, fmt(turn.output_tokens)),
      el("td", {}, fmt(turn.finish_reason)), el("td", { class: "wrap" }, JSON.stringify(turn.format_errors || [])), el("td", {}, fmt(turn.extends_previous)))))));
  return items;
}

function tokenLegend() {
  return el("p", { class: "legend" },
    el("span", { class: "swatch-trained" }, "trained (carries loss; darker = lower logprob)"),
    el("span", { class: "swatch-masked" }, "masked (prompt, tool output, template)"),
    el("span", {}, "hover a token for its id and logprob"));
}

function shade(logprob) {
  const surprise = Math.min(1, -logprob / 5);
  return `rgba(22, 163, 74, ${(0.12 + 0.6 * surprise).toFixed(3)})`;
}

function tokenView(sample, k, episode) {
  const spans = sample.token_ids.map((id, t) => {
    const trained = sample.loss_mask[t] === 1;
    const text = sample.texts ? sample.texts[t] : "⟨" + id + "⟩";
    const span = el("span", {
      class: "tok " + (trained ? "trained" : "masked"),
      "data-mask": sample.loss_mask[t],
      title: `id ${id} · logprob ${trained ? sample.logprobs[t].toFixed(4) : "– (masked)"} · ${trained ? "trained" : "masked"}`,
    }, text === "" ? "⟨" + id + "⟩" : text);
    if (trained) span.style.backgroundColor = shade(sample.logprobs[t]);
    return span;
  });
  return el("div", { class: "card sample", "data-sample": k },
    el("div", {}, el("b", {}, `sample ${k + 1}`),
      ` · ${sample.token_ids.length} tokens, ${sample.trained_tokens} trained · reward ${fmt(episode.reward)} · advantage ${fmt(episode.advantage)}`),
    el("div", { class: "tokens" }, spans));
}

// ------------------------------------------------------------------ two sets side by side

async function renderCompare(runId, a, b, task) {
  const data = await api("/api/compare", task ? { run: runId, a, b, task } : { run: runId, a, b });
  const picker = el("select", { id: "compare-task", onchange: (event) => { location.hash = compareHash(runId, a, b, event.target.value); } },
    data.common_tasks.map((t) => el("option", { value: t, selected: t === data.task ? "selected" : null }, t)));
  const side = (s) => el("div", { class: "side", "data-set": s.set.key },
    el("h3", {}, `${s.set.label}: reward ${fmt(s.set.stats.reward_mean)}, success ${pct(s.set.stats.success_rate)}`),
    s.episodes.length ? s.episodes.map((e) => el("div", { class: "card" },
      el("div", {}, el("a", { href: episodeHash(runId, s.set.key, e.episode_id) }, e.episode_id),
        ` · reward ${fmt(e.reward)} · success ${fmt(e.is_success)} · ${e.num_turns} turns`),
      el("div", { class: "hint" }, "final answer: " + (e.final_answer === null ? "–" : e.final_answer)),
      el("pre", { class: "content" }, e.reply === null ? "" : e.reply)))
      : el("p", { class: "hint" }, "No episode of this task here."));
  show(
    el("div", { class: "crumbs" }, el("a", { href: "#/" }, "runs"), " / ", el("a", { href: runHash(runId) }, runId)),
    el("h2", {}, "Side by side"),
    data.common_tasks.length
      ? el("div", { class: "toolbar" }, "task ", picker)
      : el("p", { class: "hint" }, "These two sets share no task (training iterations draw new tasks; evaluations repeat theirs)."),
    el("div", { class: "cards" }, data.sides.map(side)));
}

// ------------------------------------------------------------------ start

window.addEventListener("hashchange", route);
poll();
setInterval(poll, POLL_MS);
