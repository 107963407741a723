// kube-lockdown dashboard: times in the viewer's time zone, filters that apply on change,
// and the live tail. Pages work without it, but for the tail. Nothing here writes HTML:
// text from nodes goes into the page through textContent only.
"use strict";

function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) {
      t.textContent = d.toLocaleString();
      t.title = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    }
  }
}

function autosubmit() {
  for (const s of document.querySelectorAll("select[data-autosubmit]")) {
    s.addEventListener("change", () => s.form.submit());
  }
}

function span(cls, text) {
  const s = document.createElement("span");
  if (cls) s.className = cls;
  s.textContent = text;
  return s;
}

function tailRow(e, withNode) {
  const li = document.createElement("li");
  li.className = "new";
  li.dataset.cursor = String(e.cursor);
  const t = document.createElement("time");
  t.setAttribute("datetime", e.time);
  t.textContent = e.shown;
  li.append(t, " ");
  if (withNode) {
    const a = document.createElement("a");
    a.href = "/nodes/" + encodeURIComponent(e.node);
    a.textContent = e.node;
    li.append(a, " ");
  }
  li.append(span("kind-" + e.kind, e.kind));
  if (e.severity) li.append(" ", span("sev-" + e.severity, e.severity));
  li.append(" ", span("path", e.path), " ", e.summary);
  localTimes(li);
  return li;
}

function liveTail() {
  const list = document.getElementById("tail");
  if (!list || !list.dataset.stream || !window.EventSource) return;
  const status = document.getElementById("tail-status");
  const withNode = !/[?&]node=/.test(list.dataset.stream);
  const source = new EventSource(list.dataset.stream);
  source.onopen = () => { status.textContent = "Live: new events appear at the top."; status.dataset.state = "live"; };
  source.onerror = () => { status.textContent = "Reconnecting to the collector…"; status.dataset.state = "reconnecting"; };
  source.addEventListener("event", (m) => {
    const e = JSON.parse(m.data);
    if (list.querySelector('li[data-cursor="' + e.cursor + '"]')) return;
    list.prepend(tailRow(e, withNode));
    while (list.children.length > 500) list.lastElementChild.remove();
  });
  source.addEventListener("failure", (m) => { status.textContent = m.data; status.dataset.state = "failing"; });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  autosubmit();
  liveTail();
});
