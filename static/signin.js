// The waiting page of a sign-in (templates/signin_wait.html): follows the sign-in's state
// and moves on when it changes. Same-origin only; the page works without it (its buttons).
(function () {
  "use strict";
  var root = document.getElementById("sign-in");
  if (!root || !window.fetch) { return; }
  var url = root.getAttribute("data-status-url");
  var delay = parseInt(root.getAttribute("data-poll-ms"), 10) || 2500;
  var until = Date.now() + 1000 * ((parseInt(root.getAttribute("data-expires-in"), 10) || 0) + 90);
  var form = document.getElementById("approved-form");

  function again(ms) {
    if (Date.now() < until) { window.setTimeout(check, ms); }
  }

  function check() {
    window.fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (resp) {
        if (resp.status === 429) { again(delay * 4); return null; }
        return resp.json();
      })
      .then(function (body) {
        if (body === null) { return; }
        if (body.state === "pending") { again(delay); return; }
        if (body.state === "approved") { form.submit(); return; }
        // denied, expired, ended, completed: the page itself says what happened.
        window.location.reload();
      })
      .catch(function () { again(delay * 2); });
  }

  again(delay);
}());
