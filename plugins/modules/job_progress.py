#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: job_progress
short_description: Wait for an async task and print its progress as it goes
version_added: 0.1.0
description:
  - Waits for a task started with C(async) and C(poll=0), like M(ansible.builtin.async_status) in an
    C(until) loop, but prints a progress line (phase, percent, bytes, rate, ETA or the import's status
    message) read from the module's progress file, so C(ansible-playbook) and AWX job output show
    steady progress for exports and imports that take hours.
  - Returns the async task's own result, and fails with its message when it failed.
  - This is an action plugin; the progress lines are printed on the controller.
options:
  jid:
    description: The C(ansible_job_id) of the async task.
    type: str
    required: true
  progress_file:
    description:
      - The progress file the async module writes (JSON), for example the
        O(esxi2ami.migrate.vsphere_ova_export#module:progress_file) or
        O(esxi2ami.migrate.ec2_import_image#module:progress_file) option.
      - Without it, only the elapsed time is printed.
    type: path
  label:
    description: The word that starts each progress line, for example C(export) or C(import).
    type: str
    default: job
  interval:
    description: Print a line at least this often, in seconds; a phase or status change prints at once.
    type: int
    default: 30
  timeout:
    description: Stop waiting after this many seconds and fail; the async task keeps running.
    type: int
    default: 86400
extends_documentation_fragment:
  - esxi2ami.migrate.attributes
  - esxi2ami.migrate.attributes.info_module
attributes:
  action:
    support: full
    description: Runs as an action plugin on the controller.
  async:
    support: none
    description: It waits for other async tasks; it cannot be async itself.
author:
  - esxi2ami.migrate maintainers (@esxi2ami)
"""

EXAMPLES = r"""
- name: Start the export without blocking
  esxi2ami.migrate.vsphere_ova_export:
    name: web01
    dest: s3://migrations/web01.ova
    progress_file: /tmp/web01-export.json
  async: 14400
  poll: 0
  register: export_job

- name: Wait for it, printing progress at least every 30 seconds
  esxi2ami.migrate.job_progress:
    jid: "{{ export_job.ansible_job_id }}"
    progress_file: /tmp/web01-export.json
    label: export
  register: export
"""

RETURN = r"""
msg:
  description: The async task's message, when it has one.
  returned: when the task returned one
  type: str
  sample: "ClientError: Unknown OS / Missing OS files."
"""
