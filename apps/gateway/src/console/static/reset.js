// Moves the reset code from the link's fragment (never sent to a server)
// into the form, then removes it from the address bar and history.
"use strict";
(function () {
  const code = window.location.hash.slice(1);
  if (!code) return;
  const field = document.getElementById("code");
  if (field) field.value = decodeURIComponent(code);
  window.history.replaceState(null, "", window.location.pathname);
})();
