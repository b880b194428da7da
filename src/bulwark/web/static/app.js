// Progressive touches only: every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // The ref switcher goes to the same path at the chosen ref.
  var form = document.getElementById("ref-switch");
  var select = document.getElementById("ref-select");
  if (form && select) {
    select.addEventListener("change", function () {
      var ref = encodeURIComponent(select.value).replace(/%2F/g, "/");
      var path = form.getAttribute("data-path");
      window.location.href = form.getAttribute("data-base") + ref + (path ? "/" + path : "");
    });
  }
  // Clone URLs and new tokens are selected whole on focus, ready to copy.
  document.querySelectorAll("input.copy").forEach(function (input) {
    input.addEventListener("focus", function () { input.select(); });
  });
});
