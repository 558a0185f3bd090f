"""Training state round-trips bit for bit without pickle."""

import random

import numpy as np
import pytest
import torch

from acestep.training.state import load_state, save_state


def test_optimizer_state_round_trips_exactly(tmp_path):
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        model(torch.randn(2, 8)).square().sum().backward()
        optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state(),
             "numpy": np.random.get_state(), "python": random.getstate()}, "progress": {"step": 3, "best": None,
             "metrics": [0.5, float("inf")]}}
    save_state(state, tmp_path)
    loaded = load_state(tmp_path)
    fresh = torch.optim.AdamW(torch.nn.Linear(8, 4).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][key], value)
    assert loaded["progress"] == {"step": 3, "best": None, "metrics": [0.5, float("inf")]}
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    random.setstate((loaded["rng"]["python"][0], tuple(loaded["rng"]["python"][1]), loaded["rng"]["python"][2]))
    assert not list(tmp_path.glob("*.pt"))


def test_one_tensor_free_entry_is_read_from_the_json_alone(tmp_path):
    from acestep.errors import TrainingError
    from acestep.training.state import load_state_entry, save_state

    save_state({"config": {"run": {"epochs": 3, "betas": (0.9, 0.99)}}, "adapter": {"w": torch.ones(2)}}, tmp_path)
    (tmp_path / "state.safetensors").unlink()  # not needed for it
    assert load_state_entry(tmp_path, "config") == {"run": {"epochs": 3, "betas": (0.9, 0.99)}}
    assert load_state_entry(tmp_path, "missing") is None
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(TrainingError, match="training state in .* is damaged"):
        load_state_entry(tmp_path, "config")


def test_the_random_generators_continue_exactly_after_their_states_are_put_back(tmp_path):
    from acestep.training.state import restore_rng, rng_states

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    save_state({"rng": rng_states()}, tmp_path)  # through the checkpoint files, as a resume reads them
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(load_state(tmp_path)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_the_states_taken_in_memory_are_put_back_too():
    """As a preview during training does: every global generator continues where it was."""
    from acestep.training.state import restore_rng, rng_states

    states = rng_states()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
