/* The console's little script: placeholders, layer toggles, HLS, and the few calls to the JSON
 * API (requeue, naming a face cluster, moderation decisions). Requests carry the session cookie; state-changing ones
 * also the X-Darkroom-Console header the server requires with the cookie (CSRF). */
(function () {
  "use strict";

  function each(selector, fn, root) {
    Array.prototype.forEach.call((root || document).querySelectorAll(selector), fn);
  }

  function api(method, url, body) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Darkroom-Console": "1" },
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      if (r.status === 401) {
        window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
        throw new Error("not logged in");
      }
      return r.json().then(function (data) {
        if (!r.ok) throw new Error((data && data.detail) ? String(data.detail) : "HTTP " + r.status);
        return data;
      });
    });
  }

  /* grid: the BlurHash first, then the thumbnail over it once loaded */
  function placeholders() {
    each("canvas.blurhash", function (canvas) {
      try {
        var w = canvas.width, h = canvas.height, ctx = canvas.getContext("2d");
        var img = ctx.createImageData(w, h);
        img.data.set(window.blurhash.decode(canvas.getAttribute("data-blurhash"), w, h));
        ctx.putImageData(img, 0, 0);
        canvas.classList.add("drawn");
      } catch (e) {
        canvas.hidden = true; /* a malformed hash: no placeholder */
      }
    });
    each("img.thumbnail", function (img) {
      function shown() { img.classList.add("loaded"); }
      if (img.complete && img.naturalWidth > 0) shown();
      else img.addEventListener("load", shown);
      img.addEventListener("error", function () { img.hidden = true; });
    });
  }

  /* asset page */
  function assetPage() {
    each("input.layer-toggle", function (box) {
      box.addEventListener("change", function () {
        var layer = document.getElementById(box.getAttribute("data-layer"));
        if (layer) layer.classList.toggle("hidden", !box.checked);
      });
    });
    each("video.hls-player", function (video) {
      var note = video.parentNode.querySelector(".hls-note");
      if (video.canPlayType("application/vnd.apple.mpegurl")) {
        video.src = video.getAttribute("data-src");
      } else {
        video.hidden = true;
        if (note) note.hidden = false;
      }
    });
    each("rect.unsafe[data-start]", function (rect) {
      rect.addEventListener("click", function () {
        var player = document.getElementById("original");
        if (player && player.tagName === "VIDEO") {
          player.currentTime = parseFloat(rect.getAttribute("data-start")) || 0;
          player.play().catch(function () { /* autoplay refused: the position is set */ });
        }
      });
    });
    var asset = document.getElementById("asset");
    if (asset && asset.getAttribute("data-status") === "pending") {
      window.setTimeout(function () { window.location.reload(); }, 3000);
    }
  }

  /* dead letters */
  function deadLetters() {
    var table = document.getElementById("dead-letters");
    if (!table) return;
    var name = table.getAttribute("data-name");
    var message = document.getElementById("requeue-message");
    var url = "/v1/dead-letters/" + encodeURIComponent(name) + "/requeue";

    function settle(out) {
      out.requeued.forEach(function (ref) {
        var row = table.querySelector('tr[data-ref="' + ref + '"]');
        if (row) { row.querySelector(".mark").textContent = "requeued"; row.classList.add("requeued"); }
      });
      out.skipped.forEach(function (ref) {
        var row = table.querySelector('tr[data-ref="' + ref + '"]');
        if (row) row.querySelector(".mark").textContent = "cannot be requeued";
      });
      message.textContent = out.requeued.length + " requeued" +
        (out.skipped.length ? ", " + out.skipped.length + " skipped (original gone)" : "") +
        (out.missing.length ? ", " + out.missing.length + " not found" : "");
    }
    function fail(e) { message.textContent = "requeue failed: " + e.message; }

    each("button.requeue", function (button) {
      button.addEventListener("click", function () {
        button.disabled = true;
        message.textContent = "requeueing " + button.getAttribute("data-ref") + " …";
        api("POST", url, { refs: [button.getAttribute("data-ref")] }).then(settle, fail)
          .then(function () { button.disabled = false; });
      });
    });
    var all = document.getElementById("requeue-all");
    if (all) {
      all.addEventListener("click", function () {
        all.disabled = true;
        message.textContent = "requeueing …";
        api("POST", url, { all: true }).then(settle, fail).then(function () { all.disabled = false; });
      });
    }
  }

  /* face clusters */
  function clusterNames() {
    each("form.cluster-name", function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var id = form.getAttribute("data-cluster-id");
        var saved = form.querySelector(".saved");
        saved.textContent = "saving …";
        api("PUT", "/v1/faces/clusters/" + encodeURIComponent(id) + "/name",
            { name: form.querySelector("input[name=name]").value })
          .then(function (out) { saved.textContent = out.name ? "saved" : "name removed"; },
                function (e) { saved.textContent = "not saved: " + e.message; });
      });
    });
  }

  /* moderation queue: buttons, and j/k to move, a/r to approve/reject the focused card */
  function moderationQueue() {
    var queue = document.getElementById("moderation-queue");
    if (!queue) return;
    var message = document.getElementById("moderation-message");
    function cards() { return Array.prototype.slice.call(queue.querySelectorAll("li.review:not(.decided)")); }
    function decide(card, status) {
      if (!card || card.classList.contains("deciding")) return;
      var id = card.getAttribute("data-asset-id");
      var note = card.querySelector("input.note");
      card.classList.add("deciding");
      message.textContent = (status === "approved" ? "approving " : "rejecting ") + id + " …";
      api("POST", "/v1/assets/" + encodeURIComponent(id) + "/moderation",
          { status: status, note: note ? note.value : "" })
        .then(function (out) {
          card.classList.add("decided", out.status);
          card.querySelector(".decision").textContent = out.status;
          each("button", function (b) { b.disabled = true; }, card);
          message.textContent = id + " " + out.status + " by " + out.decided_by;
          var next = cards()[0];
          if (next) next.focus();
        }, function (e) { message.textContent = id + ": " + e.message; })
        .then(function () { card.classList.remove("deciding"); });
    }
    each("li.review", function (card) {
      var approve = card.querySelector("button.approve"), reject = card.querySelector("button.reject");
      if (approve) approve.addEventListener("click", function () { decide(card, "approved"); });
      if (reject) reject.addEventListener("click", function () { decide(card, "rejected"); });
    });
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      var target = event.target;
      if (target && (target.tagName === "INPUT" || target.tagName === "SELECT" || target.tagName === "TEXTAREA")) return;
      var list = cards();
      if (!list.length) return;
      var card = target && target.closest ? target.closest("li.review") : null;
      var at = list.indexOf(card);
      if (event.key === "j" || event.key === "k") {
        var to = event.key === "j" ? Math.min(at + 1, list.length - 1) : Math.max(at - 1, 0);
        list[at < 0 ? 0 : to].focus();
        event.preventDefault();
      } else if (event.key === "a" || event.key === "r") {
        decide(at < 0 ? list[0] : list[at], event.key === "a" ? "approved" : "rejected");
        event.preventDefault();
      }
    });
    var first = cards()[0];
    if (first) first.focus();
  }

  function start() {
    placeholders();
    assetPage();
    deadLetters();
    clusterNames();
    moderationQueue();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
