"""Run real `ansible-playbook` processes from tests and read their results.

Tests pass tasks (Python data) and the environment a user would export (simulator endpoints and
credentials); the JSON callback gives back every task's result per host.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".build" / "collections"


class PlaybookResult:
    def __init__(self, proc, data):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.data = data

    def results(self, host="localhost"):
        """Every task result for `host`, in order, each with the task name under `_task`."""
        out = []
        for play in self.data.get("plays", []):
            for task in play["tasks"]:
                res = task["hosts"].get(host)
                if res is not None:
                    out.append(dict(res, _task=task["task"]["name"]))
        return out

    def task(self, name, host="localhost"):
        for res in self.results(host):
            if res["_task"] == name:
                return res
        raise KeyError("no task %r in %s" % (name, [r["_task"] for r in self.results(host)]))

    @property
    def stats(self):
        return self.data.get("stats", {})

    def __repr__(self):
        return "PlaybookResult(rc=%s, stderr=%s, stdout=%s)" % (self.rc, self.stderr[-2000:], self.stdout[-4000:])


def run_playbook(
    plays_or_tasks,
    env=None,
    extra_vars=None,
    check=False,
    diff=False,
    inventory=None,
    args=(),
    timeout=1800,
    callback="json",
):
    """Run a playbook given as a list of plays, or as a list of tasks for one play on localhost."""
    if plays_or_tasks and "hosts" not in plays_or_tasks[0]:
        plays_or_tasks = [{"name": "test", "hosts": "localhost", "gather_facts": False, "tasks": plays_or_tasks}]
    full_env = dict(os.environ)
    full_env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_STDOUT_CALLBACK=callback,
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="esxi2ami-play-") as tmp:
        book = Path(tmp, "play.yml")
        book.write_text(yaml.safe_dump(plays_or_tasks, sort_keys=False))
        cmd = [str(Path(sys.executable).parent / "ansible-playbook"), str(book)]
        cmd += (
            ["-i", str(inventory) if inventory else "localhost,", "-c", "local"]
            if not inventory
            else ["-i", str(inventory)]
        )
        if extra_vars:
            ev = Path(tmp, "extra.json")
            ev.write_text(json.dumps(extra_vars))
            cmd += ["-e", "@%s" % ev]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        cmd += list(args)
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=tmp, check=False)
    data = {}
    if callback == "json":
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            data = {}
    return PlaybookResult(proc, data)


def descendants(pid):
    """PIDs of every process below ``pid`` (from /proc), so a test signals only what it started."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, encoding="ascii", errors="replace") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
