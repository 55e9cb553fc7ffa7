"""The README's Python example and the scripts in examples/ run as written (on digits)."""

import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python_block(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, re.S)
    assert len(blocks) == 1, "the section should hold exactly one python block"
    return blocks[0]


def test_readme_python_example_runs_verbatim(capsys):
    ns: dict = {}
    exec(compile(_python_block("Use from Python"), "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "'bp'" in out and "fa: test accuracy" in out and "dfa on my network" in out
    assert ns["run"].test_acc > 0.8 and len(ns["run"].history) == 3
    assert ns["accuracy"] > 0.8


def _script(name: str, *args: str, capsys, monkeypatch) -> str:
    # run as `python examples/NAME ARGS` would, in this process (no second torch import)
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    return capsys.readouterr().out


def test_example_own_loop(tmp_path, capsys, monkeypatch):
    out = _script("own_loop.py", "--rule", "dfa", "--epochs", "2", "--device", "cpu", "--save", str(tmp_path / "s.pt"),
                  capsys=capsys, monkeypatch=monkeypatch)
    accs = [float(a) for a in re.findall(r"test accuracy ([0-9.]+)", out)]
    assert len(accs) == 2 and accs[-1] > 0.8
    assert "'fc1': (100, 256)" in out and (tmp_path / "s.pt").is_file()


def test_example_own_network_compares_three_rules(capsys, monkeypatch):
    out = _script("own_network.py", "--epochs", "2", "--device", "cpu", capsys=capsys, monkeypatch=monkeypatch)
    accs = dict(re.findall(r"^(\w+)\s+test accuracy ([0-9.]+)$", out, re.M))
    assert set(accs) == {"bp", "fa", "pc"}
    assert all(float(a) > 0.7 for a in accs.values()), accs
