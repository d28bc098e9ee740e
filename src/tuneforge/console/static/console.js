// tuneforge console: a few behaviours on plain DOM, no build step.
//   data-refresh="URL" data-interval="MS"   replace the element's content with the HTML at URL every MS;
//                                            a response with the header X-Refresh-Stop stops the polling.
//   data-copy="ELEMENT-ID"                   a button that copies that element's text.
//   tf.post(url, body)                        fetch with the page's CSRF token.
"use strict";
const tf = {
  csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  },
  post(url, body, headers) {
    return fetch(url, {
      method: "POST",
      body,
      credentials: "same-origin",
      headers: Object.assign({ "X-CSRF-Token": tf.csrf() }, headers || {}),
    });
  },
  refresh(element) {
    const url = element.dataset.refresh;
    const interval = parseInt(element.dataset.interval || "2000", 10);
    const tick = async () => {
      let stop = false;
      try {
        const response = await fetch(url, { credentials: "same-origin" });
        if (response.ok) {
          element.innerHTML = await response.text();
          if (element.id === "billing") element.classList.toggle("clear", response.headers.has("X-Billing-Clear"));
          stop = response.headers.has("X-Refresh-Stop");
          element.dispatchEvent(new CustomEvent("tf:refreshed", { bubbles: true }));
        }
      } catch (error) {
        // The server restarting or the network dropping: try again on the next tick.
      }
      if (!stop) setTimeout(tick, interval);
    };
    setTimeout(tick, interval);
  },
};
window.tf = tf;
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach((element) => tf.refresh(element));
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      await navigator.clipboard.writeText(source.textContent || "");
      button.textContent = "Copied";
    });
  });
});
