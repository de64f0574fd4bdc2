/* Reader study page (BrainGenBench).
 *
 * Reads window.BGB_STUDY (study.js: study id and case ids in presentation order) and one file per case
 * (cases/<id>.js, loaded with a <script> element because fetch() does not work on file://), shows the
 * three orthogonal planes of the current case with slice scrolling and window/level, and keeps the
 * reader's answers in localStorage under the study id. "Export responses" downloads them as JSON and
 * shows the same text in <textarea id="export">. The page knows nothing about where a case comes from.
 */
(function () {
  "use strict";

  var STUDY = window.BGB_STUDY;
  var STORE = "bgb-reader-study:" + (STUDY ? STUDY.study_id : "none");
  var PLANES = ["axial", "coronal", "sagittal"];
  var CACHE_SIZE = 6;
  var $ = function (id) { return document.getElementById(id); };

  if (!STUDY || !STUDY.cases || !STUDY.cases.length) {
    document.body.innerHTML = "<p style='padding:2em'>study.js is missing or empty: open index.html inside the " +
      "study folder that <code>python -m bench reader-study build</code> wrote.</p>";
    return;
  }

  // ------------------------------------------------------------------ persisted state
  var storageOk = true;
  function emptyState() { return { reader: "", index: 0, answers: {} }; }
  function loadState() {
    try {
      var raw = window.localStorage.getItem(STORE);
      var s = raw ? JSON.parse(raw) : null;
      if (s && typeof s === "object" && s.answers) {
        s.index = Math.min(Math.max(0, s.index | 0), STUDY.cases.length - 1);
        return s;
      }
    } catch (e) { storageOk = false; }
    return emptyState();
  }
  var state = loadState();
  function save() {
    try { window.localStorage.setItem(STORE, JSON.stringify(state)); }
    catch (e) {
      if (storageOk) notice("This browser does not keep the answers (localStorage unavailable): export before closing the page.");
      storageOk = false;
    }
  }
  function notice(text) { var n = $("notice"); n.textContent = text; n.hidden = !text; }
  function answer(id) {
    var a = state.answers[id];
    if (!a) { a = { real: null, plausibility: null, contrast_match: null, comment: "" }; state.answers[id] = a; }
    return a;
  }
  function complete(a) { return !!a && a.real !== null && a.plausibility !== null && a.contrast_match !== null; }
  function started(a) { return !!a && (a.real !== null || a.plausibility !== null || a.contrast_match !== null || !!a.comment); }

  // ------------------------------------------------------------------ case volumes
  var decoded = new Map();   // case id -> {shape, data: Uint8Array, modality}
  var pending = {};
  function decode(b64) {
    var bin = window.atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function loadCase(id) {
    if (decoded.has(id)) return Promise.resolve(decoded.get(id));
    if (pending[id]) return pending[id];
    pending[id] = new Promise(function (resolve, reject) {
      var el = null;
      function done() {
        var c = window.BGB_CASES && window.BGB_CASES[id];
        if (el) el.remove();
        delete pending[id];
        if (!c) { reject(new Error("cases/" + id + ".js did not define its case")); return; }
        var vol = { shape: c.shape, data: decode(c.data), modality: c.modality };
        delete window.BGB_CASES[id];
        decoded.set(id, vol);
        while (decoded.size > CACHE_SIZE) decoded.delete(decoded.keys().next().value);
        resolve(vol);
      }
      if (window.BGB_CASES && window.BGB_CASES[id]) { done(); return; }
      el = document.createElement("script");
      el.src = "cases/" + encodeURIComponent(id) + ".js";
      el.onload = done;
      el.onerror = function () { el.remove(); delete pending[id]; reject(new Error("cannot load cases/" + id + ".js")); };
      document.head.appendChild(el);
    });
    return pending[id];
  }

  // ------------------------------------------------------------------ viewer
  var view = { vol: null, pos: [0, 0, 0], win: 255, lev: 128, cross: true, active: "axial" };
  var canvases = {}, offscreen = {};
  PLANES.forEach(function (p) { canvases[p] = $("view-" + p); offscreen[p] = document.createElement("canvas"); });

  // Plane geometry in radiological convention: (rows, cols) of the slice, which volume axis the slice
  // index moves along, and the voxel shown at (row r, col c). Volumes are RAS+ (x right, y anterior, z superior).
  function dims(p) {
    var s = view.vol.shape, X = s[0], Y = s[1], Z = s[2];
    if (p === "axial") return { w: X, h: Y, axis: 2 };
    if (p === "coronal") return { w: X, h: Z, axis: 1 };
    return { w: Y, h: Z, axis: 0 };
  }
  function voxelIndex(p, r, c, k) {
    var s = view.vol.shape, X = s[0], Y = s[1], Z = s[2];
    if (p === "axial") return ((X - 1 - c) * Y + (Y - 1 - r)) * Z + k;
    if (p === "coronal") return ((X - 1 - c) * Y + k) * Z + (Z - 1 - r);
    return (k * Y + (Y - 1 - c)) * Z + (Z - 1 - r);
  }
  function crossAt(p) {  // (row, col) of the cross-hair in plane p
    var s = view.vol.shape, q = view.pos;
    if (p === "axial") return [s[1] - 1 - q[1], s[0] - 1 - q[0]];
    if (p === "coronal") return [s[2] - 1 - q[2], s[0] - 1 - q[0]];
    return [s[2] - 1 - q[2], s[1] - 1 - q[1]];
  }
  function setCross(p, r, c) {
    var s = view.vol.shape;
    if (p === "axial") { view.pos[0] = s[0] - 1 - c; view.pos[1] = s[1] - 1 - r; }
    else if (p === "coronal") { view.pos[0] = s[0] - 1 - c; view.pos[2] = s[2] - 1 - r; }
    else { view.pos[1] = s[1] - 1 - c; view.pos[2] = s[2] - 1 - r; }
  }
  function draw(p) {
    var cv = canvases[p], wrap = cv.parentElement;
    if (!view.vol) { cv.width = cv.height = 0; return; }
    var d = dims(p), k = view.pos[d.axis], off = offscreen[p];
    off.width = d.w; off.height = d.h;
    var octx = off.getContext("2d"), img = octx.createImageData(d.w, d.h), px = img.data, data = view.vol.data;
    var lo = view.lev - view.win / 2, scale = 255 / view.win;
    for (var r = 0, o = 0; r < d.h; r++) {
      for (var c = 0; c < d.w; c++, o += 4) {
        var g = (data[voxelIndex(p, r, c, k)] - lo) * scale;
        g = g < 0 ? 0 : g > 255 ? 255 : g;
        px[o] = px[o + 1] = px[o + 2] = g; px[o + 3] = 255;
      }
    }
    octx.putImageData(img, 0, 0);
    var availW = wrap.clientWidth - 4, availH = wrap.clientHeight - 4;
    var zoom = Math.max(0.1, Math.min(availW / d.w, availH / d.h));
    var cssW = Math.floor(d.w * zoom), cssH = Math.floor(d.h * zoom), dpr = window.devicePixelRatio || 1;
    cv.style.width = cssW + "px"; cv.style.height = cssH + "px";
    cv.width = Math.round(cssW * dpr); cv.height = Math.round(cssH * dpr);
    var ctx = cv.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(off, 0, 0, cv.width, cv.height);
    if (view.cross) {
      var rc = crossAt(p), sx = cv.width / d.w, sy = cv.height / d.h;
      ctx.strokeStyle = "rgba(80, 200, 255, 0.45)"; ctx.lineWidth = Math.max(1, dpr);
      ctx.beginPath();
      ctx.moveTo(0, (rc[0] + 0.5) * sy); ctx.lineTo(cv.width, (rc[0] + 0.5) * sy);
      ctx.moveTo((rc[1] + 0.5) * sx, 0); ctx.lineTo((rc[1] + 0.5) * sx, cv.height);
      ctx.stroke();
    }
    var slider = $("slice-" + p), n = view.vol.shape[d.axis];
    slider.max = String(n - 1); slider.value = String(k);
    $("slice-no-" + p).textContent = (k + 1) + " / " + n;
  }
  function drawAll() {
    PLANES.forEach(draw);
    $("window").value = String(Math.round(view.win)); $("window-out").textContent = String(Math.round(view.win));
    $("level").value = String(Math.round(view.lev)); $("level-out").textContent = String(Math.round(view.lev));
    $("crosshair").checked = view.cross;
  }
  function resetView() {
    view.win = 255; view.lev = 128;
    if (view.vol) view.pos = view.vol.shape.map(function (n) { return Math.floor(n / 2); });
    drawAll();
  }
  function moveSlice(p, delta) {
    if (!view.vol) return;
    var axis = dims(p).axis, n = view.vol.shape[axis];
    view.pos[axis] = Math.min(n - 1, Math.max(0, view.pos[axis] + delta));
    drawAll();
  }
  function setActive(p) {
    view.active = p;
    document.querySelectorAll(".view").forEach(function (f) { f.classList.toggle("active", f.dataset.plane === p); });
  }

  PLANES.forEach(function (p) {
    var cv = canvases[p], wrap = cv.parentElement, drag = null;
    wrap.addEventListener("mouseenter", function () { setActive(p); });
    wrap.addEventListener("wheel", function (e) {
      e.preventDefault(); setActive(p); moveSlice(p, e.deltaY < 0 ? 1 : -1);
    }, { passive: false });
    wrap.addEventListener("mousedown", function (e) {
      if (e.button !== 0) return;
      e.preventDefault();
      drag = { x: e.clientX, y: e.clientY, win: view.win, lev: view.lev, moved: false };
    });
    window.addEventListener("mousemove", function (e) {
      if (!drag) return;
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (!drag.moved) return;
      view.win = Math.min(510, Math.max(1, drag.win + dx));
      view.lev = Math.min(255, Math.max(0, drag.lev + dy * 0.5));
      drawAll();
    });
    window.addEventListener("mouseup", function (e) {
      if (!drag) return;
      var wasClick = !drag.moved;
      drag = null;
      if (!wasClick || !view.vol || e.target !== cv) return;
      var rect = cv.getBoundingClientRect(), d = dims(p);
      var c = Math.floor((e.clientX - rect.left) / rect.width * d.w), r = Math.floor((e.clientY - rect.top) / rect.height * d.h);
      setCross(p, Math.min(d.h - 1, Math.max(0, r)), Math.min(d.w - 1, Math.max(0, c)));
      drawAll();
    });
    $("slice-" + p).addEventListener("input", function (e) {
      if (!view.vol) return;
      view.pos[dims(p).axis] = parseInt(e.target.value, 10) || 0;
      setActive(p); drawAll();
    });
  });
  $("window").addEventListener("input", function (e) { view.win = parseInt(e.target.value, 10) || 1; drawAll(); });
  $("level").addEventListener("input", function (e) { view.lev = parseInt(e.target.value, 10) || 0; drawAll(); });
  $("crosshair").addEventListener("change", function (e) { view.cross = e.target.checked; drawAll(); });
  $("reset-view").addEventListener("click", resetView);
  window.addEventListener("resize", function () { if (view.vol) drawAll(); });

  // ------------------------------------------------------------------ questions and navigation
  var shown = null;  // the case id on screen
  function currentId() { return STUDY.cases[state.index]; }
  function renderAnswers() {
    var id = currentId(), a = answer(id);
    document.querySelectorAll(".choices").forEach(function (group) {
      var q = group.dataset.q, v = a[q];
      group.querySelectorAll("button").forEach(function (b) { b.classList.toggle("selected", v !== null && String(v) === b.dataset.v); });
    });
    var comment = $("comment");
    if (document.activeElement !== comment) comment.value = a.comment || "";
    var n = STUDY.cases.length, done = 0;
    STUDY.cases.forEach(function (c) { if (complete(state.answers[c])) done++; });
    $("progress-fill").style.width = (100 * done / n) + "%";
    $("progress-text").textContent = done + " / " + n + " answered";
    $("case-label").textContent = "case " + (state.index + 1) + " of " + n;
    $("prev").disabled = state.index === 0;
    $("next").textContent = state.index === n - 1 ? "Finish" : "Next →";
    var strip = $("strip").children;
    for (var i = 0; i < strip.length; i++) {
      var ai = state.answers[STUDY.cases[i]];
      strip[i].className = (complete(ai) ? "done" : started(ai) ? "partial" : "") + (i === state.index ? " current" : "");
    }
  }
  function show() {
    var id = currentId();
    renderAnswers();
    if (shown === id) return;
    shown = id;
    view.vol = null;
    $("modality").textContent = "…";
    document.querySelectorAll(".canvas-wrap").forEach(function (w) { w.classList.add("is-loading"); });
    drawAll();
    loadCase(id).then(function (vol) {
      if (shown !== id) return;
      view.vol = vol;
      $("modality").textContent = vol.modality;
      document.querySelectorAll(".canvas-wrap").forEach(function (w) { w.classList.remove("is-loading"); });
      resetView();
      var next = STUDY.cases[state.index + 1];
      if (next) loadCase(next).catch(function () {});  // prefetch
    }).catch(function (err) { notice(err.message + ": the study folder is incomplete; rebuild it or copy it again."); });
  }
  function go(delta) {
    var n = STUDY.cases.length, i = state.index + delta;
    if (i >= n) {
      var missing = STUDY.cases.filter(function (c) { return !complete(state.answers[c]); }).length;
      notice(missing ? missing + " case(s) still have unanswered questions (open squares below the buttons)."
                     : "All cases answered: enter your name and press Export responses.");
      return;
    }
    if (i < 0) return;
    state.index = i; save(); show();
  }
  function jump(i) { state.index = i; save(); show(); }
  function set(q, v, toggle) {
    var a = answer(currentId());
    a[q] = toggle && a[q] === v ? null : v;
    save(); renderAnswers();
  }

  document.querySelectorAll(".choices").forEach(function (group) {
    var q = group.dataset.q;
    group.querySelectorAll("button").forEach(function (b) {
      b.addEventListener("mousedown", function (e) { e.preventDefault(); });  // keep the keyboard focus where it was
      b.addEventListener("click", function () {
        var v = q === "plausibility" ? parseInt(b.dataset.v, 10) : b.dataset.v === "true";
        set(q, v, true);
      });
    });
  });
  $("comment").addEventListener("input", function (e) { answer(currentId()).comment = e.target.value; save(); renderAnswers(); });
  $("reader").value = state.reader || "";
  $("reader").addEventListener("input", function (e) { state.reader = e.target.value; save(); });
  $("prev").addEventListener("click", function () { go(-1); });
  $("next").addEventListener("click", function () { go(1); });
  $("study-id").textContent = STUDY.study_id;
  STUDY.cases.forEach(function (c, i) {
    var sq = document.createElement("span");
    sq.title = "case " + (i + 1);
    sq.addEventListener("click", function () { jump(i); });
    $("strip").appendChild(sq);
  });

  document.addEventListener("keydown", function (e) {
    var t = e.target, typing = t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type === "text"));
    if (typing) { if (e.key === "Escape") t.blur(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var k = e.key, handled = true;
    if (k === "r" || k === "R") set("real", true);
    else if (k === "s" || k === "S") set("real", false);
    else if (k >= "1" && k <= "5" && k.length === 1) set("plausibility", parseInt(k, 10));
    else if (k === "y" || k === "Y") set("contrast_match", true);
    else if (k === "n" || k === "N") set("contrast_match", false);
    else if (k === "ArrowRight" || k === "Enter") go(1);
    else if (k === "ArrowLeft") go(-1);
    else if (k === "ArrowUp" || k === "PageUp") moveSlice(view.active, 1);
    else if (k === "ArrowDown" || k === "PageDown") moveSlice(view.active, -1);
    else if (k === "c" || k === "C") { view.cross = !view.cross; drawAll(); }
    else if (k === "0") resetView();
    else handled = false;
    if (handled) e.preventDefault();
  });

  // ------------------------------------------------------------------ export
  function exported() {
    return {
      study_id: STUDY.study_id,
      reader: (state.reader || "").trim(),
      responses: STUDY.cases.map(function (c) {
        var a = state.answers[c] || {};
        return { "case": c, real: a.real === undefined ? null : a.real,
                 plausibility: a.plausibility === undefined ? null : a.plausibility,
                 contrast_match: a.contrast_match === undefined ? null : a.contrast_match, comment: a.comment || "" };
      }),
      exported: new Date().toISOString()
    };
  }
  $("export-btn").addEventListener("click", function () {
    var out = exported();
    if (!out.reader) { notice("Enter your name or initials (top left) before exporting."); $("reader").focus(); return; }
    var text = JSON.stringify(out, null, 2);
    $("export").value = text;
    var url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    var link = document.createElement("a");
    link.href = url;
    link.download = "reader-study-" + STUDY.study_id + "-" + out.reader.replace(/[^A-Za-z0-9_-]+/g, "_") + ".json";
    document.body.appendChild(link); link.click(); link.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 2000);
    var missing = out.responses.filter(function (r) { return r.real === null || r.plausibility === null || r.contrast_match === null; }).length;
    notice(missing ? "Exported, with " + missing + " case(s) not fully answered." : "");
  });

  show();
})();
