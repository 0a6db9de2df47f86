"""Adam's epsilon in optax and in Keras: how far apart single updates are, by gradient size.

optax (and the Adam paper's Algorithm 1) adds epsilon to the square root of the
bias-corrected second moment:

    optax:  update = lr * m_hat / (sqrt(v_hat) + eps)
            m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

Keras adds its epsilon ("epsilon hat", the form the paper gives just before its section 2.1)
to the square root of the *uncorrected* v and folds the bias correction into the rate:

    Keras:  update = lr_t * m / (sqrt(v) + eps),          lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)
                   = lr * m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t))

So Keras's eps acts like an optax eps of eps / sqrt(1 - b2^t): 1e-7 / sqrt(0.001) = 3.16e-6 at
step 1, falling to 1e-7 as b2^t -> 0 (after a few thousand steps). With both libraries'
defaults (optax eps 1e-8, Keras eps 1e-7) the updates of parameters with small gradients
differ. This script measures that with optax itself and with Keras's update formula
(keras.optimizers.Adam.update_step of Keras 3, written out in NumPy; if Keras is importable
the first update is also taken from Keras itself and compared with the formula):

* the relative difference |u_keras - u_optax| / |u_optax| of the first update, for gradients
  of 1e-10 to 1 (and of the update at steps 10 to 10,000 with the gradient held constant);
* three ways to get Keras's update from optax: eps = 3.16e-6 (exact at step 1 only),
  eps = 1e-7 (exact only in the limit), and optax.inject_hyperparams(optax.adam) with eps
  made a function of the step (exact at every step), checked on 10,000 steps of random
  gradients at each scale.

Command:   python experiments/adam_epsilon.py --out docs/experiments
Hardware:  any (float64 arithmetic, no training); about 20 seconds on 2 shared CPU cores.
Expected:  with the defaults, first updates differ by at most 3.1 % for gradients of 1e-4 and
           above, by 24 % at 1e-5, 76 % at 1e-6 and 99.7 % at 1e-8 and below; optax with
           eps = 3.16e-6 matches Keras's first update only (68-97 % apart from step 10 on, for
           small gradients), eps = 1e-7 matches only after about 5,000 steps (26 % apart at
           step 1000), and the step-dependent eps matches every step to float64 rounding.

Writes <out>/adam_epsilon.{json,md,png}; <out> is a fresh runs/experiments/adam_epsilon-<time>/
unless --out is given (--out docs/experiments replaces the committed results).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

import _common as C

LR, B1, B2 = 1e-3, 0.9, 0.999
OPTAX_EPS, KERAS_EPS = 1e-8, 1e-7                  # each library's default
STEP1_EPS = KERAS_EPS / math.sqrt(1 - B2)          # Keras's eps in optax's form at step 1
STEPS = (1, 10, 100, 1000, 10000)
GRADS = np.logspace(-10, 0, 41)                    # 4 points per decade


def keras_effective_eps(t):
    """Keras's epsilon expressed as optax's (added to sqrt(v_hat)) at step ``t`` (1-based)."""
    return KERAS_EPS / np.sqrt(1 - B2 ** np.asarray(t, np.float64))


def keras_updates(grads: np.ndarray, eps: float = KERAS_EPS) -> np.ndarray:
    """Keras 3's Adam update (the amount subtracted from the parameter) at every step.

    ``grads``: (steps, n) gradients; float64 NumPy, the formula of
    keras.optimizers.Adam.update_step: m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    alpha = lr sqrt(1 - b2^t) / (1 - b1^t); update = alpha m / (sqrt(v) + eps).
    """
    m = np.zeros(grads.shape[1])
    v = np.zeros(grads.shape[1])
    out = np.empty_like(grads, dtype=np.float64)
    for i, g in enumerate(grads.astype(np.float64)):
        t = i + 1
        m += (g - m) * (1 - B1)
        v += (g * g - v) * (1 - B2)
        alpha = LR * math.sqrt(1 - B2 ** t) / (1 - B1 ** t)
        out[i] = alpha * m / (np.sqrt(v) + eps)
    return out


def optax_updates(tx, grads: np.ndarray) -> np.ndarray:
    """optax's updates (sign flipped: the amount subtracted) at every step, in float64."""
    import jax
    import jax.numpy as jnp

    g = jnp.asarray(grads, jnp.float64)
    state = tx.init(jnp.zeros(g.shape[1], jnp.float64))

    def one(state, gt):
        u, state = tx.update(gt, state)
        return state, -u

    _, us = jax.lax.scan(one, state, g)
    return np.asarray(us, np.float64)


def keras_library_first_update(grads: np.ndarray) -> np.ndarray | None:
    """Keras's own first update, when Keras is installed (None otherwise)."""
    try:
        import keras
    except ImportError:
        return None
    var = keras.Variable(np.zeros(grads.shape, np.float32))
    opt = keras.optimizers.Adam(learning_rate=LR)
    opt.apply_gradients([(keras.ops.convert_to_tensor(grads.astype(np.float32)), var)])
    return -np.asarray(keras.ops.convert_to_numpy(var), np.float64)


def rel(a, b):
    return np.abs(a - b) / np.abs(b)


def main():
    import jax

    # float64 throughout, so the differences measured are the formulas', not float32 rounding.
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax

    args = C.out_parser(__doc__).parse_args()
    steps = max(STEPS)
    const = np.broadcast_to(GRADS, (steps, GRADS.size))   # the same gradient every step
    k_const = keras_updates(const)
    o_const = optax_updates(optax.adam(LR), const)
    by_step = {t: rel(k_const[t - 1], o_const[t - 1]) for t in STEPS}
    first = by_step[1]

    # Keras's update from optax, three ways, on random gradients at each scale.
    rng = np.random.default_rng(0)
    noisy = GRADS * rng.standard_normal((steps, GRADS.size))
    k_noisy = keras_updates(noisy)
    matched = {
        f"optax.adam(eps={STEP1_EPS:.3g})": optax.adam(LR, eps=STEP1_EPS),
        f"optax.adam(eps={KERAS_EPS:g})": optax.adam(LR, eps=KERAS_EPS),
        "inject_hyperparams(optax.adam)(eps=schedule)": optax.inject_hyperparams(optax.adam)(
            learning_rate=LR,
            eps=lambda count: KERAS_EPS / jnp.sqrt(1 - B2 ** (count + 1.0))),
    }
    match_rows = {}
    for label, tx in matched.items():
        d = rel(optax_updates(tx, noisy), k_noisy)          # relative to Keras
        match_rows[label] = {f"step_{t}": float(d[t - 1].max()) for t in STEPS}
        match_rows[label]["all_steps"] = float(d.max())

    keras_lib = keras_library_first_update(GRADS)
    g = GRADS
    summary = {
        "max_rel_diff_first_update_grad_ge_1e-4": float(first[g >= 1e-4 * (1 - 1e-9)].max()),
        "rel_diff_first_update_at_1e-4": float(first[np.isclose(g, 1e-4)][0]),
        "rel_diff_first_update_at_1e-5": float(first[np.isclose(g, 1e-5)][0]),
        "rel_diff_first_update_at_1e-6": float(first[np.isclose(g, 1e-6)][0]),
        "rel_diff_first_update_at_1e-8": float(first[np.isclose(g, 1e-8)][0]),
        "max_rel_diff_first_update_grad_le_1e-6": float(first[g <= 1e-6 * (1 + 1e-9)].max()),
        "keras_eps_as_optax_eps": {str(t): float(keras_effective_eps(t)) for t in STEPS},
    }
    record = {
        "name": "adam_epsilon",
        "description": "relative difference of Adam updates, Keras (eps 1e-7, epsilon-hat form) "
                       "vs optax (eps 1e-8), by gradient magnitude",
        "command": "python experiments/adam_epsilon.py" + (
            " --out docs/experiments" if os.path.abspath(args.out) == C.OUT else ""),
        "settings": {"learning_rate": LR, "b1": B1, "b2": B2, "optax_eps": OPTAX_EPS,
                     "keras_eps": KERAS_EPS, "dtype": "float64 (jax_enable_x64)",
                     "keras": ("keras.optimizers.Adam (first update) and its update_step "
                               "formula in NumPy float64" if keras_lib is not None else
                               "Keras not installed: keras.optimizers.Adam.update_step's "
                               "formula (Keras 3) in NumPy float64"),
                     "gradients": "constant over steps, |g| from 1e-10 to 1 (41 values); "
                                  "matching checked on g_t = |g| * N(0, 1), seed 0"},
        "gradient": GRADS.tolist(),
        "rel_diff_by_step": {str(t): by_step[t].tolist() for t in STEPS},
        "summary": summary,
        "matching_max_rel_diff": match_rows,
        "versions": C.provenance.versions(),
        "device": C.provenance.device_info(),
    }
    if keras_lib is not None:
        record["keras_library_vs_formula_max_rel_diff"] = float(rel(keras_lib,
                                                                    k_const[0]).max())
    with open(os.path.join(args.out, "adam_epsilon.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")

    pct = lambda x: f"{100 * x:.3g} %"  # noqa: E731
    rows = [[f"{x:g}"] + [pct(by_step[t][i]) for t in STEPS]
            for i, x in enumerate(GRADS) if i % 4 == 0]
    note = ("Relative difference |u_keras - u_optax| / |u_optax| of one Adam update, both "
            f"libraries at their defaults (lr {LR:g}, b1 {B1}, b2 {B2}; optax eps {OPTAX_EPS:g}, "
            f"Keras eps {KERAS_EPS:g}), the gradient held constant for t steps. Keras: "
            + record["settings"]["keras"] + "; optax in float64 (jax_enable_x64).\n\n"
            "Keras's update from optax (largest relative difference to Keras over the 41 "
            "gradient scales, random gradients):\n\n"
            "| optax optimiser | step 1 | step 10 | step 100 | step 1000 | step 10000 |\n"
            "|---|---|---|---|---|---|\n"
            + "\n".join(f"| `{label}` | " + " | ".join(pct(r[f'step_{t}']) for t in STEPS)
                        + " |" for label, r in match_rows.items())
            + f"\n\n{C.environment_line()}")
    C.write_table("adam_epsilon", args, ["gradient |g|"] + [f"step {t}" for t in STEPS], rows,
                  note=note)

    plt = C.pyplot()
    fig, (ax, ax_eps) = plt.subplots(1, 2, figsize=(12, 4.3))
    for i, t in enumerate(STEPS):
        ax.loglog(GRADS, np.maximum(by_step[t], 1e-8), color=f"C{i}",
                  marker="o" if t == 1 else None, ms=3,
                  label=f"step {t}" + (" (first update)" if t == 1 else ", constant gradient"))
    worst = summary["max_rel_diff_first_update_grad_ge_1e-4"]
    ax.axvspan(1e-4, 1, color="0.9", zorder=0,
               label=f"|g| >= 1e-4: at most {100 * worst:.1f} % at step 1")
    ax.set(xlabel="gradient magnitude |g|", ylabel="relative difference of the update",
           title="Keras (eps 1e-7) vs optax (eps 1e-8), defaults", ylim=(1e-6, 2))
    ax.legend(fontsize=8)
    t = np.logspace(0, 4.3, 200)
    ax_eps.loglog(t, keras_effective_eps(t), color="C3", label="Keras 1e-7 as optax eps: "
                  "1e-7 / sqrt(1 - 0.999^t)")
    for val, ls, lab in ((STEP1_EPS, "--", f"optax eps {STEP1_EPS:.3g} (= Keras at step 1)"),
                         (KERAS_EPS, ":", "optax eps 1e-7 (= Keras as t grows)"),
                         (OPTAX_EPS, "-.", "optax default 1e-8")):
        ax_eps.axhline(val, color="0.3", ls=ls, lw=1, label=lab)
    ax_eps.set(xlabel="step t", ylabel="epsilon added to sqrt(v_hat)",
               title="Keras's epsilon in optax's form, by step")
    ax_eps.legend(fontsize=8)
    for a in (ax, ax_eps):
        a.grid(alpha=0.3, which="both")
    C.save(fig, args, "adam_epsilon.png")
    print(json.dumps(summary, indent=1))
    print(json.dumps(match_rows, indent=1))


if __name__ == "__main__":
    main()
