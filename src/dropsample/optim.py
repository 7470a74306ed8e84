"""The optimizer: torch.optim.AdamW(fused=True)'s update, bit for bit, without torch.optim's start-up.

Why it exists: every torch.optim.Optimizer method is wrapped in `torch._disable_dynamo`,
whose first call imports torch._dynamo (1.5-2.5 s on a 2-core CPU), so constructing
torch.optim.AdamW alone used to be the largest part of the time to the first training
step. This class makes the call torch.optim.AdamW(fused=True) makes (`_fused_adam` in
torch/optim/adam.py: step counts += 1, then one `torch._fused_adamw_` over all parameters
of a group, decoupled weight decay, amsgrad off), so every parameter comes out bit-for-bit
equal to torch's fused AdamW (tests/test_optim.py checks that):

    step_t += 1
    p   <- p * (1 - lr * weight_decay)
    m   <- m.lerp(g, 1 - beta1)
    v   <- v * beta2 + (1 - beta2) g^2
    p   <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

One fused pass per parameter instead of eight `_foreach_*` passes over all of them: an
optimizer step of the shakespeare preset 20.1 ms -> 5.7 ms, baby 2.2 ms -> 0.3 ms on a
2-core CPU. (The single-tensor path torch uses by default on CPU rounds differently in the
last bits; packed.py computes that one and is compared with a tolerance.)

Its state_dict has torch's layout (`state` by parameter index with `step`, `exp_avg`,
`exp_avg_sq`; `param_groups` with torch's keys), so checkpoints written with either
optimizer resume with the other. training.make_optimizer uses it on CPU only; on CUDA and
MPS it keeps torch.optim.AdamW itself (its import cost is small next to those devices' start-up).
"""

from __future__ import annotations

import torch

# torch.optim.AdamW's param-group keys, in its order, with the values our construction implies
_GROUP_DEFAULTS = {"amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                   "differentiable": False, "fused": True, "decoupled_weight_decay": True}


class AdamW:
    """AdamW with torch's arithmetic and state_dict format; `param_groups[i]["lr"]` may change per step."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        self.param_groups: list[dict] = []
        for g in groups:
            params = list(g["params"])
            group = {"params": params, "lr": g.get("lr", lr), "betas": tuple(g.get("betas", betas)),
                     "eps": g.get("eps", eps), "weight_decay": g.get("weight_decay", weight_decay)}
            group.update(_GROUP_DEFAULTS)
            self.param_groups.append(group)
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = []
            for p in params:
                s = self.state.get(p)
                if s is None:  # lazily, as torch's fused path does: step and moments on the parameter's device
                    s = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                states.append(s)
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            torch._foreach_add_(steps := [s["step"] for s in states], 1)
            torch._fused_adamw_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                                steps, amsgrad=False, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd, eps=eps,
                                maximize=False, grad_scale=None, found_inf=None)

    def _index(self) -> dict[torch.Tensor, int]:
        order, index = {}, 0
        for group in self.param_groups:
            for p in group["params"]:
                if p not in order:
                    order[p] = index
                    index += 1
        return order

    def state_dict(self) -> dict:
        order = self._index()
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [order[p] for p in group["params"]]
            groups.append(packed)
        state = {order[p]: dict(s) for p, s in self.state.items()}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's rules: same number of groups and of parameters per group, or ValueError."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             "optimizer's group")
        by_index = {}
        for s, g in zip(saved, self.param_groups):
            by_index.update(zip(s["params"], g["params"]))
        self.state = {}
        for index, slots in state_dict["state"].items():
            p = by_index[int(index)]
            self.state[p] = {
                # step a float32 scalar, moments in the parameter's dtype, all on the parameter's device
                name: (torch.as_tensor(v, dtype=torch.float32).detach().to(p.device).clone() if name == "step"
                       else v.detach().to(device=p.device, dtype=p.dtype).clone())
                for name, v in slots.items()
            }
        for s, g in zip(saved, self.param_groups):
            for key, value in s.items():
                if key != "params":
                    g[key] = tuple(value) if key == "betas" else value
