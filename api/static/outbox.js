// Shared by the pages: calls to outbox's JSON API with the session, local times, small DOM
// builders, problems said beside their fields, and the staging banner.
"use strict";

// base.html loads this on every signed-in screen (for the staging banner); a page that loads
// it again as well gets the same Outbox, not a second one.
var Outbox = window.Outbox || makeOutbox();

function makeOutbox() {
  const CSRF_HEADER = "X-CSRF-Token";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function signInAgain() {
    const next = window.location.pathname + window.location.search;
    window.location.assign("/signin?next=" + encodeURIComponent(next));
  }

  function problemOf(response) {
    return { detail: `${response.status} ${response.statusText}`.trim(), field: null };
  }

  // One call to the API: resolves to {ok, status, data}; never throws. Every change carries
  // the session's CSRF token. A 401 means the session ended: back to the sign-in page.
  async function api(method, url, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers[CSRF_HEADER] = csrfToken();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
    } catch (error) {
      const detail = `outbox could not be reached (${error.message})`;
      return { ok: false, status: 0, data: { detail, field: null } };
    }
    if (response.status === 401) signInAgain();
    const data = await response.json().catch(() => problemOf(response));
    return { ok: response.ok, status: response.status, data };
  }

  const SAME_DAY = { timeStyle: "short" };
  const SAME_YEAR = { month: "short", day: "numeric", hour: "numeric", minute: "2-digit" };
  const OTHER_YEAR = { dateStyle: "medium", timeStyle: "short" };
  const SAME_DAY_SECONDS = { timeStyle: "medium" };
  const EXACT = { dateStyle: "medium", timeStyle: "medium" };

  function formatFor(date, style) {
    const today = date.toDateString() === new Date().toDateString();
    if (style === "exact") return EXACT;
    if (style === "seconds") return today ? SAME_DAY_SECONDS : EXACT;
    if (today) return SAME_DAY;
    return date.getFullYear() === new Date().getFullYear() ? SAME_YEAR : OTHER_YEAR;
  }

  // Seconds since the epoch, as the API gives them, in the reader's local time. Styles:
  // "short": the time alone today, the date without the year this year; "seconds": the
  // same with seconds, and the full date unless today; "exact": date and time to the second.
  function localTime(seconds, style = "short") {
    const date = new Date(seconds * 1000);
    return date.toLocaleString(undefined, formatFor(date, style));
  }

  // A <time> element showing the local time, with the full date and time as its tooltip.
  function timeElement(seconds, style = "short") {
    const element = document.createElement("time");
    if (seconds === null || seconds === undefined) return element;
    const date = new Date(seconds * 1000);
    element.dateTime = date.toISOString();
    element.textContent = localTime(seconds, style);
    element.title = date.toString();
    return element;
  }

  // Show a message in a role="status" region; kind is "ok", "fail", "busy" or "".
  function say(region, text, kind = "") {
    region.textContent = text;
    region.className = "message" + (kind ? " " + kind : "");
  }

  // ---- small DOM builders -------------------------------------------------------------

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

  // A status as a coloured label ("partially_sent" reads "partially sent").
  function badge(status) {
    return element("span", `badge status-${status}`, String(status).replace("_", " "));
  }

  // A button that does something on the page (type "button": it submits no form).
  function button(text, onClick, className = "small") {
    const node = element("button", className, text);
    node.type = "button";
    node.addEventListener("click", () => onClick(node));
    return node;
  }

  // A table's body shows these rows; when there are none, the "nothing yet" note instead (and
  // the table, with its header, goes, when given).
  function showRows(body, rows, empty, table) {
    body.replaceChildren(...rows);
    empty.hidden = rows.length > 0;
    if (table) table.hidden = rows.length === 0;
  }

  // ---- problems said beside their fields ----------------------------------------------

  // The problems of an error answer, each {field, detail}: a 422 lists them in "errors".
  function problemsOf(problem) {
    return problem.errors || [{ field: problem.field, detail: problem.detail }];
  }

  function describedBy(control, id, on) {
    const ids = new Set((control.getAttribute("aria-describedby") || "").split(/\s+/));
    ids.delete("");
    if (on) ids.add(id);
    else ids.delete(id);
    if (ids.size) control.setAttribute("aria-describedby", [...ids].join(" "));
    else control.removeAttribute("aria-describedby");
  }

  // Say a problem in a field's error element, after any other of the same field (two wrong
  // addresses are both named); the control is marked invalid and described by it, so that a
  // screen reader reads the problem with the field.
  function markField(control, error, text) {
    error.textContent = error.hidden ? text : `${error.textContent}; ${text}`;
    error.hidden = false;
    control.setAttribute("aria-invalid", "true");
    describedBy(control, error.id, true);
  }

  function unmarkField(control, error) {
    error.hidden = true;
    error.textContent = "";
    control.removeAttribute("aria-invalid");
    describedBy(control, error.id, false);
  }

  // The keyboard goes to the first marked field (of a marked group of choices, its first).
  function focusFirstMarked(container) {
    const first = container.querySelector('[aria-invalid="true"]');
    if (first) (first.querySelector("input") || first).focus();
  }

  // An action's failure, in region: "what: check the marked field." when showProblems (given
  // the answer's problems, it returns how many it said beside their fields) said some, else
  // "what: " and the answer's detail.
  function sayFailed(region, what, response, showProblems) {
    const problem = response.data || {};
    const marked = response.status === 422 && showProblems(problemsOf(problem)) > 0;
    const why = marked ? "check the marked field." : problem.detail || problem.message;
    say(region, `${what}: ${why}`, "fail");
  }

  // ---- the staging banner, on every screen ------------------------------------------

  // The saved delivery mode, while it is not "deliver": nothing leaves outbox (capture), or
  // everything goes to the redirect addresses (redirect). Every screen says so, so that
  // nobody takes a staging outbox for one that delivers.
  let stagingTicket = 0;

  function renderStaging(banner, settings) {
    const mode = (settings && settings.delivery_mode) || "deliver";
    banner.hidden = mode === "deliver";
    banner.dataset.mode = mode;
    if (mode === "deliver") {
      banner.replaceChildren();
      return;
    }
    const what =
      mode === "capture"
        ? "nothing is sent"
        : `every e-mail goes to ${(settings.redirect_to || []).join(", ") || "(no address)"}`;
    const title = document.createElement("strong");
    title.textContent = `Staging mode: ${mode}`;
    const text = document.createElement("span");
    text.append(title, ` — ${what}`);
    banner.replaceChildren(text);
    if (window.location.pathname !== "/settings/mail") {
      const change = document.createElement("a");
      change.href = "/settings/mail#delivery_mode";
      change.textContent = "Change in Mail Settings";
      banner.append(" ", change);
    }
  }

  // Show the mode of these settings (as GET /api/settings/mail answers them), or, without
  // them, read the saved ones. An answer overtaken by a newer call is dropped.
  async function showStaging(settings) {
    const banner = document.getElementById("staging-banner");
    if (!banner) return;
    const ticket = ++stagingTicket;
    if (settings !== undefined) {
      renderStaging(banner, settings);
      return;
    }
    const response = await api("GET", "/api/settings/mail");
    if (ticket !== stagingTicket) return;
    // 404: nothing saved yet, so the default mode (deliver).
    if (response.ok || response.status === 404) {
      renderStaging(banner, response.ok ? response.data : null);
    }
  }

  showStaging();

  return {
    api,
    localTime,
    timeElement,
    say,
    element,
    cell,
    badge,
    button,
    showRows,
    markField,
    unmarkField,
    focusFirstMarked,
    sayFailed,
    showStaging,
  };
}
