// The console's one script: sends the page's forms and buttons to the JSON API and shows the answer, or the
// API's error message, in place. No library, no build step; the page works by keyboard (plain buttons and forms).
"use strict";

function showMessage(text, kind) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "message " + kind;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  if (kind === "error") {  // keyboard and screen-reader users land on what went wrong
    box.setAttribute("tabindex", "-1");
    box.focus();
  }
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
  // The console refuses a state change without this header: a page of another site cannot send it.
  const headers = Object.assign({ "X-Modelyard-Console": "1" }, options.headers || {});
  let response;
  try {
    response = await fetch(url, Object.assign({}, options, { headers: headers }));
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
      if (answer.message) {  // a retraining asked of the operator: nothing on this page changes
        showMessage(answer.message + ".", "ok");
        button.disabled = false;
        return;
      }
      // shown again after the reload that shows its effect, so a screen reader still gets to read it
      const done = answer.ref + " is now " + answer.stage + ".";
      showMessage(done, "ok");
      window.sessionStorage.setItem("modelyard-done", done);
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

function describeJob(job) {
  if (job.rows_total === null) return job.model + ": " + job.step + "…";
  return job.model + ": " + job.step + ", " + job.rows_done + " of " + job.rows_total + " rows scored";
}

function showJob(job) {
  const bar = document.getElementById("batch-progress");
  document.getElementById("batch-status").hidden = false;
  if (job.rows_total) {
    bar.max = job.rows_total;
    bar.value = job.rows_done;
  } else {
    bar.removeAttribute("value"); // indeterminate until the file is read
  }
  document.getElementById("progress").textContent = describeJob(job);
}

function onBatch(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.querySelector("input[type=file]").files[0];
    const progress = document.getElementById("progress");
    const result = document.getElementById("result");
    const button = form.querySelector("button[type=submit]");
    result.textContent = "";
    showMessage("", "");
    if (!file) {
      showMessage("choose a CSV file first", "error");
      return;
    }
    progress.textContent = "Uploading " + file.name + " (" + file.size + " bytes)…";
    button.disabled = true;
    try {
      const response = await callApi(form.dataset.api, {
        method: "POST",
        headers: { "Content-Type": "text/csv" },
        body: file,
      });
      let job = await response.json();
      showJob(job);
      while (job.status === "running") {
        await new Promise((resolve) => setTimeout(resolve, 400));
        job = await (await callApi("/api/score/" + job.id, {})).json();
        showJob(job);
      }
      if (job.status !== "done") throw new Error(job.message);
      const link = document.createElement("a");
      link.href = job.download;
      link.download = job.filename;
      link.id = "download";
      link.textContent = "Download " + job.filename + " (" + job.rows_total + " rows)";
      result.appendChild(link);
      progress.textContent = "Scored " + job.rows_total + " of " + job.rows_total + " rows.";
      showMessage("Scored " + job.rows_total + " rows with " + job.model + ".", "ok");
      link.click();
    } catch (error) {
      progress.textContent = "";
      document.getElementById("batch-status").hidden = true;
      showMessage(error.message, "error");
    }
    button.disabled = false;
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
  const done = window.sessionStorage.getItem("modelyard-done");
  if (done) {
    window.sessionStorage.removeItem("modelyard-done");
    showMessage(done, "ok");
  }
  const train = document.getElementById("train");
  if (train) onTrain(train);
  document.querySelectorAll("button[data-action]").forEach(onAction);
  const predict = document.getElementById("predict");
  if (predict) onPredict(predict);
  const batch = document.getElementById("batch");
  if (batch) onBatch(batch);
});
