// The event list refreshes itself: while its first page is shown and the tab is visible, it
// fetches the rows again (same filters, HTML rendered and escaped by the server) and swaps them in.
(function () {
  "use strict";
  var table = document.getElementById("events");
  if (!table || !table.dataset.refresh) { return; }
  var every = Math.max(2, parseInt(table.dataset.refresh, 10) || 5) * 1000;
  var url = table.dataset.fragmentUrl;
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString("<table><tbody>" + html + "</tbody></table>", "text/html");
        var fresh = doc.querySelector("tbody");
        var body = table.querySelector("tbody");
        if (fresh && body) { body.replaceChildren.apply(body, Array.prototype.slice.call(fresh.childNodes)); }
        table.dataset.refreshed = String(Date.now());
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; });
  }
  setInterval(refresh, every);
})();
