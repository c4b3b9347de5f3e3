"""A sweep's account of itself (a Hydra callback, `hydra.callbacks.surgeon_summary`): every job
reports how it ended - done, skipped (already there), or failed with its first error line - to a
journal in the sweep folder (jobs may run in other processes or on other nodes), and the sweep ends
with one summary line, exiting non-zero when any job failed."""
import fcntl
import json
import sys
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback

JOURNAL = ".surgeon-sweep.jsonl"


def _journal(config) -> Path:
    return Path(config.hydra.sweep.dir) / JOURNAL


class Summary(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        path = _journal(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if config.hydra.mode.name != "MULTIRUN":
            return
        if job_return.status == JobStatus.COMPLETED:
            ret = job_return._return_value
            entry = ret if isinstance(ret, dict) else {"status": "done"}
        else:  # an exception that is not the project's own: a bug, with its traceback from Hydra
            entry = {"status": "failed", "error": f"{type(job_return._return_value).__name__}: {job_return._return_value}"}
        entry = {"job": Path(config.hydra.runtime.output_dir).name, "status": entry.get("status", "done"),
                 "error": entry.get("error")}
        with open(_journal(config), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(entry) + "\n")

    def on_multirun_end(self, config, **kwargs) -> None:
        path = _journal(config)
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        path.unlink(missing_ok=True)
        count = {s: sum(e["status"] == s for e in entries) for s in ("done", "skipped", "failed")}
        print(f"[surgeon] sweep {config.hydra.sweep.dir}: {count['done']} done, {count['skipped']} skipped, "
              f"{count['failed']} failed", flush=True)
        for e in entries:
            if e["status"] == "failed":
                print(f"  {e['job']}: {e['error']}", file=sys.stderr, flush=True)
        if count["failed"]:
            sys.exit(1)
