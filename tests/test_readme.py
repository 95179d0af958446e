"""The README's commands and code are the ones that work."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
  return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
  commands = [b.strip() for b in _blocks("bash")]
  test_command = [c for c in commands if "pytest" in c]
  assert len(test_command) == 1
  # .ci/run creates its own venv, then runs the README's install + test part.
  tail = test_command[0].split("&& ", 2)[2]
  ci = (ROOT / ".ci" / "run").read_text()
  assert tail in ci.splitlines(), (tail, ci)


def test_readme_python_runs():
  for block in _blocks("python"):
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    if "first" in namespace:  # the quick start trains both tasks
      first, losses = namespace["first"], namespace["losses"]
      assert bool((losses < 0.5 * first).all()), (first, losses)
      assert bool((namespace["state"][0].weights > 0).all())
