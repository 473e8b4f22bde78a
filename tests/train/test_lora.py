"""LoRA through PEFT: only the adapter trains, the base model is never written, the saved adapter
reproduces the trained model, merging is exact, and --resume with an adapter (and dropout) equals
an uninterrupted run."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from alpaca_plw.train.checkpoints.checkpoint import unwrap
from alpaca_plw.train.hooks import RunFeatures
from alpaca_plw.train.trainer import train

pytest.importorskip("peft")

PROBE = torch.tensor([[1, 13866, 338, 263, 3414, 393, 16612, 29889, 13, 2277, 29937]])


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lora_run(train_weights, tiny_llama, tiny_config, tmp_path_factory, monkeypatch_module):
    """A LoRA run with --merge-lora; the trained model's logits on PROBE, taken in memory."""
    out = tmp_path_factory.mktemp("lora") / "run"
    base_digest = _digest(tiny_llama / "model.safetensors")
    seen = {}
    finish = RunFeatures.finish

    def capture(self, run):
        model = unwrap(run.model)
        model.eval()
        with torch.no_grad():
            seen["logits"] = model(input_ids=PROBE).logits
        finish(self, run)

    monkeypatch_module.setattr(RunFeatures, "finish", capture)
    train(tiny_config(train_weights, tiny_llama, out, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                      lr=1e-2, merge_lora=True))
    return out, seen["logits"], base_digest


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_lora_saves_only_the_adapter_and_never_writes_the_base(lora_run, tiny_llama):
    out, _, base_digest = lora_run
    assert _digest(tiny_llama / "model.safetensors") == base_digest
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    # every linear layer of the decoder (7 per layer x 2 layers), never the LM head
    assert len({k.split(".lora_")[0] for k in adapter}) == 14
    assert not any("lm_head" in k for k in adapter)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0


def test_merged_model_changes_only_the_adapted_layers(lora_run, tiny_llama):
    out, _, _ = lora_run
    base = load_file(str(tiny_llama / "model.safetensors"))
    merged = load_file(str(out / "merged" / "model.safetensors"))
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    adapted = {k for k in base if k.endswith("proj.weight")}
    assert changed == adapted and len(adapted) == 14


def test_loaded_adapter_and_merged_model_reproduce_the_trained_logits(lora_run, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, trained_logits, _ = lora_run
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=PROBE).logits, trained_logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(merged(input_ids=PROBE).logits, trained_logits, atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        assert (base(input_ids=PROBE).logits - trained_logits).abs().max() > 1e-3


class _Stop(Exception):
    pass


def test_lora_resume_with_dropout_matches_uninterrupted_run(train_weights, tiny_llama, tiny_config,
                                                            read_log, tmp_path):
    options = dict(lora_r=4, lora_dropout=0.2, lr=1e-2, max_steps=3, save_steps=2)
    full = tmp_path / "full"
    train(tiny_config(train_weights, tiny_llama, full, **options))

    def crash_at_three(record):
        if record["step"] == 3:
            raise _Stop

    broken = tmp_path / "broken"
    with pytest.raises(_Stop):
        train(tiny_config(train_weights, tiny_llama, broken, **options), on_step=crash_at_three)
    assert (broken / "checkpoint-2" / "adapter_model.safetensors").is_file()
    train(tiny_config(train_weights, tiny_llama, broken, resume=True, **options))
    a = load_file(str(full / "adapter_model.safetensors"))
    b = load_file(str(broken / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    assert [r["loss"] for r in read_log(full)] == pytest.approx([r["loss"] for r in read_log(broken)],
                                                                abs=1e-6)


@pytest.mark.parametrize("args, needle", [
    (["--merge-lora"], "--merge-lora needs --lora-r"),
    (["--lora-r", "0"], "--lora-r must be at least 1"),
    (["--lora-r", "4", "--lora-target", "no_such_proj"], "--lora-target"),
])
def test_bad_lora_options_are_one_clear_error(run_cli, train_weights, tiny_llama, tmp_path, args, needle):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", train_weights, "--model", tiny_llama, "--output-dir", out,
                            "--device", "cpu", "--max-steps", "1", *args])
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (out / "adapter_model.safetensors").exists()
