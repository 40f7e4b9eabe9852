"""What the web demo computes, free of any web framework: one function per view, each
taking the request's JSON object and returning a JSON-able dict.

Every field is checked before any work (``BadRequest``, a ``ValueError``, names the field,
the value and what is valid; the app answers it with HTTP 400), and sizes are capped
(``LIMITS``) so one request takes seconds, never minutes. The computing is the library's:

- ``sample_digits``: ``zoo.quality.sample_digits`` (the bundled digits models, a solver, a
  grid: the default, a named family of ``diffinfer.grids`` or the zoo's fitted grid);
- ``decode_text``: ``mdm.decode`` on ``shakespeare-char`` with an ``mdm.DecodeTrace``
  (every canvas and the step that committed each position);
- ``inpaint_digit``: ``zoo.tasks.restore_digits`` with an ``inverse.Inpaint`` of the drawn
  mask (DPS, RED-Diff, projection).
"""
from __future__ import annotations

import base64
import math
import threading
import time

import torch

#: the caps on one request (a CPU core does about 3,000 digit sample-steps a second)
LIMITS = {
    "digits_n": 64,           # samples per request
    "digits_steps": 200,      # solver steps
    "text_length": 256,       # tokens (the model's context)
    "inpaint_n": 8,           # posterior samples
    "inpaint_steps": 500,     # solver steps / RED-Diff iterations
    "inpaint_work": 2_000,    # samples x steps
    "seed": 2 ** 31 - 1,
    "guidance": 20.0,
    "temperature": 10.0,
    "noise": 1.0,
    "prompt_chars": 200,
}
#: text policies that decide how many tokens to commit per step (no ``steps`` field)
SELF_PACED = ("threshold", "factor", "dilated")
#: the ``restore`` defaults per method (``inverse.restore``'s)
INPAINT_STEPS = {"dps": 100, "reddiff": 500, "projection": 50}
N_DIGITS = 1797
GRID_CHOICES_FIXED = ("default", "fitted")

#: one model computation at a time (the bundled networks and the zoo cache are shared)
_LOCK = threading.Lock()


class BadRequest(ValueError):
    """A request field outside what is valid (HTTP 400, the message shown in the page)."""


# --- field checks ---------------------------------------------------------------------
def _present(body: dict, key: str) -> bool:
    return key in body and body[key] is not None and body[key] != ""


def int_field(body: dict, key: str, default, lo: int, hi: int) -> int:
    """``body[key]`` as an int in ``[lo, hi]`` (``default`` when absent or empty)."""
    if not _present(body, key):
        if default is None:
            raise BadRequest(f"{key} is required (an integer in [{lo}, {hi}])")
        return default
    value = body[key]
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise BadRequest(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    try:
        v = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be an integer in [{lo}, {hi}], got {value!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return v


def float_field(body: dict, key: str, default, lo: float, hi: float) -> float | None:
    """``body[key]`` as a finite float in ``[lo, hi]`` (``default`` when absent or empty)."""
    if not _present(body, key):
        return default
    value = body[key]
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be a number in [{lo}, {hi}], got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be a number in [{lo}, {hi}], got {value!r}")
    return v


def choice_field(body: dict, key: str, default, valid) -> str:
    value = body.get(key, default)
    if value is None or value == "":
        value = default
    if value not in valid:
        raise BadRequest(f"unknown {key} {value!r}; valid: {', '.join(map(str, valid))}")
    return value


def _check_body(body, allowed) -> dict:
    if not isinstance(body, dict):
        raise BadRequest(f"the request must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown fields {unknown}; valid: {', '.join(sorted(allowed))}")
    return body


def png_data_url(image: torch.Tensor, scale: int) -> str:
    """A grey image ``[H, W]`` in ``[0, 1]`` (``viz.digit_grid``) as a ``data:image/png`` URL."""
    from ..viz import image_bytes
    return "data:image/png;base64," + base64.b64encode(image_bytes(image, scale)).decode("ascii")


# --- options --------------------------------------------------------------------------
def fitted_grids(model: str) -> dict:
    """The zoo's fitted grids of ``model`` (``{key: OptimizedGrid}``; empty if none shipped)."""
    from .. import grids, zoo
    path = zoo.grids_path(model)
    return grids.load(path) if path.exists() else {}


def options() -> dict:
    """What the page's menus offer and the caps it states."""
    from .. import grids, inverse, solvers
    from ..mdm.policies import policy_names
    from ..zoo.quality import default_solver
    from ..zoo.tasks import DIGIT_MODELS
    fitted = {m: sorted(k for k, r in fitted_grids(m).items() if r.model_ts is None) for m in DIGIT_MODELS}
    return {"digit_models": list(DIGIT_MODELS), "solvers": solvers.names(), "default_solver": default_solver(),
            "grids": list(GRID_CHOICES_FIXED) + grids.names(), "fitted": fitted,
            "policies": policy_names(), "self_paced": list(SELF_PACED), "methods": list(inverse.METHODS),
            "inpaint_steps": INPAINT_STEPS, "limits": LIMITS}


# --- digits ---------------------------------------------------------------------------
DIGITS_FIELDS = ("model", "solver", "steps", "grid", "label", "guidance", "n", "seed", "raw")


def _fitted_record(model: str, solver: str, steps: int):
    """The lowest-loss fitted grid of ``solver`` at ``steps`` (plain model times)."""
    from .. import grids
    records = {k: r for k, r in fitted_grids(model).items() if r.model_ts is None}
    mine = [r for r in records.values() if r.solver == solver and r.steps == steps]
    if not mine:
        have = ", ".join(sorted(records)) or "none"
        raise BadRequest(f"no fitted grid for solver {solver!r} at {steps} steps on {model}; fitted: {have}")
    return grids.best(mine, steps)


def digits_request(body: dict) -> dict:
    """The checked fields of a digits request (``BadRequest`` on the first bad one)."""
    from .. import grids, solvers
    from ..zoo.quality import default_solver
    from ..zoo.tasks import DIGIT_MODELS
    body = _check_body(body, DIGITS_FIELDS)
    req = {"model": choice_field(body, "model", "digits", DIGIT_MODELS),
           "solver": choice_field(body, "solver", default_solver(), solvers.names()),
           "steps": int_field(body, "steps", 10, 1, LIMITS["digits_steps"]),
           "grid": choice_field(body, "grid", "default", list(GRID_CHOICES_FIXED) + grids.names()),
           "label": int_field(body, "label", None, 0, 9) if _present(body, "label") else None,
           "guidance": float_field(body, "guidance", None, 0.0, LIMITS["guidance"]),
           "n": int_field(body, "n", 16, 1, LIMITS["digits_n"]),
           "seed": int_field(body, "seed", 0, 0, LIMITS["seed"]),
           "raw": bool(body.get("raw", False))}
    return req


def sample_digits(body: dict) -> dict:
    """Digits from a bundled model: a PNG grid (8 per row), NFE and wall time. Row ``i``
    uses noise stream ``(seed, i)``: the same seed gives the same starting noise for every
    solver (the side-by-side view), and the same samples as ``zoo.quality.sample_digits``."""
    from .. import grids, zoo
    from ..viz import digit_grid
    from ..zoo import quality
    req = digits_request(body)
    model, n, steps, solver = req["model"], req["n"], req["steps"], req["solver"]
    labels = None
    if req["label"] is not None:
        labels = torch.full((n,), req["label"], dtype=torch.int64)
    elif req["guidance"] is not None:
        labels = torch.arange(n) % 10  # guided samples need a class: cycle through 0-9 (as the CLI)
    options, grid_name = {}, req["grid"]
    if req["grid"] == "fitted":
        record = _fitted_record(model, solver, steps)
        options = {"ts": record.grid, **record.solver_options}
        grid_name = f"fitted {record.key}"
    elif req["grid"] != "default":
        options = {"ts": grids.get(req["grid"], zoo.load(model).process, steps)}
    with _LOCK:
        start = time.perf_counter()
        x, nfe = quality.sample_digits(model, n, labels, req["guidance"], solver, steps, req["seed"], **options)
        wall = time.perf_counter() - start
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{solver} at {steps} steps produced NaN or Inf samples")
    out = {"image": png_data_url(digit_grid(x, nrow=min(n, 8)), scale=8), "nfe": int(nfe),
           "wall_time": round(wall, 4), "solver": solver, "steps": steps, "grid": grid_name, "n": n,
           "seed": req["seed"], "label": req["label"], "guidance": req["guidance"], "model": model}
    if req["raw"]:
        out["samples"] = x.tolist()  # [n, 1, 8, 8]: floats round-trip JSON exactly
    return out


# --- text -----------------------------------------------------------------------------
TEXT_FIELDS = ("policy", "steps", "length", "seed", "temperature", "threshold", "block", "prompt")


def text_request(body: dict, max_len: int) -> dict:
    from ..mdm.policies import policy_names
    body = _check_body(body, TEXT_FIELDS)
    policy = choice_field(body, "policy", "low-confidence", policy_names())
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str) or len(prompt) > LIMITS["prompt_chars"]:
        raise BadRequest(f"prompt must be text of at most {LIMITS['prompt_chars']} characters")
    room = max_len - len(prompt)
    if room < 1:
        raise BadRequest(f"the prompt leaves no room in the model's context of {max_len} characters")
    length = int_field(body, "length", min(128, room), 1, min(LIMITS["text_length"], room))
    if _present(body, "steps") and policy in SELF_PACED:
        raise BadRequest(f"steps does not apply to policy {policy} (it decides how many tokens to commit per "
                         f"step); leave it empty")
    steps = int_field(body, "steps", None, 1, length) if _present(body, "steps") else None
    if _present(body, "threshold") and policy not in ("threshold", "confident"):
        raise BadRequest(f"threshold applies to policy threshold or confident, not {policy}")
    threshold = float_field(body, "threshold", 0.9, 0.0, 1.0)
    block = body.get("block")
    block = None if block in (None, "", "none") else int_field(body, "block", None, 1, length)
    return {"policy": policy, "prompt": prompt, "length": length, "steps": steps, "block": block,
            "threshold": threshold if policy in ("threshold", "confident") else None,
            "temperature": float_field(body, "temperature", 1.0, 0.0, LIMITS["temperature"]),
            "seed": int_field(body, "seed", 0, 0, LIMITS["seed"])}


def decode_text(body: dict) -> dict:
    """Decode ``shakespeare-char`` with a policy and return its history: ``frames`` (the
    generated text after each step, the mask shown as ``mask_char``), ``order`` (the step
    that committed each generated character) and the final ``text``."""
    from .. import zoo
    from ..mdm.decode import decode
    from ..mdm.trace import DecodeTrace
    model = zoo.load("shakespeare-char")
    req = text_request(body, model.max_len)
    prompt_ids = None
    if req["prompt"]:
        vocab = set(model.decode(list(range(model.mask_id))))
        bad = sorted(set(req["prompt"]) - vocab)
        if bad:
            raise BadRequest(f"the prompt has characters the model does not know: {bad}")
        prompt_ids = model.encode(req["prompt"])
    options = {"threshold": req["threshold"]} if req["threshold"] is not None else {}
    trace = DecodeTrace(model.mask_id)
    with _LOCK:
        res = decode(model, prompt=prompt_ids, length=req["length"], policy=req["policy"], steps=req["steps"],
                     block=req["block"], temperature=req["temperature"], seed=req["seed"], callback=trace,
                     **options)
    start, end = int(res.gen_start[0]), int(res.gen_end[0])
    frames = [model.decode(c[0, start:end].tolist()) for c in trace.canvases]  # [steps] strings
    return {"prompt": req["prompt"], "frames": frames, "order": trace.commit_step[0, start:end].tolist(),
            "text": model.decode(res.tokens[0, start:end].tolist()), "mask_char": model.decode([model.mask_id]),
            "nfe": res.nfe, "steps": res.steps, "wall_time": round(res.wall_time, 4), "policy": req["policy"],
            "length": req["length"]}


# --- inpainting -----------------------------------------------------------------------
INPAINT_FIELDS = ("model", "method", "index", "mask", "steps", "n", "seed", "noise", "raw")


def inpaint_request(body: dict) -> dict:
    from .. import inverse
    from ..zoo.tasks import DIGIT_MODELS
    body = _check_body(body, INPAINT_FIELDS)
    method = choice_field(body, "method", "dps", inverse.METHODS)
    steps = int_field(body, "steps", INPAINT_STEPS[method], 1, LIMITS["inpaint_steps"])
    n = int_field(body, "n", 4, 1, LIMITS["inpaint_n"])
    if n * steps > LIMITS["inpaint_work"]:
        raise BadRequest(f"n {n} x steps {steps} = {n * steps} sample-steps; at most {LIMITS['inpaint_work']} "
                         f"per request")
    mask = body.get("mask")
    if mask is None:
        mask = [1] * 64
    if not isinstance(mask, list) or len(mask) != 64 or any(v not in (0, 1) or isinstance(v, bool) for v in mask):
        raise BadRequest("mask must be a list of 64 values, 0 (a hole to fill) or 1 (an observed pixel), "
                         "row by row")
    return {"model": choice_field(body, "model", "digits", DIGIT_MODELS), "method": method, "steps": steps, "n": n,
            "index": int_field(body, "index", 0, 0, N_DIGITS - 1), "mask": mask,
            "seed": int_field(body, "seed", 0, 0, LIMITS["seed"]),
            "noise": float_field(body, "noise", 0.05, 0.0, LIMITS["noise"]), "raw": bool(body.get("raw", False))}


def inpaint_digit(body: dict) -> dict:
    """Fill the holes (``mask`` 0) of real digit ``index`` with ``method``: a PNG strip
    ``input | measurement | n restorations``, PSNR to the input per restoration, NFE and wall
    time. The same computation as ``diffinfer restore`` with the drawn mask as the operator."""
    from .. import inverse
    from ..metrics import psnr
    from ..viz import digit_grid
    from ..zoo.data import digits
    from ..zoo.tasks import measurement_view, restore_digits
    req = inpaint_request(body)
    x = digits()[0][req["index"]:req["index"] + 1].expand(req["n"], -1, -1, -1).contiguous()  # [n, 1, 8, 8]
    op = inverse.Inpaint(torch.tensor(req["mask"], dtype=torch.float32).reshape(1, 8, 8), req["noise"])
    with _LOCK:
        start = time.perf_counter()
        out, y, op, nfe = restore_digits(req["model"], "inpaint", req["method"], x, req["noise"], req["steps"],
                                         req["seed"], op=op)
        wall = time.perf_counter() - start
    view = measurement_view(op, y[:1]).clamp(-1, 1)
    strip = torch.cat([x[:1], view, out]).float()  # [n + 2, 1, 8, 8]
    result = {"image": png_data_url(digit_grid(strip, nrow=strip.shape[0]), scale=8),
              "psnr": [round(float(v), 2) for v in psnr(out, x)], "nfe": int(nfe), "wall_time": round(wall, 4),
              "method": req["method"], "steps": req["steps"], "n": req["n"], "index": req["index"],
              "holes": int(64 - sum(req["mask"]))}
    if req["raw"]:
        result["samples"] = out.tolist()
    return result


def digit_image(index: int) -> dict:
    """Real digit ``index`` as 64 values in ``[0, 1]`` (1 is ink), row by row, for the mask canvas."""
    from ..zoo.data import digits, digits_to_unit
    i = int_field({"index": index}, "index", 0, 0, N_DIGITS - 1)
    return {"index": i, "pixels": [round(float(v), 4) for v in digits_to_unit(digits()[0][i, 0]).reshape(-1)]}


__all__ = ["LIMITS", "BadRequest", "options", "sample_digits", "decode_text", "inpaint_digit", "digit_image",
           "fitted_grids"]
