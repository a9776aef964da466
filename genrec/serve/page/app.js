// The page at /: three tabs over the JSON API, one for each deployed backend (/v1/models says which).
// Plain DOM, no library: the file ships in the package and loads nothing else. Every URL is relative,
// resolved against the <base href> the server sets, so the page works under any Serve route_prefix.
"use strict";

const $ = (id) => document.getElementById(id);

// An element with attributes and children (strings become text: titles never go through innerHTML).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

// One call to the API. An answer that is not 2xx throws an Error whose message is the status and the
// API's own detail ("422: history: unknown item ids or titles: ..."), or the text Serve's proxy sent.
async function api(path, body) {
  const init = body === undefined ? {} :
    {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)};
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error(`no answer from the server (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { /* not JSON: a proxy's error page, say */ }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text.trim() || response.statusText;
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  if (data === null) throw new Error(`${response.status}: the answer is not JSON`);
  return data;
}

// Runs a tab's action with its button disabled and saying so (a model can take seconds); the last
// answer goes first, so what shows is always this request's answer or its error.
async function act(tab, button, action) {
  const error = $(`${tab}-error`);
  const label = button.textContent;
  error.hidden = true;
  $(`${tab}-result`).replaceChildren();
  button.disabled = true;
  button.textContent = "Working…";
  try {
    await action();
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

// A number input's value, or nothing when it is empty (the API's default then applies).
function numberOf(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function scoreCell(score) {
  return el("td", {class: "score"}, score.toFixed(4));
}

// --------------------------------------------------------------------------------------- Recommend
const historyItems = [];  // [{value: what is sent (an item id, or the text as typed), label: what is shown}]
let searchTimer = null;
let searchSerial = 0;

function showHistory(truncated = 0) {
  $("history").replaceChildren(...historyItems.map((entry, i) => {
    const remove = el("button", {title: "remove", "aria-label": `remove ${entry.label}`}, "×");
    remove.onclick = () => { historyItems.splice(i, 1); showHistory(); };
    const item = el("li", i < truncated ? {class: "truncated"} : {}, el("span", {class: "label"}, entry.label));
    if (entry.value !== entry.label) item.append(el("span", {class: "id"}, entry.value));
    item.append(remove);
    return item;
  }));
}

function addToHistory(value, label) {
  clearTimeout(searchTimer);
  searchSerial++;  // an answer still on its way is for the text just taken: drop it
  historyItems.push({value, label});
  $("search").value = "";
  $("suggestions").replaceChildren();
  showHistory();
  $("search").focus();
}

async function suggest() {
  const query = $("search").value.trim();
  const serial = ++searchSerial;
  if (!query) return $("suggestions").replaceChildren();
  try {
    const found = await api(`v1/catalog/search?q=${encodeURIComponent(query)}&limit=10`);
    if (serial !== searchSerial) return;  // a newer keystroke's answer is (or will be) shown instead
    $("suggestions").replaceChildren(...found.items.map((item) => {
      const option = el("li", {role: "option"}, item.title, el("span", {class: "id"}, item.item_id));
      option.onclick = () => addToHistory(item.item_id, item.title);
      return option;
    }));
    $("recommend-error").hidden = true;
  } catch (e) {
    $("recommend-error").textContent = e.message;
    $("recommend-error").hidden = false;
  }
}

async function recommend() {
  const sent = historyItems.slice();
  const answer = await api("v1/recommend", {
    history: sent.map((entry) => entry.value), k: numberOf("recommend-k"),
    exclude_history: $("recommend-exclude").checked,
  });
  showHistory(answer.history_truncated);
  const fromModel = answer.source === "model";
  const parts = [
    el("p", {},
      el("span", {class: fromModel ? "badge" : "badge fallback"}, fromModel ? "from the model" : `fallback: ${answer.source}`),
      ` ${answer.items.length} items, from ${answer.history_used} history items`),
  ];
  if (answer.history_truncated) {
    const dropped = sent.slice(0, answer.history_truncated).map((entry) => entry.label).join("; ");
    parts.push(el("p", {class: "note", id: "recommend-truncated"},
      `The ${answer.history_truncated} oldest history items were left out (over the limit): ${dropped}`));
  }
  const rows = answer.items.map((item, i) =>
    el("tr", {}, el("td", {}, String(i + 1)), el("td", {class: "title"}, item.title),
      el("td", {class: "id"}, item.item_id), scoreCell(item.score)));
  parts.push(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "title"),
    el("th", {}, "item id"), el("th", {}, "score"))), el("tbody", {}, ...rows)));
  $("recommend-result").replaceChildren(...parts);
}

$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(suggest, 120);  // one request per pause in typing, not per key
});
$("search").addEventListener("keydown", (event) => {
  const typed = $("search").value.trim();
  if (event.key === "Enter" && typed) addToHistory(typed, typed);
  if (event.key === "Escape") $("suggestions").replaceChildren();
});
$("history-clear").onclick = () => { historyItems.length = 0; showHistory(); $("recommend-result").replaceChildren(); };
$("recommend-go").onclick = () => act("recommend", $("recommend-go"), recommend);

// -------------------------------------------------------------------------------------- Write a JD
let canScore = false;  // a reward model is deployed

async function generate() {
  const cv = $("generate-cv").value;
  const answer = await api("v1/jobs/generate", {
    cv, max_new_tokens: numberOf("generate-tokens"), temperature: numberOf("generate-temperature"),
  });
  const parts = [el("div", {class: "jd", id: "generate-jd"}, answer.jd || "(the generator wrote nothing)")];
  if (answer.cv_truncated) parts.push(el("p", {class: "note"}, "The CV was cut to the generator's length limit."));
  $("generate-result").replaceChildren(...parts);
  if (canScore && answer.jd.trim()) {
    const scored = await api("v1/jobs/score", {cv, jd: answer.jd});
    $("generate-result").append(el("p", {id: "generate-score"}, `Reward model's score of this JD for the CV: `,
      el("strong", {}, scored.score.toFixed(4))));
  }
}

$("generate-go").onclick = () => act("generate", $("generate-go"), generate);

// -------------------------------------------------------------------------------------- Match jobs
async function match() {
  const answer = await api("v1/jobs/recommend", {cv: $("match-cv").value, k: numberOf("match-k")});
  const rows = answer.jobs.map((job, i) =>
    el("tr", {}, el("td", {}, String(i + 1)), el("td", {class: "title"}, job.title),
      el("td", {class: "id"}, job.jd_id), scoreCell(job.score)));
  const parts = [el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "job"),
    el("th", {}, "JD id"), el("th", {}, "score"))), el("tbody", {}, ...rows))];
  if (answer.cv_truncated) parts.unshift(el("p", {class: "note"}, "The CV was cut to the matcher's length limit."));
  $("match-result").replaceChildren(...parts);
}

$("match-go").onclick = () => act("match", $("match-go"), match);

// ------------------------------------------------------------------------------------------- start
function select(name) {
  for (const button of $("tabs").children) button.setAttribute("aria-selected", String(button.dataset.tab === name));
  for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== name;
}

// Number inputs take their default and bounds from /openapi.json, so they follow the server's config.
function applyBounds(openapi) {
  for (const input of document.querySelectorAll("input[data-schema]")) {
    const [schema, field] = input.dataset.schema.split(".");
    const spec = ((openapi.components.schemas[schema] || {}).properties || {})[field];
    if (!spec) continue;
    if (spec.default !== undefined) input.value = spec.default;
    if (spec.maximum !== undefined) input.max = spec.maximum;
  }
}

async function start() {
  let models;
  try {
    models = await api("v1/models");
  } catch (e) {
    $("status").textContent = `The API did not answer /v1/models: ${e.message}`;
    $("status").hidden = false;
    return;
  }
  const tabs = [
    ["recommend", "Recommend", models.recommender],
    ["generate", "Write a JD", models.generator],
    ["match", "Match jobs", models.matcher && models.matcher.recommend],
  ].filter(([, , deployed]) => deployed);
  canScore = Boolean(models.matcher);
  $("generate-scored").hidden = !canScore;
  if (!tabs.length) {
    $("status").textContent = "No model is deployed.";
    $("status").hidden = false;
    return;
  }
  $("tabs").replaceChildren(...tabs.map(([name, label]) => {
    const button = el("button", {role: "tab", "data-tab": name, id: `tab-${name}`}, label);
    button.onclick = () => select(name);
    return button;
  }));
  select(tabs[0][0]);
  try {
    applyBounds(await api("openapi.json"));
  } catch (e) { /* the bounds are a convenience: the API checks every request anyway */ }
}

start();
