"""What the page runs in the browser: downloads, share links, reading a preset file, and
keeping the visitor's work across a reload or a server restart.

A server restart forgets every session (conversations and steering live in server state), and
Gradio reloads a page whose server went away. So the page keeps, in the tab's
``sessionStorage`` when it unloads, what the visitor would lose: the message in the box (or the
one sent and not yet answered) and the steering as a share code. After a reload the load event
gets them back and the page says what happened. Before each send, and after a reply fails, the
page also asks the server whether it restarted since the page loaded (Gradio's ``app_id``
changes with every start); if it did, the page reloads at once instead of sending into a
session the server no longer has.
"""

from __future__ import annotations

DOWNLOAD_JS = """(text) => {
  if (!text) return;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
  link.download = "steering-preset.json";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}"""

SHARE_JS = """(code) => {
  const url = new URL(window.location.href);
  url.search = "";
  if (code) url.searchParams.set("steering", code);
  return url.toString();
}"""

# The browser reads the preset file and sends its name, size and text: no upload route, no
# file on the server. A file over the limit is not read; the server says why.
UPLOAD_JS = """(...inputs) => new Promise((resolve) => {
  const input = document.createElement("input");
  input.type = "file";
  input.accept = ".json,application/json";
  let done = false;
  const finish = (read) => {
    if (!done) { done = true; resolve([...read, ...inputs.slice(3)]); }
  };
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return finish(["", 0, ""]);
    const text = file.size <= %(limit)d ? await file.text() : "";
    finish([file.name, file.size, text]);
  });
  input.addEventListener("cancel", () => finish(["", 0, ""]));
  input.click();
})"""

# Loaded in the page's <head>: window.steeringPage, used by the events below.
HEAD = """<script>
(() => {
  const KEY = "steering-page";
  const page = {
    code: "",      // the steering's share code, kept current by the page
    pending: "",   // a message sent and not yet answered
    replies: 0,    // replies ended (finished, stopped, failed or cleared): body[data-replies]
    busyAt: () => [document.body, document.querySelector("#main")].filter(Boolean),
    start() {      // a reply is on its way: Stop shows instead of Send (.steering-busy)
      page.busyAt().forEach((e) => e.classList.add("steering-busy"));
    },
    finish() {     // the reply's event has ended and its last update is on the page
      if (!document.body.classList.contains("steering-busy")) return;
      page.busyAt().forEach((e) => e.classList.remove("steering-busy"));
      page.replies += 1;
      document.body.dataset.replies = String(page.replies);
    },
    appId: () => String(window.gradio_config && window.gradio_config.app_id),
    async serverAppId() {  // null while the server does not answer
      try {
        const root = String(window.gradio_config.root || "").replace(/\\/$/, "");
        const answer = await fetch(root + "/gradio_api/app_id", {cache: "no-store"});
        return answer.ok ? String((await answer.json()).app_id) : null;
      } catch (e) {
        return null;
      }
    },
    async restarted() {
      const now = await page.serverAppId();
      return now !== null && now !== page.appId();
    },
    async watch() {  // after a failed reply: once the server answers, reload if it restarted
      for (let tries = 0; tries < 90; tries++) {
        const now = await page.serverAppId();
        if (now !== null) {
          if (now !== page.appId()) window.location.reload();
          return;
        }
        await new Promise((wake) => setTimeout(wake, 2000));
      }
    },
    keep() {
      const box = document.querySelector("#msg textarea");
      const chatting = document.querySelectorAll("#steered .message").length > 0;
      const saved = {app: page.appId(), code: page.code, draft: box ? box.value : "",
                     pending: page.pending, chatting: chatting};
      sessionStorage.setItem(KEY, JSON.stringify(saved));
    },
    resume() {
      const text = sessionStorage.getItem(KEY);
      sessionStorage.removeItem(KEY);
      const entry = performance.getEntriesByType("navigation")[0];
      if (!text || !entry || entry.type !== "reload") return ["", "", ""];
      let saved;
      try { saved = JSON.parse(text); } catch (e) { return ["", "", ""]; }
      const draft = String(saved.draft || saved.pending || "");
      if (!draft && !saved.chatting && !saved.code) return ["", "", ""];
      const kind = saved.app === page.appId() ? "reloaded" : "restarted";
      return [String(saved.code || ""), draft, kind];
    },
  };
  window.steeringPage = page;
  window.addEventListener("pagehide", () => page.keep());
})();
</script>"""

# Before a message goes out: if the server restarted since the page loaded, reload instead and
# never send (a promise that never settles holds the event back while the page unloads).
SEND_JS = """async (...inputs) => {
  const page = window.steeringPage;
  page.pending = String(inputs[0] || "");
  page.start();
  if (await page.restarted()) {
    window.location.reload();
    return new Promise(() => {});
  }
  return inputs;
}"""
REGENERATE_JS = """async (...inputs) => {
  const page = window.steeringPage;
  page.start();
  if (await page.restarted()) {
    window.location.reload();
    return new Promise(() => {});
  }
  return inputs;
}"""
# The reply's event ended: its last update is shown; Send comes back, and body[data-replies]
# counts one more reply (what the browser tests wait for).
ANSWERED_JS = """() => { window.steeringPage.pending = ""; window.steeringPage.finish(); }"""
# A reply that failed (its stream broke when the server stopped, say): reload once it is back.
FAILED_JS = """() => { window.steeringPage.finish(); window.steeringPage.watch(); }"""
CLEARED_JS = ANSWERED_JS
EMPTY_JS = "() => ''"
TRACK_CODE_JS = """(code) => { window.steeringPage.code = code || ""; }"""
# The load event's first three inputs: what the page kept before a reload, if anything.
RESUME_JS = """(...inputs) => [...window.steeringPage.resume(), ...inputs.slice(3)]"""
