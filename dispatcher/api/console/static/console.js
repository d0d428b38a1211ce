// kube-dispatcher console: live updates without reloading (Server-Sent Events).
// The server sends rendered fragments; this script only puts them in place. No inline
// script anywhere: the Content-Security-Policy allows scripts from this origin only.
"use strict";

(function () {
  const FINISHED = ["succeeded", "failed", "cancelled", "rejected"];
  const LOG_EVERY_MS = 3000;

  function fragment(html, tag) {
    const holder = document.createElement(tag);
    holder.innerHTML = html;
    return holder;
  }

  function upsertRow(data) {
    const body = document.querySelector("#jobs tbody");
    if (!body) {
      return;
    }
    const row = fragment("<table><tbody>" + data.html + "</tbody></table>", "div")
      .querySelector("tr");
    const old = body.querySelector('tr[data-job="' + CSS.escape(data.id) + '"]');
    if (old) {
      old.replaceWith(row);
    } else {
      body.prepend(row);
    }
    const empty = document.getElementById("no-jobs");
    if (empty) {
      empty.remove();
    }
  }

  function removeRow(data) {
    const old = document.querySelector('#jobs tr[data-job="' + CSS.escape(data.id) + '"]');
    if (old) {
      old.remove();
    }
  }

  function jobState() {
    const section = document.getElementById("job-state");
    return section ? section.dataset.state : null;
  }

  function readLog() {
    const log = document.getElementById("log");
    if (!log) {
      return;
    }
    fetch(log.dataset.log, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        return answer.text().then(function (text) {
          log.textContent = answer.ok ? text : "(" + answer.status + ") " + text;
        });
      })
      .catch(function () {
        log.textContent = "(the log cannot be read now)";
      });
  }

  function showDetail(data) {
    const live = document.getElementById("job-live");
    if (live) {
      live.innerHTML = data.html;
      readLog();
    }
  }

  function status(text) {
    const line = document.getElementById("live-status");
    if (line) {
      line.textContent = text;
      line.hidden = !text;
    }
  }

  function listen(url) {
    const source = new EventSource(url);
    source.addEventListener("open", function () {
      document.body.dataset.live = "open";
      status("");
    });
    source.addEventListener("row", function (event) {
      upsertRow(JSON.parse(event.data));
    });
    source.addEventListener("remove", function (event) {
      removeRow(JSON.parse(event.data));
    });
    source.addEventListener("detail", function (event) {
      showDetail(JSON.parse(event.data));
    });
    source.addEventListener("error", function () {
      document.body.dataset.live = "closed";
      if (source.readyState === EventSource.CLOSED) {
        status("Live updates stopped (signed out, or the service restarted): reload the page.");
      } else {
        status("Live updates interrupted; reconnecting…");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const url = document.body.dataset.events;
    if (url) {
      listen(url);
    }
    if (document.getElementById("log")) {
      readLog();
      const timer = setInterval(function () {
        readLog();
        if (FINISHED.includes(jobState())) {
          clearInterval(timer);
        }
      }, LOG_EVERY_MS);
    }
  });
})();
