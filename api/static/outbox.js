// Shared by the pages: calls to outbox's JSON API with the session, and local times.
"use strict";

const Outbox = (() => {
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

  return { api, localTime, timeElement, say };
})();
