// tuneforge console playground: chat with one model, or two side by side, streamed token by token.
// Each column keeps its own Converse history (the answers differ); a message goes to every shown column
// at once. Model output and everything the user typed is added as text nodes, never as HTML.
//   POST /console/playground/converse-stream {"modelId", "request": <ConverseStream body>}
//   -> one JSON event per line: {"event": "contentBlockDelta" | "messageStop" | "metadata" | "exception", "data"}
"use strict";
(() => {
  const form = document.getElementById("playground");
  if (!form) return;
  const field = (id) => document.getElementById(id);
  const message = field("message");
  const send = field("send");
  const stop = field("stop");
  const compare = field("compare");
  const maxTokens = field("max-tokens");
  const columns = Array.from(form.querySelectorAll("[data-column]")).map((section) => ({
    section,
    title: section.querySelector(".column-title"),
    select: section.querySelector("select"),
    history: section.querySelector("ol.history"),
    error: section.querySelector(".error"),
    stats: section.querySelector(".stats"),
    messages: [],
    system: null,
  }));
  let running = null;

  const shown = () => columns.filter((column) => !column.section.hidden);
  const limitOf = (column) => {
    const option = column.select.selectedOptions[0];
    return option && !option.disabled ? parseInt(option.dataset.maxTokens, 10) : 0;
  };

  function describeModels() {
    columns.forEach((column) => {
      const option = column.select.selectedOptions[0];
      column.title.textContent = option ? option.textContent : "No model";
    });
    const limits = shown().map(limitOf).filter((limit) => limit > 0);
    if (!limits.length) return;
    const limit = Math.min(...limits);
    maxTokens.max = String(limit);
    field("max-tokens-hint").textContent =
      limits.length > 1 ? `1 to ${limit} (the smaller of the two models' limits).` : `1 to ${limit} for this model.`;
  }

  // Keep the newest text in view as a long conversation scrolls inside its column.
  const follow = (column) => {
    column.history.scrollTop = column.history.scrollHeight;
  };

  function turn(column, role, text) {
    const item = document.createElement("li");
    item.className = `turn ${role}`;
    const speaker = document.createElement("span");
    speaker.className = "speaker";
    speaker.textContent = { user: "You", assistant: "Model", system: "System" }[role];
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.append(speaker, body);
    column.history.append(item);
    follow(column);
    return body;
  }

  function inferenceConfig() {
    const config = {};
    // Sent as typed, so that the API (not the page) decides what is in range, with its own message.
    if (maxTokens.value.trim() !== "") config.maxTokens = Number(maxTokens.value);
    const temperature = field("temperature").value.trim();
    if (temperature !== "") config.temperature = Number(temperature);
    return config;
  }

  function handle(column, answer, event, outcome) {
    const data = event.data || {};
    if (event.event === "contentBlockDelta") {
      const text = (data.delta && data.delta.text) || "";
      answer.append(document.createTextNode(text));
      outcome.text += text;
      answer.dataset.chunks = String(parseInt(answer.dataset.chunks, 10) + 1);
      follow(column);
    } else if (event.event === "messageStop") {
      outcome.stopReason = data.stopReason;
    } else if (event.event === "metadata") {
      const usage = data.usage || {};
      const latency = data.metrics ? data.metrics.latencyMs : "?";
      column.stats.textContent =
        `${usage.inputTokens} tokens in, ${usage.outputTokens} out, ${latency} ms, stop: ${outcome.stopReason}`;
      column.stats.dataset.inputTokens = String(usage.inputTokens);
    } else if (event.event === "exception") {
      outcome.error = `${data.code}: ${data.message}`;
    }
  }

  async function ask(column, text, system, config, signal) {
    column.error.hidden = true;
    column.error.textContent = "";
    if (system !== column.system && system) turn(column, "system", system);
    column.system = system;
    turn(column, "user", text);
    const user = { role: "user", content: [{ text }] };
    const request = { messages: [...column.messages, user], inferenceConfig: config };
    if (system) request.system = [{ text: system }];
    const answer = turn(column, "assistant", "");
    answer.dataset.chunks = "0";
    answer.dataset.state = "streaming";
    const outcome = { text: "", stopReason: null, error: null };
    try {
      const response = await fetch("/console/playground/converse-stream", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": window.tf.csrf() },
        body: JSON.stringify({ modelId: column.select.value, request }),
        signal,
      });
      if (!response.ok) {
        outcome.error = (await response.text()).trim();
      } else {
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffered = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffered += decoder.decode(value, { stream: true });
          let newline;
          while ((newline = buffered.indexOf("\n")) >= 0) {
            const line = buffered.slice(0, newline);
            buffered = buffered.slice(newline + 1);
            if (line) handle(column, answer, JSON.parse(line), outcome);
          }
        }
      }
    } catch (error) {
      outcome.error = signal.aborted ? "Stopped before the answer was complete." : `The request failed: ${error}`;
    }
    if (outcome.error === null && outcome.text) {
      column.messages.push(user, { role: "assistant", content: [{ text: outcome.text }] });
      answer.dataset.state = "done";
      return;
    }
    // A turn without a whole answer is left out of the history the next message sends.
    answer.dataset.state = outcome.error === null ? "empty" : "failed";
    if (outcome.error !== null) {
      column.error.textContent = outcome.error;
      column.error.hidden = false;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = message.value;
    if (running || !text.trim()) return;
    const system = field("system").value.trim();
    const config = inferenceConfig();
    running = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    message.value = "";
    try {
      await Promise.all(shown().map((column) => ask(column, text, system, config, running.signal)));
    } finally {
      running = null;
      send.disabled = false;
      stop.disabled = true;
      message.focus();
    }
  });

  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", () => running && running.abort());
  field("new-chat").addEventListener("click", () => {
    columns.forEach((column) => {
      column.messages = [];
      column.system = null;
      column.history.replaceChildren();
      column.error.hidden = true;
      column.stats.textContent = "";
    });
    message.focus();
  });
  compare.addEventListener("change", () => {
    columns[1].section.hidden = !compare.checked;
    describeModels();
  });
  columns.forEach((column) => column.select.addEventListener("change", describeModels));
  describeModels();
})();
