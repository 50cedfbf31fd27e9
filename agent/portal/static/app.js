// DOTS portal page: request, efficacy, withdraw (fetch + CSRF header); live status (Server-Sent Events).
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const list = document.getElementById("mitigations");
  const empty = document.getElementById("empty");
  const live = document.getElementById("live");
  const message = document.getElementById("message");
  const items = new Map(); // mid -> {scope, at, el}
  const STATUS_LABEL = {
    "attack-mitigation-in-progress": "Mitigation in progress",
    "attack-successfully-mitigated": "Attack mitigated",
    "attack-stopped": "Attack stopped",
    "attack-exceeded-capability": "Exceeds capability",
    "dots-client-withdrawn-mitigation": "Withdrawn",
    "attack-mitigation-terminated": "Terminated",
    "attack-mitigation-withdrawn": "Withdrawn by server",
    "attack-mitigation-signal-loss": "Signal loss",
  };
  const STATUS_NUM = Object.fromEntries(Object.keys(STATUS_LABEL).map((k, i) => [k, i + 1]));

  const api = async (method, path, body) => {
    const r = await fetch(path, {method, headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                                 body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin"});
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  };
  const say = (text, isError) => { message.textContent = text; message.className = "message" + (isError ? " error" : ""); };
  const fmtCount = (v) => {
    const n = Number(v || 0);
    if (n < 1000) return String(n);
    const u = ["k", "M", "G", "T", "P"]; let i = -1, x = n;
    while (x >= 1000 && i < u.length - 1) { x /= 1000; i++; }
    return x.toFixed(x < 10 ? 1 : 0) + u[i];
  };
  const fmtLeft = (s) => {
    if (s < 0) return "indefinite";
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + "h " : "") + String(m).padStart(h ? 2 : 1, "0") + "m " + String(sec).padStart(2, "0") + "s";
  };
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text; return e; };
  const targets = (s) => {
    const parts = [...(s["target-prefix"] || [])];
    const ports = (s["target-port-range"] || []).map(p => p["upper-port"] && p["upper-port"] !== p["lower-port"]
      ? p["lower-port"] + "-" + p["upper-port"] : String(p["lower-port"]));
    const names = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"};
    const protos = (s["target-protocol"] || []).map(p => names[p] || String(p));
    return parts.join(", ") + (protos.length ? " · " + protos.join("/") : "") + (ports.length ? " · ports " + ports.join(", ") : "");
  };

  function card(mid) {
    const c = el("article", "card mitigation"); c.id = "m-" + mid; c.dataset.mid = mid;
    const top = el("div", "top");
    top.append(el("span", "mid", "Mitigation #" + mid), el("span", "badge status"));
    const dl = el("dl", "stats");
    for (const [k, label] of [["left", "Lifetime left"], ["bytes", "Dropped bytes"], ["pkts", "Dropped packets"], ["rate", "Drop rate"]]) {
      const d = el("div"); d.append(el("dt", "", label), el("dd", "v-" + k, "–")); dl.append(d);
    }
    const actions = el("div", "actions");
    const b1 = el("button", "secondary efficacy-under", "Still under attack");
    const b2 = el("button", "secondary efficacy-ok", "Attack mitigated");
    const b3 = el("button", "danger withdraw", "Withdraw");
    b1.type = b2.type = b3.type = "button";
    b1.onclick = () => act(b1, "POST", `/api/mitigations/${mid}/efficacy`, {"attack-status": "under-attack"}, "Efficacy update sent.");
    b2.onclick = () => act(b2, "POST", `/api/mitigations/${mid}/efficacy`, {"attack-status": "attack-successfully-mitigated"}, "Efficacy update sent.");
    b3.onclick = () => act(b3, "DELETE", `/api/mitigations/${mid}`, undefined, "Mitigation withdrawn.");
    actions.append(b1, b2, b3);
    c.append(top, el("div", "targets"), dl, actions);
    list.prepend(c);
    return c;
  }

  async function act(button, method, path, body, done) {
    button.disabled = true;
    try { await api(method, path, body); say(done); } catch (e) { say(e.message, true); }
    finally { button.disabled = false; }
  }

  function render(mid) {
    const it = items.get(mid); if (!it) return;
    const c = it.el || (it.el = card(mid));
    const s = it.scope;
    const badge = c.querySelector(".status");
    if (!s) {
      badge.textContent = "Ended"; badge.className = "badge status"; badge.dataset.status = "gone";
      c.classList.add("gone"); c.querySelectorAll("button").forEach(b => b.disabled = true);
      c.querySelector(".v-left").textContent = "ended";
    } else {
      const st = s.status || "";
      badge.textContent = STATUS_LABEL[st] || st; badge.title = st; badge.dataset.status = st;
      badge.className = "badge status s" + (STATUS_NUM[st] || 0);
      c.querySelector(".targets").textContent = targets(s);
      c.querySelector(".v-bytes").textContent = fmtCount(s["bytes-dropped"]);
      c.querySelector(".v-pkts").textContent = fmtCount(s["pkts-dropped"]);
      c.querySelector(".v-rate").textContent = fmtCount(s["pps-dropped"]) + " pps";
      const ended = ["dots-client-withdrawn-mitigation", "attack-mitigation-terminated", "attack-mitigation-withdrawn"].includes(st);
      c.classList.toggle("gone", ended);
      it.ended = ended;
      if (ended) c.querySelector(".v-left").textContent = "ended";
      c.querySelectorAll("button").forEach(b => b.disabled = ended);
    }
    tick();
    empty.hidden = items.size > 0;
  }

  function tick() {
    const now = Date.now() / 1000;
    for (const it of items.values()) {
      if (!it.el || !it.scope || it.ended) continue;
      const lt = Number(it.scope.lifetime);
      const left = lt < 0 ? -1 : Math.max(0, Math.round(lt - (now - it.at)));
      it.el.querySelector(".v-left").textContent = fmtLeft(left);
    }
  }
  setInterval(tick, 1000);

  function connect() {
    const es = new EventSource("/events");
    es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live"; };
    es.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      const it = items.get(m.mid) || {};
      // "at" is the server's clock; count down from when we received it
      items.set(m.mid, {...it, scope: m.scope, at: Date.now() / 1000});
      render(m.mid);
    };
  }
  connect();

  document.getElementById("request").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target, btn = document.getElementById("submit");
    const body = {
      "target-prefix": f.prefix.value.split(/[\s,]+/).filter(Boolean),
      "target-port": f.ports.value.split(/[\s,]+/).filter(Boolean),
      "target-protocol": [...f.querySelectorAll('input[name="proto"]:checked')].map(i => Number(i.value)),
      "lifetime": Number(f.lifetime.value),
    };
    btn.disabled = true; say("Sending…");
    try {
      const r = await api("POST", "/api/mitigations", body);
      say(`Mitigation #${r.mid} requested (${r.code === "2.01" ? "created" : r.code}).`);
    } catch (e) { say(e.message, true); }
    finally { btn.disabled = false; }
  });
  empty.hidden = items.size > 0;
})();
