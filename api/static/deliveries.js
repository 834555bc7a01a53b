// The Deliveries page: recent deliveries (newest change first), one delivery's recipients and
// attempts (and, captured in staging, its message), Retry for the failed ones and Cancel for
// those not sent yet. It refreshes itself while some are still under way.
"use strict";

(() => {
  const URL_EMAILS = "/api/emails";
  const PAGE_SIZE = 50;
  const MAX_PAGE = 200; // the API's largest page
  const REFRESH_MS = 1500;
  // A scheduled delivery is looked at again when its time comes, at the latest this often.
  const SCHEDULED_REFRESH_MS = 60_000;
  const UNDER_WAY = new Set(["queued", "sending", "retrying", "waiting"]);
  const RETRYABLE = new Set(["failed", "partially_sent"]);
  // Nothing of these is being sent: DELETE /api/emails/{id} makes them cancelled.
  const CANCELLABLE = new Set(["scheduled", "queued", "retrying", "waiting"]);

  const $ = (id) => document.getElementById(id);
  const layout = $("deliveries");
  const rows = $("rows");
  const listStatus = $("list-status");
  const filter = $("status-filter");
  const loadMore = $("load-more");
  const detail = $("detail");

  // ticket: the latest list request; an answer to an older one (a refresh overtaken by a
  // filter change or "Load more") is dropped.
  // messageOf: the delivery whose captured message the detail panel shows (it never changes,
  // so a refresh does not load it again).
  const state = {
    items: [],
    nextCursor: null,
    openId: null,
    timer: null,
    ticket: 0,
    loadFailed: false,
    messageOf: null,
  };

  // ---- small builders ---------------------------------------------------------------

  const { element, cell, badge, button } = Outbox;

  function statusLabel(status) {
    return String(status).replace("_", " ");
  }

  function reply(code, text) {
    const said = (part) => part !== null && part !== undefined && part !== "";
    return [code, text].filter(said).join(" ");
  }

  function subjectOf(item) {
    return item.subject || "(no subject)";
  }

  // ---- the list ---------------------------------------------------------------------

  // The last error, cut to two lines (all of it in the tooltip and the detail panel).
  function lastError(item) {
    if (!item.last_error) return [];
    const text = element("span", "truncate", item.last_error);
    text.title = item.last_error;
    return [text];
  }

  // A waiting delivery is no failure: it waits for the sending limit or a provider's pause.
  function waitingNote(item) {
    if (item.status !== "waiting" || !item.waiting_for) return [];
    const note = element("span", "meta waiting", `waiting for ${item.waiting_for}`);
    if (item.next_attempt_at) {
      note.append(", until ", Outbox.timeElement(item.next_attempt_at, "seconds"));
    }
    return [note];
  }

  // When a scheduled delivery is published (by Redis' clock; this is the reader's).
  function scheduledNote(item) {
    if (item.status !== "scheduled" || !item.send_at) return [];
    const note = element("span", "meta scheduled", "scheduled for ");
    note.append(Outbox.timeElement(item.send_at));
    return [note];
  }

  // In redirect mode (staging) it went to these instead of its recipients.
  function redirectNote(item) {
    const to = item.redirected_to || [];
    if (!to.length) return [];
    return [element("span", "meta redirected", `redirected to ${to.join(", ")}`)];
  }

  // data-action: which button of the row had the focus, to give it back after a refresh.
  function actionButton(label, action, onClick) {
    const node = button(label, onClick);
    node.dataset.action = action;
    return node;
  }

  function rowFor(item) {
    const tr = element("tr");
    tr.dataset.id = item.id;
    if (item.id === state.openId) tr.classList.add("selected");

    const open = button(subjectOf(item), () => openDetail(item.id), "link");
    open.dataset.action = "open";
    open.setAttribute("aria-controls", "detail");

    const actions = cell("");
    actions.classList.add("actions-cell");
    if (RETRYABLE.has(item.status)) {
      actions.append(actionButton("Retry", "retry", (clicked) => retryDelivery(item, clicked)));
    }
    if (CANCELLABLE.has(item.status)) {
      actions.append(actionButton("Cancel", "cancel", (clicked) => cancelDelivery(item, clicked)));
    }

    const notes = [...waitingNote(item), ...scheduledNote(item), ...redirectNote(item)];
    tr.append(
      cell("Subject", open),
      cell("Status", badge(item.status), ...notes),
      cell("Updated", Outbox.timeElement(item.updated_at)),
      cell("Attempts", String(item.attempt_count)),
      cell("Last error", ...lastError(item)),
      actions,
    );
    tr.cells[3].classList.add("number");
    return tr;
  }

  // Re-draw the rows, keeping the keyboard focus on the same button of the same delivery (or,
  // when that button went, e.g. Cancel once cancelled, on the delivery's subject).
  function renderRows() {
    const focused = document.activeElement;
    const row = focused && focused.closest ? focused.closest("tr[data-id]") : null;
    const keep = row ? { id: row.dataset.id, action: focused.dataset.action } : null;
    Outbox.showRows(rows, state.items.map(rowFor), $("empty"));
    $("empty").textContent = filter.value
      ? `No ${statusLabel(filter.value)} deliveries.`
      : "No deliveries yet.";
    loadMore.hidden = !state.nextCursor;
    if (keep) {
      const row = `tr[data-id="${CSS.escape(keep.id)}"]`;
      const again =
        rows.querySelector(`${row} [data-action="${keep.action}"]`) ||
        rows.querySelector(`${row} [data-action="open"]`);
      if (again) again.focus();
    }
  }

  function listUrl(limit, cursor) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (filter.value) query.set("status", filter.value);
    if (cursor) query.set("cursor", cursor);
    return `${URL_EMAILS}?${query}`;
  }

  // Soon while some are under way; else at the earliest scheduled time (a little after it,
  // so that the sweeper has published it), though at least every minute.
  function scheduleRefresh() {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.items.some((item) => UNDER_WAY.has(item.status))) {
      state.timer = setTimeout(refresh, REFRESH_MS);
      return;
    }
    const due = state.items
      .filter((item) => item.status === "scheduled" && item.send_at)
      .map((item) => item.send_at * 1000 - Date.now() + REFRESH_MS);
    if (due.length) {
      const wait = Math.min(Math.max(Math.min(...due), REFRESH_MS), SCHEDULED_REFRESH_MS);
      state.timer = setTimeout(refresh, wait);
    }
  }

  // The first page again, as long as what is shown (so "Load more" pages are kept).
  async function refresh() {
    const ticket = ++state.ticket;
    const limit = Math.min(Math.max(state.items.length, PAGE_SIZE), MAX_PAGE);
    const response = await Outbox.api("GET", listUrl(limit));
    if (ticket !== state.ticket) return;
    if (!response.ok) {
      Outbox.say(listStatus, `Deliveries could not be loaded: ${response.data.detail}`, "fail");
      state.loadFailed = true;
      return;
    }
    // Only the list's own failure goes once it loads again; an action's outcome stays.
    if (state.loadFailed) Outbox.say(listStatus, "");
    state.loadFailed = false;
    state.items = response.data.items;
    state.nextCursor = response.data.next_cursor;
    renderRows();
    if (state.openId) await showDetail(state.openId);
    scheduleRefresh();
  }

  async function loadNextPage() {
    const ticket = ++state.ticket;
    loadMore.disabled = true;
    const response = await Outbox.api("GET", listUrl(PAGE_SIZE, state.nextCursor));
    loadMore.disabled = false;
    if (ticket !== state.ticket) return;
    if (!response.ok) {
      const why = response.data.detail;
      Outbox.say(listStatus, `More deliveries could not be loaded: ${why}`, "fail");
      return;
    }
    const known = new Set(state.items.map((item) => item.id));
    state.items.push(...response.data.items.filter((item) => !known.has(item.id)));
    state.nextCursor = response.data.next_cursor;
    renderRows();
  }

  // A button disabled while its request runs loses the keyboard focus: give it back to the
  // same delivery, unless the reader has moved on meanwhile.
  function refocus(id, action) {
    const moved = document.activeElement && document.activeElement !== document.body;
    if (moved) return;
    const row = `tr[data-id="${CSS.escape(id)}"]`;
    const target =
      rows.querySelector(`${row} [data-action="${action}"]`) ||
      rows.querySelector(`${row} [data-action="open"]`);
    if (target) target.focus();
  }

  async function retryDelivery(item, clicked) {
    clicked.disabled = true;
    const url = `${URL_EMAILS}/${encodeURIComponent(item.id)}/retry`;
    const response = await Outbox.api("POST", url);
    if (response.ok) {
      Outbox.say(listStatus, `“${subjectOf(item)}” is queued to be sent again.`, "ok");
    } else {
      clicked.disabled = false;
      Outbox.say(listStatus, `Retry failed: ${response.data.detail}`, "fail");
    }
    await refresh();
    refocus(item.id, "retry");
  }

  // Cancel a delivery not sent yet; one that is being sent, or final, by now answers 409
  // saying why, and that is shown.
  async function cancelDelivery(item, clicked) {
    clicked.disabled = true;
    const response = await Outbox.api("DELETE", `${URL_EMAILS}/${encodeURIComponent(item.id)}`);
    if (response.ok) {
      Outbox.say(listStatus, `“${subjectOf(item)}” is cancelled: it will not be sent.`, "ok");
    } else {
      clicked.disabled = false;
      Outbox.say(listStatus, `Cancel failed: ${response.data.detail}`, "fail");
    }
    await refresh();
    refocus(item.id, "cancel");
  }

  // ---- one delivery -----------------------------------------------------------------

  function fact(list, term, ...value) {
    list.append(element("dt", "", term), element("dd"));
    list.lastChild.append(...value);
  }

  function renderFacts(record) {
    const facts = $("detail-facts");
    facts.replaceChildren();
    fact(facts, "Status", badge(record.status));
    if (record.status === "waiting" && record.waiting_for) {
      fact(facts, "Waiting for", element("span", "wrap", record.waiting_for));
    }
    if (record.send_at) {
      const term = record.status === "scheduled" ? "Scheduled for" : "Send at";
      fact(facts, term, Outbox.timeElement(record.send_at, "exact"));
    }
    if (record.redirected_to && record.redirected_to.length) {
      fact(facts, "Redirected to", element("span", "wrap", record.redirected_to.join(", ")));
    }
    fact(facts, "Created", Outbox.timeElement(record.created_at, "exact"));
    const creator = record.created_by ? `the key ${record.created_by}` : "outbox (CLI or Python)";
    fact(facts, "Created by", element("span", "", creator));
    fact(facts, "Updated", Outbox.timeElement(record.updated_at, "exact"));
    // A scheduled delivery's first attempt is at its scheduled time, shown above.
    if (record.next_attempt_at && record.status !== "scheduled") {
      fact(facts, "Next attempt", Outbox.timeElement(record.next_attempt_at, "exact"));
    }
    fact(facts, "Attempts", String(record.attempt_count));
    if (record.last_error) fact(facts, "Last error", element("span", "wrap", record.last_error));
    fact(facts, "Message-ID", element("code", "", record.message_id));
    fact(facts, "Delivery ID", element("code", "", record.id));
    if (record.idempotency_key) {
      fact(facts, "Idempotency key", element("code", "", record.idempotency_key));
    }
  }

  function renderRecipients(record) {
    $("detail-recipients").replaceChildren(
      ...record.recipients.map((recipient) => {
        const tr = element("tr");
        tr.append(
          cell("Address", recipient.address),
          cell("Status", badge(recipient.status)),
          cell("Server reply", element("span", "wrap", reply(recipient.code, recipient.reply))),
        );
        return tr;
      }),
    );
  }

  function renderAttempts(record) {
    Outbox.showRows(
      $("detail-attempts"),
      record.attempts.map((attempt) => {
        const tr = element("tr");
        const took = element("span", "meta", `${Math.round(attempt.duration_ms)} ms`);
        const said = reply(attempt.code, attempt.reply) || attempt.error || "";
        tr.append(
          cell("#", String(attempt.number)),
          cell("Started", Outbox.timeElement(attempt.started_at, "seconds"), took),
          cell("Outcome", badge(attempt.outcome)),
          cell("Server reply or error", element("span", "wrap", said)),
        );
        tr.cells[0].classList.add("number");
        return tr;
      }),
      $("detail-no-attempts"),
      $("detail-attempts-table"),
    );
  }

  // ---- a captured message -----------------------------------------------------------

  function messageUrl(id, part = "") {
    return `${URL_EMAILS}/${encodeURIComponent(id)}/message${part}`;
  }

  function clearMessage() {
    state.messageOf = null;
    $("detail-message").hidden = true;
    $("message-text").textContent = "";
    $("message-headers").replaceChildren();
    $("message-attachments").replaceChildren();
    $("message-attachments-box").hidden = true;
    // about:blank: the frame leaves the last message's HTML.
    $("message-html").src = "about:blank";
    $("message-html").hidden = true;
  }

  // Only text goes into this page (textContent); the HTML part is loaded by a sandboxed frame
  // from its own URL, which the server answers with a policy forbidding scripts and remote
  // loads.
  async function showMessage(record) {
    if (record.status !== "captured") {
      if (state.messageOf) clearMessage();
      return;
    }
    if (state.messageOf === record.id) return;
    clearMessage();
    state.messageOf = record.id;
    $("detail-message").hidden = false;
    $("message-download").href = messageUrl(record.id);
    $("message-download").setAttribute("download", `${record.id}.eml`);
    const status = $("message-status");
    Outbox.say(status, "Loading the message…", "busy");
    const response = await Outbox.api("GET", messageUrl(record.id, "/parts"));
    if (state.messageOf !== record.id) return; // another delivery was opened meanwhile
    if (!response.ok) {
      Outbox.say(status, `The message could not be loaded: ${response.data.detail}`, "fail");
      return;
    }
    Outbox.say(status, "");
    const parts = response.data;
    const headers = $("message-headers");
    // Every header, in order, as [name, value].
    for (const [name, value] of parts.headers || []) {
      fact(headers, name, element("span", "wrap", value));
    }
    const hasText = parts.text !== null && parts.text !== undefined && parts.text !== "";
    $("message-text").textContent = hasText ? parts.text : "";
    $("message-text").hidden = !hasText;
    $("message-no-text").hidden = hasText;
    const hasHtml = Boolean(parts.html);
    $("message-html").hidden = !hasHtml;
    $("message-no-html").hidden = hasHtml;
    if (hasHtml) $("message-html").src = messageUrl(record.id, "/html");
    showAttachments(parts.attachments || []);
  }

  // Their names and sizes only: the attachments themselves are in the .eml.
  function showAttachments(attachments) {
    $("message-attachments-box").hidden = attachments.length === 0;
    $("message-attachments").replaceChildren(
      ...attachments.map((each) => {
        const item = element("li", "", each.name || "(no name)");
        const kb = Math.max(1, Math.round(each.size / 1024));
        item.append(element("span", "meta", ` ${each.content_type}, ${kb} KB`));
        return item;
      }),
    );
  }

  async function showDetail(id) {
    const response = await Outbox.api("GET", `${URL_EMAILS}/${encodeURIComponent(id)}`);
    if (!response.ok) {
      Outbox.say(listStatus, `That delivery could not be loaded: ${response.data.detail}`, "fail");
      return false;
    }
    const record = response.data;
    $("detail-heading").textContent = subjectOf(record);
    renderFacts(record);
    renderRecipients(record);
    renderAttempts(record);
    showMessage(record);
    return true;
  }

  function markSelected() {
    for (const tr of rows.rows) tr.classList.toggle("selected", tr.dataset.id === state.openId);
  }

  async function openDetail(id) {
    state.openId = id;
    markSelected();
    if (!(await showDetail(id))) return;
    detail.hidden = false;
    layout.classList.add("has-detail");
    $("detail-heading").focus();
  }

  function closeDetail() {
    const id = state.openId;
    state.openId = null;
    clearMessage();
    detail.hidden = true;
    layout.classList.remove("has-detail");
    markSelected();
    const opener = id && rows.querySelector(`tr[data-id="${CSS.escape(id)}"] .link`);
    if (opener) opener.focus();
  }

  // ---- start ------------------------------------------------------------------------

  filter.addEventListener("change", () => {
    Outbox.say(listStatus, "");
    state.items = [];
    refresh();
  });
  $("refresh").addEventListener("click", refresh);
  loadMore.addEventListener("click", loadNextPage);
  $("close-detail").addEventListener("click", closeDetail);
  detail.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDetail();
  });
  refresh();
})();
