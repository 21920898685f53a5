"""`python -m bench` (`make bench`): the benchmarks and how to run each. They take minutes
each and want a quiet machine, so none runs unasked: `python -m bench.<name> --help`."""

import ast
from pathlib import Path

HERE = Path(__file__).parent


def benchmarks() -> list[tuple[str, str]]:
    """(module name, first sentence of its docstring) of every module runnable on its own."""
    found = []
    for path in sorted(HERE.glob("*.py")):
        tree = ast.parse(path.read_text())
        runnable = any(
            isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body
        )
        if path.stem.startswith("_") or not runnable:
            continue
        doc = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
        found.append((path.stem, doc))
    return found


def main() -> None:
    print("Benchmarks under bench/, each run on its own (add --help for its options):")
    for name, doc in benchmarks():
        print(f"\n  .venv/bin/python -m bench.{name}\n      {doc}")
    print("\nResults, with the commands that produced them: docs/benchmarks.md")


if __name__ == "__main__":
    main()
