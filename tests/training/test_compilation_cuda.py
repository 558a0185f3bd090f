"""CUDA graphs (`run.cuda_graphs`) on a GPU, in the pairs the config rules still refuse: with
gradient accumulation (the gradients in buffers of their own) and with gradient checkpointing
(inside the compiled blocks' graphs). Each trains the tiny model as the same run compiled
without CUDA graphs does. Skipped without a CUDA GPU; part of the prepared GPU session
(benchmarks/gpu_check.sh): when they pass there, the refusals can go."""

import pytest
import torch

import acestep.training.config as config_module
from acestep.training.loop import train

from .conftest import write_tensors_dir
from .test_loop import adapter_tensors, make_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("pair", ["optimizer.gradient_accumulation=2", "run.gradient_checkpointing=true"])
def test_cuda_graphs_train_as_the_compiled_run_without_them(tmp_path, tiny_dit, monkeypatch, pair):
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 4)
    rules = config_module.rule_problems  # the rules less the refusal of the pair under test
    monkeypatch.setattr(config_module, "rule_problems", lambda *args: [
        (path, message) for path, message in rules(*args) if "do not go together yet" not in message])

    def trained(cuda_graphs: bool) -> dict[str, torch.Tensor]:
        name = f"graphs-{cuda_graphs}"
        config = make_config(tmp_path, tensors, tiny_dit, "run.compile=true", pair, "adapter.dropout=0",
                             "run.epochs=2", "run.save_every_epochs=0", f"run.name={name}")
        config.run.cuda_graphs = cuda_graphs
        torch._dynamo.reset()
        result = train(config)
        assert result.step > 1
        return adapter_tensors(result.run_dir / "final")

    graphed, plain = trained(True), trained(False)
    moved = [name for name, value in plain.items() if "lora_B" in name and value.abs().max() > 0]
    assert moved, "the adapter did not train"
    for name, value in plain.items():
        torch.testing.assert_close(graphed[name], value, rtol=1e-2, atol=1e-5, msg=name)
