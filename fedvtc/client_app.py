"""The ClientApp for ``flwr run`` (simulation or deployment); see ``fedvtc.flwr_config``."""

from flwr.client import ClientApp
from flwr.common import Context

from fedvtc.algorithms import get_algorithm
from fedvtc.flwr_config import settings_from_context


def client_fn(context: Context):
    s = settings_from_context(context)
    cid = int(context.node_config["partition-id"])
    return get_algorithm(s.algorithm_name).client(cid, s).to_client()


app = ClientApp(client_fn=client_fn)
