"""A study's ``launcher:`` block: what each run asks a SLURM cluster for (``ablate --launcher slurm``).

::

    launcher:
      partition: gpu              # default: the cluster's default partition
      time: "02:00:00"            # per run, [D-]HH:MM:SS or minutes; a run out of time is requeued and resumed
      cpus_per_task: 8
      gpus_per_node: 1
      mem_gb: 32
      tasks_per_node: 1           # > 1 or nodes > 1: DDP across the tasks (match trainer.devices / num_nodes)
      nodes: 1
      max_parallel: 16            # runs at once (the job array's %N); default: all
      job_name_prefix: gpt2kit-   # the job name is the prefix + the study's name
      setup: [module load cuda]   # shell lines run before the job starts (modules, a virtualenv)
      sbatch: {account: lab, qos: normal, constraint: a100}   # any other sbatch option, as --KEY=VALUE

Checked here without a cluster (keys, types, values); what the cluster can meet is checked by
:mod:`gpt2kit.ablate.slurm` before it submits.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from gpt2kit.errors import GPT2KitError

LAUNCHERS = ("local", "slurm")


@dataclass
class LauncherOptions:
    """The ``launcher:`` block of a study file, checked."""

    partition: str | None = None
    """The SLURM partition (queue); None: the cluster's default."""
    time_min: int = 60
    """The time limit of each run's job, in minutes."""
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float | None = None
    """Memory per node; None: the partition's default."""
    tasks_per_node: int = 1
    nodes: int = 1
    max_parallel: int | None = None
    job_name_prefix: str = "gpt2kit-"
    setup: list[str] = field(default_factory=list)
    sbatch: dict[str, str] = field(default_factory=dict)
    """Other sbatch options, ``{account: lab}`` → ``#SBATCH --account=lab``."""

    @property
    def tasks(self) -> int:
        return self.tasks_per_node * self.nodes


KEYS = (
    "partition", "time", "cpus_per_task", "gpus_per_node", "mem_gb", "tasks_per_node", "nodes",
    "max_parallel", "job_name_prefix", "setup", "sbatch",
)  # fmt: skip
# Set through the keys above, or by gpt2kit itself (the array, the logs, the signal it resumes on).
RESERVED_SBATCH = {
    "partition", "p", "time", "t", "cpus-per-task", "c", "gpus-per-node", "mem", "ntasks-per-node", "nodes",
    "N", "job-name", "J", "array", "a", "output", "o", "error", "e", "signal", "open-mode", "ntasks", "n",
}  # fmt: skip


def parse_time(value: Any, where: str) -> int:
    """Minutes from ``90``, ``"90"``, ``"1:30:00"``, ``"2-00:00:00"`` (SLURM's forms), rounded up."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if isinstance(value, str) and m:
        days, a, b, c = (int(x) if x else None for x in m.groups())
        if b is None and c is None:  # "90" or "2-5" (days-hours)
            minutes = a * 60 if days is not None else a
        elif c is None:  # "H:M" with days, else "M:S"
            minutes = a * 60 + b if days is not None else a + b / 60
        else:
            minutes = a * 60 + b + c / 60
        minutes = math.ceil(minutes + (days or 0) * 24 * 60)
        if minutes > 0:
            return minutes
    raise GPT2KitError(f'{where}: time {value!r} is not a time limit: write minutes (90) or "HH:MM:SS"')


def _int(raw: dict[str, Any], key: str, where: str, minimum: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GPT2KitError(f"{where}: {key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def parse_launcher(raw: Any, where: str) -> LauncherOptions:
    """The ``launcher:`` block (None: every default), or a one-line error naming the bad key."""
    if raw is None:
        return LauncherOptions()
    if not isinstance(raw, dict):
        raise GPT2KitError(f"{where}: must be a mapping (partition: ..., time: ...), got {raw!r}")
    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise GPT2KitError(
                f"{where}: unknown key '{key}': {hint}it has {', '.join(KEYS)} "
                "(any other sbatch option goes under sbatch:)"
            )
    opts = LauncherOptions()
    if raw.get("partition") is not None:
        opts.partition = str(raw["partition"])
    if raw.get("time") is not None:
        opts.time_min = parse_time(raw["time"], where)
    for key, minimum in (("cpus_per_task", 1), ("gpus_per_node", 0), ("tasks_per_node", 1), ("nodes", 1),
                         ("max_parallel", 1)):  # fmt: skip
        value = _int(raw, key, where, minimum)
        if value is not None:
            setattr(opts, key, value)
    mem = raw.get("mem_gb")
    if mem is not None:
        if isinstance(mem, bool) or not isinstance(mem, int | float) or mem <= 0:
            raise GPT2KitError(f"{where}: mem_gb must be a positive number of gigabytes, got {mem!r}")
        opts.mem_gb = float(mem)
    if raw.get("job_name_prefix") is not None:
        opts.job_name_prefix = str(raw["job_name_prefix"])
        if not re.fullmatch(r"[\w.+-]*", opts.job_name_prefix):
            raise GPT2KitError(
                f"{where}: job_name_prefix {opts.job_name_prefix!r}: use letters, digits, _.+-"
            )
    setup = raw.get("setup") or []
    setup = [setup] if isinstance(setup, str) else setup
    if not (isinstance(setup, list) and all(isinstance(s, str) for s in setup)):
        raise GPT2KitError(f"{where}: setup must be a list of shell lines, got {raw.get('setup')!r}")
    opts.setup = setup
    sbatch = raw.get("sbatch") or {}
    if not isinstance(sbatch, dict):
        raise GPT2KitError(f"{where}: sbatch must be a mapping of sbatch options, e.g. {{account: lab}}")
    for key, value in sbatch.items():
        name = str(key).lstrip("-").replace("_", "-")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise GPT2KitError(f"{where}: sbatch option {key!r} is not an sbatch option name (e.g. account)")
        if name in RESERVED_SBATCH:
            raise GPT2KitError(
                f"{where}: sbatch: {key} is set by gpt2kit or by the block's own keys "
                f"({', '.join(KEYS[:7])}): use those"
            )
        if isinstance(value, dict | list):
            raise GPT2KitError(f"{where}: sbatch option {key} needs one value, got {value!r}")
        opts.sbatch[name] = "" if value is True else str(value)
    return opts
