# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wait for an async job and print its progress file at a steady rhythm (terminal and AWX job output)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

ARGSPEC = dict(
    jid=dict(type="str", required=True),
    progress_file=dict(type="path"),
    label=dict(type="str", default="job"),
    interval=dict(type="int", default=30),
    timeout=dict(type="int", default=86400),
)


def human_bytes(n):
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return "%.1f %s" % (n, unit) if unit != "B" else "%d B" % n
        n /= 1024.0
    return "%d B" % n


def format_progress(label, data):
    """One progress line from a module's progress file (export: bytes/rate/ETA; import: status/percent)."""
    parts = ["%s:" % label]
    if data.get("phase"):
        parts.append(str(data["phase"]))
    if data.get("status_message") or data.get("status"):
        parts.append("%s" % (data.get("status_message") or data.get("status")))
    if data.get("percent") is not None:
        parts.append("%.0f%%" % float(data["percent"]))
    if data.get("bytes") is not None:
        total = data.get("total_bytes")
        parts.append(human_bytes(data["bytes"]) + (" of ~%s" % human_bytes(total) if total else ""))
    if data.get("rate"):
        parts.append("%s/s" % human_bytes(data["rate"]))
    if data.get("eta") is not None:
        parts.append("ETA %ds" % int(data["eta"]))
    return " ".join(parts)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self.validate_argument_spec(argument_spec=ARGSPEC)[1]
        if args["interval"] < 1:
            raise AnsibleActionFail("interval must be at least 1 second, got %d" % args["interval"])
        # The same async directory ansible.builtin.async_status uses (shell option async_dir).
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        start = time.monotonic()
        last_state = None
        last_print = None
        pause = 0.5
        while True:
            status = self._execute_module(
                module_name="ansible.legacy.async_status",
                module_args=dict(jid=args["jid"], _async_dir=async_dir),
                task_vars=task_vars,
            )
            if status.get("finished") or (status.get("failed") and "started" not in status):
                break
            now = time.monotonic()
            if now - start > args["timeout"]:
                result.update(
                    failed=True,
                    msg="%s did not finish within %ds; async job %s keeps running"
                    % (args["label"], args["timeout"], args["jid"]),
                )
                return result
            data = self._read_progress(args["progress_file"], task_vars)
            state = (data.get("phase"), data.get("status"), data.get("status_message"))
            # A line every `interval` seconds, and at once when the phase or the import's status changes.
            if last_print is None or state != last_state or now - last_print >= args["interval"]:
                display.display(
                    "%s | %s (%ds elapsed)"
                    % (task_vars.get("inventory_hostname", ""), format_progress(args["label"], data), int(now - start))
                )
                last_state, last_print = state, now
            # Quick jobs (an idempotent re-run) return quickly; long ones are polled every few seconds.
            time.sleep(pause)
            pause = min(pause * 2, args["interval"], 5)
        self._execute_module(
            module_name="ansible.builtin.async_status",
            module_args=dict(jid=args["jid"], mode="cleanup"),
            task_vars=task_vars,
        )
        for key in (
            "ansible_job_id",
            "finished",
            "started",
            "results_file",
            "stdout",
            "stderr",
            "stdout_lines",
            "stderr_lines",
            "erased",
        ):
            status.pop(key, None)
        result.update(status)
        return result

    def _read_progress(self, path, task_vars):
        if not path:
            return {}
        slurped = self._execute_module(
            module_name="ansible.builtin.slurp", module_args=dict(src=path), task_vars=task_vars
        )
        if slurped.get("failed"):
            return {}
        try:
            return json.loads(to_text(base64.b64decode(slurped["content"])))
        except (ValueError, KeyError, TypeError):
            return {}
