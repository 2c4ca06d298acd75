// The console's one script: sends the page's forms and buttons to the JSON API and shows the answer, or the
// API's error message, in place. No library, no build step; the page works by keyboard (plain buttons and forms).
"use strict";

function showMessage(text, kind) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "message " + kind;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  if (kind === "error") box.focus && box.setAttribute("tabindex", "-1");
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error || ("HTTP " + response.status);
  } catch (_) {
    return "HTTP " + response.status + " " + response.statusText;
  }
}

async function callApi(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error("cannot reach the console: " + error.message);
  }
  if (!response.ok) throw new Error(await errorOf(response));
  return response;
}

function onAction(button) {
  button.addEventListener("click", async () => {
    if (!window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      const answer = await (await callApi(button.dataset.action, { method: "POST" })).json();
      showMessage(answer.ref + " is now " + answer.stage + ".", "ok");
      setTimeout(() => window.location.reload(), 800);
    } catch (error) {
      showMessage(error.message, "error");
      button.disabled = false;
    }
  });
}

function onPredict(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const features = Object.fromEntries(new FormData(form).entries());
    const result = document.getElementById("result");
    result.textContent = "";
    try {
      const response = await callApi(form.dataset.api, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ features: features }),
      });
      const answer = await response.json();
      result.innerHTML = answer.html; // server-rendered and escaped there
      showMessage("Predicted by " + answer.predictor + ".", "ok");
    } catch (error) {
      showMessage(error.message, "error");
    }
  });
}

function onBatch(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.querySelector("input[type=file]").files[0];
    const progress = document.getElementById("progress");
    const result = document.getElementById("result");
    result.textContent = "";
    if (!file) {
      showMessage("choose a CSV file first", "error");
      return;
    }
    progress.textContent = "Uploading and scoring " + file.name + " (" + file.size + " bytes)…";
    try {
      const response = await callApi(form.dataset.api, {
        method: "POST",
        headers: { "Content-Type": "text/csv" },
        body: file,
      });
      const rows = response.headers.get("X-Modelyard-Rows");
      const disposition = response.headers.get("Content-Disposition") || "";
      const name = (disposition.match(/filename="([^"]+)"/) || [null, "scored.csv"])[1];
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      link.id = "download";
      link.textContent = "Download " + name + " (" + rows + " rows)";
      result.appendChild(link);
      progress.textContent = "Scored " + rows + " rows.";
      showMessage("Scored " + rows + " rows.", "ok");
      link.click();
    } catch (error) {
      progress.textContent = "";
      showMessage(error.message, "error");
    }
  });
}

function describeRun(run) {
  if (run.status !== "running") return run.status + ": " + run.message;
  const steps = run.total ? " (" + run.done + "/" + run.total + ")" : "";
  return "training " + run.model + ": " + run.step + steps + "…";
}

function onTrain(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (!window.confirm(button.dataset.confirm)) return;
    const progress = document.getElementById("progress");
    button.disabled = true;
    try {
      const response = await callApi(form.dataset.api, {
        method: "POST",
        headers: { "Content-Type": "application/yaml" },
        body: form.querySelector("textarea").value,
      });
      let run = await response.json();
      progress.textContent = describeRun(run);
      while (run.status === "running") {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        run = await (await callApi(form.dataset.api + "/" + run.id, {})).json();
        progress.textContent = describeRun(run);
      }
      showMessage(describeRun(run), run.status === "published" ? "ok" : "error");
    } catch (error) {
      showMessage(error.message, "error");
    }
    button.disabled = false;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const train = document.getElementById("train");
  if (train) onTrain(train);
  document.querySelectorAll("button[data-action]").forEach(onAction);
  const predict = document.getElementById("predict");
  if (predict) onPredict(predict);
  const batch = document.getElementById("batch");
  if (batch) onBatch(batch);
});
