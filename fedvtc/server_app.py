"""The ServerApp for ``flwr run`` (simulation or deployment); see ``fedvtc.flwr_config``."""

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fedvtc.apps import build_strategy, set_quiet_env
from fedvtc.settings import ConfigError
from fedvtc.flwr_config import settings_from_context

set_quiet_env()


def server_fn(context: Context) -> ServerAppComponents:
    s = settings_from_context(context)
    if s.checkpoint.every or s.resume:
        # A checkpoint copies the clients' state files from the server's state_dir; in a deployment
        # each SuperNode keeps its client's state on its own machine, out of the server's reach.
        raise ConfigError(
            "checkpoint.every and resume work with run_simulation.py only (the server must reach every "
            "client's state files); remove them from the flwr run overrides"
        )
    config = ServerConfig(num_rounds=s.num_rounds, round_timeout=s.simulation.round_timeout)
    return ServerAppComponents(strategy=build_strategy(s), config=config)


app = ServerApp(server_fn=server_fn)
