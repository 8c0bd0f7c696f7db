// The purchase page while the payment is pending: poll its status, reload once it changes.
(function () {
  var root = document.querySelector("[data-status-url]");
  if (!root) { return; }
  var initial = root.getAttribute("data-purchase-status");
  function poll() {
    fetch(root.getAttribute("data-status-url"), {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data && data.status !== initial) { window.location.reload(); } else { setTimeout(poll, 1500); }
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 1000);
})();
