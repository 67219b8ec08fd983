"""Text datasets: the spec names the model's tokenizer folder, a server path the worker will read, so it must lie
inside the allowed data roots like registered data, and is stored resolved."""

from __future__ import annotations

import json

from api_helpers import upload_dataset


def test_registered_text_dataset_keeps_its_resolved_tokenizer_folder(client, tenant_a, settings):
    root = settings.allowed_data_roots[0]
    (root / "sentences.txt").write_text("the cat sat\na dog ran\n")
    (root / "tokenizer").mkdir()
    spec = {"tokenizer": str(root / "x" / ".." / "tokenizer"), "max_length": 32, "padding": "max_length"}
    (root / "x").mkdir()
    r = client.post(
        "/v1/datasets",
        json={"name": "text", "path": str(root / "sentences.txt"), "spec": spec},
        headers=tenant_a.headers,
    )
    assert r.status_code == 201, r.text
    stored = r.json()["spec"]
    assert stored["tokenizer"] == str((root / "tokenizer").resolve())
    assert stored["max_length"] == 32 and stored["padding"] == "max_length"


def test_tokenizer_outside_the_roots_or_not_a_folder_is_refused(client, tenant_a, settings, tmp_path):
    root = settings.allowed_data_roots[0]
    (root / "sentences.txt").write_text("the cat sat\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def register(spec):
        return client.post(
            "/v1/datasets",
            json={"name": "t", "path": str(root / "sentences.txt"), "spec": spec},
            headers=tenant_a.headers,
        )

    r = register({"tokenizer": str(outside)})
    assert r.status_code == 403 and "allowed data roots" in r.json()["detail"]
    r = register({"tokenizer": str(root / "sentences.txt")})
    assert r.status_code == 422 and "not a folder" in r.json()["detail"]
    r = register({"tokenizer": str(root), "max_length": 0})
    assert r.status_code == 422 and "max_length" in r.json()["detail"]
    r = upload_dataset(
        client, tenant_a, b"the cat sat\n", filename="s.txt", spec=json.dumps({"tokenizer": str(outside)})
    )
    assert r.status_code == 403 and "allowed data roots" in r.json()["detail"]
    assert client.get("/v1/datasets", headers=tenant_a.headers).json()["total"] == 0
