// Times in the reader's zone (UTC stays in the title), and the incident list kept fresh.
function localTimes(root) {
  root.querySelectorAll("time[datetime]").forEach(function (el) {
    el.textContent = new Date(el.getAttribute("datetime")).toLocaleString();
  });
}
localTimes(document);
var list = document.getElementById("incident-list");
if (list) setInterval(function () {
  fetch(list.dataset.refresh, {credentials: "same-origin"}).then(function (answer) {
    if (answer.ok && !answer.redirected) return answer.text().then(function (html) {
      list.innerHTML = html; localTimes(list);
    });
  }).catch(function () {});
}, 10000);
