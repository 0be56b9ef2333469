// Live updates: fetch this page's main part again and swap it in, when the store changes
// (`/events`), or every `data-poll` seconds where the server sends no events.
(function () {
  var live = document.getElementById("live");
  function refresh() {
    return fetch(location.pathname, { headers: { "x-shipit-fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null) { document.getElementById("main").innerHTML = html; }
        return html !== null;
      });
  }
  var poll = Number(document.body.dataset.poll || 0);
  if (poll > 0) {
    // One request at a time, the next one `poll` seconds after the last answer.
    var again = function () {
      setTimeout(function () {
        refresh().then(function (ok) { live.className = ok ? "live on" : "live"; again(); },
                       function () { live.className = "live"; again(); });
      }, poll * 1000);
    };
    live.className = "live on";
    again();
    return;
  }
  var source = new EventSource("/events");
  var first = true;
  source.addEventListener("changed", function () {
    if (first) { first = false; return; } // the state the page was rendered from
    refresh();
  });
  source.onopen = function () { live.className = "live on"; };
  source.onerror = function () { live.className = "live"; };
})();
