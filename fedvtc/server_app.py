"""The ServerApp for ``flwr run`` (simulation or deployment); see ``fedvtc.flwr_config``."""

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fedvtc.apps import build_strategy, set_quiet_env
from fedvtc.flwr_config import settings_from_context

set_quiet_env()


def server_fn(context: Context) -> ServerAppComponents:
    s = settings_from_context(context)
    config = ServerConfig(num_rounds=s.num_rounds, round_timeout=s.simulation.round_timeout)
    return ServerAppComponents(strategy=build_strategy(s), config=config)


app = ServerApp(server_fn=server_fn)
