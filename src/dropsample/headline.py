"""The run headline printed at the end of `train` and `sample`: where the run is, what dropout
it trained with, and its figures with their uncertainty, in lines that fit 80 columns."""

from __future__ import annotations

import sys

from dropsample.runs import RunFolder, Summary

WIDTH = 80


def _pm(value, se, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def dropout_line(summary: Summary) -> str:
    rates = summary.dropout or {}
    on = [f"{k} {v:g}" for k, v in rates.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v]
    locked = rates.get("locked") or []
    text = ", ".join(on) or "none"
    if locked:
        text += f"; locked: {', '.join(locked)}"
    return f"{text} (schedule: {summary.dropout_schedule or 'constant'})"


def lines(run: RunFolder, summary: Summary | None = None) -> list[str]:
    s = summary or run.summary()
    status = "training completed, now sampling" if s.stage == "sampling" else s.status
    out = [f"run      {run.path}", f"status   {status}" + (f" ({s.steps} steps)" if s.steps is not None else ""),
           f"dropout  {dropout_line(s)}"]
    if s.val_loss is not None:
        ev = s.evaluation or {}
        where = f"best checkpoint, step {ev.get('step')}, {ev.get('splits', {}).get('val', {}).get('tokens', 0):,} tokens"
        ppl = f"{s.val_ppl:.3f}"
        if s.val_ppl_low is not None:
            ppl += f" [{s.val_ppl_low:.3f}, {s.val_ppl_high:.3f}]"
        out += [f"val      ppl {ppl} ({where})",
                f"         loss {_pm(s.val_loss, s.val_loss_se)} nats/token, {_pm(s.val_bpb, s.val_bpb_se)} bits/byte",
                f"gap      val - train loss {_pm(s.gap, s.gap_se)} nats (ppl ratio {s.ppl_ratio:.3f})"]
    elif s.best_val_ppl is not None:
        out.append(f"val      ppl {s.best_val_ppl:.3f} at step {s.best_step} (eval batches only; no final evaluation)")
    return _wrap(out)


def _wrap(out: list[str]) -> list[str]:
    """Break long lines at ', ' with a hanging indent (never cut numbers)."""
    wrapped = []
    for line in out:
        while len(line) > WIDTH and ", " in line[:WIDTH]:
            cut = line.rfind(", ", 0, WIDTH) + 1
            wrapped.append(line[:cut])
            line = " " * 9 + line[cut:].lstrip()
        wrapped.append(line)
    return wrapped


def print_run(run: RunFolder, summary: Summary | None = None) -> None:
    print("\n".join(lines(run, summary)), file=sys.stderr)
