"""`snakemake`'s command line with the SLURM executor plugin polling at a fixed interval
(the tests' runner for `snakemake --profile slurm` on the local cluster; slurm/README.md).

The plugin adds 10 s to its wait after every status check that finds no job finished (1,
11, 21 s, ... up to 180 s, from the tests' first wait of 1 s), and goes back to its first
wait once one has: right for a real cluster's hour-long jobs, which it spares slurmctld's
queries for. The local cluster's jobs take seconds, so each was seen finishing 10-20 s
late, most of the SLURM chain's time in the tests. Here every wait is
--seconds-between-status-checks. What the tests check (the jobs, their resources, their
outputs) is the same either way.

    python tests/snakemake_fixed_polling.py <snakemake's arguments>
"""

import sys

import snakemake_executor_plugin_slurm
from snakemake.cli import main

_check_active_jobs = snakemake_executor_plugin_slurm.Executor.check_active_jobs


async def _check_without_backoff(self, active_jobs):
    async for job in _check_active_jobs(self, active_jobs):
        yield job
    # None: the next sleep is the remote settings' seconds_between_status_checks
    self.next_seconds_between_status_checks = None


snakemake_executor_plugin_slurm.Executor.check_active_jobs = _check_without_backoff

if __name__ == "__main__":
    sys.exit(main())
