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

// Ages ("held for 3 h 12 min") count up in the browser between redraws, so that the live
// refresh only has to redraw rows that really changed. Each <time data-age> carries its age
// in seconds when drawn; the browser adds the seconds since it first saw the element. A
// <time data-in> (when a throttled sync tries again) counts down the same way, to 0.
(function () {
  "use strict";
  function humane(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + " s";
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min";
    var hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    if (hours < 24) return minutes ? hours + " h " + minutes + " min" : hours + " h";
    var days = Math.floor(hours / 24);
    hours = hours % 24;
    return hours ? days + " d " + hours + " h" : days + " d";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-age]").forEach(function (element) {
      if (!element.dataset.seenAt) {
        element.dataset.seenAt = String(now);
        return;
      }
      var age = Number(element.dataset.age) + (now - Number(element.dataset.seenAt)) / 1000;
      var text = humane(age);
      if (element.textContent !== text) element.textContent = text;
    });
    document.querySelectorAll("time[data-in]").forEach(function (element) {
      if (!element.dataset.seenAt) {
        element.dataset.seenAt = String(now);
        return;
      }
      var left = Number(element.dataset.in) - (now - Number(element.dataset.seenAt)) / 1000;
      var text = humane(Math.ceil(left));
      if (element.textContent !== text) element.textContent = text;
    });
  }
  document.addEventListener("htmx:load", tick);
  document.addEventListener("DOMContentLoaded", tick);
  setInterval(tick, 1000);
})();

// A facet or pager link is redrawn together with what it controls: by the answer it asked for
// (the result list) and by the live refresh whenever the counts move. htmx gives focus back
// only to elements with an id, so a keyboard user who picks a facet, or rests on one while a
// count changes, would be sent back to the top of the page. Focus its redrawn twin instead.
(function () {
  "use strict";
  var wanted = null;
  function twins(element) {
    var facet = element.closest("#facets a");
    if (facet) {
      for (var i = 0; i < facet.classList.length; i++) {
        var name = facet.classList[i];
        if (name.indexOf("facet-") === 0) return ["#facets a." + name];
      }
      return null;
    }
    var page = element.closest(".pager a[rel]");
    // On the last page "Next" is gone: the pager's remaining link is the nearest place.
    if (page) return ['.pager a[rel="' + page.getAttribute("rel") + '"]', ".pager a"];
    return null;
  }
  document.addEventListener("htmx:beforeSwap", function () {
    var focused = document.activeElement;
    wanted = null;
    if (focused && focused !== document.body) {
      var selectors = twins(focused);
      if (selectors) wanted = { element: focused, selectors: selectors };
    }
  });
  document.addEventListener("htmx:afterSwap", function () {
    if (!wanted || wanted.element.isConnected) return;
    var focused = document.activeElement;
    if (focused && focused !== document.body) return;
    for (var i = 0; i < wanted.selectors.length; i++) {
      var twin = document.querySelector(wanted.selectors[i]);
      if (twin) {
        twin.focus({ preventScroll: true });
        break;
      }
    }
    wanted = null;
  });
})();
