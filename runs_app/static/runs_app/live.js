/* runs_app live pages: start a run and read its relayed stream, answer tool calls, cancel, or watch any run
 * through the mirror's event feed. No build step, no dependencies.
 *
 * Everything that comes from the service or the model (text, tool names and arguments, errors) is written with
 * textContent, never as HTML.
 */
(function () {
  "use strict";

  var root = document.querySelector(".runs-live");
  if (!root) return;
  var urls = JSON.parse(document.getElementById("live-urls").textContent);
  var TERMINAL = ["completed", "failed", "cancelled", "expired", "incomplete"];
  var canCancel = root.dataset.canCancel === "1";
  var canSubmit = root.dataset.canSubmit === "1";

  var el = {
    runId: document.getElementById("run-id"),
    status: document.getElementById("run-status"),
    state: document.getElementById("live-state"),
    error: document.getElementById("live-error"),
    lastError: document.getElementById("run-last-error"),
    messages: document.getElementById("messages"),
    steps: document.getElementById("steps"),
    toolForm: document.getElementById("tool-outputs"),
    toolCalls: document.getElementById("tool-calls"),
    cancel: document.getElementById("cancel-run"),
    adminLink: document.getElementById("admin-run-link"),
    startForm: document.getElementById("start-run"),
    startError: document.getElementById("start-error")
  };

  var run = null;          // the latest run object seen
  var runId = root.dataset.currentRun || null;
  var controller = null;   // aborts the stream being read
  var finished = false;    // the current stream said done
  var watchTries = 0;

  function url(name, id) { return urls[name].replace("RUN_ID", encodeURIComponent(id)); }
  function isTerminal(status) { return TERMINAL.indexOf(status) >= 0; }

  function csrfToken() {
    var input = document.querySelector("[name=csrfmiddlewaretoken]");
    if (input) return input.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function show(node, text) {
    if (!node) return;
    node.textContent = text || "";
    node.hidden = !text;
  }

  function setState(text) { el.state.textContent = text; root.dataset.live = text; }

  // --- rendering ------------------------------------------------------------------------------------------

  function setRun(data) {
    run = data;
    if (runId !== data.id) {
      runId = data.id;
      el.runId.textContent = data.id;
      el.runId.href = url("live", data.id);
      if (el.adminLink && urls.admin_run) {
        el.adminLink.href = url("admin_run", data.id);
        el.adminLink.hidden = false;
      }
    }
    el.status.textContent = data.status;
    el.status.dataset.status = data.status;
    root.dataset.runStatus = data.status;
    if (el.cancel) el.cancel.hidden = !canCancel || isTerminal(data.status) || data.status === "cancelling";
    var err = data.last_error ? (data.last_error.code || "error") + ": " + (data.last_error.message || "") : "";
    if (!err && data.incomplete_details && data.status === "incomplete") {
      err = "incomplete: " + (data.incomplete_details.reason || "");
    }
    show(el.lastError, err);
    var calls = data.status === "requires_action" && data.required_action && data.required_action.submit_tool_outputs
      ? data.required_action.submit_tool_outputs.tool_calls || [] : [];
    renderToolForm(calls);
    if (el.startForm) setStartEnabled(isTerminal(data.status));
  }

  function messageItem(id, role) {
    var li = id ? el.messages.querySelector('li[data-id="' + CSS.escape(id) + '"]') : null;
    if (!li) {
      li = document.createElement("li");
      li.className = "message role-" + (role || "assistant");
      if (id) li.dataset.id = id;
      var r = document.createElement("span");
      r.className = "role";
      r.textContent = role || "assistant";
      var t = document.createElement("div");
      t.className = "text";
      li.appendChild(r);
      li.appendChild(t);
      el.messages.appendChild(li);
    }
    return li;
  }

  function blocksText(content) {
    return (content || []).filter(function (b) { return b && b.type === "text" && b.text; })
      .map(function (b) { return b.text.value || ""; }).join("\n");
  }

  function upsertMessage(m) {
    var li = messageItem(m.id, m.role);
    li.dataset.status = m.status || "";
    var text = blocksText(m.content);
    var node = li.querySelector(".text");
    if (text || !node.textContent) node.textContent = text;
    li.parts = null;
  }

  function messageDelta(d) {
    var li = messageItem(d.id, "assistant");
    var node = li.querySelector(".text");
    if (!li.parts) li.parts = node.textContent ? [node.textContent] : [];
    ((d.delta && d.delta.content) || []).forEach(function (block) {
      if (block.type !== "text" || !block.text) return;
      var i = typeof block.index === "number" ? block.index : li.parts.length - 1;
      li.parts[i] = (li.parts[i] || "") + (block.text.value || "");
    });
    node.textContent = li.parts.join("\n");
  }

  function stepItem(id) {
    var li = el.steps.querySelector('li[data-id="' + CSS.escape(id) + '"]');
    if (!li) {
      li = document.createElement("li");
      li.dataset.id = id;
      li.className = "step";
      var head = document.createElement("span");
      head.className = "step-head";
      var calls = document.createElement("ul");
      calls.className = "step-calls";
      li.appendChild(head);
      li.appendChild(calls);
      el.steps.appendChild(li);
    }
    return li;
  }

  function callText(call) {
    if (call.type === "function" && call.function) {
      var out = call.function.name + "(" + (call.function.arguments || "") + ")";
      if (call.function.output != null) out += " → " + call.function.output;
      return out;
    }
    return call.type || "tool call";
  }

  function upsertStep(s) {
    var li = stepItem(s.id);
    li.dataset.status = s.status;
    li.dataset.type = s.type;
    li.querySelector(".step-head").textContent = s.type.replace("_", " ") + " · " + s.status;
    var list = li.querySelector(".step-calls");
    var calls = (s.step_details && s.step_details.tool_calls) || [];
    if (!calls.length) return;
    li.calls = calls.map(function (c) { return JSON.parse(JSON.stringify(c)); });
    renderCalls(li);
  }

  function renderCalls(li) {
    var list = li.querySelector(".step-calls");
    list.textContent = "";
    (li.calls || []).forEach(function (call) {
      var item = document.createElement("li");
      item.className = "tool-call";
      item.textContent = callText(call);
      list.appendChild(item);
    });
  }

  function stepDelta(d) {
    var li = stepItem(d.id);
    var deltaCalls = (d.delta && d.delta.step_details && d.delta.step_details.tool_calls) || [];
    li.calls = li.calls || [];
    deltaCalls.forEach(function (dc) {
      var i = typeof dc.index === "number" ? dc.index : li.calls.length;
      var call = li.calls[i] || (li.calls[i] = { type: dc.type || "function", id: dc.id, "function": { name: "", arguments: "" } });
      if (dc.id) call.id = dc.id;
      if (dc["function"]) {
        call["function"] = call["function"] || { name: "", arguments: "" };
        if (dc["function"].name) call["function"].name = dc["function"].name;
        if (dc["function"].arguments) call["function"].arguments = (call["function"].arguments || "") + dc["function"].arguments;
        if (dc["function"].output != null) call["function"].output = dc["function"].output;
      }
    });
    renderCalls(li);
  }

  function renderToolForm(calls) {
    if (!el.toolForm) return;
    var key = calls.map(function (c) { return c.id; }).join(",");
    if (el.toolForm.dataset.calls === key) return;
    el.toolForm.dataset.calls = key;
    el.toolCalls.textContent = "";
    calls.forEach(function (call) {
      var box = document.createElement("fieldset");
      box.className = "tool-call-input";
      var legend = document.createElement("legend");
      legend.textContent = (call["function"] && call["function"].name) || call.type;
      var args = document.createElement("pre");
      args.className = "tool-arguments";
      var raw = (call["function"] && call["function"].arguments) || "";
      try { raw = JSON.stringify(JSON.parse(raw), null, 2); } catch (e) { /* shown as sent */ }
      args.textContent = raw;
      var label = document.createElement("label");
      label.textContent = "Output for " + call.id;
      var area = document.createElement("textarea");
      area.name = call.id;
      area.rows = 2;
      area.cols = 70;
      area.required = true;
      area.setAttribute("aria-label", "Output for " + call.id);
      label.htmlFor = area.id = "output-" + call.id;
      box.appendChild(legend);
      box.appendChild(args);
      box.appendChild(label);
      box.appendChild(area);
      el.toolCalls.appendChild(box);
    });
    el.toolForm.hidden = !calls.length || !canSubmit;
    var button = el.toolForm.querySelector("button");
    if (button) button.disabled = false;
  }

  // --- event streams ------------------------------------------------------------------------------------------

  function onEvent(name, raw) {
    if (name === "done") { finished = true; return; }
    var data;
    try { data = JSON.parse(raw); } catch (e) { return; }
    if (name === "error") {
      var e = data.error || {};
      root.dataset.streamLost = "1";
      var said = e.message || raw;
      if (e.request_id && said.indexOf(e.request_id) < 0) said += " (request id " + e.request_id + ")";
      show(el.error, "The stream was lost: " + said + " Following the run through the mirror.");
      return;
    }
    if (name.indexOf("thread.run.step.") === 0) { return name === "thread.run.step.delta" ? stepDelta(data) : upsertStep(data); }
    if (name.indexOf("thread.run.") === 0) return setRun(data);
    if (name === "thread.message.delta") return messageDelta(data);
    if (name.indexOf("thread.message.") === 0) return upsertMessage(data);
  }

  function readStream(response) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function frame(text) {
      var name = "message", data = [];
      text.split("\n").forEach(function (line) {
        if (!line || line.charAt(0) === ":") return;
        var colon = line.indexOf(":");
        var field = colon < 0 ? line : line.slice(0, colon);
        var value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.charAt(0) === " ") value = value.slice(1);
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      });
      if (data.length) onEvent(name, data.join("\n"));
    }
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) return;
        buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
        var at;
        while ((at = buffer.indexOf("\n\n")) >= 0) {
          frame(buffer.slice(0, at));
          buffer = buffer.slice(at + 2);
        }
        return pump();
      });
    }
    return pump();
  }

  function stopStream() {
    if (controller) controller.abort();
    controller = null;
  }

  function errorFromResponse(response) {
    return response.text().then(function (body) {
      var e;
      try { e = JSON.parse(body).error; } catch (x) { e = null; }
      if (!e) return "HTTP " + response.status + ": the server answered something else than an event stream.";
      return (e.param ? e.param + " — " : "") + e.message + (e.request_id ? " (request id " + e.request_id + ")" : "");
    });
  }

  /* POST that answers with the relayed stream (start a run, submit tool outputs). */
  function relay(target, init, errorNode, onStream) {
    stopStream();
    var ctl = controller = new AbortController();
    init.signal = ctl.signal;
    init.credentials = "same-origin";
    init.headers = Object.assign({ "X-CSRFToken": csrfToken(), "Accept": "text/event-stream" }, init.headers || {});
    show(el.error, "");
    delete root.dataset.streamLost;
    return fetch(target, init).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      if (!response.ok || type.indexOf("text/event-stream") !== 0) {
        return errorFromResponse(response).then(function (message) { show(errorNode || el.error, message); return null; });
      }
      finished = false;
      if (onStream) onStream(response);
      setState("streaming from the service");
      return readStream(response).then(function () { return response; }, function (err) {
        if (ctl.signal.aborted) return null;
        root.dataset.streamLost = "1";
        show(el.error, "The stream was lost: " + err.message + " Following the run through the mirror.");
        return response;
      });
    }, function (err) {
      if (!ctl.signal.aborted) show(errorNode || el.error, "The request failed: " + err.message);
      return null;
    }).then(function (response) {
      if (!response || ctl.signal.aborted) { if (!ctl.signal.aborted) setState("not streaming"); return; }
      if (!finished && !root.dataset.streamLost) {
        root.dataset.streamLost = "1";
        show(el.error, "The stream was lost before the run finished. Following the run through the mirror.");
      }
      if (root.dataset.streamLost && runId) return watch(runId);
      setState(endState());
    });
  }

  function endState() {
    if (!run) return "stream ended";
    if (isTerminal(run.status)) return "finished";
    return run.status === "requires_action" ? "waiting for tool outputs" : "stream ended";
  }

  /* GET the mirror's event feed for a run (any run, also one the poller follows). Reconnects if it drops. */
  function watch(id) {
    stopStream();
    var ctl = controller = new AbortController();
    finished = false;
    setState("following the mirror");
    return fetch(url("events", id), { credentials: "same-origin", signal: ctl.signal, headers: { "Accept": "text/event-stream" } })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (!response.ok || type.indexOf("text/event-stream") !== 0) {
          return errorFromResponse(response).then(function (message) { show(el.error, message); finished = true; });
        }
        watchTries = 0;
        return readStream(response);
      })
      .catch(function () { /* dropped: reconnect below */ })
      .then(function () {
        if (ctl.signal.aborted) return;
        if (finished) { setState(run && isTerminal(run.status) ? "finished" : "not streaming"); return; }
        watchTries += 1;
        setState("reconnecting to the mirror");
        if (watchTries <= 30) setTimeout(function () { if (controller === ctl) watch(id); }, Math.min(500 * watchTries, 5000));
      });
  }

  // --- actions ------------------------------------------------------------------------------------------------

  function setStartEnabled(enabled) {
    var button = document.getElementById("start-run-button");
    if (button) button.disabled = !enabled;
  }

  if (el.startForm) {
    el.startForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var form = new FormData(el.startForm);
      var text = String(form.get("content") || "");
      show(el.startError, "");
      setStartEnabled(false);
      el.messages.textContent = "";
      el.steps.textContent = "";
      run = null;
      relay(el.startForm.action, { method: "POST", body: form }, el.startError, function (response) {
        var mine = messageItem(null, "user");
        mine.querySelector(".text").textContent = text;
        el.startForm.querySelector("[name=content]").value = "";
      }).then(function () {
        if (!run || isTerminal(run.status)) setStartEnabled(true);
      });
    });
  }

  if (el.toolForm) {
    el.toolForm.addEventListener("submit", function (event) {
      event.preventDefault();
      if (!runId) return;
      var outputs = [];
      el.toolCalls.querySelectorAll("textarea").forEach(function (area) {
        outputs.push({ tool_call_id: area.name, output: area.value });
      });
      el.toolForm.querySelector("button").disabled = true;
      relay(url("tool_outputs", runId), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ tool_outputs: outputs })
      }).then(function () {
        if (run && run.status === "requires_action") el.toolForm.querySelector("button").disabled = false;
      });
    });
  }

  if (el.cancel) {
    el.cancel.addEventListener("click", function () {
      if (!runId) return;
      el.cancel.disabled = true;
      fetch(url("cancel", runId), { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() } })
        .then(function (response) {
          return response.json().then(function (body) {
            if (!response.ok) { show(el.error, (body.error && body.error.message) || "Cancel failed."); return; }
            setRun(body);
          });
        }, function (err) { show(el.error, "Cancel failed: " + err.message); })
        .then(function () { el.cancel.disabled = false; });
    });
  }

  if (runId) watch(runId);
})();
