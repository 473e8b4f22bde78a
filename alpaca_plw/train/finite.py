"""The checks that stop a diverging run: a step whose loss or gradient norm is not finite is not
applied, and no checkpoint or final model with a non-finite parameter is written."""

from __future__ import annotations

import math
from pathlib import Path

from alpaca_plw.errors import DivergedError


def check_step(step: int, loss_sum, denominator: float, grad_norm, out: Path) -> None:
    """Stop before applying step `step` when its loss or gradient norm is not finite."""
    import torch

    norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    # with --cpu-offload the gradients, hence their norm, live on the host while the loss is on
    # the GPU: bring the norm to the loss's device, then one read of both
    norm = norm.to(loss_sum.device, torch.float64)
    loss_sum, norm = torch.stack([loss_sum.double(), norm]).tolist()
    loss = loss_sum / denominator
    if math.isfinite(loss) and math.isfinite(norm):
        return
    from alpaca_plw.train.checkpoints.folders import latest_checkpoint

    last = latest_checkpoint(Path(out))
    raise DivergedError(
        f"step {step}: the loss is {loss} and the gradient norm {norm}; training stopped before "
        "applying this step, and no model was saved. "
        + (f"The last good checkpoint is {last}." if last else "No checkpoint was saved yet.")
        + " Check the data and a lower --lr (a new run: --force or a new --output-dir)")


def check_params(model, d, what: str, step: int | None = None, out: Path | None = None) -> None:
    """Refuse to save `what` when a parameter is not finite (over every rank): one fused max-abs
    per parameter list (NaN propagates), one device read."""
    import torch

    tensors = [(p.to_local() if hasattr(p, "to_local") else p).detach() for p in model.parameters()]
    norms = torch._foreach_norm([t for t in tensors if t.numel()], float("inf"))
    worst = torch.stack([n.double() for n in norms]).max() if norms else torch.zeros((), dtype=torch.float64)
    bad = (~torch.isfinite(worst)).double().reshape(1).to(d.device)
    d.all_reduce_sum(bad)
    if not bad.item():
        return
    where = f"step {step}: " if step is not None else ""
    last = ""
    if out is not None:
        from alpaca_plw.train.checkpoints.folders import latest_checkpoint

        found = latest_checkpoint(Path(out))
        last = f" The last good checkpoint is {found}." if found else " No checkpoint was saved yet."
    raise DivergedError(f"{where}model parameters are not finite; {what} was not saved.{last} "
                        "Check the data and a lower --lr")
