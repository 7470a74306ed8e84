"""dropsample.optim.AdamW against torch.optim.AdamW(fused=True): the same parameters bit for
bit, and state dicts that move between the two (and to torch's default, single-tensor AdamW)."""

import copy

import torch

from dropsample.optim import AdamW


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))


def _groups(model):
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        for group in opt.param_groups:
            group["lr"] = 1e-2 * (step + 1) / steps  # a schedule changes lr between steps
        x = torch.randn(16, 7, generator=torch.Generator().manual_seed(step))
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _side_by_side(fused: bool, steps: int = 25):
    """The same model trained with ours and with torch.optim.AdamW(fused=fused)."""
    ours, theirs = _model(), _model()
    a = AdamW(_groups(ours), lr=1e-2, betas=(0.9, 0.99))
    b = torch.optim.AdamW(_groups(theirs), lr=1e-2, betas=(0.9, 0.99), fused=fused)
    _train(ours, a, steps)
    _train(theirs, b, steps)
    return ours, theirs, a, b


def test_same_parameters_bit_for_bit_as_torch_fused_adamw():
    ours, theirs, a, b = _side_by_side(fused=True)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]  # same keys, values and parameter indices
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for slot in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][i][slot], sb["state"][i][slot])


def test_same_update_as_torch_default_adamw_up_to_rounding():
    # torch's default CPU path (single-tensor) is the same formula, rounded differently
    ours, theirs, _, _ = _side_by_side(fused=False)
    moved = 0.0
    for p, q, p0 in zip(ours.parameters(), theirs.parameters(), _model().parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
        moved = max(moved, (p - p0).abs().max().item())
    assert moved > 1e-2  # the comparison is between trained parameters, not two copies of the start


def test_state_dicts_move_between_ours_and_torch():
    # 10 steps with torch, 10 more with ours from torch's state; and the other way round
    first, second = _model(), _model()
    b = torch.optim.AdamW(_groups(first), lr=1e-2, betas=(0.9, 0.99), fused=True)
    _train(first, b, 10)
    second.load_state_dict(first.state_dict())
    a = AdamW(_groups(second), lr=1e-2, betas=(0.9, 0.99))
    a.load_state_dict(b.state_dict())
    _train(first, b, 10, start=10)
    _train(second, a, 10, start=10)
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)
    b2 = torch.optim.AdamW(_groups(first), lr=1e-2, betas=(0.9, 0.99), fused=True)
    b2.load_state_dict(copy.deepcopy(a.state_dict()))  # torch's load keeps the tensors it is given
    first.load_state_dict(second.state_dict())
    _train(first, b2, 5, start=20)
    _train(second, a, 5, start=20)
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)


def test_load_refuses_a_state_of_another_shape():
    a = AdamW(_groups(_model()), lr=1e-2)
    other = torch.nn.Linear(3, 3)
    b = AdamW([{"params": list(other.parameters()), "weight_decay": 0.0}], lr=1e-2)
    try:
        a.load_state_dict(b.state_dict())
    except ValueError as exc:
        assert "parameter groups" in str(exc)
    else:
        raise AssertionError("a state dict with one group loaded into two groups")
