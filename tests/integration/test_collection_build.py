"""The collection as users get it: `ansible-galaxy collection build`, install into an empty path,
`ansible-doc` for every module, and the runtime metadata pointing only at modules that exist."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if p.stem != "__init__")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", out, REPO],
        check=True,
        capture_output=True,
        text=True,
    )
    (tarball,) = out.glob("esxi2ami-migrate-*.tar.gz")
    dest = tmp_path_factory.mktemp("collections")
    # --no-deps: amazon.aws comes from the test environment's collections path, not from Galaxy (offline).
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", "--no-deps", "--force", "-p", dest, tarball],
        check=True,
        capture_output=True,
        text=True,
    )
    return tarball, dest


def test_tarball_leaves_out_build_output_and_venvs(installed):
    tarball = installed[0]
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "galaxy.yml" not in names and "MANIFEST.json" in names
    for prefix in (".build", ".venv", ".git", ".ci", "tests/output"):
        assert not [n for n in names if n == prefix or n.startswith(prefix + "/")], prefix
    manifest = json.loads(tar_member(tarball, "MANIFEST.json"))
    assert manifest["collection_info"]["dependencies"]["amazon.aws"].startswith(">=")
    assert manifest["collection_info"]["version"]


def tar_member(tarball, name):
    with tarfile.open(tarball) as tar:
        return tar.extractfile(name).read().decode()


def test_every_module_is_in_an_action_group():
    """module_defaults: group/esxi2ami.migrate.aws (or .vmware) must reach every module that takes AWS or
    vSphere connection options (guest-side modules and controller-side action plugins take none)."""
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    groups = runtime["action_groups"]
    for module in MODULES:
        source = (REPO / "plugins" / "modules" / (module + ".py")).read_text()
        if "esxi2ami.migrate.vmware\n" in source:
            assert module in groups["vmware"], module
        if "amazon.aws.common.modules" in source:
            assert module in groups["aws"], module


@pytest.mark.parametrize("module", MODULES or ["(none yet)"])
def test_ansible_doc_renders_each_installed_module(installed, module):
    if module == "(none yet)":
        pytest.skip("no modules in plugins/modules yet")
    dest = installed[1]
    env = {"ANSIBLE_COLLECTIONS_PATH": "%s:%s" % (dest, REPO / ".build" / "collections"), "PATH": str(BIN)}
    proc = subprocess.run(
        [BIN / "ansible-doc", "-j", "esxi2ami.migrate." + module],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=dest,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["esxi2ami.migrate." + module]
    assert str(Path(dest)) in doc["doc"]["filename"]  # the installed copy, not the work tree
    assert doc["doc"]["short_description"] and doc["examples"] and doc["return"] is not None
    assert doc["doc"].get("attributes"), "declare attributes (check_mode, diff_mode, idempotent)"
