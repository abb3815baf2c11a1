"""Makes the simulator's fixtures available to its own tests, whether or not the root conftest loads them."""

from tests.simulators.vmimport.fixtures import (  # noqa: F401  # pylint: disable=unused-import
    aws,
    aws_clean,
    aws_factory,
    vmimport_ready,
)
