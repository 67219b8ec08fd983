// The new-job form: uploads go up as the raw body (so the progress bar can follow them) and come back with the
// stored file's SHA-256; the job is submitted as JSON and the API's validation errors land beside their field.
"use strict";
(function () {
  const form = document.getElementById("job-form");
  if (!form) return;

  function errorBox(field) {
    return form.querySelector(`[data-error-for="${field}"]`) || form.querySelector('[data-error-for="_form"]');
  }
  function clearErrors() {
    form.querySelectorAll(".field-error").forEach((box) => (box.textContent = ""));
  }
  function showError(field, message) {
    const box = errorBox(field);
    box.textContent = box.textContent ? box.textContent + "; " + message : message;
  }
  // A 422 from the API: {"detail": "...", "errors": [{"loc": ["body", "field", ...], "msg": "..."}]}.
  function showProblem(status, problem, fallbackField) {
    const errors = (problem && problem.errors) || [];
    if (!errors.length) {
      showError(fallbackField, (problem && problem.detail) || `the server answered ${status}`);
      return;
    }
    errors.forEach((e) => {
      const loc = (e.loc || []).filter((part) => part !== "body" && part !== "query");
      const field = loc.length ? String(loc[0]) : fallbackField;
      const rest = loc.slice(1).join(".");
      showError(form.querySelector(`[data-error-for="${field}"]`) ? field : fallbackField, (rest ? rest + ": " : "") + e.msg);
    });
  }

  // -- uploads --
  function datasetSpec(picker) {
    const spec = {};
    const extra = picker.querySelector('[data-spec="json"]');
    if (extra && extra.value.trim()) Object.assign(spec, JSON.parse(extra.value));
    const kind = picker.querySelector('[data-spec="kind"]');
    if (kind && kind.value) spec.kind = kind.value;
    const labels = picker.querySelector('[data-spec="labels_key"]');
    if (labels && labels.value.trim()) spec.labels_key = labels.value.trim();
    return spec;
  }
  function upload(input) {
    const field = input.dataset.uploadFor;
    const picker = form.querySelector(`[data-picker="${field}"]`);
    const file = input.files[0];
    if (!file) return;
    const status = picker.querySelector(".upload-status");
    const bar = picker.querySelector(".upload-bar");
    const fill = bar.querySelector("span");
    errorBox(field).textContent = "";
    if (file.size > Number(form.dataset.maxUpload)) {
      showError(field, `${file.name} is ${file.size} bytes, over the server's limit of ${form.dataset.maxUpload} bytes`);
      return;
    }
    const params = new URLSearchParams({ filename: file.name });
    if (field !== "checkpoint_id") {
      let spec;
      try {
        spec = datasetSpec(picker);
      } catch (err) {
        showError(field, "the settings are not valid JSON: " + err.message);
        return;
      }
      params.set("spec", JSON.stringify(spec));
    }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${picker.dataset.uploadUrl}?${params}`);
    xhr.setRequestHeader("X-CSRF-Token", L2.csrf());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    bar.hidden = false;
    fill.style.width = "0%";
    status.textContent = `uploading ${file.name}…`;
    form.dataset.uploading = String(Number(form.dataset.uploading || 0) + 1);
    xhr.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      const percent = (100 * event.loaded) / event.total;
      fill.style.width = percent.toFixed(1) + "%";
      status.textContent = `uploading ${file.name}: ${percent.toFixed(0)} %`;
    };
    xhr.onloadend = () => {
      form.dataset.uploading = String(Number(form.dataset.uploading) - 1);
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (err) {
        body = null;
      }
      if (xhr.status !== 201 || !body) {
        status.textContent = "";
        bar.hidden = true;
        showProblem(xhr.status || "no answer", body || { detail: "the upload broke off; try again" }, field);
        return;
      }
      fill.style.width = "100%";
      status.replaceChildren();
      const done = document.createElement("span");
      done.textContent = `stored ${body.filename} (${body.size_bytes} bytes), SHA-256 `;
      const sha = document.createElement("code");
      sha.className = "sha256";
      sha.textContent = body.sha256;
      status.append(done, sha);
      const option = new Option(`${body.name || body.filename} · just uploaded · ${body.id.slice(0, 8)}`, body.id, true, true);
      // the new calibration set may also serve as evaluation data, and the other way round
      form.querySelectorAll("select[name$='dataset_id']").forEach((select) => {
        if (field !== "checkpoint_id" && select.name !== field) select.add(new Option(option.text, body.id));
      });
      picker.querySelector("select").add(option);
      picker.querySelector("select").value = body.id;
    };
    xhr.send(file);
  }
  form.querySelectorAll("input[type=file][data-upload-for]").forEach((input) => {
    input.addEventListener("change", () => upload(input));
  });

  // -- submission --
  function jsonField(name, body) {
    const text = form.elements[name].value.trim();
    if (!text) return;
    try {
      body[name] = JSON.parse(text);
    } catch (err) {
      throw { field: name, message: "not valid JSON: " + err.message };
    }
  }
  function collect() {
    const body = {
      checkpoint_id: form.elements.checkpoint_id.value,
      dataset_id: form.elements.dataset_id.value,
      device: form.elements.device.value,
    };
    if (form.elements.eval_dataset_id.value) body.eval_dataset_id = form.elements.eval_dataset_id.value;
    const architecture = form.elements.architecture.value.trim();
    if (architecture) body.architecture = architecture;
    const ratio = form.elements.target_ratio.value.trim();
    body.target_ratio = ratio === "" ? null : Number(ratio);
    if (form.elements.preset.value) body.preset = form.elements.preset.value; // only when chosen
    jsonField("arch_kwargs", body);
    jsonField("options", body);
    return body;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    if (Number(form.dataset.uploading || 0) > 0) {
      showError("_form", "wait until the uploads have finished");
      return;
    }
    let body;
    try {
      body = collect();
    } catch (problem) {
      showError(problem.field, problem.message);
      return;
    }
    if (!body.checkpoint_id) showError("checkpoint_id", "pick or upload a checkpoint");
    if (!body.dataset_id) showError("dataset_id", "pick or upload calibration data");
    if (!body.checkpoint_id || !body.dataset_id) return;
    const button = document.getElementById("submit-job");
    button.disabled = true;
    try {
      const response = await fetch("/ui/api/jobs", {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          "X-CSRF-Token": L2.csrf(),
          "Idempotency-Key": form.dataset.idempotencyKey,
        },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => null);
      if (response.ok && answer) {
        window.location.href = `/ui/jobs/${answer.id}`;
        return;
      }
      const field = response.status === 404 && answer && /dataset/.test(answer.detail) ? "dataset_id" : "_form";
      showProblem(response.status, answer, response.status === 404 && /checkpoint/.test(answer.detail) ? "checkpoint_id" : field);
    } catch (err) {
      showError("_form", "the server could not be reached: " + err.message);
    }
    button.disabled = false;
  });
})();
