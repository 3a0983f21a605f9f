// Draws every chart of the page: the figure is JSON next to its container (see templates/_macros.html).
"use strict";
document.querySelectorAll(".chart[data-figure]").forEach(function (el) {
  var source = document.getElementById(el.dataset.figure);
  if (!source || typeof Plotly === "undefined") { return; }
  var figure = JSON.parse(source.textContent);
  Plotly.newPlot(el, figure.data, figure.layout, { displaylogo: false, responsive: true });
});
