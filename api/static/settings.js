// The Mail Settings page: fill the form from the saved settings (or the defaults), switch
// protocol, and test, save or discard what is in the form.
"use strict";

(() => {
  const URL_SETTINGS = "/api/settings/mail";
  const FIELDS = {
    smtp: ["server", "port", "username", "password", "tls", "accept_any_certificate"],
    oauth: ["instance", "api_url", "tenant", "client_id", "client_secret"],
  };
  const SECRET = { smtp: "password", oauth: "client_secret" };
  const KEEP_SECRET = "saved; leave empty to keep";

  const form = document.getElementById("mail-settings");
  const protocolSelect = document.getElementById("protocol");
  const result = document.getElementById("result");
  const savedMeta = document.getElementById("saved-meta");
  const buttons = form.querySelectorAll(".actions button");

  const state = { saved: null, defaults: { smtp: {}, oauth: {} } };

  const input = (name) => document.getElementById(name);

  // ---- filling the form -------------------------------------------------------------

  function setValue(name, value) {
    const element = input(name);
    if (element.type === "checkbox") element.checked = Boolean(value);
    else element.value = value === null || value === undefined ? "" : String(value);
  }

  // The values a protocol's fields start with: the saved ones when the saved settings are of
  // that protocol, else the defaults.
  function startingValues(protocol) {
    const saved = state.saved;
    return saved && saved.protocol === protocol ? saved : state.defaults[protocol];
  }

  function fillProtocol(protocol) {
    const values = startingValues(protocol);
    const secret = SECRET[protocol];
    for (const name of FIELDS[protocol]) setValue(name, name === secret ? "" : values[name]);
    input(secret).placeholder = values[`${secret}_set`] ? KEEP_SECRET : "";
  }

  function showProtocol(protocol) {
    protocolSelect.value = protocol;
    for (const group of form.querySelectorAll("[data-protocol]")) {
      group.hidden = group.dataset.protocol !== protocol;
    }
  }

  // The saved settings again (or a new form when nothing is saved).
  function resetForm() {
    const protocol = state.saved ? state.saved.protocol : "smtp";
    setValue("from_mailbox", state.saved ? state.saved.from_mailbox : "");
    fillProtocol(protocol === "smtp" ? "oauth" : "smtp");
    fillProtocol(protocol);
    showProtocol(protocol);
  }

  function showSavedMeta() {
    const saved = state.saved;
    if (!saved) {
      savedMeta.textContent = "Not saved yet";
      return;
    }
    savedMeta.replaceChildren(
      `Version ${saved.version} · saved `,
      Outbox.timeElement(saved.saved_at),
    );
  }

  // ---- reading the form -------------------------------------------------------------

  function portValue() {
    const raw = input("port").value.trim();
    return raw === "" ? null : Number(raw);
  }

  // The request body: the form's current values of the chosen protocol. An empty secret is
  // left out, so the saved one is kept (or used, for a test).
  function formBody() {
    const protocol = protocolSelect.value;
    const body = { protocol, from_mailbox: input("from_mailbox").value.trim() };
    for (const name of FIELDS[protocol]) {
      const element = input(name);
      if (element.type === "checkbox") body[name] = element.checked;
      else if (name === "port") body[name] = portValue();
      else if (name === SECRET[protocol]) {
        if (element.value !== "") body[name] = element.value;
      } else body[name] = element.value.trim();
    }
    return body;
  }

  // ---- errors next to their fields --------------------------------------------------

  function errorElement(field) {
    return document.getElementById(`error-${field}`);
  }

  function describedBy(element, id, on) {
    const ids = new Set((element.getAttribute("aria-describedby") || "").split(/\s+/));
    ids.delete("");
    if (on) ids.add(id);
    else ids.delete(id);
    if (ids.size) element.setAttribute("aria-describedby", [...ids].join(" "));
    else element.removeAttribute("aria-describedby");
  }

  function showFieldError(field, text) {
    const element = input(field);
    const error = errorElement(field);
    if (!element || !error) return false;
    error.textContent = text;
    error.hidden = false;
    element.setAttribute("aria-invalid", "true");
    describedBy(element, error.id, true);
    return true;
  }

  function clearErrors() {
    for (const error of form.querySelectorAll(".field-error")) {
      const field = error.id.slice("error-".length);
      error.hidden = true;
      error.textContent = "";
      input(field).removeAttribute("aria-invalid");
      describedBy(input(field), error.id, false);
    }
  }

  // A 422 lists every problem in "errors", each with the field it is about; each one that
  // names a field of the form is shown next to it.
  function showProblem(problem) {
    let shown = 0;
    for (const each of problem.errors || [{ field: problem.field, detail: problem.detail }]) {
      if (each.field && showFieldError(each.field, each.detail)) shown += 1;
    }
    const first = form.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
    return shown;
  }

  function failed(what, response) {
    const problem = response.data || {};
    if (response.status === 422 && showProblem(problem)) {
      Outbox.say(result, `${what}: check the marked field.`, "fail");
    } else {
      Outbox.say(result, `${what}: ${problem.detail || problem.message}`, "fail");
    }
  }

  // ---- the buttons ------------------------------------------------------------------

  // Run one action with every button disabled until its request is answered.
  async function busy(text, action) {
    clearErrors();
    for (const button of buttons) button.disabled = true;
    form.setAttribute("aria-busy", "true");
    Outbox.say(result, text, "busy");
    try {
      await action();
    } finally {
      for (const button of buttons) button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  }

  // outbox's own success messages start with a word ("connected to ...", "test e-mail sent").
  function sentence(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // Test connection and Send test email: {ok, message} says how it went, and why not.
  async function check(url, what) {
    const response = await Outbox.api("POST", url, formBody());
    if (!response.ok) failed(what, response);
    else if (response.data.ok) Outbox.say(result, sentence(response.data.message), "ok");
    else Outbox.say(result, `${what}: ${response.data.message}`, "fail");
  }

  function testConnection() {
    return busy("Testing the connection…", () =>
      check(`${URL_SETTINGS}/test-connection`, "Connection failed"),
    );
  }

  function sendTestEmail() {
    const to = input("from_mailbox").value.trim() || "the From Mailbox";
    return busy(`Sending a test e-mail to ${to}…`, () =>
      check(`${URL_SETTINGS}/test-email`, "Test e-mail not sent"),
    );
  }

  function save() {
    return busy("Saving…", async () => {
      const response = await Outbox.api("PUT", URL_SETTINGS, formBody());
      if (!response.ok) {
        failed("Not saved", response);
        return;
      }
      state.saved = response.data;
      resetForm();
      showSavedMeta();
      const warnings = response.data.warnings || [];
      if (warnings.length) {
        // Saved, but weakened on purpose: say so, the way the CLI does.
        Outbox.say(result, `Saved (version ${state.saved.version}). Warning: ${warnings.join("; ")}`, "fail");
      } else {
        Outbox.say(result, `Saved (version ${state.saved.version})`, "ok");
      }
    });
  }

  function cancel() {
    clearErrors();
    resetForm();
    const what = state.saved ? "the saved settings are shown again" : "the defaults are shown";
    Outbox.say(result, `Changes discarded: ${what}.`);
  }

  function switchProtocol() {
    clearErrors();
    Outbox.say(result, "");
    fillProtocol(protocolSelect.value);
    showProtocol(protocolSelect.value);
  }

  // ---- start ------------------------------------------------------------------------

  async function loadDefaults(protocol) {
    const response = await Outbox.api("GET", `${URL_SETTINGS}/defaults?protocol=${protocol}`);
    if (response.ok) state.defaults[protocol] = response.data;
    return response;
  }

  async function load() {
    for (const button of buttons) button.disabled = true;
    const [saved, ...defaults] = await Promise.all([
      Outbox.api("GET", URL_SETTINGS),
      loadDefaults("smtp"),
      loadDefaults("oauth"),
    ]);
    const broken = [saved, ...defaults].find((r) => !r.ok && r.status !== 404);
    if (broken) {
      savedMeta.textContent = "";
      Outbox.say(result, `The settings could not be loaded: ${broken.data.detail}`, "fail");
      return;
    }
    state.saved = saved.ok ? saved.data : null;
    resetForm();
    showSavedMeta();
    for (const button of buttons) button.disabled = false;
    document.getElementById("form-body").disabled = false;
  }

  protocolSelect.addEventListener("change", switchProtocol);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    save();
  });
  input("test-connection").addEventListener("click", testConnection);
  input("send-test-email").addEventListener("click", sendTestEmail);
  input("cancel").addEventListener("click", cancel);
  load();
})();
