// Create a key (#/new-key): algorithm, usage (only the ones the algorithm serves), name, tags
// and description, sent as one POST /v1/keys; the server validates everything again and its
// message for a refused field is shown next to the form. On success: the new key's page.

import { api, can, errorPanel, field, h, markInvalid, notify, option } from "./lib.js";

// The usages each algorithm serves (the API's schema pairs them the same way).
const USAGES = {
  "aes-256-gcm": ["encrypt", "wrap"],
  "rsa-2048": ["sign"], "rsa-4096": ["sign"],
  "ec-p256": ["sign"], "ec-p384": ["sign"],
};
const ALGORITHMS = ["aes-256-gcm", "rsa-2048", "rsa-4096", "ec-p256", "ec-p384"];

export async function renderCreateKey(root) {
  if (!can("manage")) { // typed by hand: say so before a whole form is filled in for nothing
    root.replaceChildren(errorPanel({ title: "Not allowed for your role",
      message: "Only administrators and operators create keys." }),
    h("a", { href: "#/keys" }, "Go to keys"));
    return;
  }
  const algorithm = h("select", { name: "algorithm", required: true },
    ALGORITHMS.map((a) => option(a, a, "aes-256-gcm")));
  const usage = h("select", { name: "usage", required: true });
  const fillUsages = () => usage.replaceChildren(
    ...USAGES[algorithm.value].map((u) => option(u, u, USAGES[algorithm.value][0])));
  algorithm.addEventListener("change", fillUsages);
  fillUsages();
  // No maxlength on these: the browser would cut a long paste without a word, and save it.
  // The server refuses what is too long, with its reason, and the form keeps the text.
  const name = h("input", { type: "text", name: "name",
    autocomplete: "off", spellcheck: "false", placeholder: "payments-data" });
  const tags = h("input", { type: "text", name: "tags", autocomplete: "off", spellcheck: "false",
    placeholder: "prod, payments" });
  const description = h("textarea", { name: "description", rows: 3 });
  const problem = h("p", { class: "form-error", id: "create-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Create key");

  async function create(event) {
    event.preventDefault();
    const body = { algorithm: algorithm.value, usage: usage.value };
    if (name.value.trim()) body.name = name.value.trim();
    // commas only: "pci scope" is one (invalid) tag the server names, never two silent ones
    const tagList = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    // as typed, repeats included: the server's "tag 3" is then the third in the box
    if (tagList.length) body.tags = tagList;
    if (description.value.trim()) body.description = description.value.trim();
    submit.disabled = true;
    problem.hidden = true;
    try {
      const { data } = await api("/v1/keys", { method: "POST", body });
      // After the router's hashchange handler, which clears the notices of the page it leaves.
      window.addEventListener("hashchange", () => notify(`Created ${data.name ?? data.id} ` +
        `(${data.algorithm}, ${data.usage}).`, "success"), { once: true });
      location.hash = `#/keys/${encodeURIComponent(data.id)}`;
    } catch (err) {
      if (err.status === 401) return;
      problem.textContent = `The key was not created: ${err.message}`;
      problem.hidden = false;
      const control = { name, tags, description }[err.field]; // the box the server named
      if (control) markInvalid(control, problem);
    } finally {
      submit.disabled = false;
    }
  }

  root.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/keys" }, "← All keys")),
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "New key")),
    h("form", { class: "create-key", id: "create-key", onsubmit: create },
      field("Algorithm", algorithm),
      field("Usage", usage, "What the key may do: AES keys encrypt or wrap, RSA and EC keys sign."),
      field("Name (optional)", name, "Letters, digits, . _ -; unique. Usable wherever an id is."),
      field("Tags (optional)", tags, "Comma-separated, lowercase. Tags decide which service " +
        "tokens may use the key and which approval rules apply."),
      h("div", { class: "wide" }, field("Description (optional)", description)),
      h("div", { class: "wide form-actions" }, submit,
        h("a", { href: "#/keys" }, "Cancel")),
      h("div", { class: "wide" }, problem)));
}
