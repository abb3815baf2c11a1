"""pytest fixtures for the vSphere simulator (load with pytest_plugins = ["tests.simulators.vcsim.fixtures"]).

- ``vcsim``: one simulator for the whole session, default inventory plus ``vm-two-disks``.
  Tests that change state (power, CD-ROM, faults) should use their own VM or ``vcsim_factory``.
- ``vcsim_factory``: ``vcsim_factory(**Vcsim kwargs)`` starts a simulator with custom options
  (config, lease_timeout, rate_limit, cut_after, ...); all are stopped after the test.
"""

import pytest

from tests.simulators.vcsim.launcher import Vcsim


@pytest.fixture(scope="session")
def vcsim():
    with Vcsim() as sim:
        yield sim


@pytest.fixture
def vcsim_factory():
    started = []

    def start(**kwargs) -> Vcsim:
        sim = Vcsim(**kwargs).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()
