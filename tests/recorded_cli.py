"""Stand-in executables for a scheduler's commands that cannot be installed here (PBS, LSF):
each answers with a recorded output of the real command and writes down how it was called.

A test queues answers per tool (:meth:`RecordedTools.answer`), optionally only for calls whose
arguments contain a given word; a call with no answer left exits 99 saying so, which fails the
adapter's call loudly. The executables are real programs run by the adapter through its own
command runner — argv lists, no shell — so the test sees exactly the argv a real scheduler
would have been given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"

STAND_IN = """#!{python}
import json, os, sys
here = {root!r}
tool = os.path.basename(sys.argv[0])
with open(os.path.join(here, "calls.jsonl"), "a") as calls:
    calls.write(json.dumps([tool, sys.argv[1:]]) + "\\n")
path = os.path.join(here, "answers.json")
with open(path) as f:
    answers = json.load(f)
words = " ".join(sys.argv[1:])
for i, answer in enumerate(answers):
    if answer["tool"] == tool and (answer["when"] is None or answer["when"] in words):
        if not answer["keep"]:
            del answers[i]
        with open(path, "w") as f:
            json.dump(answers, f)
        sys.stdout.write(answer["stdout"])
        sys.stderr.write(answer["stderr"])
        sys.exit(answer["rc"])
sys.stderr.write("no recorded answer for " + tool + " " + words + "\\n")
sys.exit(99)
"""


def recorded(name: str) -> str:
    """A recorded output of a real command, from tests/data/."""
    return (DATA / name).read_text(encoding="utf-8")


class RecordedTools:
    """Stand-ins for ``tools`` in ``root``/bin; :attr:`paths` is what the adapter is given."""

    def __init__(self, root: Path, tools: tuple[str, ...]) -> None:
        self.root = root
        (root / "bin").mkdir(parents=True)
        (root / "answers.json").write_text("[]")
        self.paths: dict[str, str] = {}
        for tool in tools:
            path = root / "bin" / tool
            path.write_text(STAND_IN.format(python=sys.executable, root=str(root)))
            path.chmod(0o755)
            self.paths[tool] = str(path)

    def answer(
        self,
        tool: str,
        stdout: str = "",
        *,
        stderr: str = "",
        rc: int = 0,
        when: str | None = None,
        keep: bool = False,
    ) -> None:
        """Queue an answer of ``tool`` (for calls whose arguments contain ``when``); it is
        used once, or for every such call with ``keep``."""
        answers = json.loads((self.root / "answers.json").read_text())
        answers.append(
            {"tool": tool, "stdout": stdout, "stderr": stderr, "rc": rc, "when": when, "keep": keep}
        )
        (self.root / "answers.json").write_text(json.dumps(answers))

    def forget(self, tool: str) -> None:
        """Drop the answers of ``tool`` still queued."""
        answers = json.loads((self.root / "answers.json").read_text())
        kept = [a for a in answers if a["tool"] != tool]
        (self.root / "answers.json").write_text(json.dumps(kept))

    def calls(self, tool: str | None = None) -> list[list[str]]:
        """The argv (without the program) of every call so far, of ``tool`` when given."""
        path = self.root / "calls.jsonl"
        if not path.exists():
            return []
        made = [json.loads(line) for line in path.read_text().splitlines()]
        return [argv for name, argv in made if tool in (None, name)]
