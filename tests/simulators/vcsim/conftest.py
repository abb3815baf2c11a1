"""Makes the simulator's fixtures available to its own tests, whether or not the root conftest loads them."""

from tests.simulators.vcsim.fixtures import vcsim, vcsim_factory  # noqa: F401
