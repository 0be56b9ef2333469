// Live updates: when the store changes, fetch this page's main part and swap it in.
(function () {
  var live = document.getElementById("live");
  var source = new EventSource("/events");
  var first = true;
  source.addEventListener("changed", function () {
    if (first) { first = false; return; } // the state the page was rendered from
    fetch(location.pathname, { headers: { "x-shipit-fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { document.getElementById("main").innerHTML = html; } });
  });
  source.onopen = function () { live.className = "live on"; };
  source.onerror = function () { live.className = "live"; };
})();
