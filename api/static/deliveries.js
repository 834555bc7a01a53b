// The Deliveries page: recent deliveries (newest change first), one delivery's recipients and
// attempts, and Retry for the failed ones. It refreshes itself while some are still under way.
"use strict";

(() => {
  const URL_EMAILS = "/api/emails";
  const PAGE_SIZE = 50;
  const MAX_PAGE = 200; // the API's largest page
  const REFRESH_MS = 1500;
  const UNDER_WAY = new Set(["queued", "sending", "retrying", "waiting"]);
  const RETRYABLE = new Set(["failed", "partially_sent"]);

  const $ = (id) => document.getElementById(id);
  const layout = $("deliveries");
  const rows = $("rows");
  const listStatus = $("list-status");
  const filter = $("status-filter");
  const loadMore = $("load-more");
  const detail = $("detail");

  // ticket: the latest list request; an answer to an older one (a refresh overtaken by a
  // filter change or "Load more") is dropped.
  const state = { items: [], nextCursor: null, openId: null, timer: null, ticket: 0 };

  // ---- small builders ---------------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // A table cell; its label heads the value when a narrow window shows rows as cards.
  // Several children are wrapped in one element so that they stay together there.
  function cell(label, ...children) {
    const td = element("td");
    td.dataset.label = label;
    if (children.length > 1) {
      const group = element("div");
      group.append(...children);
      td.append(group);
    } else td.append(...children);
    return td;
  }

  function statusLabel(status) {
    return String(status).replace("_", " ");
  }

  function badge(status) {
    return element("span", `badge status-${status}`, statusLabel(status));
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

  function rowFor(item) {
    const tr = element("tr");
    tr.dataset.id = item.id;
    if (item.id === state.openId) tr.classList.add("selected");

    const open = element("button", "link", subjectOf(item));
    open.type = "button";
    open.dataset.action = "open";
    open.setAttribute("aria-controls", "detail");
    open.addEventListener("click", () => openDetail(item.id));

    const actions = cell("");
    actions.classList.add("actions-cell");
    if (RETRYABLE.has(item.status)) {
      const retry = element("button", "small", "Retry");
      retry.type = "button";
      retry.dataset.action = "retry";
      retry.addEventListener("click", () => retryDelivery(item, retry));
      actions.append(retry);
    }

    tr.append(
      cell("Subject", open),
      cell("Status", badge(item.status), ...waitingNote(item)),
      cell("Updated", Outbox.timeElement(item.updated_at)),
      cell("Attempts", String(item.attempt_count)),
      cell("Last error", ...lastError(item)),
      actions,
    );
    tr.cells[3].classList.add("number");
    return tr;
  }

  // Re-draw the rows, keeping the keyboard focus on the same button of the same delivery.
  function renderRows() {
    const focused = document.activeElement;
    const row = focused && focused.closest ? focused.closest("tr[data-id]") : null;
    const keep = row ? { id: row.dataset.id, action: focused.dataset.action } : null;
    rows.replaceChildren(...state.items.map(rowFor));
    $("empty").hidden = state.items.length > 0;
    $("empty").textContent = filter.value
      ? `No ${statusLabel(filter.value)} deliveries.`
      : "No deliveries yet.";
    loadMore.hidden = !state.nextCursor;
    if (keep) {
      const again = rows.querySelector(
        `tr[data-id="${CSS.escape(keep.id)}"] [data-action="${keep.action}"]`,
      );
      if (again) again.focus();
    }
  }

  function listUrl(limit, cursor) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (filter.value) query.set("status", filter.value);
    if (cursor) query.set("cursor", cursor);
    return `${URL_EMAILS}?${query}`;
  }

  function scheduleRefresh() {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.items.some((item) => UNDER_WAY.has(item.status))) {
      state.timer = setTimeout(refresh, REFRESH_MS);
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
      return;
    }
    if (listStatus.classList.contains("fail")) Outbox.say(listStatus, "");
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

  async function retryDelivery(item, button) {
    button.disabled = true;
    const url = `${URL_EMAILS}/${encodeURIComponent(item.id)}/retry`;
    const response = await Outbox.api("POST", url);
    if (response.ok) {
      Outbox.say(listStatus, `“${subjectOf(item)}” is queued to be sent again.`, "ok");
    } else {
      button.disabled = false;
      Outbox.say(listStatus, `Retry failed: ${response.data.detail}`, "fail");
    }
    await refresh();
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
    fact(facts, "Created", Outbox.timeElement(record.created_at, "exact"));
    const creator = record.created_by ? `the key ${record.created_by}` : "outbox (CLI or Python)";
    fact(facts, "Created by", element("span", "", creator));
    fact(facts, "Updated", Outbox.timeElement(record.updated_at, "exact"));
    if (record.next_attempt_at) {
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
    $("detail-no-attempts").hidden = record.attempts.length > 0;
    $("detail-attempts-table").hidden = record.attempts.length === 0;
    $("detail-attempts").replaceChildren(
      ...record.attempts.map((attempt) => {
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
