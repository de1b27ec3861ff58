"""One stage of the DAG: the subcommand it runs, its outputs and inputs per job, the params keys a job
reads and how it runs. Its command line is derived from the subcommand's declared flags
(`lwpar.stages.Flag`), its description from the subcommand's docstring and its code inputs from
the subcommand's imports (`code.package_imports`): none of them is written twice.
"""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from lwpar.pipeline.code import PACKAGE, common_modules, package_imports
from lwpar.stages import Flag, summary

Wildcards = dict[str, str]


@dataclass
class Stage:
    name: str                                                 # the rule; also the `lwpar` subcommand unless
    #                                                           `subcommand` names another (lwpar.stages.<name>)
    wildcards: tuple[str, ...]
    outputs: dict[str, str]                                   # key -> path pattern
    inputs: Callable[[dict, Wildcards], dict[str, str]]       # (params, wildcards) -> key -> path
    param_keys: Callable[[dict, Wildcards], list[str]]        # dotted keys of the params the job reads
    options: Callable[[dict, Wildcards], dict] = field(default=lambda p, w: {})  # values of "option" flags
    scripts: tuple[str, ...] = ()                             # package files it runs as scripts, not imports
    directories: tuple[str, ...] = ()                         # output keys that are folders
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    local: bool = False                                       # runs on the submitting host, not a cluster node
    cached: bool = True                                       # False: outputs are committed to git, not DVC's cache
    # How Snakemake runs it (the rule, and the SLURM profile's per-rule settings):
    threads: int | str = "heavy"                              # "heavy": every core Snakemake has (one such job
    #                                                           at a time, no oversubscription); "all": the same,
    #                                                           also under a cluster profile; or a number
    cluster_threads: int | None = None                        # threads and CPUs of its SLURM job
    mem_mb: int = 4000                                        # per attempt: a retried job asks for more
    runtime_min: int = 60                                     # per attempt
    gpu: bool = False                                         # asks a cluster for one GPU
    constraints: Callable[[dict], dict[str, str]] = field(default=lambda p: {})  # wildcard patterns (params ->)
    report_category: str | None = None                        # outputs shown in `snakemake --report`
    subcommand: str | None = None                             # a second rule of one subcommand (other outputs)

    @property
    def command_name(self) -> str:
        return self.subcommand or self.name

    @cached_property
    def module(self):
        return importlib.import_module(f"lwpar.stages.{self.command_name}")

    @property
    def flags(self) -> list[Flag]:
        return self.module.FLAGS

    @property
    def doc(self) -> str:
        """The rule's description: the subcommand's one-line help."""
        return summary(self.module) + "."

    @cached_property
    def modules(self) -> list[str]:
        """The package files a job of this stage runs, besides the ones every command runs."""
        files = {*package_imports(f"stages/{self.command_name}.py")}
        for script in self.scripts:
            files.update(package_imports(script))
        return sorted(files - set(common_modules()))

    def module_files(self) -> list[str]:
        return [f"{PACKAGE}/{m}" for m in [*common_modules(), *self.modules]]

    def log_pattern(self, folder: str = "logs") -> str:
        return "/".join([folder, self.name, *(f"{{{w}}}" for w in self.wildcards)]) + ".log" if self.wildcards \
            else f"{folder}/{self.name}.log"

    def job_outputs(self, wildcards: Wildcards) -> dict[str, str]:
        return {k: v.format(**wildcards) for k, v in self.outputs.items()}

    def job_name(self, wildcards: Wildcards) -> str:
        return "-".join([self.name, *(wildcards[w] for w in self.wildcards)]).replace("+", "_")

    def arguments(self, params: dict, wildcards: Wildcards) -> list[str]:
        """The job's command-line arguments, flag by flag in declaration order (see `lwpar.stages.FILLS`)."""
        inputs, outputs = self.inputs(params, wildcards), self.job_outputs(wildcards)
        options = self.options(params, wildcards)
        words = []
        for flag in self.flags:
            values = _values(flag, inputs, outputs, wildcards, options)
            if values:
                words += [flag.name, *values]
        return words

    def command(self, params_file: str, params: dict, wildcards: Wildcards) -> str:
        return shlex.join(["lwpar", self.command_name, "--params", params_file, *self.arguments(params, wildcards)])


def _values(flag: Flag, inputs: dict, outputs: dict, wildcards: Wildcards, options: dict) -> list[str]:
    how, key = flag.how, flag.key
    if how == "input":
        return [inputs[key]] if key in inputs else []
    if how == "output":  # an optional output that this rule does not declare is not asked for
        return [outputs[key]] if key in outputs or flag.settings.get("required") else []
    if how == "folder":
        return [str(Path(outputs[key]).parent)]
    if how == "wildcard":
        return [wildcards[key]]
    if how == "inputs":
        return [path for name, path in inputs.items() if name.partition(":")[0] == key]
    if how == "pairs":
        return [f"{name.partition(':')[2]}={path}" for name, path in inputs.items() if name.partition(":")[0] == key]
    if how == "option":
        value = options.get(flag.dest)
        return [] if value is None else [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return []
