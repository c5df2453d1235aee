// Live refresh must never take away what the operator is doing: skip a poll while a menu is
// open, while focus is inside the refreshed rows, or while the tab is hidden.
(function () {
  "use strict";
  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (!element || !element.hasAttribute("data-poll")) {
      return;
    }
    var focused = document.activeElement;
    if (
      document.hidden ||
      document.querySelector("details[open]") ||
      (focused && focused !== document.body && element.contains(focused))
    ) {
      event.preventDefault();
    }
  });
})();
