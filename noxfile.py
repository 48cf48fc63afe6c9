"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s recipes`, `nox -s plugins`.

Virtualenvs see the system site-packages, so an installed torch (CPU or CUDA build) is reused
rather than downloaded again. `.ci/run` is the strict check: a fresh virtualenv, as a newcomer has.
"""

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
VENV = {"venv_params": ["--system-site-packages"]}


@nox.session(**VENV)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev,hf,plot]")
    session.run("pytest", "-q", "-n", "auto", *session.posargs)


@nox.session(**VENV)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "gpt2kit", "tests", "benchmarks", "plugins")
    session.run("ruff", "format", "--check", "gpt2kit", "tests", "benchmarks", "plugins")
    # Imports point down the layers (README, "How it fits together"): no module may import its importers.
    tool = Path("..") / "shared" / "tools" / "import_cycles.py"
    if tool.is_file():
        session.run("python", str(tool), "gpt2kit")
    else:
        session.log(f"import-cycle check skipped: {tool} not found")


@nox.session(**VENV)
def bench(session: nox.Session) -> None:
    """Throughput and quality benchmarks (minutes; not part of the test suite)."""
    session.install("-e", ".[dev,hf,plot]")
    for script in sorted(Path("benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)


@nox.session(**VENV)
def recipes(session: nox.Session) -> None:
    """Every recipe parses and runs a few steps (the same check as tests/, recipes only)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-q", "tests/test_recipes.py", *session.posargs)


@nox.session(**VENV)
def plugins(session: nox.Session) -> None:
    """Each example plugin installed as a user would (pip, entry point), then its own tests."""
    session.install("-e", ".[dev]")
    for plugin in sorted(Path("plugins").glob("*/pyproject.toml")):
        session.install(f"./{plugin.parent}")
        with session.chdir(plugin.parent):  # its own pytest settings; tests the installed package
            # exit 5: no tests collected (a plugin without tests is not a failure)
            session.run(
                "pytest", "-q", "-p", "no:cacheprovider", "tests", *session.posargs, success_codes=[0, 5]
            )
