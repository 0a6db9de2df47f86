import json
import os
import re
import subprocess
import sys

import pytest

from jaxcnn.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=240):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "jaxcnn", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def test_train_one_epoch_in_a_subprocess(tmp_path):
    p = _run("train", "--epochs", "1", "--workdir", str(tmp_path / "run"), "--json",
             "--num-devices", "1")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"test_accuracy", "test_loss", "train_seconds"} <= set(out)
    assert out["epochs"] == 1
    for name in ("config.json", "history.jsonl", "history.csv", "learning_curves.png",
                 "summary.json"):
        assert (tmp_path / "run" / name).exists()


def test_help_is_useful(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--spec", "--dataset", "--epochs", "--batch-size", "--lr", "--seed",
                 "--workdir", "--json"):
        assert flag in text


@pytest.mark.parametrize("args,message", [
    (["--spec", "conv(32,3) bogus"], "unknown layer 'bogus'"),
    (["--model", "keras_convnet"], "larger than its input feature map 1x1"),
    (["--spec", "conv(8,3) dropout(1.5) flatten softmax"], r"rate must be a number in \[0, 1\)"),
    (["--lr", "0"], "learning_rate must be > 0"),
    (["--lr", "-0.1"], "learning_rate must be > 0"),
    (["--model", "resnet9000"], "known models: cifar_speed, flax_cnn, keras_convnet, resnet18, resnet18_cifar, resnet50, seed_cnn"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--batch-size", "5000"], "larger than the training split"),
    (["--set", "train.epoch=3"], "valid keys: train.epochs"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    code = main(["train", "--workdir", str(tmp_path), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_summary_command(capsys):
    assert main(["summary", "--model", "flax_cnn", "--input-shape", "28x28x3"]) == 0
    assert "825,034" in capsys.readouterr().out


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read()
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd.strip() in ci


def test_uncaught_os_and_memory_errors_are_one_line(monkeypatch, capsys):
    import errno

    from jaxcnn import cli

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/history.csv")

    def no_memory(args):
        raise MemoryError

    for fn, code, text in ((full_disk, 1, "No space left on device (/runs/x/history.csv)"),
                            (no_memory, 2, "out of host memory")):
        parser = cli.build_parser()
        monkeypatch.setattr(cli, "build_parser", lambda p=parser: p)
        args = parser.parse_args(["summary"])
        monkeypatch.setattr(parser, "parse_args", lambda argv=None, a=args: a)
        args.func = fn
        assert cli.main(["summary"]) == code
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
