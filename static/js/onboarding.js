/* Onboarding: the playground (streams SSE from the real API), the progress list (polls
   GET /api/credits every ~2 s) and the celebration when the first-token credit lands. */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("onboarding-config").textContent);
  var POLL_MS = 2000;
  var PLAYGROUND_MAX_TOKENS = 256;
  var POLL_AFTER_END_MS = 30000; // a token made just before the deadline may settle a moment later
  var reducedMotion = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  var state = {
    promotion: config.state,          // in_window | ended | claimed
    firstToken: config.firstToken,
    endedAt: config.state === "ended" ? Date.now() : null,
    celebrated: config.state === "claimed",
    pollTimer: null,
    polling: false
  };

  var banner = document.getElementById("offer");
  var celebration = document.getElementById("celebration");

  /* A headline, as credits.money.headline_usd: dollars and cents rounded DOWN, so the page
     never shows more than there is: "19.999989" -> "$19.99", "20.000000" -> "$20.00". */
  function headlineUsd(text) {
    var m = /^(-?)(\d+)(?:\.(\d{1,6}))?$/.exec(String(text || "").trim());
    if (!m) return text;
    var frac = Number(((m[3] || "") + "000000").slice(0, 6));
    var cents = Number(m[2]) * 100 + Math.floor(frac / 10000);
    if (m[1] && frac % 10000) cents += 1; // a debt rounds away from zero: floor, like the server
    if (cents === 0) return "$0.00";
    var dollars = String(Math.floor(cents / 100)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    var c = cents % 100;
    return m[1] + "$" + dollars + "." + (c < 10 ? "0" : "") + c;
  }

  function markStep(name, status) {
    var li = document.querySelector('[data-step="' + name + '"]');
    if (!li) return;
    li.classList.toggle("is-done", status === "done");
    li.classList.toggle("is-missed", status === "missed");
    li.querySelector(".tick").textContent = status === "missed" ? "✕" : "✓";
    var label = li.querySelector("[data-step-state]");
    if (label) label.textContent = status === "done" ? "done" : status === "missed" ? "missed" : "to do";
  }

  function showPane(name) {
    banner.querySelectorAll("[data-pane]").forEach(function (el) {
      el.hidden = el.getAttribute("data-pane") !== name;
    });
    banner.querySelectorAll(".countdown-timer").forEach(function (el) { el.hidden = name !== "in_window"; });
    banner.classList.toggle("is-won", name === "claimed");
    banner.classList.toggle("is-ended", name === "ended");
    banner.setAttribute("data-state", name);
  }

  function confetti() {
    if (reducedMotion) return;
    var box = celebration.querySelector(".confetti");
    var colors = ["#4338ca", "#047857", "#f59e0b", "#be185d", "#0369a1", "#6d28d9"];
    for (var i = 0; i < 60; i++) {
      var piece = document.createElement("i");
      // Either side of the centred message (on a phone the halo keeps it readable).
      var side = Math.random() * 34;
      piece.style.left = (i % 2 ? 1 + side : 98 - side) + "%";
      piece.style.background = colors[i % colors.length];
      piece.style.animationDelay = Math.random() * 0.8 + "s";
      piece.style.transform = "rotate(" + Math.random() * 360 + "deg)";
      box.appendChild(piece);
    }
    setTimeout(function () { box.innerHTML = ""; }, 4000);
  }

  function setBalance(el, balanceText) {
    el.textContent = headlineUsd(balanceText);
    el.title = "Exactly $" + balanceText;
  }

  /* The celebration takes the banner's place in the same slot, held at its height: the reply
     the visitor is reading does not move, and the page does not scroll. */
  function celebrate(balanceText) {
    if (state.celebrated) return;
    state.celebrated = true;
    if (banner.tbCountdown) banner.tbCountdown.stop();
    var slot = document.querySelector("[data-offer-slot]");
    if (slot) slot.style.minHeight = slot.offsetHeight + "px";
    showPane("claimed");
    if (balanceText != null) setBalance(celebration.querySelector("[data-celebration-balance]"), balanceText);
    banner.hidden = true;
    celebration.hidden = false;
    if (slot && celebration.offsetHeight < slot.offsetHeight) celebration.classList.add("fills-slot");
    if (!reducedMotion) celebration.classList.add("is-animated");
    confetti();
    var pill = document.querySelector("[data-nav-balance]");
    if (pill) pill.classList.add("is-new");
  }

  function applyCredits(data) {
    var promo = data.promotion || {};
    var balanceLabel = document.querySelector("[data-balance-label]");
    if (data.balance != null) {
      if (balanceLabel) balanceLabel.textContent = "Balance " + headlineUsd(data.balance);
      var pill = document.querySelector("[data-nav-balance]");
      if (pill) setBalance(pill, data.balance);
      // The celebration shows the balance after the call that earned it, as the pill does.
      setBalance(celebration.querySelector("[data-celebration-balance]"), data.balance);
    }
    var entries = (data.entries && data.entries.results) || data.entries || [];
    var spent = entries.some(function (e) {
      var t = e.entry_type || e.type;
      return t === "USAGE" || t === "CAPTURE";
    });
    if (promo.claimed || spent) state.firstToken = true;
    if (state.firstToken) markStep("first_token", "done");
    if (promo.claimed) {
      markStep("credit", "done");
      state.promotion = "claimed";
      celebrate(data.balance);
      stopPolling();
    } else if (!promo.eligible && state.promotion === "in_window") {
      endOffer();
    }
    // Why the credit is withheld (velocity limits, the offer paused, verify your email).
    var reasonEl = banner.querySelector(promo.claimed ? "[data-verify-notice]" : "[data-withheld-reason]");
    if (reasonEl && promo.withheld_reason) {
      reasonEl.textContent = promo.withheld_reason;
      reasonEl.hidden = false;
      // Credit waiting for the email verification: offer to send the link again.
      var resend = promo.claimed && banner.querySelector("[data-verify-resend]");
      if (resend) resend.hidden = false;
    }
  }

  function endOffer() {
    if (state.promotion === "claimed") return;
    state.promotion = "ended";
    state.endedAt = state.endedAt || Date.now();
    showPane("ended");
    markStep("credit", "missed");
  }

  function poll() {
    if (document.hidden) return;
    // A poll asked for while one is in flight runs after it (the call's settled balance).
    if (state.polling) { state.pollAgain = true; return; }
    state.polling = true;
    fetch(config.creditsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) applyCredits(data); })
      .catch(function () { /* offline for a moment: the next tick retries */ })
      .then(function () {
        state.polling = false;
        if (state.promotion === "ended" && Date.now() - state.endedAt > POLL_AFTER_END_MS) stopPolling();
        if (state.pollAgain) { state.pollAgain = false; poll(); }
      });
  }

  function startPolling() {
    if (state.pollTimer || state.promotion === "claimed") return;
    state.pollTimer = setInterval(poll, POLL_MS);
  }

  function stopPolling() {
    if (state.pollTimer) clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  document.addEventListener("countdown:ended", function () {
    endOffer();
    poll(); // the server has the last word: a token at 2:59 may still be settling
  });
  document.addEventListener("visibilitychange", function () { if (!document.hidden) poll(); });

  /* ---- playground: fetch() + ReadableStream reading server-sent events ------------------ */
  var form = document.getElementById("playground");
  var output = document.getElementById("pg-output");
  var meta = document.getElementById("pg-meta");
  var generateBtn = document.getElementById("pg-generate");
  var stopBtn = document.getElementById("pg-stop");
  var controller = null;

  function errorMessage(status, body) {
    var err = body && (body.error || body);
    // The API's message already says what is missing ("Insufficient credits: …"): show it once.
    return (err && (err.message || err.detail)) || "The request failed (HTTP " + status + ").";
  }

  /* The message as text, its https:// or http:// addresses as links (never as HTML). */
  function appendLinked(parent, text) {
    String(text).split(/(https?:\/\/[^\s]+[^\s.,;)])/).forEach(function (part, i) {
      if (i % 2) {
        var link = document.createElement("a");
        link.href = part;
        link.textContent = part;
        parent.appendChild(link);
      } else if (part) {
        parent.appendChild(document.createTextNode(part));
      }
    });
  }

  function setBusy(busy) {
    generateBtn.disabled = busy;
    generateBtn.textContent = busy ? "Generating…" : "Generate";
    stopBtn.hidden = !busy;
    output.classList.toggle("is-streaming", busy);
    output.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function showError(status, body) {
    meta.textContent = "";
    var box = document.createElement("div");
    box.className = "banner banner-danger";
    box.setAttribute("role", "alert");
    box.setAttribute("data-playground-error", String(status));
    var p = document.createElement("p");
    if (status === 402) {
      var lead = document.createElement("strong");
      lead.textContent = state.promotion === "ended" ? "Out of credit: the free-credit offer has ended. "
        : "Out of credit. ";
      p.appendChild(lead);
    }
    appendLinked(p, errorMessage(status, body));
    box.appendChild(p);
    if (status === 402 && config.buyUrl) {
      var actions = document.createElement("span");
      actions.className = "row";
      var a = document.createElement("a");
      a.className = "btn btn-sm btn-primary";
      a.href = config.buyUrl;
      a.textContent = "Buy credits";
      actions.appendChild(a);
      if (config.docsUrl) {
        var d = document.createElement("a");
        d.className = "btn btn-sm btn-secondary";
        d.href = config.docsUrl;
        d.textContent = "What the errors mean";
        actions.appendChild(d);
      }
      box.appendChild(actions);
    }
    meta.appendChild(box);
  }

  function handleEvent(raw, stats) {
    var data = raw.split(/\r?\n/).filter(function (l) { return l.indexOf("data:") === 0; })
      .map(function (l) { return l.slice(5).replace(/^ /, ""); }).join("\n");
    if (!data) return false;
    if (data === "[DONE]") return true;
    var chunk;
    try { chunk = JSON.parse(data); } catch (e) { return false; }
    if (chunk.error) { showError(chunk.error.code === "insufficient_credits" ? 402 : 500, chunk); return true; }
    var choice = chunk.choices && chunk.choices[0];
    var piece = choice && choice.delta && choice.delta.content;
    if (piece) {
      if (!stats.first) {
        stats.first = performance.now();
        state.firstToken = true;
        markStep("first_token", "done");
        poll();
      }
      stats.chunks += 1;
      output.textContent += piece;
    }
    if (chunk.usage) stats.usage = chunk.usage;
    return false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var prompt = form.prompt.value.trim();
    if (!prompt) { form.prompt.focus(); return; }
    output.textContent = "";
    meta.textContent = "Waiting for the first token…";
    setBusy(true);
    controller = new AbortController();
    var started = performance.now();
    var stats = { first: 0, chunks: 0, usage: null };
    fetch(config.completionsUrl, {
      method: "POST",
      credentials: "same-origin",
      signal: controller.signal,
      headers: {
        "Content-Type": "application/json",
        // DRF negotiates the renderer; a bare text/event-stream Accept gets 406.
        Accept: "application/json, text/event-stream",
        "X-CSRFToken": window.TokenBank.csrfToken()
      },
      body: JSON.stringify({
        model: form.model.value,
        stream: true,
        // A demo reply is short; without max_tokens each call would hold the model's worst case.
        max_tokens: PLAYGROUND_MAX_TOKENS,
        messages: [{ role: "user", content: prompt }]
      })
    }).then(function (response) {
      if (!response.ok) {
        return response.json().catch(function () { return null; })
          .then(function (body) { showError(response.status, body); });
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function pump() {
        return reader.read().then(function (result) {
          if (result.done) return;
          buffer += decoder.decode(result.value, { stream: true });
          var parts = buffer.split(/\r?\n\r?\n/);
          buffer = parts.pop();
          for (var i = 0; i < parts.length; i++) {
            if (handleEvent(parts[i], stats)) { reader.cancel(); return; }
          }
          return pump();
        });
      }
      return pump().then(function () {
        if (buffer.trim()) handleEvent(buffer, stats);
        if (!meta.querySelector("[data-playground-error]")) {
          var secs = ((performance.now() - started) / 1000).toFixed(1);
          var ttft = stats.first ? Math.round(stats.first - started) + " ms to first token, " : "";
          var tokens = stats.usage ? stats.usage.completion_tokens + " tokens, " : stats.chunks + " chunks, ";
          meta.textContent = "Done: " + tokens + ttft + secs + " s in all.";
        }
      });
    }).catch(function (err) {
      if (err && err.name === "AbortError") { meta.textContent = "Stopped."; return; }
      showError(0, { error: { message: "Network error: the stream was interrupted." } });
    }).then(function () {
      setBusy(false);
      controller = null;
      poll();
    });
  });

  stopBtn.addEventListener("click", function () { if (controller) controller.abort(); });

  if (state.promotion !== "claimed") {
    startPolling();
    poll();
  }
})();
