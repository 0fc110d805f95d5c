// The energy screen: one EventSource on /api/stream, every snapshot drawn into the page. No libraries.
"use strict";
(function () {
  var WORDS = window.SCREEN_I18N || {};
  var T = WORDS[document.documentElement.lang] || WORDS["zh-TW"];
  var STALE_MS = 30000;        // no snapshot this long (the server resends at least every 10 s): reconnect
  var RETRY_MS = 5000;         // after a refused stream (503, the daemon restarting)
  var GAUGE_MAX = 1.25;        // the bar spans 125 % of the contract; the contract mark sits at 80 %
  var SVGNS = "http://www.w3.org/2000/svg";

  var es = null;
  var lastMessage = 0;
  var retryTimer = null;
  var curve = {since: null, points: {}};   // minute start (unix s) -> kW
  var contractKw = null;
  var tiles = {};
  var layoutKey = "";
  var xOf = function (m) { return m; };   // the curve's scales, set by drawCurve
  var yZero = "0";

  function $(id) { return document.getElementById(id); }
  function say(key, vars) {
    var s = T[key] === undefined ? key : T[key];
    Object.keys(vars || {}).forEach(function (k) { s = s.split("{" + k + "}").join(vars[k]); });
    return s;
  }
  function num(v, digits) {
    return typeof v === "number" && isFinite(v) ? v.toFixed(digits === undefined ? 1 : digits) : "—";
  }
  function text(id, value) { var el = $(id); if (el.textContent !== value) { el.textContent = value; } }
  function hhmm(iso) { return typeof iso === "string" ? iso.slice(11, 16) : ""; }

  // -- words and title ---------------------------------------------------------------------------
  Array.prototype.forEach.call(document.querySelectorAll("[data-i18n]"), function (el) {
    el.textContent = say(el.getAttribute("data-i18n"));
  });
  var fixedTitle = $("title").getAttribute("data-title");
  if (!fixedTitle) { $("title").textContent = T.title; }
  document.title = fixedTitle || T.title;

  // -- the stream ------------------------------------------------------------------------------------
  function setLive(live) {
    document.body.setAttribute("data-live", live ? "1" : "0");
    document.body.classList.toggle("offline", !live);
    text("conn", live ? say("live") : say(lastMessage ? "reconnecting" : "connecting"));
  }

  function connect() {
    if (es !== null) { es.close(); }
    clearTimeout(retryTimer);
    lastMessage = lastMessage || 0;
    es = new EventSource("api/stream");
    es.addEventListener("snapshot", function (ev) {
      lastMessage = Date.now();
      setLive(true);
      var snap;
      try { snap = JSON.parse(ev.data); } catch (e) { return; }
      render(snap);
      document.body.setAttribute("data-updates", String(Number(document.body.getAttribute("data-updates")) + 1));
    });
    es.onerror = function () {
      setLive(false);
      if (es.readyState === EventSource.CLOSED) {   // refused (503) or gone: the browser will not retry by itself
        retryTimer = setTimeout(connect, RETRY_MS);
      }
    };
  }

  setInterval(function () {
    if (lastMessage && Date.now() - lastMessage > STALE_MS) {   // a silent stream (a dead link no one closed)
      setLive(false);
      lastMessage = Date.now();
      connect();
    }
  }, 2000);

  // -- drawing ---------------------------------------------------------------------------------------
  function render(s) {
    document.body.classList.remove("waiting");
    text("clock", typeof s.ts === "string" ? s.ts.slice(11, 19) : "--:--");
    text("updated", typeof s.ts === "string" ? s.ts.slice(11, 19) : "—");
    renderDemand(s);
    renderAlarm(s);
    mergeCurve(s.curve);
    drawCurve();
    renderRooms(s);
    text("ac-today", s.ac_today_kwh === null || s.ac_today_kwh === undefined ? "—"
      : num(s.ac_today_kwh, 1) + " " + say("kwh_unit"));
  }

  function renderDemand(s) {
    var site = s.site || {};
    var ems = s.ems;
    document.body.classList.toggle("no-ems", !ems);
    document.body.classList.toggle("meter-offline", !site.online);
    text("power-kw", site.online ? num(site.power_kw) : say("meter_offline"));
    if (!ems) { contractKw = null; return; }
    contractKw = ems.contract_kw;
    var full = ems.contract_kw * GAUGE_MAX;
    var power = typeof site.power_kw === "number" ? site.power_kw : 0;
    var share = ems.contract_kw > 0 ? power / ems.contract_kw : 0;
    var fill = $("gauge-fill");
    fill.style.width = Math.min(100, 100 * power / full).toFixed(2) + "%";
    fill.className = "gauge-fill " + (share >= 1 ? "over" : share >= 0.9 ? "near" : "ok");
    $("gauge-proj").style.left = Math.min(100, 100 * (ems.projected_kw || 0) / full).toFixed(2) + "%";
    text("contract-kw", num(ems.contract_kw, 0));
    text("share", say("share", {pct: Math.round(share * 100)}));
    text("block-range", hhmm(ems.block_start) + "–" + hhmm(ems.block_end));
    text("block-avg", num(ems.block_avg_kw));
    text("block-proj", num(ems.projected_kw));
    text("peak-kw", num(ems.peak_kw));
    var state = ems.stale ? "stale" : ems.projected_kw > ems.contract_kw ? "over"
      : ems.shed_units > 0 ? "near" : "under";
    var el = $("block-state");
    el.className = "state " + state;
    text("block-state", say(state));
  }

  function renderAlarm(s) {
    var el = $("alarm");
    var alarms = (s.alarms || []).slice().sort(function (a, b) {
      var order = ["notice", "warning", "critical"];
      return order.indexOf(b.level) - order.indexOf(a.level);
    });
    if (!s.alarm_level || alarms.length === 0) { el.hidden = true; el.className = "alarm"; return; }
    el.hidden = false;
    el.className = "alarm " + s.alarm_level;
    var parts = alarms.map(function (a) {
      var metric = (T.metrics && T.metrics[a.metric]) || a.metric;
      var level = (T.levels && T.levels[a.level]) || a.level;
      return level + say("colon") + metric + " " + num(a.value) + " / " + num(a.threshold)
        + (a.state === "acknowledged" ? say("paren", {x: say("acknowledged")}) : "");
    });
    text("alarm", "⚠ " + say("alarm") + " — " + parts.join(" · "));
  }

  // -- the curve -------------------------------------------------------------------------------------
  function mergeCurve(c) {
    if (!c) { return; }
    if (c.full || c.since !== curve.since) { curve = {since: c.since, points: {}}; }
    (c.points || []).forEach(function (p) { curve.points[p[0]] = p[1]; });
  }

  function el(name, attrs, content) {
    var e = document.createElementNS(SVGNS, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (content !== undefined) { e.textContent = content; }
    return e;
  }

  function drawCurve() {
    var svg = $("curve-svg");
    var w = Math.max(100, svg.clientWidth), h = Math.max(80, svg.clientHeight);
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    var keys = Object.keys(curve.points).map(Number).sort(function (a, b) { return a - b; });
    var mins = keys.map(function (k) { return (k - curve.since) / 60; });
    var first = mins.length ? Math.min(6 * 60, Math.floor(mins[0] / 60) * 60) : 6 * 60;
    var last = mins.length ? Math.max(18 * 60, Math.ceil((mins[mins.length - 1] + 1) / 60) * 60) : 18 * 60;
    var most = contractKw || 0;
    keys.forEach(function (k) { most = Math.max(most, curve.points[k]); });
    var kwStep = niceStep(most > 0 ? most * 1.1 / 4 : 2.5);
    var top = Math.max(1, Math.ceil(most * 1.1 / kwStep)) * kwStep;
    var left = 64, right = 16, up = 12, down = 34;
    function x(m) { return left + (m - first) / (last - first) * (w - left - right); }
    function y(kw) { return up + (1 - kw / top) * (h - up - down); }
    xOf = x;
    yZero = y(0).toFixed(1);
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var step = (last - first) > 14 * 60 ? 180 : 120;
    for (var m = Math.ceil(first / step) * step; m <= last; m += step) {
      svg.appendChild(el("line", {x1: x(m), x2: x(m), y1: up, y2: h - down, "class": "grid"}));
      var hh = Math.floor(m / 60) % 24;
      svg.appendChild(el("text", {x: x(m), y: h - 8, "class": "axis", "text-anchor": "middle"},
        (hh < 10 ? "0" : "") + hh + ":00"));
    }
    for (var kw = 0; kw <= top + kwStep / 2; kw += kwStep) {
      svg.appendChild(el("line", {x1: left, x2: w - right, y1: y(kw), y2: y(kw), "class": "grid"}));
      svg.appendChild(el("text", {x: left - 8, y: y(kw) + 6, "class": "axis", "text-anchor": "end"}, num(kw, 0)));
    }
    if (contractKw) {
      svg.appendChild(el("line", {x1: left, x2: w - right, y1: y(contractKw), y2: y(contractKw), "class": "contract"}));
      svg.appendChild(el("text", {x: w - right - 4, y: y(contractKw) - 8, "class": "contract-label",
        "text-anchor": "end"}, say("contract") + " " + num(contractKw, 0) + " kW"));
    }
    if (!keys.length) {
      svg.appendChild(el("text", {x: w / 2, y: h / 2, "class": "axis", "text-anchor": "middle"}, say("curve_empty")));
      svg.setAttribute("data-points", "0");
      return;
    }
    var d = "", area = "", start = 0;
    mins.forEach(function (m, j) {   // a gap of more than two minutes (the gateway was off) breaks the line
      var px = x(m).toFixed(1), py = y(curve.points[keys[j]]).toFixed(1);
      var fresh = j === 0 || m - mins[j - 1] > 2;
      if (fresh && j > 0) { area += closeArea(mins, start, j - 1); }
      if (fresh) { start = j; }
      d += (fresh ? " M" : " L") + px + " " + py;
      area += (fresh ? " M" : " L") + px + " " + py;
    });
    area += closeArea(mins, start, mins.length - 1);
    svg.appendChild(el("path", {d: area, "class": "area"}));
    svg.appendChild(el("path", {d: d, "class": "line"}));
    var lastKw = curve.points[keys[keys.length - 1]];
    svg.appendChild(el("circle", {cx: x(mins[mins.length - 1]), cy: y(lastKw), r: 6, "class": "now"}));
    svg.setAttribute("data-points", String(keys.length));
  }

  function closeArea(mins, from, to) {
    return " L" + xOf(mins[to]).toFixed(1) + " " + yZero + " L" + xOf(mins[from]).toFixed(1) + " " + yZero + " Z";
  }

  function niceStep(raw) {   // 1, 2 or 5 times a power of ten
    var p = Math.pow(10, Math.floor(Math.log10(raw)));
    var f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }

  // -- the rooms -------------------------------------------------------------------------------------
  function buildRooms(floors) {
    var box = $("floors");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    tiles = {};
    var cols = floors.reduce(function (n, f) { return Math.max(n, f.rooms.length); }, 1);
    box.style.setProperty("--cols", String(cols));
    floors.forEach(function (f) {
      var row = document.createElement("div");
      row.className = "floor";
      var label = document.createElement("div");
      label.className = "floor-label";
      label.textContent = say("floor", {n: f.floor});
      row.appendChild(label);
      var grid = document.createElement("div");
      grid.className = "tiles";
      f.rooms.forEach(function (r) {
        var t = document.createElement("div");
        t.className = "tile";
        t.id = "room-" + r.id;
        t.innerHTML = '<div class="name"></div><div class="ac"></div><div class="temp"></div>'
          + '<div class="use"><div class="use-fill"></div></div><div class="kwh"></div>';
        t.querySelector(".name").textContent = r.name;
        grid.appendChild(t);
        tiles[r.id] = t;
      });
      row.appendChild(grid);
      box.appendChild(row);
    });
  }

  function renderRooms(s) {
    var floors = s.floors || [];
    var key = floors.map(function (f) { return f.floor + ":" + f.rooms.map(function (r) { return r.id; }).join(","); })
      .join("|");
    if (key !== layoutKey) { buildRooms(floors); layoutKey = key; }
    var most = 0;
    floors.forEach(function (f) { f.rooms.forEach(function (r) { most = Math.max(most, r.today_kwh || 0); }); });
    floors.forEach(function (f) {
      f.rooms.forEach(function (r) {
        var t = tiles[r.id];
        var state = r.online === 0 ? "offline" : r.on > 0 ? "on" : "off";
        var cls = "tile " + state + (r.shed ? " shed" : "") + (r.fault ? " fault" : "")
          + (typeof r.temp_c === "number" && r.temp_c >= 28 ? " warm" : "")
          + (typeof r.temp_c === "number" && r.temp_c >= 30 ? " hot" : "");
        if (t.className !== cls) { t.className = cls; }
        setText(t, ".temp", typeof r.temp_c === "number" ? r.temp_c.toFixed(1) + "°" : "—");
        var ac = state === "offline" ? say("offline") : r.fault ? say("fault")
          : r.shed ? say("shed") : state === "on" ? say("on") + (r.on < r.units ? " " + r.on + "/" + r.units : "")
          : say("off");
        setText(t, ".ac", ac);
        setText(t, ".kwh", typeof r.today_kwh === "number" ? say("kwh_today", {kwh: r.today_kwh.toFixed(1)}) : "");
        t.querySelector(".use-fill").style.width = (most > 0 ? 100 * (r.today_kwh || 0) / most : 0).toFixed(1) + "%";
      });
    });
    var acs = s.acs || {};
    text("acs-on", say("acs_on", {on: acs.on || 0, units: acs.units || 0}));
  }

  function setText(parent, selector, value) {
    var e = parent.querySelector(selector);
    if (e.textContent !== value) { e.textContent = value; }
  }

  window.addEventListener("resize", drawCurve);
  setLive(false);
  connect();
}());
