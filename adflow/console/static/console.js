// adflow console: forms post JSON to the API; live parts of a page re-fetch themselves. No dependencies.
"use strict";

function formBody(form) {
  const body = {};
  for (const el of form.elements) {
    if (!el.name || el.disabled) continue;
    let value = el.value;
    if (el.type === "checkbox") {
      value = el.checked;
    } else if (el.dataset.lines !== undefined) {
      value = value.split("\n").map((s) => s.trim()).filter((s) => s.length);
    } else if (el.type === "number") {
      if (value === "") continue;
      value = Number(value);
    } else if (value === "" && el.dataset.optional !== undefined) {
      continue;
    }
    const path = el.name.split(".");
    let at = body;
    for (const key of path.slice(0, -1)) at = at[key] = at[key] || {};
    at[path[path.length - 1]] = value;
  }
  return body;
}

function explain(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

async function submitApi(event) {
  event.preventDefault();
  const form = event.target;
  const msg = form.querySelector(".msg");
  const button = form.querySelector("button[type=submit]");
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  msg.className = "msg pending";
  msg.textContent = "working…";
  button.disabled = true;
  try {
    const resp = await fetch(form.dataset.api, {
      method: "POST",
      // the header tells the console this change comes from its own page (a cookie alone does not: see app.py)
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-Adflow-Console": "1" },
      credentials: "same-origin",
      body: JSON.stringify(formBody(form)),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      msg.className = "msg error";
      msg.textContent = `refused (${resp.status}): ${explain(data.detail)}`;
      return;
    }
    if (data.pending) {
      // still going on the server after its time limit: say so, and do not invite a second try
      msg.className = "msg pending";
      msg.textContent = data.detail;
      return;
    }
    msg.className = "msg ok";
    msg.textContent = "done";
    const then = form.dataset.then;
    window.location = then ? then.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(data[k])) : window.location.href;
  } catch (err) {
    msg.className = "msg error";
    msg.textContent = `the console did not answer: ${err}`;
  } finally {
    button.disabled = false;
  }
}

function settle(root) {
  // a log shows its latest lines
  for (const pre of root.querySelectorAll("pre.log")) pre.scrollTop = pre.scrollHeight;
}

function poll(el) {
  const every = Number(el.dataset.every || 3000);
  const tick = async () => {
    try {
      const resp = await fetch(el.dataset.poll, { credentials: "same-origin" });
      el.innerHTML = await resp.text();
      el.dataset.updated = new Date().toISOString();
      settle(el);
    } catch (err) {
      /* keep the last view; the next tick tries again */
    }
    if (!el.querySelector("[data-final]")) setTimeout(tick, every);
  };
  if (!el.querySelector("[data-final]")) setTimeout(tick, every);
}

// delegated: forms inside a live part are replaced as it refreshes
document.addEventListener("submit", (event) => {
  if (event.target.matches("form[data-api]")) submitApi(event);
});
document.addEventListener("DOMContentLoaded", () => {
  settle(document);
  for (const el of document.querySelectorAll("[data-poll]")) poll(el);
});
