// The Mail Settings page: fill the form from the saved settings (or the defaults), switch
// protocol and SMTP's authentication, pre-fill a known provider's sending limits, say when
// the sending account is paused, choose the delivery mode (staging: capture or redirect), and
// test, save or discard what is in the form.
"use strict";

(() => {
  const URL_SETTINGS = "/api/settings/mail";
  // The delivery mode is the installation's, not a protocol's: switching protocol keeps it.
  const DEFAULT_MODE = "deliver";

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

  const input = (id) => document.getElementById(id);

  // ---- the fields, as the page renders them -----------------------------------------

  // The server renders the form from its one table of fields (api/settings_fields.py), so
  // this script keeps no list of its own: a control's name is its settings field, data-kind
  // says how it is edited, and the fieldset around it whose protocol (data-protocol) or SMTP
  // authentication (data-auth) it belongs to. SMTP's OAuth 2.0 fields share their names with
  // the OAuth protocol's, so the ids differ ("oauth2_tenant"), never the names.
  const CONTROLS = [...form.querySelectorAll("[data-kind]")];
  const LIMITS = [...form.querySelectorAll('[data-group="limits"] [data-kind]')];
  const AUTHS = [...authSelect.options].map((option) => option.value);

  const kindOf = (control) => control.dataset.kind;
  const choiceOf = (control, key) => {
    const group = control.closest(`[data-${key}]`);
    return group ? group.dataset[key] : null;
  };

  // A protocol's own fields (for SMTP, those of neither authentication), or an
  // authentication's.
  const protocolFields = (protocol) =>
    CONTROLS.filter((c) => choiceOf(c, "protocol") === protocol && !choiceOf(c, "auth"));
  const authFields = (auth) => CONTROLS.filter((c) => choiceOf(c, "auth") === auth);

  // The fields of the form as it stands are those it shows: the chosen protocol's, the
  // chosen authentication's, and Redirect to only with redirect.
  const shownFields = () => CONTROLS.filter((control) => !control.closest("[hidden]"));

  // The control a problem's field is about; "redirect_to[1]" (the second address) is marked
  // at the one input of every address.
  function controlOf(field) {
    const name = field.replace(/\[\d+\]$/, "");
    return shownFields().find((control) => control.name === name) || null;
  }

  // ---- filling the form -------------------------------------------------------------

  function setValue(control, value) {
    if (kindOf(control) === "checkbox") control.checked = Boolean(value);
    else if (kindOf(control) === "addresses") control.value = (value || []).join(", ");
    else control.value = value === null || value === undefined ? "" : String(value);
  }

  // A secret is never filled in; while one is stored, its placeholder says that leaving it
  // empty keeps it.
  function fill(controls, values) {
    for (const control of controls) {
      if (kindOf(control) !== "secret") setValue(control, values[control.name]);
      else {
        const stored = values[`${control.name}_set`];
        control.value = "";
        control.placeholder = stored ? control.dataset.storedPlaceholder : "";
      }
    }
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
    return (values.auth || AUTHS[0]) === auth ? values : state.defaults.smtp;
  }

  function fillAuth(auth) {
    fill(authFields(auth), startingAuthValues(auth));
  }

  function showAuth(auth) {
    authSelect.value = auth;
    for (const group of form.querySelectorAll("[data-auth]")) {
      group.hidden = group.dataset.auth !== auth;
    }
  }

  function limitValues() {
    return LIMITS.map((control) => control.value.trim()).join(" ");
  }

  // The fields of a protocol, and the limits: the protocol filled last shows its own.
  function fillProtocol(protocol) {
    const values = startingValues(protocol);
    fill(protocolFields(protocol), values);
    if (protocol === "smtp") {
      for (const auth of AUTHS) fillAuth(auth);
      showAuth(values.auth || AUTHS[0]);
    }
    fill(LIMITS, values);
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
    setValue(input("redirect_to"), values.redirect_to);
    showMode(values.delivery_mode || DEFAULT_MODE);
  }

  // The saved settings again (or a new form when nothing is saved).
  function resetForm() {
    const protocol = state.saved ? state.saved.protocol : "smtp";
    setValue(input("from_mailbox"), state.saved ? state.saved.from_mailbox : "");
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

  // "a@x, b@y" (commas, semicolons or line breaks between them) as a list of addresses.
  function addressList(text) {
    return text
      .split(/[,;\n]/)
      .map((address) => address.trim())
      .filter((address) => address !== "");
  }

  // What a control sends: a number's empty is null (for a limit: none).
  function valueOf(control) {
    const raw = control.value.trim();
    switch (kindOf(control)) {
      case "checkbox":
        return control.checked;
      case "number":
        return raw === "" ? null : Number(raw);
      case "addresses":
        return addressList(control.value);
      case "secret":
        return control.value;
      default:
        return raw;
    }
  }

  // The request body: the fields the form shows, with their current values. An empty secret
  // is left out, so the saved one is kept (or used, for a test). What a hidden field holds
  // (another protocol's, or the redirect addresses without redirect) stays in the form until
  // Cancel or a save, but is not sent.
  function formBody() {
    const body = {};
    for (const control of shownFields()) {
      const value = valueOf(control);
      if (kindOf(control) !== "secret" || value !== "") body[control.name] = value;
    }
    return body;
  }

  // ---- errors next to their fields --------------------------------------------------

  // "redirect_to[1]" is about the second address in the field: the message names it.
  function aboutWhich(field, control, text) {
    const index = /\[(\d+)\]$/.exec(field);
    const address = index && kindOf(control) === "addresses" && valueOf(control)[Number(index[1])];
    return address ? `${address}: ${text}` : text;
  }

  function clearErrors() {
    for (const error of form.querySelectorAll(".field-error")) {
      Outbox.unmarkField(input(error.id.slice("error-".length)), error);
    }
  }

  // Each problem that names a field the form shows is said next to it; the number shown.
  function showProblems(problems) {
    let shown = 0;
    for (const { field, detail } of problems) {
      const control = field && controlOf(field);
      if (!control) continue;
      Outbox.markField(control, input(`error-${control.id}`), aboutWhich(field, control, detail));
      shown += 1;
      // The saved secret was not kept (e.g. the server changed): the placeholder must no
      // longer say that leaving it empty keeps it. Cancel or a save puts it back.
      if (kindOf(control) === "secret") control.placeholder = "";
    }
    Outbox.focusFirstMarked(form);
    return shown;
  }

  function failed(what, response) {
    Outbox.sayFailed(result, what, response, showProblems);
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
    fill(LIMITS, response.data);
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
