// The docs at /docs: /openapi.json rendered as plain tables (routes, parameters, bodies, answers).
"use strict";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

let schemas = {};
const refName = (ref) => ref.split("/").pop();
const resolve = (spec) => (spec && spec.$ref ? schemas[refName(spec.$ref)] : spec) || {};

// "array of string | integer", "RecommendedItem", "integer": a schema's type in a few words.
function typeOf(spec) {
  if (!spec) return "";
  if (spec.$ref) return refName(spec.$ref);
  if (spec.anyOf) return spec.anyOf.map(typeOf).join(" | ");
  if (spec.type === "array") return `array of ${typeOf(spec.items)}`;
  return spec.type || "any";
}

// "1 ≤ value ≤ 20, default 10": the bounds pydantic wrote into the schema.
function rules(spec, required) {
  const out = [];
  if (spec.minimum !== undefined) out.push(`≥ ${spec.minimum}`);
  if (spec.maximum !== undefined) out.push(`≤ ${spec.maximum}`);
  if (spec.minLength !== undefined) out.push(`length ≥ ${spec.minLength}`);
  if (spec.maxLength !== undefined) out.push(`length ≤ ${spec.maxLength}`);
  if (spec.default !== undefined) out.push(`default ${JSON.stringify(spec.default)}`);
  if (required) out.push("required");
  return out.join(", ");
}

function fieldTable(rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...["name", "type", "rules", "description"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map(([name, spec, required]) => el("tr", {}, el("td", {}, el("code", {}, name)),
      el("td", {}, typeOf(spec)), el("td", {}, rules(spec, required)), el("td", {}, spec.description || "")))));
}

function objectTable(spec) {
  const object = resolve(spec);
  const required = new Set(object.required || []);
  return fieldTable(Object.entries(object.properties || {}).map(([name, field]) => [name, field, required.has(name)]));
}

function operation(path, method, op) {
  const parts = [el("h2", {id: `${method}-${path}`}, el("code", {}, `${method.toUpperCase()} ${path}`)),
    el("p", {}, op.description || op.summary || "")];
  if (op.parameters && op.parameters.length) {
    parts.push(el("h3", {}, "query parameters"));
    parts.push(fieldTable(op.parameters.map((p) => [p.name, Object.assign({description: p.description}, p.schema), p.required])));
  }
  const body = op.requestBody && op.requestBody.content["application/json"];
  if (body) parts.push(el("h3", {}, `JSON body: ${typeOf(body.schema)}`), objectTable(body.schema));
  const answers = Object.entries(op.responses || {}).map(([code, answer]) => {
    const content = answer.content && answer.content["application/json"];
    return el("li", {}, el("strong", {}, code), ` ${answer.description}`, content ? `: ${typeOf(content.schema)}` : "");
  });
  parts.push(el("h3", {}, "answers"), el("ul", {}, ...answers));
  return el("section", {}, ...parts);
}

async function start() {
  let openapi;
  try {
    const response = await fetch("openapi.json");
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    openapi = await response.json();
  } catch (e) {
    document.getElementById("status").textContent = `openapi.json could not be read: ${e.message}`;
    document.getElementById("status").hidden = false;
    return;
  }
  schemas = (openapi.components || {}).schemas || {};
  const main = document.getElementById("api");
  main.append(el("p", {}, `${openapi.info.title} ${openapi.info.version}: ${openapi.info.description || ""}`));
  for (const [path, methods] of Object.entries(openapi.paths)) {
    for (const [method, op] of Object.entries(methods)) main.append(operation(path, method, op));
  }
  const models = Object.keys(schemas).sort().map((name) => el("section", {}, el("h3", {id: `schema-${name}`}, name), objectTable({$ref: name})));
  main.append(el("h2", {}, "schemas"), ...models);
}

start();
