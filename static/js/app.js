/* TokenBank site-wide behaviour: countdowns, copy buttons, tabs. Plain JS, no build step. */
(function () {
  "use strict";

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  /* "2:59" for 179.4 s: whole seconds rounded up, so it shows 0:00 only at the deadline. */
  function formatRemaining(ms) {
    var total = Math.max(0, Math.ceil(ms / 1000));
    return Math.floor(total / 60) + ":" + pad(total % 60);
  }

  function spoken(seconds) {
    var m = Math.floor(seconds / 60), s = seconds % 60;
    var parts = [];
    if (m) parts.push(m + (m === 1 ? " minute" : " minutes"));
    if (s || !m) parts.push(s + (s === 1 ? " second" : " seconds"));
    return parts.join(" ") + " left to earn the free credit";
  }

  /*
   * A countdown to a deadline given by the server, with the server's "now" at render time.
   * The offset between the server's clock and this device's clock is measured once, so a
   * slow device clock, a reload or another tab all agree with the server's deadline.
   * Markup: [data-countdown-root data-deadline-ms data-server-now-ms] containing
   * [data-countdown-clock], optional [data-countdown-active]/[data-countdown-ended] panes
   * and a polite live region [data-countdown-announce] (announced each minute and near the end,
   * not every second).
   * Urgency: the root gets .is-amber under 60 s and .is-urgent under 30 s; a [data-countdown-bar]
   * shrinks with the time left of data-window-ms; with [data-countdown-title] the tab's title
   * starts with the time left ("2:59 left · ...").
   */
  var AMBER_SECONDS = 60, RED_SECONDS = 30;
  function Countdown(root) {
    var deadline = Number(root.getAttribute("data-deadline-ms"));
    var serverNow = Number(root.getAttribute("data-server-now-ms"));
    if (!deadline || !serverNow) return null;
    var offset = serverNow - Date.now();
    var windowMs = Number(root.getAttribute("data-window-ms")) || 0;
    var clocks = root.querySelectorAll("[data-countdown-clock]");
    var bars = root.querySelectorAll("[data-countdown-bar]");
    var titled = root.hasAttribute("data-countdown-title");
    var baseTitle = document.title;
    var announce = root.querySelector("[data-countdown-announce]");
    var lastAnnounced = null;
    var timer = null;
    var api = {
      ended: false,
      remainingMs: function () { return deadline - (Date.now() + offset); },
      stop: function () {
        if (timer) clearInterval(timer);
        timer = null;
        if (titled) document.title = baseTitle;
      }
    };

    function setPane(ended) {
      root.querySelectorAll("[data-countdown-active]").forEach(function (el) { el.hidden = ended; });
      root.querySelectorAll("[data-countdown-ended]").forEach(function (el) { el.hidden = !ended; });
    }

    function tick() {
      var ms = api.remainingMs();
      var label = formatRemaining(ms);
      clocks.forEach(function (el) { if (el.textContent !== label) el.textContent = label; });
      var secs = Math.max(0, Math.ceil(ms / 1000));
      root.classList.toggle("is-amber", secs > RED_SECONDS && secs <= AMBER_SECONDS);
      root.classList.toggle("is-urgent", secs > 0 && secs <= RED_SECONDS);
      if (windowMs > 0) {
        var left = Math.max(0, Math.min(1, ms / windowMs));
        bars.forEach(function (bar) {
          // The first paint shows the time left at once; later ticks glide.
          if (!bar.dataset.ready) bar.style.transition = "none";
          bar.style.transform = "scaleX(" + left.toFixed(4) + ")";
          if (!bar.dataset.ready) {
            bar.dataset.ready = "1";
            requestAnimationFrame(function () { requestAnimationFrame(function () { bar.style.transition = ""; }); });
          }
        });
      }
      if (titled && secs > 0) {
        var title = label + " left · " + baseTitle;
        if (document.title !== title) document.title = title;
      }
      if (announce && secs > 0 && (secs % 60 === 0 || secs === 30 || secs === 10) && secs !== lastAnnounced) {
        lastAnnounced = secs;
        announce.textContent = spoken(secs);
      }
      if (ms <= 0 && !api.ended) {
        api.ended = true;
        api.stop();
        root.classList.add("is-ended");
        setPane(true);
        root.classList.remove("is-amber", "is-urgent");
        if (announce) announce.textContent = "The first-token offer has ended.";
        root.dispatchEvent(new CustomEvent("countdown:ended", { bubbles: true }));
      }
    }
    tick();
    if (!api.ended) timer = setInterval(tick, 250);
    root.tbCountdown = api;
    return api;
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // http://127.0.0.1 is not always a secure context: fall back to a hidden textarea.
    return new Promise(function (resolve, reject) {
      var ta = document.createElement("textarea");
      ta.value = text;
      ta.setAttribute("readonly", "");
      ta.style.position = "fixed";
      ta.style.opacity = "0";
      document.body.appendChild(ta);
      ta.select();
      try { document.execCommand("copy") ? resolve() : reject(new Error("copy failed")); }
      catch (e) { reject(e); }
      finally { document.body.removeChild(ta); }
    });
  }

  function initCopyButtons(scope) {
    scope.querySelectorAll("[data-copy-target]").forEach(function (btn) {
      if (btn.dataset.copyBound) return;
      btn.dataset.copyBound = "1";
      btn.addEventListener("click", function () {
        var target = document.getElementById(btn.getAttribute("data-copy-target"));
        if (!target) return;
        var original = btn.textContent;
        copyText(target.textContent.trim()).then(function () {
          btn.textContent = "Copied ✓";
        }, function () {
          btn.textContent = "Press Ctrl+C";
          var range = document.createRange();
          range.selectNodeContents(target);
          var sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
        });
        setTimeout(function () { btn.textContent = original; }, 2000);
      });
    });
  }

  /* Tabs: [role=tablist] buttons with aria-controls; arrow keys move between them. */
  function initTabs(scope) {
    scope.querySelectorAll("[role=tablist]").forEach(function (list) {
      var tabs = Array.prototype.slice.call(list.querySelectorAll("[role=tab]"));
      function select(tab) {
        tabs.forEach(function (t) {
          var on = t === tab;
          t.setAttribute("aria-selected", on ? "true" : "false");
          t.tabIndex = on ? 0 : -1;
          var panel = document.getElementById(t.getAttribute("aria-controls"));
          if (panel) panel.hidden = !on;
        });
      }
      tabs.forEach(function (tab, i) {
        tab.addEventListener("click", function () { select(tab); });
        tab.addEventListener("keydown", function (e) {
          var next = null;
          if (e.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
          if (e.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
          if (next) { e.preventDefault(); select(next); next.focus(); }
        });
      });
    });
  }

  window.TokenBank = {
    Countdown: Countdown,
    formatRemaining: formatRemaining,
    copyText: copyText,
    csrfToken: function () {
      var m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
      if (m) return decodeURIComponent(m[1]);
      var input = document.querySelector("input[name=csrfmiddlewaretoken]");
      return input ? input.value : "";
    }
  };

  /* The phone's compact header: the Menu button opens and closes the nav. */
  function initNavToggle() {
    var toggle = document.querySelector("[data-nav-toggle]");
    if (!toggle) return;
    var nav = document.getElementById(toggle.getAttribute("aria-controls"));
    toggle.addEventListener("click", function () {
      var open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
      nav.classList.toggle("is-open", open);
    });
    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && toggle.getAttribute("aria-expanded") === "true") {
        toggle.setAttribute("aria-expanded", "false");
        nav.classList.remove("is-open");
        toggle.focus();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    initNavToggle();
    document.querySelectorAll("[data-countdown-root]").forEach(function (root) { Countdown(root); });
    initCopyButtons(document);
    initTabs(document);
    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  });
})();
