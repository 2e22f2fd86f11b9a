"""`goodnet --help`, every command's `--help` and every usage error answer at once: building the
parser reads every repair's settings off its class, yet imports no PyTorch (goodnet.lazy_torch).
Each check runs in a fresh interpreter, since this one has imported PyTorch already. What a command
does with a model still works once PyTorch is imported: the stand-ins are PyTorch's own modules, and
the package's names still load every architecture."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(*args: str) -> subprocess.CompletedProcess:
    """Run this Python in the repository, without plugins (a plugin's imports are its own)."""
    env = {k: v for k, v in os.environ.items() if k != "GOODNET_PLUGINS"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)


def _imported(importtime_log: str) -> set[str]:
    """The modules a `python -X importtime` run imported, from its log on stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_log.splitlines() if line.startswith("import time:")}


def test_building_the_parser_imports_no_pytorch():
    done = _python(
        "-c",
        "import sys; from goodnet.cli.parser import build_parser; build_parser(); print('torch' in sys.modules)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_goodnet_help_and_a_usage_error_import_no_pytorch():
    shown = _python("-X", "importtime", "-m", "goodnet", "--help")
    assert shown.returncode == 0 and "usage: goodnet" in shown.stdout, shown.stderr
    refused = _python("-X", "importtime", "-m", "goodnet", "defend", "--max-drop", "abc")
    assert refused.returncode == 2
    assert "goodnet: error: argument --max-drop" in refused.stderr
    for done in (shown, refused):
        imported = _imported(done.stderr)
        assert "goodnet.repairs" in imported  # the log was read: the parser did load the registry
        assert "torch" not in imported


# Every command's help and usage errors, run in one interpreter: each entry records whether PyTorch
# was imported by the time that command line was answered, so the first one to import it is named.
PROBE = """
import argparse, contextlib, io, json, sys
from goodnet.cli import main
from goodnet.cli.parser import build_parser

sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
commands = list(sub.choices)
lines = [[], ["no-such-command"], ["defend"], ["defend", "--max-drop", "abc"], ["compare", "--workers", "abc"]]
for command in commands:
    lines += [[command, "--help"], [command, "--no-such-option"]]
answers = []
for argv in lines:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    answers.append([argv, code, "torch" in sys.modules, err.getvalue()])
print(json.dumps({"commands": commands, "answers": answers}))
"""


def test_every_commands_help_and_usage_errors_import_no_pytorch():
    done = _python("-c", PROBE)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert {"defend", "batch", "scan", "eval", "classify", "export", "attack", "compare", "demo"} <= set(
        probe["commands"]
    )
    for argv, code, torch_imported, err in probe["answers"]:
        expected = 0 if "--help" in argv else 2
        assert code == expected, (argv, err)
        if code == 2:
            assert err.startswith("goodnet: error:") and err.count("\n") == 1, (argv, err)
        assert not torch_imported, f"`goodnet {' '.join(argv)}` imported PyTorch"


def test_the_stand_ins_import_pytorch_on_first_use_and_are_then_pytorch():
    done = _python(
        "-c",
        "import sys\n"
        "from goodnet.lazy_torch import F, fx, nn, torch\n"
        "before = 'torch' in sys.modules\n"
        "import torch as real\n"
        "assert torch.ones(2).sum().item() == 2.0\n"
        "assert nn.Conv2d is real.nn.Conv2d and F.relu is real.nn.functional.relu\n"
        "assert fx.symbolic_trace is real.fx.symbolic_trace and torch.__version__ == real.__version__\n"
        "print(before)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_models_names_bring_every_architecture_after_the_repairs_were_imported():
    """The repairs import goodnet.models.training alone; asking the package for a name afterwards
    still registers every built-in architecture, as importing it did."""
    done = _python(
        "-c",
        "import sys, goodnet.repairs\n"
        "print('torch' in sys.modules)\n"
        "from goodnet.models import ARCHITECTURES, DeepID, build_model\n"
        "print(sorted(ARCHITECTURES), type(build_model('deepid', num_classes=3)) is DeepID)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["False", "['deepid', 'keras', 'resnet8', 'small_cnn'] True"]
