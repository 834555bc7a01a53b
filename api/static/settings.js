// The Mail Settings page: fill the form from the saved settings (or the defaults), switch
// protocol and SMTP's authentication, pre-fill a known provider's sending limits, say when
// the sending account is paused, choose the delivery mode (staging: capture or redirect), and
// test, save or discard what is in the form.
"use strict";

(() => {
  const URL_SETTINGS = "/api/settings/mail";
  const FIELDS = {
    smtp: ["server", "port", "tls", "accept_any_certificate", "auth"],
    oauth: ["instance", "api_url", "tenant", "client_id", "client_secret"],
  };
  // SMTP's fields of each way to log in. The OAuth 2.0 ones share their names with the OAuth
  // protocol's, so their elements' ids start with "oauth2_".
  const AUTH_FIELDS = {
    password: ["username", "password"],
    oauth2: ["username", "tenant", "client_id", "client_secret", "instance", "scope"],
  };
  // Both protocols have them; one set of fields shows the chosen protocol's.
  const LIMITS = [
    "max_messages_per_minute",
    "max_recipients_per_day",
    "max_recipients_per_message",
  ];
  const NUMBERS = new Set(["port", ...LIMITS]);
  // The delivery mode is the installation's, not a protocol's: switching protocol keeps it.
  const DEFAULT_MODE = "deliver";
  const SECRET = { smtp: "password", oauth: "client_secret" };
  const AUTH_SECRET = { password: "password", oauth2: "client_secret" };
  const KEEP_SECRET = "saved; leave empty to keep";

  const form = document.getElementById("mail-settings");
  const protocolSelect = document.getElementById("protocol");
  const authSelect = document.getElementById("auth");
  const modeSelect = document.getElementById("delivery_mode");
  const pauseBanner = document.getElementById("pause");
  const result = document.getElementById("result");
  const savedMeta = document.getElementById("saved-meta");
  const buttons = form.querySelectorAll(".actions button");

  // prefilled: the limits a known provider's server put in the form (still theirs while
  // nobody changed them), or null.
  const state = { saved: null, defaults: { smtp: {}, oauth: {} }, prefilled: null, timer: null };

  const input = (name) => document.getElementById(name);

  // The id of a field's element in the form as it stands (the chosen protocol and
  // authentication).
  function fieldId(name) {
    // One input holds every redirect address: "redirect_to[1]" is marked there.
    if (/^redirect_to(\[\d+\])?$/.test(name)) return "redirect_to";
    const oauth2 = protocolSelect.value === "smtp" && authSelect.value === "oauth2";
    return oauth2 && AUTH_FIELDS.oauth2.includes(name) ? `oauth2_${name}` : name;
  }

  function secretOf(protocol) {
    return protocol === "smtp" ? AUTH_SECRET[authSelect.value] : SECRET[protocol];
  }

  // ---- filling the form -------------------------------------------------------------

  function setValue(name, value, id = name) {
    const element = input(id);
    if (element.type === "checkbox") element.checked = Boolean(value);
    else element.value = value === null || value === undefined ? "" : String(value);
  }

  // The values a protocol's fields start with: the saved ones when the saved settings are of
  // that protocol, else the defaults.
  function startingValues(protocol) {
    const saved = state.saved;
    return saved && saved.protocol === protocol ? saved : state.defaults[protocol];
  }

  // The values an SMTP authentication's fields start with: the SMTP ones (saved or default)
  // when they log in that way, else the defaults.
  function startingAuthValues(auth) {
    const values = startingValues("smtp");
    return (values.auth || "password") === auth ? values : state.defaults.smtp;
  }

  function fillAuth(auth) {
    const values = startingAuthValues(auth);
    const secret = AUTH_SECRET[auth];
    const id = (name) => (auth === "oauth2" ? `oauth2_${name}` : name);
    for (const name of AUTH_FIELDS[auth]) {
      setValue(name, name === secret ? "" : values[name], id(name));
    }
    input(id(secret)).placeholder = values[`${secret}_set`] ? KEEP_SECRET : "";
  }

  function showAuth(auth) {
    authSelect.value = auth;
    for (const group of form.querySelectorAll("[data-auth]")) {
      group.hidden = group.dataset.auth !== auth;
    }
  }

  function fillLimits(values) {
    for (const name of LIMITS) setValue(name, values[name]);
  }

  function limitValues() {
    return LIMITS.map((name) => input(name).value.trim()).join(" ");
  }

  // The fields of a protocol, and the limits: the protocol filled last shows its own.
  function fillProtocol(protocol) {
    const values = startingValues(protocol);
    if (protocol === "smtp") {
      for (const name of FIELDS.smtp) setValue(name, values[name]);
      fillAuth("password");
      fillAuth("oauth2");
      showAuth(values.auth || "password");
    } else {
      const secret = SECRET[protocol];
      for (const name of FIELDS[protocol]) setValue(name, name === secret ? "" : values[name]);
      input(secret).placeholder = values[`${secret}_set`] ? KEEP_SECRET : "";
    }
    fillLimits(values);
    state.prefilled = null;
  }

  function showProtocol(protocol) {
    protocolSelect.value = protocol;
    for (const group of form.querySelectorAll("[data-protocol]")) {
      group.hidden = group.dataset.protocol !== protocol;
    }
  }

  // Redirect to is asked for only when every e-mail goes there.
  function showMode(mode) {
    modeSelect.value = mode;
    document.getElementById("redirect-field").hidden = mode !== "redirect";
  }

  function fillMode(values) {
    setValue("redirect_to", (values.redirect_to || []).join(", "));
    showMode(values.delivery_mode || DEFAULT_MODE);
  }

  // The saved settings again (or a new form when nothing is saved).
  function resetForm() {
    const protocol = state.saved ? state.saved.protocol : "smtp";
    setValue("from_mailbox", state.saved ? state.saved.from_mailbox : "");
    fillProtocol(protocol === "smtp" ? "oauth" : "smtp");
    fillProtocol(protocol);
    showProtocol(protocol);
    fillMode(state.saved || {});
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

  // After a provider's quota reply the sending account waits, for every worker, until the
  // pause ends; the banner goes when it does.
  function showPause(pause) {
    clearTimeout(state.timer);
    pauseBanner.hidden = !pause;
    if (!pause) {
      pauseBanner.replaceChildren();
      return;
    }
    pauseBanner.replaceChildren(
      "Sending is paused until ",
      Outbox.timeElement(pause.until, "seconds"),
      `: ${pause.reason}`,
    );
    state.timer = setTimeout(() => showPause(null), Math.max(0, pause.until * 1000 - Date.now()));
  }

  // ---- reading the form -------------------------------------------------------------

  // A number field's value; empty is null (for a limit: none).
  function numberValue(element) {
    const raw = element.value.trim();
    return raw === "" ? null : Number(raw);
  }

  function formFields(protocol) {
    const auth = protocol === "smtp" ? AUTH_FIELDS[authSelect.value] : [];
    return [...FIELDS[protocol], ...auth, ...LIMITS];
  }

  // "a@x, b@y" (commas, semicolons or line breaks between them) as a list of addresses.
  function addressList(text) {
    return text
      .split(/[,;\n]/)
      .map((address) => address.trim())
      .filter((address) => address !== "");
  }

  // The request body: the form's current values of the chosen protocol (and, for SMTP, of
  // the chosen authentication), and the delivery mode. An empty secret is left out, so the
  // saved one is kept (or used, for a test). The redirect addresses go only with redirect
  // (what the hidden field holds stays in the form until Cancel or a save).
  function formBody() {
    const protocol = protocolSelect.value;
    const mode = modeSelect.value;
    const body = {
      protocol,
      from_mailbox: input("from_mailbox").value.trim(),
      delivery_mode: mode,
      redirect_to: mode === "redirect" ? addressList(input("redirect_to").value) : [],
    };
    for (const name of formFields(protocol)) {
      const element = input(fieldId(name));
      if (element.type === "checkbox") body[name] = element.checked;
      else if (NUMBERS.has(name)) body[name] = numberValue(element);
      else if (name === secretOf(protocol)) {
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

  // "redirect_to[1]" is about the second address in the field: the message names it.
  function aboutWhich(field, text) {
    const index = /^redirect_to\[(\d+)\]$/.exec(field);
    const address = index && addressList(input("redirect_to").value)[Number(index[1])];
    return address ? `${address}: ${text}` : text;
  }

  // Several problems of one field (two wrong redirect addresses) are all shown.
  function showFieldError(field, text) {
    const element = input(fieldId(field));
    const error = errorElement(fieldId(field));
    if (!element || !error) return false;
    const said = aboutWhich(field, text);
    error.textContent = error.hidden ? said : `${error.textContent}; ${said}`;
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
      // The saved secret was not kept (e.g. the server changed): the placeholder must no
      // longer say that leaving it empty keeps it. Cancel or a save puts it back.
      if (each.field === secretOf(protocolSelect.value)) {
        input(fieldId(each.field)).placeholder = "";
      }
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
      showPause(state.saved.pause);
      Outbox.showStaging(state.saved);
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

  function switchAuth() {
    clearErrors();
    Outbox.say(result, "");
    fillAuth(authSelect.value);
    showAuth(authSelect.value);
  }

  // A known provider's server pre-fills the limits it publishes, unless the administrator
  // set some: only empty limits, or those pre-filled for the server before, are replaced.
  async function prefillLimits() {
    const server = input("server").value.trim();
    const untouched = () => limitValues().trim() === "" || limitValues() === state.prefilled;
    if (!server || !untouched()) return;
    const query = new URLSearchParams({ protocol: "smtp", server });
    const response = await Outbox.api("GET", `${URL_SETTINGS}/defaults?${query}`);
    // An answer overtaken by another edit (of the server or of a limit) is dropped.
    if (!response.ok || input("server").value.trim() !== server || !untouched()) return;
    fillLimits(response.data);
    state.prefilled = limitValues();
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
    showPause(state.saved && state.saved.pause);
    Outbox.showStaging(state.saved);
    for (const button of buttons) button.disabled = false;
    document.getElementById("form-body").disabled = false;
  }

  protocolSelect.addEventListener("change", switchProtocol);
  authSelect.addEventListener("change", switchAuth);
  modeSelect.addEventListener("change", () => showMode(modeSelect.value));
  input("server").addEventListener("change", prefillLimits);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    save();
  });
  input("test-connection").addEventListener("click", testConnection);
  input("send-test-email").addEventListener("click", sendTestEmail);
  input("cancel").addEventListener("click", cancel);
  load();
})();
