// farmstead dashboard: live parts. The page's <main data-stream="/v3/events?..."> names the
// events that change what it shows; every element with data-live="URL" is re-fetched from URL
// (the page's own fragment) and swapped in, at most once a second, when such an event comes.
// Without the stream (an old server, a proxy that buffers), it polls every 5 s instead.
(function () {
  "use strict";
  var main = document.querySelector("main[data-stream]");
  var state = document.querySelector("[data-live-state]");
  var pending = false, running = false, last = 0, MIN_GAP = 1000;

  function say(text) { if (state) state.textContent = text; }

  function refresh() {
    if (running) { pending = true; return; }
    var wait = last + MIN_GAP - Date.now();
    if (wait > 0) { if (!pending) { pending = true; setTimeout(function () { pending = false; refresh(); }, wait); } return; }
    running = true; last = Date.now();
    var parts = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
    Promise.all(parts.map(function (el) {
      return fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
        .then(function (html) {
          var t = document.createElement("template"); t.innerHTML = html.trim();
          var fresh = t.content.firstElementChild;
          if (fresh && fresh.id === el.id) el.replaceWith(fresh);
        });
    })).then(function () { say("Live · updated " + new Date().toLocaleTimeString()); },
             function (e) { say("Live update failed (" + e.message + "); retrying"); })
      .finally(function () { running = false; if (pending) { pending = false; refresh(); } });
  }

  function poll() { setInterval(refresh, 5000); say("Updating every 5 s"); }

  if (main) {
    if (window.EventSource) {
      var source = new EventSource(main.getAttribute("data-stream"));
      var failures = 0;
      source.onopen = function () { failures = 0; say("Live"); };
      source.onmessage = refresh;
      // every event has a type (task-succeeded, …): listen to what the page cares about
      ["task-sent", "task-received", "task-started", "task-succeeded", "task-failed", "task-retried",
       "task-revoked", "task-held", "worker-online", "worker-heartbeat", "worker-offline"]
        .forEach(function (type) { source.addEventListener(type, refresh); });
      source.onerror = function () {
        failures += 1;
        if (failures > 5) { source.close(); poll(); } else { say("Reconnecting…"); }
      };
    } else { poll(); }
    var every = parseInt(main.getAttribute("data-every") || "0", 10);
    if (every > 0) setInterval(refresh, every * 1000);
  }

  // forms that ask first (cancel)
  document.addEventListener("submit", function (e) {
    var ask = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) e.preventDefault();
  });
})();
