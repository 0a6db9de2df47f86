"""Final state vs best checkpoint, made explicit: what `jaxcnn train` prints and records,
what `jaxcnn eval` says it used, the early-stopping message and the diverging-loss warning.

Tiny models on synthetic data (random labels) keep every run to a few seconds.
"""

import json
import logging
import math
import re

import pytest

from jaxcnn.cli import main
from jaxcnn.run import loss_warning, result_lines

# 256 training images of 8x8x1, 4 classes: 8 steps per epoch at batch 32.
DATA = "synthetic:8x8x1:4:256"
LINEAR = "flatten softmax"  # its loss grows with the weights, not exponentially: stays finite
CHANCE = math.log(4)


def _train(capsys, workdir, *extra):
    args = ["train", "--dataset", DATA, "--batch-size", "32", "--num-devices", "1", "--quiet",
            "--workdir", str(workdir), *extra]
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads((workdir / "summary.json").read_text())
    history = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
    return captured, summary, history


@pytest.fixture(autouse=True)
def _log_to_stderr(caplog):
    # main() configures logging once per process; make sure the jaxcnn logger reaches stderr.
    caplog.set_level(logging.INFO, logger="jaxcnn")


def test_diverging_run_warns_and_records_final_and_best(tmp_path, capsys, caplog):
    # SGD at lr 100 with the rate warming up over both epochs: the loss rises, finite.
    workdir = tmp_path / "diverging"
    captured, summary, history = _train(
        capsys, workdir, "--spec", LINEAR, "--epochs", "2", "--validation", "0",
        "--optimizer", "sgd", "--lr", "100", "--schedule", "warmup_cosine",
        "--set", "optimizer.warmup_steps=16", "--set", "optimizer.end_factor=1.0",
        "--set", "checkpoint.best_metric=loss")
    losses = [r["loss"] for r in history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] > 2 * losses[0] > CHANCE, losses  # the precondition of the test

    # The warning: once, on stderr (the log), naming the cause and the fix; in summary.json.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the training loss rose")
    assert "the learning rate 100 is probably too high; try --lr 1e-2 (SGD's usual value)" \
        in warnings[0]
    assert summary["warnings"] == [warnings[0].removeprefix("warning: ")]
    assert "warning" not in captured.out

    # Final = the last step; best by training loss = epoch 1, a different checkpoint.
    final, best = summary["final"], summary["best"]
    assert (final["step"], final["epoch"]) == (16, 2)
    assert not final["restored_by_early_stopping"]
    assert final["test_accuracy"] == summary["test_accuracy"]
    assert (best["step"], best["epoch"], best["metric"]) == (8, 1, "loss")
    assert best["value"] == pytest.approx(losses[0]) and not best["same_as_final"]
    assert 0.0 <= best["test_accuracy"] <= 1.0 and math.isfinite(best["test_loss"])

    # stdout shows both, labelled, with steps and epochs.
    out = captured.out.splitlines()
    assert out[0] == (f"test accuracy {100 * final['test_accuracy']:.2f}%, loss "
                      f"{final['test_loss']:.4f} (final, step 16, epoch 2)")
    assert out[1].startswith(f"test accuracy {100 * best['test_accuracy']:.2f}%, loss ")
    assert out[1].endswith(f"(best loss checkpoint, step 8, epoch 1; loss {losses[0]:.4f})")
    assert out[2].startswith(f"test_accuracy={summary['test_accuracy']:.4f} workdir=")

    # jaxcnn eval uses the best checkpoint, and says so (text and JSON), with the same number.
    assert main(["eval", "--workdir", str(workdir)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == out[1]
    assert main(["eval", "--workdir", str(workdir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["step"], result["epoch"], result["which"]) == (8, 1, "best")
    assert (result["best_metric"], result["why"]) == ("loss", f"best by loss ({losses[0]:.4g})")
    assert result["test_accuracy"] == pytest.approx(best["test_accuracy"], abs=1e-6)
    assert main(["eval", "--workdir", str(workdir), "--latest"]) == 0
    assert "(latest checkpoint (--latest), step 16, epoch 2)" in capsys.readouterr().out
    assert main(["eval", "--workdir", str(workdir), "--step", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["which"], result["why"], result["epoch"]) == ("step", "step 8, as asked", 1)


def test_normal_run_without_validation_says_best_is_final(tmp_path, capsys, caplog):
    workdir = tmp_path / "normal"
    captured, summary, history = _train(capsys, workdir, "--spec", "conv(4,3) flatten softmax",
                                        "--epochs", "2", "--validation", "0", "--json")
    assert summary["warnings"] == [] and summary["stop_reason"] is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    final, best = summary["final"], summary["best"]
    assert (final["step"], final["epoch"]) == (16, 2)
    assert best["same_as_final"] and best["step"] == 16 and best["metric"] is None
    assert best["note"] == "no validation split: nothing to choose the best by"
    assert best["test_accuracy"] == final["test_accuracy"]
    # --json: stdout is the JSON alone (same fields as summary.json); the lines go to stderr.
    printed = json.loads(captured.out)
    assert printed["final"] == final and printed["best"] == best
    assert "best = final (no validation split: nothing to choose the best by)" in captured.err
    assert "(final, step 16, epoch 2)" in captured.err
    assert main(["eval", "--workdir", str(workdir)]) == 0
    assert ("(latest checkpoint (no validation split: nothing to choose the best by); step 16, "
            "epoch 2)") in capsys.readouterr().out


def test_checkpoints_off_says_there_is_no_best(tmp_path, capsys):
    workdir = tmp_path / "off"
    captured, summary, history = _train(capsys, workdir, "--spec", LINEAR, "--epochs", "1",
                                        "--set", "checkpoint.enabled=false")
    assert summary["best"] is None and "checkpoint.enabled=false" in summary["best_note"]
    assert (summary["final"]["step"], summary["final"]["epoch"]) == (history[-1]["step"], 1)
    assert re.search(r"^best: none \(checkpoints are off", captured.out, re.M)


def test_early_stopping_says_when_and_why_and_restores_the_best_epoch(tmp_path, capsys,
                                                                       caplog):
    # Random labels: the validation loss stops improving as soon as the model memorises.
    workdir = tmp_path / "early"
    captured, summary, history = _train(
        capsys, workdir, "--spec", LINEAR, "--epochs", "30", "--validation", "0.25",
        "--lr", "0.05", "--early-stopping", "2")
    val = [r["val_loss"] for r in history]
    best_epoch = history[val.index(min(val))]["epoch"]
    stopped = history[-1]["epoch"]
    assert stopped < 30 and stopped == best_epoch + 2
    expected = (f"early stopping at epoch {stopped}: val_loss has not improved for 2 epochs "
                f"(best {min(val):.4g} at epoch {best_epoch}); restored epoch {best_epoch}'s "
                "parameters")
    # Logged once (stderr), recorded in summary.json, never on stdout.
    assert [r.getMessage() for r in caplog.records].count(expected) == 1
    assert summary["stop_reason"] == expected and expected not in captured.out
    final = summary["final"]
    assert final["restored_by_early_stopping"] and final["epoch"] == best_epoch
    assert final["step"] == history[best_epoch - 1]["step"]
    assert final["val_loss"] == min(val)
    assert final["early_stopping_metric"] == "val_loss"
    assert (f"(final = epoch {best_epoch}'s parameters, restored by early stopping on val_loss, "
            f"step {final['step']}, epoch {best_epoch})") in captured.out.splitlines()[0]
    # The best checkpoint is chosen by checkpoint.best_metric (val_accuracy), on its own line.
    best = summary["best"]
    assert best["metric"] == "val_accuracy"
    line = captured.out.splitlines()[1]
    assert (line.startswith("best = final (step") if best["same_as_final"]
            else f"(best val_accuracy checkpoint, step {best['step']}, epoch" in line)


def test_loss_warning_rule():
    def hist(*losses):
        return [{"epoch": i + 1, "loss": v} for i, v in enumerate(losses)]

    # Runs that learn, or wobble with dropout, never warn.
    assert loss_warning(hist(2.4, 1.1, 0.4, 0.1), 10) is None
    assert loss_warning(hist(2.5, 2.3, 2.6, 2.9), 10) is None  # noisy, near a guess
    assert loss_warning(hist(0.02, 0.05), 10) is None  # small losses doubling: noise
    assert loss_warning(hist(0.9), 2) is None  # one epoch, above ln 2 but not 2 ln 2
    # Rose, worse than a guess, exploded and never recovered.
    assert loss_warning(hist(1.5, 40.0), 4, 100.0, "sgd").startswith(
        "the training loss rose from 1.5 in epoch 1 to 40 in epoch 2: the learning rate 100")
    assert "more than twice" in loss_warning(hist(5.3e7), 10, 10.0)
    text = loss_warning(hist(5.3e7, 2.6e5, 3.13, 2.95), 10, 10.0, "adam")
    assert text.startswith("the training loss exploded to 5.3e+07 in epoch 1 and ended at 2.95")
    assert text.endswith("the learning rate 10 is probably too high; try --lr 1e-3 (Adam's "
                         "usual value)")
    # Already at the usual rate: advise a tenth of it.
    assert "try --lr 0.0001" in loss_warning(hist(1.0, 9.0), 10, 1e-3, "adam")


def test_result_lines_when_the_best_checkpoint_could_not_be_read():
    final = {"step": 8, "epoch": 1, "test_loss": 1.0, "test_accuracy": 0.5}
    lines = result_lines({"final": final, "best": None,
                          "best_note": "the best checkpoint could not be read: ..."})
    assert lines == ["test accuracy 50.00%, loss 1.0000 (final, step 8, epoch 1)",
                     "best: none (the best checkpoint could not be read: ...)"]
