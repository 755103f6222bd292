"""The app over HTTP: launched on 127.0.0.1, driven with gradio_client like any API user.

A tiny run (2 classes, IPC 3, K 4, 2 steps, tiny random models from folders): start it, run a
class, read an anomaly and its candidates, override the automatic pick, export, and check that the
export's metadata (provenance.csv) records the override as a user decision. Bad input must come
back as a message.
"""

from __future__ import annotations

import zipfile

import pandas as pd
import torch
from gradio_client import Client

torch.set_num_threads(1)


def start(client: Client, app: dict, folder: str | None = None, ipc: int = 3) -> tuple:
    return client.predict(
        "folder on the server", folder or app["data"], None, "model folders", app["gen"], app["det"],
        ipc, 4, 0.99, 0.5, 2, 0.7, 2.0, 0,
        api_name="/start_run",
    )  # fmt: skip


def frame(value: dict) -> pd.DataFrame:
    return pd.DataFrame(value["data"], columns=value["headers"])


def test_tiny_run_override_and_export_over_http(app):
    client = Client(app["url"], verbose=False)
    out = start(client, app)
    assert out[0].startswith("✔ run ") and "2 classes" in out[0]

    out = client.predict(0, api_name="/run_class")
    assert out[0].startswith("✔ class a done"), out[0]
    panel = out[1:]  # the job's message, then the panel
    anomalies = frame(panel[2])
    assert len(anomalies) == 3 and len(panel[1]["value"]) == 3  # tau 0.99: every image of the random detector
    aid = int(anomalies["anomaly"][0])
    assert panel[3] == aid and panel[11].startswith("1 of 3 · ") and panel[11].endswith(" · 3 to review")

    shown = client.predict(0, aid, api_name="/show_anomaly")
    assert shown[3] == aid and f"**Anomaly #{aid}**" in shown[4]
    cands = frame(shown[8])
    assert len(cands) == 4 and shown[7].count("data-cid=") == 4 and (cands["score"] != "–").all()
    auto = cands[cands["pick"] == "★"]["candidate"].tolist()
    other = int(cands[~cands["candidate"].isin(auto)]["candidate"].iloc[0])

    chosen = client.predict(0, aid, other, api_name="/choose_candidate")
    assert chosen[0].startswith(f"✔ #{aid}: candidate #{other} kept (overridden)"), chosen[0]
    assert frame(chosen[2]).set_index("anomaly").loc[aid, "state"] == "overridden"
    nxt = client.predict(0, aid, api_name="/next_unreviewed")  # the queue, over the API too
    assert nxt[3] != aid and nxt[3] in anomalies["anomaly"].tolist()

    msg, download, preview = client.predict(api_name="/export")
    assert msg.startswith("✔ exported") and download["visible"] is True
    with zipfile.ZipFile(download["value"]) as zf:  # the client has downloaded the zip
        meta = pd.read_csv(zf.open("provenance.csv"))
    row = meta[meta["decision"] == "overridden"]  # files are named by provenance, not by id: match the scores
    picked = cands[cands["candidate"] == other].iloc[0]
    assert abs(row["confidence"].iloc[0] - float(picked["confidence"])) < 1e-3
    assert len(row) == 1 and row["source"].iloc[0] == "refined"
    assert meta["decision"].isin(["accepted", "overridden", "kept original"]).sum() == 1  # one person's decision
    assert len(frame(preview)) == len(meta)


def test_bad_input_comes_back_as_a_message_and_the_server_keeps_serving(app, tmp_path):
    client = Client(app["url"], verbose=False)
    msg = start(client, app, folder=str(tmp_path / "missing"))[0]
    assert msg == f"⚠ dataset path does not exist: {tmp_path / 'missing'}"
    assert "IPC = 99 is larger" in start(client, app, ipc=99)[0]
    assert client.predict(0, api_name="/run_class")[0].startswith("⚠ no run open")
    assert start(client, app)[0].startswith("✔ run ")  # still serving, and this session now has a run


def test_two_clients_have_separate_sessions(app):
    first, second = Client(app["url"], verbose=False), Client(app["url"], verbose=False)
    assert start(first, app)[0].startswith("✔")
    assert first.predict(0, api_name="/show_class")[0] == "class a has not been run yet: press “Run this class”"
    assert first.predict(0, api_name="/show_class")[10]["value"] == 0
    assert second.predict(0, api_name="/show_class")[0].startswith("⚠ no run open")
