"""Ansible (ansible.netcommon.netconf_config / netconf_get) against the NETCONF server.

The playbook adds an authorised DOTS client under /dots-agent/server/clients through the
``ansible.netcommon.netconf`` connection plugin (ncclient underneath, auto target = candidate +
commit), then reads it back with a subtree filter.  The same edit run by a user of the
read-only NACM group of docs/nacm.md is refused (``access-denied``) and changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_mgmt_harness import NS, PASSWORD, USER, Harness
from tests.test_mgmt_nacm_wire import VIEWER, VIEWER_PW, config_with, operators_nacm

PLAYBOOK = f"""
- hosts: dots
  gather_facts: false
  tasks:
    - name: authorise a DOTS client
      ansible.netcommon.netconf_config:
        content: |
          <config>
            <dots-agent xmlns="{NS}">
              <server><clients><client>
                <name>ansible-customer</name>
                <cuid>ansibleansibleansible1</cuid>
                <protected-prefix>198.51.100.128/25</protected-prefix>
              </client></clients></server>
            </dots-agent>
          </config>
      register: edit
    - name: read it back
      ansible.netcommon.netconf_get:
        source: running
        filter: >-
          <dots-agent xmlns="{NS}"><server><clients><client>
          <name>ansible-customer</name></client></clients></server></dots-agent>
        display: json
      register: got
    - name: save what was read
      ansible.builtin.copy:
        content: "{{{{ got.output | to_json }}}}"
        dest: "{{{{ out_file }}}}"
      delegate_to: localhost
    - name: changed
      ansible.builtin.assert:
        that: [edit.changed]
"""


def _ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        pytest.skip("ansible is not installed")
    return found


def _run(playbook_cmd: str, tmp_path: Path, port: int, user: str, password: str, out_file: Path
         ) -> subprocess.CompletedProcess[str]:
    work = tmp_path / user
    work.mkdir()
    inventory = work / "inventory.ini"
    inventory.write_text(
        "[dots]\n"
        f"agent ansible_host=127.0.0.1 ansible_port={port} ansible_user={user} "
        f"ansible_password={password} ansible_connection=ansible.netcommon.netconf "
        "ansible_network_os=default ansible_python_interpreter=" + sys.executable + "\n")
    playbook = work / "play.yml"
    playbook.write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_LOCAL_TEMP=str(work / "tmp"),
               ANSIBLE_PERSISTENT_CONTROL_PATH_DIR=str(work / "pc"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOME=str(work / "ansible-home"),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([playbook_cmd, "-i", str(inventory), str(playbook), "-e", f"out_file={out_file}"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=work)


def test_ansible_netconf_config_and_get(tmp_path: Path):
    playbook_cmd = _ansible_playbook()
    h = Harness(tmp_path, initial=config_with(operators_nacm()))
    try:
        out_file = tmp_path / "got.json"
        before = h.mgmt.running_dict()
        res = _run(playbook_cmd, tmp_path, h.port, VIEWER, VIEWER_PW, out_file)  # read-only NACM user
        assert res.returncode != 0 and "access denied" in res.stdout + res.stderr, res.stdout[-4000:]
        assert h.mgmt.running_dict() == before
        res = _run(playbook_cmd, tmp_path, h.port, USER, PASSWORD, out_file)  # the administrator
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        got = json.loads(out_file.read_text())
        text = json.dumps(got)
        assert "ansible-customer" in text and "198.51.100.128/25" in text
        running = h.mgmt.running_dict()["dots-agent:dots-agent"]["server"]["clients"]["client"]
        assert any(c["name"] == "ansible-customer" for c in running)
    finally:
        h.close()
