"""Trackers: one run reports to TensorBoard, W&B (offline) and MLflow; each is read back with its
own library and holds the log.jsonl numbers at every step. Gradient norms are logged before
clipping; a missing tracker library is one clear error before anything is written."""

import glob
import importlib.util
import struct

import pytest

from alpaca_plw.train.trainer import train

TRACKERS = [n for n in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(n)]


@pytest.fixture(scope="module")
def tracked_run(train_weights, tiny_llama, tiny_config, read_log, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        train(tiny_config(train_weights, tiny_llama, out, max_steps=2, eval_fraction=0.25,
                          report_to=",".join(TRACKERS)))
    return out, read_log(out)


def _expect_steps(log, name):
    return {r["step"]: r[name] for r in log if r.get(name) is not None}


def test_tensorboard_events_hold_every_step(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, log = tracked_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for name in ("loss", "prompt_loss", "completion_loss", "lr", "grad_norm", "tokens_per_s", "epoch",
                 "eval_loss", "eval_prompt_loss", "eval_completion_loss"):
        got = {e.step: e.value for e in events.Scalars(name)}
        assert got == pytest.approx(_expect_steps(log, name), rel=1e-6), name
    assert "config/text_summary" in events.Tags()["tensors"]


def _wandb_records(run_file):
    """The protobuf records of an offline W&B run file (LevelDB-style log of 32 KiB blocks after a
    7-byte header); wandb >= 0.19 has no Python reader for it."""
    from wandb.proto import wandb_internal_pb2

    data = open(run_file, "rb").read()
    pos, pieces, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


@pytest.mark.skipif("wandb" not in TRACKERS, reason="wandb is not installed (pip install 'alpaca-plw[wandb]')")
def test_wandb_offline_run_holds_every_step_and_the_config(tracked_run):
    out, log = tracked_run
    (run_file,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = _wandb_records(run_file)
    history = [{"/".join(i.nested_key) or i.key: float(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [int(h["_step"]) for h in history] == [r["step"] for r in log]
    for h, r in zip(history, log):
        for name in ("loss", "grad_norm", "lr", "epoch"):
            assert h[name] == pytest.approx(r[name], rel=1e-9), name
    assert history[-1]["eval_loss"] == pytest.approx(log[-1]["eval_loss"], rel=1e-9)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {"config", "plan"} <= {u.key for u in run.config.update}


@pytest.mark.skipif("mlflow" not in TRACKERS, reason="mlflow is not installed (pip install 'alpaca-plw[mlflow]')")
def test_mlflow_run_holds_every_step_and_the_config(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    out, log = tracked_run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("alpaca-plw").experiment_id])
    for name in ("loss", "grad_norm", "eval_loss"):
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert got == pytest.approx(_expect_steps(log, name), rel=1e-9), name
    assert run.data.params["config.lr"] == "0.001"
    assert run.info.status == "FINISHED"


def test_grad_norm_is_logged_before_clipping(train_weights, tiny_llama, tiny_config, read_log, tmp_path):
    clipped, free = tmp_path / "clipped", tmp_path / "free"
    train(tiny_config(train_weights, tiny_llama, clipped, max_steps=1, max_grad_norm=1e-3))
    train(tiny_config(train_weights, tiny_llama, free, max_steps=1, max_grad_norm=0.0))
    norm = read_log(free)[0]["grad_norm"]
    assert norm > 1e-3
    assert read_log(clipped)[0]["grad_norm"] == pytest.approx(norm, rel=1e-6)


def test_missing_tracker_library_is_one_clear_error_before_training(run_cli, train_weights,
                                                                    tiny_llama, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    code, _, err = run_cli(["train", train_weights, "--model", tiny_llama, "--output-dir", out,
                            "--device", "cpu", "--report-to", "tensorboard,wandb"])
    assert code == 5, err
    assert "--report-to wandb needs wandb" in err and "alpaca-plw[wandb]" in err
    assert not out.exists()


def test_unknown_tracker_is_refused(run_cli, train_weights, tiny_llama, tmp_path):
    code, _, err = run_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                            tmp_path / "run", "--report-to", "comet"])
    assert code == 2 and "unknown tracker 'comet'" in err
