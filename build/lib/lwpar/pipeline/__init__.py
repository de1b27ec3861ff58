"""The pipeline, defined once: the stage table (`table`), the job grid (`jobs`), where files are
(`layout`), what an experiment asks for (`experiment`), each job's code inputs (`code`), what
planning checks from the networks' shapes (`plannable`), and the writers of dvc.yaml (`dvc`) and
the SLURM profile (`slurm`). Neither engine owns a command line: both call the `lwpar` CLI.
"""

from lwpar.pipeline.jobs import final_targets, grid
from lwpar.pipeline.layout import REFERENCE
from lwpar.pipeline.stage import Stage
from lwpar.pipeline.table import stages

__all__ = ["REFERENCE", "Stage", "final_targets", "grid", "stages"]
