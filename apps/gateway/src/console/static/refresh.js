// Refreshes a console page's <main> in place every 10 seconds, keeping the
// URL (and so its filters), unless the operator is typing in a form or the
// tab is hidden. Served from /console/static and loaded with the page's
// CSP nonce; it only fetches same-origin HTML the server escaped.
"use strict";
(function () {
  const every = 10000;
  async function refresh() {
    const active = document.activeElement;
    const typing = active && active.closest && active.closest("form");
    if (document.hidden || typing) return;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { "X-Console-Refresh": "1" },
        redirect: "manual",
      });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("main");
      const main = document.getElementById("main");
      if (fresh && main) main.replaceChildren(...fresh.childNodes);
    } catch (error) {
      // Offline or restarting: try again at the next tick.
    }
  }
  window.setInterval(refresh, every);
})();
