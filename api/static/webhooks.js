// The Webhooks page: the registered endpoints (add, with the signing secret shown once;
// remove), and the recent webhook deliveries with every attempt and the endpoint's answer.
// It refreshes itself: soon while some deliveries are under way, else now and then.
"use strict";

(() => {
  const URL_WEBHOOKS = "/api/webhooks";
  const EVENTS = ["sent", "partially_sent", "failed", "cancelled", "captured"];
  const REFRESH_MS = 2000;
  const IDLE_REFRESH_MS = 15_000; // new events come without anyone on this page asking
  // Looked at again while one is pending or sending, or retrying within a minute; a retry
  // hours away is shown when the reader refreshes.
  const SOON_SECONDS = 60;

  const { element, cell, badge, button } = Outbox;
  const $ = (id) => document.getElementById(id);
  const form = $("add-endpoint");
  const endpointsStatus = $("endpoints-status");
  const deliveriesStatus = $("deliveries-status");
  const keySelect = $("key");

  const state = { endpoints: [], timer: null, ticket: 0, open: new Set() };

  function urlOf(endpointId) {
    const found = state.endpoints.find((endpoint) => endpoint.id === endpointId);
    return found ? found.url : endpointId;
  }

  // ---- endpoints ----------------------------------------------------------------------

  function endpointRow(endpoint) {
    const tr = element("tr");
    tr.dataset.id = endpoint.id;
    const remove = button("Remove", (clicked) => removeEndpoint(endpoint, clicked));
    remove.setAttribute("aria-label", `Remove ${endpoint.url}`);
    const actions = cell("", remove);
    actions.classList.add("actions-cell");
    tr.append(
      cell("URL", element("code", "wrap", endpoint.url), element("span", "meta", endpoint.id)),
      cell("Events", element("span", "wrap", endpoint.events.join(", "))),
      cell("Key", element("span", "", endpoint.key || "every key")),
      cell("Created", Outbox.timeElement(endpoint.created_at)),
      actions,
    );
    return tr;
  }

  async function loadEndpoints() {
    const response = await Outbox.api("GET", URL_WEBHOOKS);
    if (!response.ok) {
      Outbox.say(endpointsStatus, `Endpoints could not be loaded: ${response.data.detail}`, "fail");
      return;
    }
    state.endpoints = response.data;
    const rows = state.endpoints.map(endpointRow);
    Outbox.showRows($("endpoint-rows"), rows, $("no-endpoints"), $("endpoints-table"));
  }

  async function removeEndpoint(endpoint, remove) {
    if (!window.confirm(`Remove ${endpoint.url}? Nothing more is sent to it.`)) return;
    remove.disabled = true;
    const response = await Outbox.api("DELETE", `${URL_WEBHOOKS}/${endpoint.id}`);
    if (response.ok) {
      Outbox.say(endpointsStatus, `${endpoint.url} is removed: nothing more is sent to it.`, "ok");
    } else {
      remove.disabled = false;
      Outbox.say(endpointsStatus, `Remove failed: ${response.data.detail}`, "fail");
    }
    await loadEndpoints();
    $("add").focus();
  }

  // The API keys an endpoint may be tied to, by name.
  async function loadKeys() {
    const response = await Outbox.api("GET", "/api/keys");
    if (!response.ok) return; // the select keeps "Every key"
    const names = response.data.map((key) => key.name).sort();
    keySelect.replaceChildren(
      new Option("Every key", ""),
      ...names.map((name) => new Option(name, name)),
    );
  }

  function eventChoices() {
    $("event-choices").replaceChildren(
      ...EVENTS.map((event) => {
        const label = element("label", "choice");
        const box = element("input");
        box.type = "checkbox";
        box.name = "events";
        box.value = event;
        box.checked = true;
        label.append(box, ` ${event.replace("_", " ")}`);
        return label;
      }),
    );
  }

  // ---- adding one ---------------------------------------------------------------------

  const FIELDS = { url: $("url"), key: keySelect, events: $("event-choices") };

  function clearErrors() {
    for (const [field, control] of Object.entries(FIELDS)) {
      Outbox.unmarkField(control, $(`error-${field}`));
    }
  }

  // A 422 names its field ("url", "events", "key"; pydantic's "events[0]" is the events):
  // the message goes beside it.
  function showProblems(problems) {
    let shown = 0;
    for (const each of problems) {
      const field = (each.field || "").replace(/\[\d+\]$/, "");
      if (!(field in FIELDS)) continue;
      Outbox.markField(FIELDS[field], $(`error-${field}`), each.detail);
      shown += 1;
    }
    Outbox.focusFirstMarked(form);
    return shown;
  }

  function showSecret(endpoint) {
    $("new-secret-url").textContent = endpoint.url;
    $("new-secret-value").textContent = endpoint.secret;
    $("new-secret").hidden = false;
    $("new-secret-value").focus();
  }

  function hideSecret() {
    $("new-secret-value").textContent = "";
    $("new-secret").hidden = true;
  }

  async function copySecret() {
    const secret = $("new-secret-value").textContent;
    try {
      await navigator.clipboard.writeText(secret);
      Outbox.say(endpointsStatus, "The signing secret is copied.", "ok");
    } catch {
      // No clipboard (e.g. not a secure origin): select it for the reader to copy.
      window.getSelection().selectAllChildren($("new-secret-value"));
      Outbox.say(endpointsStatus, "Copy the selected secret (Ctrl+C).", "");
    }
  }

  async function addEndpoint(event) {
    event.preventDefault();
    clearErrors();
    hideSecret();
    const checked = form.querySelectorAll('input[name="events"]:checked');
    const events = [...checked].map((box) => box.value);
    const body = { url: $("url").value.trim(), events, key: keySelect.value || null };
    $("add").disabled = true;
    Outbox.say(endpointsStatus, "Adding…", "busy");
    const response = await Outbox.api("POST", URL_WEBHOOKS, body);
    $("add").disabled = false;
    if (!response.ok) {
      Outbox.sayFailed(endpointsStatus, "The endpoint was not added", response, showProblems);
      return;
    }
    form.reset();
    eventChoices();
    Outbox.say(endpointsStatus, `${response.data.url} is added.`, "ok");
    await loadEndpoints();
    showSecret(response.data);
  }

  // ---- webhook deliveries -------------------------------------------------------------

  // One attempt in a few words: the HTTP status and the start of the answer, or the error.
  function answerOf(attempt) {
    const parts = [];
    if (attempt.status_code !== undefined && attempt.status_code !== null) {
      parts.push(String(attempt.status_code));
    }
    if (attempt.error) parts.push(attempt.error);
    else if (attempt.response) parts.push(attempt.response);
    const said = parts.join(": ");
    // The answer came after its lease lapsed and another worker had taken the delivery over.
    return attempt.superseded ? `${said} (late: not counted)` : said;
  }

  function attemptsList(delivery) {
    const details = element("details", "attempts");
    details.open = state.open.has(delivery.id);
    details.addEventListener("toggle", () => {
      if (details.open) state.open.add(delivery.id);
      else state.open.delete(delivery.id);
    });
    const summary = element("summary", "", String(delivery.attempt_count));
    summary.setAttribute("aria-label", `${delivery.attempt_count} attempts: show each`);
    const list = element("ol", "attempt-list");
    for (const attempt of delivery.attempts) {
      const item = element("li");
      item.append(
        Outbox.timeElement(attempt.started_at, "seconds"),
        element("span", "meta", `${Math.round(attempt.duration_ms)} ms`),
        element("span", "wrap", answerOf(attempt)),
      );
      list.append(item);
    }
    details.append(summary, list);
    return delivery.attempts.length ? details : element("span", "", "0");
  }

  function nextNote(delivery) {
    if (delivery.status !== "retrying" || !delivery.next_attempt_at) return [];
    const note = element("span", "meta", "next ");
    note.append(Outbox.timeElement(delivery.next_attempt_at, "seconds"));
    return [note];
  }

  function deliveryRow(delivery) {
    const tr = element("tr");
    tr.dataset.id = delivery.id;
    tr.append(
      cell("Event", badge(delivery.type), element("span", "meta", delivery.id)),
      cell("Delivery", element("code", "wrap", delivery.delivery_id)),
      cell("Endpoint", element("span", "wrap", urlOf(delivery.endpoint) || delivery.url)),
      cell("Status", badge(delivery.status), ...nextNote(delivery)),
      cell("Updated", Outbox.timeElement(delivery.updated_at)),
      cell("Attempts", attemptsList(delivery)),
      cell("Last answer", element("span", "truncate", delivery.last_result || "")),
    );
    tr.cells[5].classList.add("number");
    return tr;
  }

  function underWay(delivery, now) {
    if (delivery.status === "pending" || delivery.status === "sending") return true;
    return delivery.status === "retrying" && delivery.next_attempt_at - now < SOON_SECONDS;
  }

  async function loadDeliveries() {
    const ticket = ++state.ticket;
    const response = await Outbox.api("GET", `${URL_WEBHOOKS}/deliveries?limit=50`);
    if (ticket !== state.ticket) return;
    clearTimeout(state.timer);
    state.timer = setTimeout(loadDeliveries, IDLE_REFRESH_MS);
    if (!response.ok) {
      const why = response.data.detail;
      Outbox.say(deliveriesStatus, `Webhook deliveries could not be loaded: ${why}`, "fail");
      return;
    }
    Outbox.say(deliveriesStatus, "");
    const deliveries = response.data;
    Outbox.showRows(
      $("webhook-delivery-rows"),
      deliveries.map(deliveryRow),
      $("no-webhook-deliveries"),
      $("webhook-deliveries-table"),
    );
    const now = Date.now() / 1000;
    if (deliveries.some((delivery) => underWay(delivery, now))) {
      clearTimeout(state.timer);
      state.timer = setTimeout(loadDeliveries, REFRESH_MS);
    }
  }

  form.addEventListener("submit", addEndpoint);
  $("copy-secret").addEventListener("click", copySecret);
  $("dismiss-secret").addEventListener("click", () => {
    hideSecret();
    $("url").focus();
  });
  $("refresh").addEventListener("click", () => Promise.all([loadEndpoints(), loadDeliveries()]));
  eventChoices();
  loadKeys();
  loadEndpoints().then(loadDeliveries);
})();
