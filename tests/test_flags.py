"""Flags generated from settings dataclasses (clr_jax._flags) and the commands built
from them: every setting has its flag, help, type, choices and default from one place."""

import argparse
import dataclasses

import pytest

from clr_jax import _flags, cli


@dataclasses.dataclass(frozen=True)
class Toy:
    """A toy settings class.

    Attributes:
      num_steps: how long, in steps; a second
        line of text.
      rate: a rate with 50% of `code`.
      flavour: one of the flavours.
      on: a switch.
      every: optional count.
    """

    num_steps: int = dataclasses.field(default=7, metadata={"flag": "steps"})
    rate: float = 0.5
    flavour: str = dataclasses.field(default="a", metadata={"choices": lambda: ("a", "b")})
    on: bool = True
    every: int | None = None
    hidden: tuple = dataclasses.field(default=(), metadata={"flag": None})


def _parser(**kwargs):
    parser = argparse.ArgumentParser()
    names = _flags.add_flags(parser, Toy, **kwargs)
    return parser, names


def test_field_docs_reads_the_attributes_section():
    docs = _flags.field_docs(Toy)
    assert docs["num_steps"] == "how long, in steps; a second line of text."
    assert docs["rate"] == "a rate with 50% of code."  # backticks dropped
    assert set(docs) == {"num_steps", "rate", "flavour", "on", "every"}


def test_flags_types_choices_and_given():
    parser, names = _parser()
    assert names == {"num_steps": "--steps", "rate": "--rate", "flavour": "--flavour",
                     "on": "--on", "every": "--every"}
    args = parser.parse_args(["--steps", "3", "--no-on", "--every", "4"])
    assert _flags.given(args, Toy) == {"num_steps": 3, "on": False, "every": 4}
    assert _flags.given(parser.parse_args([]), Toy) == {}  # defaults stay the class's
    assert dataclasses.replace(Toy(), **_flags.given(args, Toy)) == Toy(3, 0.5, "a", False, 4)
    for bad in (["--steps", "1.5"], ["--flavour", "c"], ["--rate", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_help_shows_the_docstring_and_default(capsys):
    parser, _ = _parser(defaults={"every": "a tenth of the run"})
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "how long, in steps; a second line of text (default: 7)" in text
    assert "a rate with 50% of code (default: 0.5)" in text
    assert "optional count (default: a tenth of the run)" in text
    assert "--hidden" not in text


def test_prefix_only_and_skip():
    parser, names = _parser(prefix="range_test_", only=("num_steps", "rate"))
    assert names == {"range_test_num_steps": "--range-test-steps",
                     "range_test_rate": "--range-test-rate"}
    args = parser.parse_args(["--range-test-steps", "9"])
    assert _flags.given(args, Toy, prefix="range_test_") == {"num_steps": 9}
    _, names = _parser(skip=("rate", "on"))
    assert set(names) == {"num_steps", "flavour", "every"}


@pytest.mark.parametrize("message, expected", [
    ("batch_size=1000 is larger", "--batch-size=1000 is larger"),
    ("pass resume=True or choose", "pass --resume or choose"),
    ("num_steps must be >= 2", "--steps must be >= 2"),
    ("the model diverged", "the model diverged"),  # a plain word stays a word
    ("model='x' is unknown", "--model='x' is unknown"),
    ("my_batch_size=3", "my_batch_size=3"),  # only whole names
])
def test_in_flags(message, expected):
    names = {"batch_size": "--batch-size", "resume": "--resume", "model": "--model",
             "num_steps": "--steps"}
    assert _flags.in_flags(message, names) == expected
    assert _flags.in_flags("model must be one of", names, plain_words=True) == \
        "--model must be one of"


@pytest.mark.parametrize("command", ["train", "sweep", "range-test"])
def test_every_train_setting_has_its_flag(command, capsys):
    """One flag per TrainConfig field (the schedule has its own flags), with the field's
    docstring as help and the field's choices."""
    from clr_jax.harness.models import MODELS
    from clr_jax.harness.train import TrainConfig

    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    docs = _flags.field_docs(TrainConfig)
    skipped = {"schedule"} | ({"log_every", "checkpoint_every"} if command == "range-test"
                              else set())
    for field in dataclasses.fields(TrainConfig):
        if field.name in skipped:
            continue
        flag = "--" + field.metadata.get("flag", field.name).replace("_", "-")
        assert flag in text, flag
        assert " ".join(docs[field.name].rstrip(".").split()[:4]) in text, field.name
    assert "{" + ",".join(MODELS) + "}" in text


def test_the_sweep_file_sets_what_the_flags_do_not(tmp_path):
    """A [train] table under the flags: flags win, the file beats the defaults, and a
    default the command derives (evaluation every tenth of the run) follows the file."""
    from clr_jax.harness import commands
    from clr_jax.harness.data import load_dataset

    parser = cli.build_parser()
    args = parser.parse_args(["sweep", "--member", "a fixed base_lr=0.1", "--out", "x",
                              "--batch-size", "8", "--no-shuffle"])
    config = commands.train_config(args, load_dataset("sample"),
                                   settings={"batch_size": 16, "num_steps": 50, "seed": 3})
    assert (config.batch_size, config.shuffle, config.seed) == (8, False, 3)
    assert (config.num_steps, config.eval_every, config.log_every) == (50, 5, 5)


def test_without_the_harness_its_commands_say_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_harness", lambda: None)
    assert cli.main(["train", "--steps", "3", "--out", "x", "--policy", "fixed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "clr-jax[harness]"' in err
    assert cli.main(["schedule", "--policy", "fixed", "--base-lr", "0.1", "--steps", "0"]) == 0


def test_a_setting_named_like_a_policy_gets_its_policys_name(capsys):
    """exp_range's ``decay`` switch would read as the ``decay`` policy: its flag is
    --exp-range-decay, and it reaches the schedule."""
    import clr_jax

    argv = ["schedule", "--policy", "exp_range", "--base-lr", "0.001", "--max-lr", "0.006",
            "--step-size", "10", "--gamma", "0.99", "--steps", "10,25"]
    assert cli.main([*argv, "--exp-range-decay", "both"]) == 0
    printed = [float(line.split("\t")[1]) for line in
               capsys.readouterr().out.strip().split("\n")[1:]]
    schedule = clr_jax.exp_range(0.001, 0.006, 10, gamma=0.99, decay="both")
    assert printed == pytest.approx([float(schedule(10)), float(schedule(25))], rel=1e-5)
    assert cli.main([*argv, "--exp-decay", "both"]) == 2  # no hand-kept alias
